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
            "admin_listen = \"127.0.0.1:0\"\nmodel_store = \"{}\"\ncontrol_socket = \"{}\"\n[openai]\naddress = \"127.0.0.1:0\"\n",
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

/// An unprivileged uid for the test's own processes (no such user needs to
/// exist: the kernel only compares numbers).
const NOBODY: u32 = 65533;

/// Opens `path` read-only as `NOBODY`, without capabilities (a process that
/// changes from root to another uid loses them all); "ok" or the OS error
/// as Python names it, e.g. "13 Permission denied".
fn open_as_nobody(path: &str) -> String {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import os, sys\ntry:\n    os.close(os.open(sys.argv[1], os.O_RDONLY))\n    print('ok')\nexcept OSError as e:\n    print(e.errno, e.strerror)",
            path,
        ])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Copies `src` into `dir` (world-readable and executable: the test's
/// build folder sits under root's home, which `NOBODY` cannot enter).
fn copy_in(src: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dest = dir.join(src.file_name().expect("name"));
    std::fs::copy(src, &dest).expect("copy");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dest
}

/// A process of the supervisor's own uid, holding no capability (what a
/// worker taken over by a model file is at best), cannot open the
/// supervisor's descriptors through /proc, so it cannot map a worker's
/// shared memory: the supervisor is not dumpable. The same process can open
/// a dumpable process's descriptors of that uid, so the refusal is the
/// supervisor's doing, not the test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_uid_process_cannot_open_the_supervisors_shared_memory() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let _serial = serial().await;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test starts the supervisor as uid {NOBODY}: it must run as root"
    );
    let bin = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sidecar = copy_in(&e2e::binary("sidecar"), bin.path());
    copy_in(&e2e::binary("worker-lite"), bin.path());
    let runtime = copy_in(&e2e::root().join("runtime/litert/libLiteRt.so"), bin.path());
    let store = tempfile::tempdir().expect("store");
    let model = "face_detection_short_range.tflite";
    std::fs::copy(
        e2e::root().join("models/mediapipe").join(model),
        store.path().join(model),
    )
    .expect("model");
    let owner = Some(nix::unistd::Uid::from_raw(NOBODY));
    let group = Some(nix::unistd::Gid::from_raw(NOBODY));
    for p in [store.path().to_path_buf(), store.path().join(model)] {
        nix::unistd::chown(&p, owner, group).expect("chown");
    }
    std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let config = bin.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodel_store = \"{}\"\n\
             control_socket = \"{}\"\nlite_runtime = \"{}\"\nworker_dir = \"{}\"\n{}",
            store.path().display(),
            store.path().join("control.sock").display(),
            runtime.display(),
            bin.path().display(),
            e2e::lite_config("face", model, "")
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(&sidecar)
        .arg("--config")
        .arg(&config)
        .env("SIDECAR_LOG", "info,worker=warn")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start sidecar");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("stdout");
    let child = Kill(child);
    assert!(first.starts_with("sidecar listening"), "{first:?}");
    let api = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .expect("api=");
    let sup = child.0.id();
    let uid = proc_line(sup, "status", "Uid:");
    assert_eq!(uid.split_whitespace().nth(2), Some("65533"), "{uid}");

    // The model is served, so a worker's channel (a memfd) is open in the
    // supervisor.
    let mut models = sidecar_proto::v1::model_service_client::ModelServiceClient::connect(format!(
        "http://{api}"
    ))
    .await
    .expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let m = models
            .get_model(sidecar_proto::v1::GetModelRequest {
                model_id: "face".into(),
            })
            .await
            .expect("GetModel")
            .into_inner();
        if m.state == sidecar_proto::v1::ModelState::Ready as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "face not READY: {m:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let memfds: Vec<String> = std::fs::read_dir(format!("/proc/{sup}/fd"))
        .expect("fd dir (read as root)")
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .starts_with("/memfd:")
                .then(|| e.path().display().to_string())
        })
        .collect();
    assert!(!memfds.is_empty(), "no memfd open in the supervisor {sup}");
    for fd in &memfds {
        let got = open_as_nobody(fd);
        assert!(
            got.starts_with("13 ") || got.starts_with("1 "),
            "uid {NOBODY} opened {fd}: {got}"
        );
    }
    assert_eq!(
        proc_line(sup, "status", "Uid:").split_whitespace().nth(1),
        Some("65533")
    );

    // The control: a dumpable process of the same uid gives its
    // descriptors away to that same caller.
    let holder = std::fs::File::open(&config).expect("config");
    let mut dumpable = std::process::Command::new("/bin/sleep")
        .arg("30")
        .stdin(holder)
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .expect("sleep");
    let seen = open_as_nobody(&format!("/proc/{}/fd/0", dumpable.id()));
    let _ = dumpable.kill();
    let _ = dumpable.wait();
    assert_eq!(
        seen, "ok",
        "the control open failed: the test proves nothing"
    );
    assert!(e2e::alive(sup), "the supervisor is gone");
}
