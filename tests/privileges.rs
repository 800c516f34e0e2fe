//! Workers give up what they do not need before they read a model file:
//! no_new_privs, no core dumps, a bound on descriptors. Checked on the real
//! worker through /proc, with the model still serving.

use e2e::{Sidecar, greedy, serial, smollm2_config, store};

/// A line of `/proc/PID/FILE` starting with `prefix`.
fn proc_line(pid: u32, file: &str, prefix: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("proc file");
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in /proc/{pid}/{file}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_without_new_privileges_core_dumps_or_unbounded_descriptors() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let m = sc.ready("smollm2").await;
    let pid = m.worker_pid;
    let nnp = proc_line(pid, "status", "NoNewPrivs:");
    assert_eq!(nnp.split_whitespace().nth(1), Some("1"), "{nnp}");
    let core = proc_line(pid, "limits", "Max core file size");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    let files = proc_line(pid, "limits", "Max open files");
    let fields: Vec<&str> = files.split_whitespace().collect();
    let (soft, hard): (u64, u64) = (fields[3].parse().unwrap(), fields[4].parse().unwrap());
    assert!(soft <= 4096 && hard <= 4096, "{files}");
    // And it serves.
    let mut text = sc.text().await;
    let r = text
        .generate(greedy("The capital of France is", 4))
        .await
        .expect("served");
    assert!(!r.into_inner().text.is_empty());
    // The supervisor keeps its own limits (it is not a worker).
    let sup = proc_line(sc.child.id(), "status", "NoNewPrivs:");
    assert_eq!(sup.split_whitespace().nth(1), Some("0"), "{sup}");
}
