//! Real faults against the real sidecar: a worker killed mid-stream, a
//! stopped (hung) worker, a model that cannot load, SIGTERM during a
//! stream, and the supervisor killed outright.

use std::time::{Duration, Instant};

use e2e::{Sidecar, alive, greedy, serial, signal, smollm2_config, store};
use nix::sys::signal::Signal;
use sidecar_proto::v1::{GenerateRequest, KillReason, ModelState, generate_stream_response::Msg};
use tonic::Code;

const FAST_RESTARTS: &str = "[workers]\nbackoff_initial = 0.05\nbackoff_max = 0.5\nheartbeat_timeout = 3\nkill_grace = 1\n[deadlines]\ncancel_grace = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_gives_unavailable_and_is_respawned() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &format!("{FAST_RESTARTS}{}", smollm2_config("")));
    let before = sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let mut stream = text
        .generate_stream(greedy("Once upon a time, in a land far away,", 500))
        .await
        .expect("stream")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first token")
        .expect("message");
    assert!(matches!(first.msg, Some(Msg::Delta(_))), "{first:?}");

    signal(before.worker_pid, Signal::SIGKILL);
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("died") && err.message().contains("smollm2"),
        "{}",
        err.message()
    );

    // The supervisor notices the death on its own schedule: wait for the
    // replacement.
    let after = sc
        .eventually("smollm2", Duration::from_secs(30), |m| {
            m.state == ModelState::Ready as i32 && m.worker_pid != before.worker_pid
        })
        .await;
    assert_eq!(after.restarts, 1);
    assert_eq!(after.last_kill_reason, KillReason::Crash as i32);
    assert!(
        after.last_error.contains("signal 9"),
        "{}",
        after.last_error
    );
    let ok = text
        .generate(greedy("Hello", 4))
        .await
        .expect("next call succeeds")
        .into_inner();
    assert!(ok.usage.expect("usage").completion_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_ends_the_call_at_its_deadline_and_is_replaced() {
    let _serial = serial().await;
    // The call's deadline (the server's default for unary calls, 2 s) comes
    // before the missed heartbeats (5 s). (A client-side deadline would be
    // enforced by the client library itself; this checks the server.)
    let config = "[workers]\nbackoff_initial = 0.05\nheartbeat_timeout = 5\nkill_grace = 1\n[deadlines]\nunary = 2\ncancel_grace = 1\n";
    let sc = Sidecar::start(store(), &format!("{config}{}", smollm2_config("")));
    let before = sc.ready("smollm2").await;
    let mut text = sc.text().await;

    signal(before.worker_pid, Signal::SIGSTOP);
    let req = tonic::Request::new(greedy("Hello there", 50));
    let started = Instant::now();
    let err = text.generate(req).await.expect_err("deadline");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    let after = sc
        .eventually("smollm2", Duration::from_secs(30), |m| {
            m.state == ModelState::Ready as i32 && m.worker_pid != before.worker_pid
        })
        .await;
    assert!(
        [KillReason::Timeout as i32, KillReason::Unhealthy as i32]
            .contains(&after.last_kill_reason),
        "{after:?}"
    );
    assert!(!alive(before.worker_pid), "the stopped worker is gone");
    let ok = text
        .generate(greedy("Hello", 4))
        .await
        .expect("next call succeeds")
        .into_inner();
    assert!(ok.usage.expect("usage").completion_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_goes_to_failed_and_the_rest_keeps_serving() {
    let _serial = serial().await;
    let store = store();
    // A well-formed GGUF header (one tensor, no keys: nothing the
    // supervisor's reader refuses) followed by garbage: llama.cpp refuses
    // it, in the worker, at every start.
    let mut bad = b"GGUF".to_vec();
    bad.extend(3u32.to_le_bytes());
    bad.extend(1u64.to_le_bytes());
    bad.extend(0u64.to_le_bytes());
    bad.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
    std::fs::write(store.path().join("corrupt.gguf"), bad).expect("write");
    let config = format!(
        "[workers]\nmax_restarts = 2\nbackoff_initial = 0.05\nbackoff_max = 0.2\n{}\n[[models]]\nid = \"broken\"\nfamily = \"text\"\npath = \"corrupt.gguf\"\nrequired = false\n",
        smollm2_config("")
    );
    let sc = Sidecar::start(store, &config);
    let failed = sc
        .eventually("broken", Duration::from_secs(60), |m| {
            m.state == ModelState::Failed as i32
        })
        .await;
    assert_eq!(
        failed.restarts, 3,
        "the third failure exceeds max_restarts = 2"
    );
    assert!(
        failed.last_error.contains("load failed"),
        "{}",
        failed.last_error
    );

    sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let err = text
        .generate(GenerateRequest {
            model_id: "broken".into(),
            ..greedy("x", 1)
        })
        .await
        .expect_err("failed model");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("FAILED"), "{}", err.message());
    text.generate(greedy("Hello", 2))
        .await
        .expect("the other model serves");
    assert_eq!(sc.admin_get("/livez").0, 200);
    let (code, body) = sc.admin_get("/readyz");
    assert_eq!(
        code, 200,
        "a model that is not required never makes the pod unready: {body}"
    );

    // Fix the file; loading the model again is the explicit reload.
    let dir = sc.store.path();
    std::fs::remove_file(dir.join("corrupt.gguf")).expect("remove");
    std::fs::hard_link(dir.join(e2e::SMOLLM2), dir.join("corrupt.gguf"))
        .or_else(|_| std::fs::copy(dir.join(e2e::SMOLLM2), dir.join("corrupt.gguf")).map(|_| ()))
        .expect("replace the file");
    let reloaded = sc
        .manage()
        .await
        .load_model(sidecar_proto::v1::LoadModelRequest {
            model_id: "broken".into(),
            family: sidecar_proto::v1::ModelFamily::Text as i32,
            path: "corrupt.gguf".into(),
            ..Default::default()
        })
        .await
        .expect("reload after FAILED")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(reloaded.state, ModelState::Ready as i32, "{reloaded:?}");
    text.generate(GenerateRequest {
        model_id: "broken".into(),
        ..greedy("x", 1)
    })
    .await
    .expect("the reloaded model serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_stream_finish_then_stops_the_workers() {
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
    sc.signal(Signal::SIGTERM);
    let done = e2e::finish_stream(&mut stream).await;
    assert!(done, "the in-flight stream got its final message");
    let mut sc = sc;
    let start = Instant::now();
    while sc.child.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "sidecar did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(worker), "worker stopped with the supervisor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_supervisor_leaves_no_worker_behind() {
    let _serial = serial().await;
    let mut sc = Sidecar::start(store(), &smollm2_config(""));
    let worker = sc.ready("smollm2").await.worker_pid;
    sc.child.kill().expect("SIGKILL the supervisor");
    sc.child.wait().expect("reap");
    e2e::wait_gone(
        worker,
        Duration::from_secs(10),
        "a worker outliving its supervisor",
    )
    .await;
}
