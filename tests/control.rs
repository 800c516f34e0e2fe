//! The control socket: owner-only, AdminService for operators; and models
//! loaded lazily on their first call.

use std::os::unix::fs::PermissionsExt;

use e2e::{Sidecar, greedy, serial, smollm2_config, store};
use sidecar_proto::v1::{
    GetStatusRequest, ListWorkersRequest, LoadModelRequest, ModelFamily, ModelState,
    RestartWorkerRequest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_owner_only_and_serves_operators() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let ready = sc.ready("smollm2").await;
    let mode = std::fs::metadata(sc.store.path().join("control.sock"))
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let mut admin = sc.admin().await;
    let status = admin
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(status.ready && status.pid > 0, "{status:?}");
    assert!(status.host.expect("host memory").total_bytes > 0);
    let workers = admin
        .list_workers(ListWorkersRequest {})
        .await
        .expect("workers")
        .into_inner()
        .workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(
        (workers[0].model_id.as_str(), workers[0].pid),
        ("smollm2", ready.worker_pid)
    );
    assert!(workers[0].heartbeat_age_ms < 5_000, "{:?}", workers[0]);
    assert!(!workers[0].worker_version.is_empty());

    let restarted = admin
        .restart_worker(RestartWorkerRequest {
            model_id: "smollm2".into(),
            drain: false,
        })
        .await
        .expect("restart")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(restarted.state, ModelState::Ready as i32, "{restarted:?}");
    assert_ne!(restarted.worker_pid, ready.worker_pid);
    let mut text = sc.text().await;
    text.generate(greedy("Hello", 2))
        .await
        .expect("serves after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_model_loads_on_its_first_call() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config("preload = false"));
    let before = sc.model("smollm2").await;
    assert_eq!(
        before.worker_pid, 0,
        "not started before its first call: {before:?}"
    );
    assert!(
        !before.required,
        "a lazy model is not required for readiness"
    );
    assert_eq!(sc.admin_get("/readyz").0, 200);

    let mut text = sc.text().await;
    let first = text
        .generate(greedy("Hello", 3))
        .await
        .expect("the first call waits for the load");
    assert!(first.into_inner().usage.expect("usage").completion_tokens > 0);
    assert_ne!(sc.model("smollm2").await.worker_pid, 0);

    // LoadModel of an already loaded model returns it unchanged.
    let mut models = sc.manage().await;
    let again = models
        .load_model(LoadModelRequest {
            model_id: "smollm2".into(),
            family: ModelFamily::Text as i32,
            path: e2e::SMOLLM2.into(),
            ..Default::default()
        })
        .await;
    // The catalog entry has other options (context 1024, 1 thread), so a
    // bare LoadModel under the same id is a different model.
    assert_eq!(
        again.expect_err("different options").code(),
        tonic::Code::AlreadyExists
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_drains_calls_in_flight_first() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let worker = sc.ready("smollm2").await.worker_pid;
    let mut text = sc.text().await;
    let mut stream = text
        .generate_stream(greedy("List the planets of the solar system.", 40))
        .await
        .expect("stream")
        .into_inner();
    stream.message().await.expect("first token");
    let mut models = sc.manage().await;
    let unload = tokio::spawn(async move {
        models
            .unload_model(sidecar_proto::v1::UnloadModelRequest {
                model_id: "smollm2".into(),
                drain_timeout_ms: 20_000,
                force: false,
            })
            .await
    });
    // The unload has begun: the model no longer admits calls.
    sc.eventually("smollm2", std::time::Duration::from_secs(10), |m| {
        m.state != sidecar_proto::v1::ModelState::Ready as i32
    })
    .await;
    let refused = text.generate(greedy("Hi", 2)).await.expect_err("draining");
    assert!(
        [tonic::Code::Unavailable, tonic::Code::NotFound].contains(&refused.code()),
        "{refused:?}"
    );
    let done = e2e::finish_stream(&mut stream).await;
    assert!(done, "the stream got its final message");
    unload.await.expect("join").expect("unloaded");
    let gone = sc
        .models()
        .await
        .get_model(sidecar_proto::v1::GetModelRequest {
            model_id: "smollm2".into(),
        })
        .await;
    assert_eq!(gone.expect_err("unloaded").code(), tonic::Code::NotFound);
    e2e::wait_gone(
        worker,
        std::time::Duration::from_secs(10),
        "the unloaded model's worker",
    )
    .await;
}
