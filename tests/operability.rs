//! What operators meet: `/metrics` after a scripted mix of calls, a crash
//! and a timeout; request ids in error messages and worker log lines; the
//! probes as the Kubernetes manifests assume them. (`sidecarctl`:
//! `tests/sidecarctl.rs`; the workers standalone: `tests/standalone.rs`.)

use std::time::{Duration, Instant};

use e2e::{QUICK_RESTARTS, Sidecar, add_model, greedy, minilm_config, serial, signal, store};
use nix::sys::signal::Signal;
use sidecar_proto::v1::{EmbedRequest, GenerateRequest, ModelState, TokenizeRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The value of one sample line of the Prometheus text (`name{labels}`),
/// 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_a_scripted_mix_of_calls_a_crash_and_a_timeout() {
    let _serial = serial().await;
    let sc = Sidecar::start(
        store(),
        &format!("{QUICK_RESTARTS}stream = 0.1\n{}", e2e::smollm2_config("")),
    );
    let before = sc.ready("smollm2").await;
    let mut text = sc.text().await;
    for _ in 0..3 {
        // Each computed by the worker, not answered by the result cache:
        // the figures below count executions.
        let mut req = tonic::Request::new(greedy("One, two,", 4));
        req.metadata_mut()
            .insert("cache-control", "no-cache".parse().expect("ascii"));
        text.generate(req).await.expect("generate");
    }
    text.tokenize(TokenizeRequest {
        model_id: "smollm2".into(),
        text: "hello".into(),
        ..Default::default()
    })
    .await
    .expect("tokenize");
    let err = text
        .generate(GenerateRequest {
            model_id: "nope".into(),
            ..greedy("x", 1)
        })
        .await
        .expect_err("no such model");
    assert_eq!(err.code(), Code::NotFound);
    // A timeout: a token stream's deadline (0.1 s here, the server's
    // default for streams) passes long before 300 tokens.
    let mut stream = text
        .generate_stream(greedy("Once upon a time", 300))
        .await
        .expect("stream")
        .into_inner();
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("300 tokens within 0.1 s"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // A crash.
    signal(before.worker_pid, Signal::SIGKILL);
    // Back, and sampled by the memory guard.
    sc.eventually("smollm2", Duration::from_secs(20), |m| {
        m.state == ModelState::Ready as i32
            && m.worker_pid != before.worker_pid
            && m.memory
                .as_ref()
                .is_some_and(|mem| mem.host_private_bytes > 0)
    })
    .await;

    let (code, metrics) = sc.admin_get("/metrics");
    assert_eq!(code, 200);
    let want = [
        (
            "sidecar_requests_total{method=\"TextService/Generate\",model=\"smollm2\",code=\"OK\",client=\"anonymous\",protocol=\"grpc\"}",
            3.0,
        ),
        (
            "sidecar_requests_total{method=\"TextService/Tokenize\",model=\"smollm2\",code=\"OK\",client=\"anonymous\",protocol=\"grpc\"}",
            1.0,
        ),
        (
            "sidecar_requests_total{method=\"TextService/Generate\",model=\"unknown\",code=\"NOT_FOUND\",client=\"anonymous\",protocol=\"grpc\"}",
            1.0,
        ),
        (
            "sidecar_requests_total{method=\"TextService/GenerateStream\",model=\"smollm2\",code=\"DEADLINE_EXCEEDED\",client=\"anonymous\",protocol=\"grpc\"}",
            1.0,
        ),
        (
            "sidecar_worker_restarts_total{model=\"smollm2\",reason=\"crash\"}",
            1.0,
        ),
        (
            "sidecar_model_state{model=\"smollm2\",state=\"ready\"}",
            1.0,
        ),
        (
            "sidecar_request_duration_seconds_count{method=\"TextService/Generate\",model=\"smollm2\",protocol=\"grpc\"}",
            3.0,
        ),
        (
            "sidecar_queue_wait_seconds_count{method=\"TextService/Generate\",model=\"smollm2\",protocol=\"grpc\"}",
            3.0,
        ),
    ];
    // Work a call hands to a task of its own (a deterministic call's
    // execution) still names its method.
    assert!(
        !metrics.contains("method=\"\""),
        "a series without its method:\n{metrics}"
    );
    for (series, value) in want {
        assert_eq!(sample(&metrics, series), value, "{series} in\n{metrics}");
    }
    // Three finished generations of 4 tokens each.
    assert_eq!(
        sample(
            &metrics,
            "sidecar_tokens_generated_total{model=\"smollm2\"}"
        ),
        12.0
    );
    assert_eq!(
        sample(
            &metrics,
            "sidecar_time_to_first_token_seconds_count{model=\"smollm2\"}"
        ),
        3.0
    );
    assert!(
        sample(
            &metrics,
            "sidecar_worker_memory_bytes{model=\"smollm2\",kind=\"host_private\"}"
        ) > 0.0
    );
    assert_eq!(
        sample(&metrics, "sidecar_in_flight{model=\"smollm2\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_error_messages_and_worker_log_lines() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, e2e::MINILM);
    let sc = Sidecar::start(store, &minilm_config(""));
    sc.ready("minilm").await;
    let long = "word ".repeat(600);
    let mut req = tonic::Request::new(EmbedRequest {
        model_id: "minilm".into(),
        inputs: vec![long],
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "req-42".parse().expect("metadata"));
    let err = sc.text().await.embed(req).await.expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().ends_with("[request req-42 client anonymous]"),
        "{}",
        err.message()
    );
    let (code, out, _) = sc.ctl(&["--json", "logs", "minilm", "--tail", "50"]);
    assert_eq!(code, 0);
    let tagged: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["request_id"] == "req-42")
        .collect();
    assert!(
        tagged.iter().any(|l| l["source"] == "stderr"
            && l["text"]
                .as_str()
                .is_some_and(|t| t.contains("request failed"))),
        "the worker's line about the call carries its id: {out}"
    );
    // Without an id, one is made up and still reported.
    let err = sc
        .text()
        .await
        .generate(greedy("x", 1))
        .await
        .expect_err("no smollm2 here");
    assert!(err.message().contains("[request sc-"), "{}", err.message());
}

async fn health(sc: &Sidecar, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sc.api))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status()
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(") ")?.1.starts_with('T')))
        .unwrap_or(false)
}

