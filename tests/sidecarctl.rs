//! `sidecarctl` against a running sidecar, through its control socket:
//! status (table and JSON), workers, call (text and JSON), logs -f across a
//! restart, drain and resume, load and unload, and the exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{QUICK_RESTARTS, Sidecar, add_model, binary, greedy, minilm_config, serial, store};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecarctl_serves_an_operator_through_the_control_socket() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, e2e::MINILM);
    add_model(&store, "mediapipe/face_detection_short_range.tflite");
    let sc = Sidecar::start(
        store,
        &format!(
            "{QUICK_RESTARTS}{}{}",
            e2e::smollm2_config(""),
            minilm_config("")
        ),
    );
    let first = sc.ready("smollm2").await;
    sc.ready("minilm").await;

    let (code, out, _) = sc.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("READY") && out.contains("smollm2") && out.contains("minilm"),
        "{out}"
    );
    let (code, out, _) = sc.ctl(&["--json", "status"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(status["ready"], true);
    assert_eq!(status["models"][1]["state"], "READY", "{status}");
    assert_eq!(status["models"][1]["pid"], first.worker_pid);
    let (code, out, _) = sc.ctl(&["workers"]);
    assert_eq!(code, 0);
    assert!(out.contains(&first.worker_pid.to_string()), "{out}");

    // A call straight to the worker, with its timings.
    let (code, out, _) = sc.ctl(&[
        "call",
        "smollm2",
        "--prompt",
        "One, two,",
        "--max-tokens",
        "4",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("[4 prompt tokens, 4 generated") || out.contains(" generated"),
        "{out}"
    );
    assert!(out.contains("[worker: first answer"), "{out}");
    let (code, out, _) = sc.ctl(&["--json", "call", "minilm", "--embed", "hello", "world"]);
    assert_eq!(code, 0, "{out}");
    let first_line: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first_line["embeddings"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        first_line["embeddings"][0].as_array().map(Vec::len),
        Some(384)
    );

    // logs -f follows: a restart shows up as new lines.
    let mut follow = Command::new(binary("sidecarctl"))
        .arg("--socket")
        .arg(sc.store.path().join("control.sock"))
        .args(["logs", "smollm2", "-f", "--tail", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let (code, out, _) = sc.ctl(&["restart", "smollm2"]);
    assert_eq!(code, 0, "{out}");
    let restarted = sc.ready("smollm2").await;
    assert_ne!(restarted.worker_pid, first.worker_pid);
    let lines = BufReader::new(follow.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
            if seen
                .iter()
                .any(|l| l.contains(&format!("[{}]", restarted.worker_pid)))
            {
                break;
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("smollm2[{}]", restarted.worker_pid))),
        "the new worker's lines are followed: {seen:?}"
    );

    // Drain: new calls are refused; resume admits them again.
    let (code, out, _) = sc.ctl(&["drain", "smollm2", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("DRAINING"), "{out}");
    let err = sc
        .text()
        .await
        .generate(greedy("x", 1))
        .await
        .expect_err("draining");
    assert_eq!(err.code(), Code::Unavailable);
    let (code, _, _) = sc.ctl(&["drain", "smollm2", "--resume"]);
    assert_eq!(code, 0);
    sc.text()
        .await
        .generate(greedy("x", 1))
        .await
        .expect("admitted again");

    // Load and unload a LITE model through the socket.
    let (code, out, err) = sc.ctl(&[
        "load",
        "face",
        "lite",
        "mediapipe/face_detection_short_range.tflite",
        "--optional",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("face") && out.contains("READY"), "{out}");
    let (code, out, _) = sc.ctl(&["unload", "face"]);
    assert_eq!((code, out.trim()), (0, "unloaded face"));

    // Exit codes scripts can use.
    let (code, _, err) = sc.ctl(&["restart", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");
    let (code, _, _) = sc.ctl(&["frobnicate"]);
    assert_eq!(code, 2);
    let out = Command::new(binary("sidecarctl"))
        .args(["--socket", "/nonexistent/control.sock", "status"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
}
