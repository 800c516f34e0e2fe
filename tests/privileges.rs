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

/// What the real binary logs when it starts with `args` and is sent
/// SIGTERM as soon as it says it listens.
fn start_log(args: &[&str]) -> String {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "admin_listen = \"127.0.0.1:0\"\nmodel_store = \"{}\"\ncontrol_socket = \"{}\"\n",
            dir.path().display(),
            dir.path().join("control.sock").display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(e2e::binary("sidecar"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("SIDECAR_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sidecar");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("stdout");
    assert!(first.starts_with("sidecar listening"), "{first:?}");
    // A SIGTERM at once after that line stops it gracefully (its handler
    // was in place before it said it listens).
    e2e::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("stderr");
    let status = child.wait().expect("reaped");
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    log
}

/// An API other hosts can reach, with no TLS or token to tell callers
/// apart, is announced loudly at start, unless the operator accepted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_api_is_announced_at_start_unless_accepted() {
    let _serial = serial().await;
    let open = start_log(&["--listen", "0.0.0.0:0"]);
    let line = open
        .lines()
        .find(|l| l.contains("THE API IS OPEN"))
        .unwrap_or_else(|| panic!("no warning in {open}"));
    assert!(
        line.contains("WARN") && line.contains("--insecure-public"),
        "{line}"
    );
    let accepted = start_log(&["--listen", "0.0.0.0:0", "--insecure-public"]);
    assert!(!accepted.contains("THE API IS OPEN"), "{accepted}");
    let local = start_log(&["--listen", "127.0.0.1:0"]);
    assert!(!local.contains("THE API IS OPEN"), "{local}");
}