/// The worker processes the supervisor started.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_behave_as_the_kubernetes_manifests_assume() {
    let _serial = serial().await;
    let store = store();
    // A file that is not a model: its load fails for good.
    std::fs::write(store.path().join("broken.gguf"), b"not a gguf file").expect("write");
    // A model that loads as slowly as we like: its worker binary is a
    // script that stops itself (SIGSTOP) before it becomes the real
    // worker, so the model is LOADING, without a race, until SIGCONT.
    let bin = tempfile::tempdir().expect("bin dir");
    let script = bin.path().join("worker-text");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nkill -STOP $$\nexec '{}' \"$@\"\n",
            e2e::binary("worker-text").display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let sc = Sidecar::start(
        store,
        &format!(
            "worker_dir = \"{}\"\n[deadlines]\nload = 60\n{}",
            bin.path().display(),
            e2e::smollm2_config("")
        ),
    );
    let start = Instant::now();
    let worker = loop {
        if let Some(&p) = children(sc.child.id()).first()
            && stopped(p)
        {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no worker stopped itself while loading"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let m = sc.model("smollm2").await;
    assert_eq!(m.state, ModelState::Loading as i32, "{m:?}");
    assert_eq!(sc.admin_get("/livez").0, 200, "alive while a model loads");
    assert_eq!(
        sc.admin_get("/readyz").0,
        503,
        "not ready while a required model loads"
    );
    assert_eq!(
        health(&sc, "model/smollm2").await,
        ServingStatus::NotServing
    );
    signal(worker, Signal::SIGCONT);
    sc.ready("smollm2").await;
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    assert_eq!(health(&sc, "model/smollm2").await, ServingStatus::Serving);

    // A FAILED optional model leaves readiness alone; a required one not.
    drop(sc);
    let store = e2e::store();
    std::fs::write(store.path().join("broken.gguf"), b"not a gguf file").expect("write");
    let broken = |id: &str, required: bool| {
        format!(
            "[[models]]\nid = \"{id}\"\nfamily = \"text\"\npath = \"broken.gguf\"\nrequired = {required}\n"
        )
    };
    let sc = Sidecar::start(
        store,
        &format!("{}{}", e2e::smollm2_config(""), broken("optional", false)),
    );
    sc.ready("smollm2").await;
    sc.eventually("optional", Duration::from_secs(20), |m| {
        m.state == ModelState::Failed as i32
    })
    .await;
    assert_eq!(sc.admin_get("/readyz").0, 200, "a FAILED optional model");
    assert_eq!(
        health(&sc, "model/optional").await,
        ServingStatus::NotServing
    );
    drop(sc);
    let store = e2e::store();
    std::fs::write(store.path().join("broken.gguf"), b"not a gguf file").expect("write");
    let sc = Sidecar::start(
        store,
        &format!("{}{}", e2e::smollm2_config(""), broken("needed", true)),
    );
    sc.ready("smollm2").await;
    let failed = sc
        .eventually("needed", Duration::from_secs(20), |m| {
            m.state == ModelState::Failed as i32
        })
        .await;
    assert!(
        failed.last_error.contains("not a GGUF model file"),
        "{failed:?}"
    );
    let (code, body) = sc.admin_get("/readyz");
    assert_eq!(code, 503, "a FAILED required model: {body}");
    assert!(body.contains("needed"), "{body}");
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(health(&sc, "model/needed").await, ServingStatus::NotServing);
}
