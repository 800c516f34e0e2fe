//! Every worker family runs sandboxed: no capability (the tests run as
//! root, so there is something to drop), no_new_privs, a seccomp filter.
//! Checked on the real worker through /proc while it serves, and by the
//! test-only sandbox probe (worker-runtime's cargo feature
//! `sandbox-probe`, on in `scripts/test.sh`) sent through the real
//! supervisor's AdminService.CallWorker: the worker tries to run
//! `/bin/true`, to open a TCP connection to a port this test listens on,
//! to write a file under the model store, and (when asked) to make a call
//! on no allow-list.

use std::time::Duration;

use e2e::vision::{BLAZEFACE, astronaut, faces};
use e2e::{
    Sidecar, add_model, alive, float_pattern, greedy, lite_config, serial, smollm2_config, store,
};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    CallWorkerRequest, DType, FaceDetector, InferRequest, KillReason, ModelState,
    ProcessBatchRequest, SandboxProbeRequest, SandboxProbeResponse, Tensor, call_worker_request,
    call_worker_response,
};
use tonic::Code;

/// The three families: (model id, config, files to add to the store).
#[derive(Debug, Clone, Copy)]
enum Family {
    Text,
    Vision,
    Lite,
}

impl Family {
    fn model(self) -> &'static str {
        match self {
            Family::Text => "smollm2",
            Family::Vision => "faces",
            Family::Lite => "face",
        }
    }

    /// A sidecar serving this family's model, READY, with `extra` config.
    async fn start(self, extra: &str) -> Sidecar {
        let store = store();
        let config = match self {
            Family::Text => smollm2_config(""),
            Family::Vision => {
                add_model(&store, BLAZEFACE);
                format!(
                    "[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n"
                )
            }
            Family::Lite => {
                add_model(&store, BLAZEFACE);
                lite_config("face", BLAZEFACE, "")
            }
        };
        let sc = Sidecar::start(store, &format!("{extra}\n{config}"));
        sc.ready(self.model()).await;
        sc
    }

    /// One ordinary call of this family; panics unless it succeeds with a
    /// real answer.
    async fn serve_one(self, sc: &Sidecar) {
        match self {
            Family::Text => {
                let r = sc
                    .text()
                    .await
                    .generate(greedy("The capital of France is", 4))
                    .await
                    .expect("generate")
                    .into_inner();
                assert!(r.usage.expect("usage").completion_tokens > 0, "{}", r.text);
            }
            Family::Vision => {
                let mut c = VisionServiceClient::connect(format!("http://{}", sc.api))
                    .await
                    .expect("connect");
                let r = c
                    .process_batch(ProcessBatchRequest {
                        model_id: "faces".into(),
                        task: Some(faces(FaceDetector::Unspecified)),
                        images: vec![astronaut()],
                    })
                    .await
                    .expect("process_batch")
                    .into_inner();
                assert_eq!(r.results[0].faces.len(), 1, "{r:?}");
            }
            Family::Lite => {
                let mut c = LiteServiceClient::connect(format!("http://{}", sc.api))
                    .await
                    .expect("connect");
                let r = c
                    .infer(InferRequest {
                        output_placements: Default::default(),
                        model_id: "face".into(),
                        inputs: vec![Tensor {
                            shm: Default::default(),
                            name: "input".into(),
                            dtype: DType::DtypeFloat32 as i32,
                            shape: vec![1, 128, 128, 3],
                            data: float_pattern(128 * 128 * 3).into(),
                        }],
                        outputs: vec![],
                    })
                    .await
                    .expect("infer")
                    .into_inner();
                assert!(!r.outputs.is_empty(), "{r:?}");
            }
        }
    }
}

/// The value of `/proc/<pid>/task/<tid>/status`'s `key` line.
fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
}

/// Every thread of `pid`: no_new_privs, seccomp filtering, and no
/// capability in any set. Returns how many threads were checked.
fn assert_sandboxed(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    let mut n = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let name = field(&status, "Name");
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{name}");
        assert_eq!(field(&status, "Seccomp"), "2", "{name}");
        // Ours are three; a container runtime may have added its own.
        let filters: u32 = field(&status, "Seccomp_filters").parse().expect("count");
        assert!(filters >= 3, "{name}: {filters} filters");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&status, set), "0000000000000000", "{name} {set}");
        }
        n += 1;
    }
    n
}

/// The probe through AdminService.CallWorker: the worker's answer, or the
/// call's error.
async fn probe(
    sc: &Sidecar,
    model: &str,
    port: u16,
    write_path: &str,
    off_list: bool,
) -> Result<SandboxProbeResponse, tonic::Status> {
    let mut stream = sc
        .admin()
        .await
        .call_worker(CallWorkerRequest {
            model_id: model.into(),
            call: Some(call_worker_request::Call::SandboxProbe(
                SandboxProbeRequest {
                    connect_port: u32::from(port),
                    write_path: write_path.into(),
                    off_list,
                },
            )),
        })
        .await?
        .into_inner();
    let mut answer = None;
    while let Some(m) = stream.message().await? {
        match m.msg {
            Some(call_worker_response::Msg::SandboxProbe(r)) => answer = Some(r),
            Some(call_worker_response::Msg::Done(_)) => break,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    Ok(answer.expect("a probe answer before the end"))
}

/// The health endpoints answer 200.
fn healthy(sc: &Sidecar) {
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}

/// One family: sandboxed in /proc; the probe's exec and socket get EPERM
/// and the worker goes on serving, same pid, same supervisor.
async fn family_is_sandboxed(family: Family) {
    let _serial = serial().await;
    let sc = family.start("").await;
    let supervisor = sc.child.id();
    let model = family.model();
    let before = sc.model(model).await;
    let threads = assert_sandboxed(before.worker_pid);
    assert!(
        threads >= 2,
        "the serve loop and the heartbeat thread: {threads}"
    );
    family.serve_one(&sc).await;

    // A port that would accept: a refused connection is the sandbox's doing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let target = sc.store.path().join(format!("probe-{model}.txt"));
    let r = probe(&sc, model, port, &target.display().to_string(), false)
        .await
        .expect("probe answered");
    assert_eq!(r.pid, before.worker_pid, "{r:?}");
    assert_eq!(r.exec, "EPERM", "{r:?}");
    assert_eq!(
        (r.socket.as_str(), r.connect.as_str()),
        ("EPERM", "not tried"),
        "{r:?}"
    );
    assert_eq!(r.off_list, "not tried");
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "nothing connected"
    );

    // The worker lives on: same pid, no restart, still sandboxed, serving.
    assert!(alive(supervisor));
    assert_eq!(sc.child.id(), supervisor);
    healthy(&sc);
    let after = sc.model(model).await;
    assert_eq!(after.state, ModelState::Ready as i32);
    assert_eq!((after.worker_pid, after.restarts), (before.worker_pid, 0));
    assert_sandboxed(after.worker_pid);
    family.serve_one(&sc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_worker_holds_no_capability_and_may_not_exec_or_open_sockets() {
    family_is_sandboxed(Family::Text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vision_worker_holds_no_capability_and_may_not_exec_or_open_sockets() {
    family_is_sandboxed(Family::Vision).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lite_worker_holds_no_capability_and_may_not_exec_or_open_sockets() {
    family_is_sandboxed(Family::Lite).await;
}

/// A call on no allow-list kills the worker with SIGSYS; the supervisor
/// reports a crash by signal 31 and serves again from a new worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_off_the_allow_list_kills_the_worker_and_is_reported_as_a_crash() {
    let _serial = serial().await;
    let sc = Family::Text.start(e2e::QUICK_RESTARTS).await;
    let supervisor = sc.child.id();
    let before = sc.model("smollm2").await;
    let err = probe(&sc, "smollm2", 9, "/nonexistent/x", true)
        .await
        .expect_err("the worker dies in the call");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let after = sc
        .eventually("smollm2", Duration::from_secs(30), |m| {
            m.state == ModelState::Ready as i32 && m.worker_pid != before.worker_pid
        })
        .await;
    assert_eq!(
        after.last_kill_reason,
        KillReason::Crash as i32,
        "{after:?}"
    );
    assert!(
        after.last_error.contains("signal 31"),
        "{}",
        after.last_error
    );
    assert_eq!(after.restarts, 1);
    assert!(!alive(before.worker_pid));
    assert!(alive(supervisor));
    healthy(&sc);
    assert_sandboxed(after.worker_pid);
    Family::Text.serve_one(&sc).await;
}

/// `[workers] seccomp = "log"`: the same filter, but a call off the list
/// is logged by the kernel and let through; the refusals stay refusals.
/// `"off"`: no filter (capabilities are still dropped, Landlock still holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_can_log_or_turn_off_the_filter() {
    let _serial = serial().await;
    let sc = Family::Text.start("[workers]\nseccomp = \"log\"\n").await;
    let pid = sc.model("smollm2").await.worker_pid;
    assert_sandboxed(pid);
    let r = probe(&sc, "smollm2", 9, "/nonexistent/x", true)
        .await
        .expect("the worker survives");
    assert_eq!((r.exec.as_str(), r.socket.as_str()), ("EPERM", "EPERM"));
    assert_eq!(r.off_list, "succeeded");
    let m = sc.model("smollm2").await;
    assert_eq!((m.worker_pid, m.restarts), (pid, 0));
    drop(sc);

    let sc = Family::Text.start("[workers]\nseccomp = \"off\"\n").await;
    let pid = sc.model("smollm2").await.worker_pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(field(&status, "Seccomp"), "0");
    assert_eq!(field(&status, "NoNewPrivs"), "1");
    assert_eq!(field(&status, "CapEff"), "0000000000000000");
    // Without the filter the probe's exec and socket go through: what the
    // family tests see as EPERM is the filter's doing. The connect is still
    // refused, by Landlock's network rules (EACCES): a second wall.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let r = probe(&sc, "smollm2", port, "/nonexistent/x", true)
        .await
        .expect("probe answered");
    assert_eq!(
        (r.exec.as_str(), r.socket.as_str(), r.connect.as_str()),
        ("succeeded", "succeeded", "EACCES"),
        "{r:?}"
    );
    assert_eq!(
        (r.write.as_str(), r.off_list.as_str()),
        ("ENOENT", "succeeded")
    );
    let accepted = listener.accept().map(|_| ()).map_err(|e| e.kind());
    assert_eq!(accepted, Err(std::io::ErrorKind::WouldBlock));
    Family::Text.serve_one(&sc).await;
}

/// Landlock: no worker may write under the model store (nor anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_may_write_under_the_model_store() {
    for family in [Family::Text, Family::Vision, Family::Lite] {
        let _serial = serial().await;
        let sc = family.start("").await;
        let model = family.model();
        let target = sc.store.path().join(format!("written-by-{model}.txt"));
        let r = probe(&sc, model, 9, &target.display().to_string(), false)
            .await
            .expect("probe answered");
        assert!(
            r.write == "EACCES" || r.write == "EPERM",
            "{family:?}: {r:?}"
        );
        assert!(!target.exists(), "{}", target.display());
        let m = sc.model(model).await;
        assert_eq!(m.state, ModelState::Ready as i32);
        family.serve_one(&sc).await;
    }
}
