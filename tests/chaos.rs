//! Workers killed from outside while clients call: restarts that never
//! make a model FAILED, calls made during a restart that wait for the new
//! worker, and the chaos harness of `scripts/chaos.sh` for 30 s.

use std::time::Duration;

use e2e::chaos::{self, MIN_COSINE, Plan};
use e2e::{
    MINILM, Sidecar, add_model, float_pattern, lite_config, minilm_config, serial, signal, store,
};
use nix::sys::signal::Signal;
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{DType, EmbedRequest, InferRequest, KillReason, ModelState, Tensor};

const FACE: &str = "mediapipe/face_detection_short_range.tflite";

fn face_request() -> InferRequest {
    InferRequest {
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
    }
}

fn embed_request() -> EmbedRequest {
    EmbedRequest {
        model_id: "minilm".into(),
        inputs: vec!["A worker killed from outside comes back.".into()],
        ..Default::default()
    }
}

/// Eight outside `kill -9`s of each of a LITE and a text embedding model,
/// alternately, each as soon as the previous one's call is served (about
/// one a second, each model's worker every ~2 s, 16 kills in ~15 s): far
/// more than the restart budget (5 within 60 s), yet neither model goes
/// FAILED. Each
/// kill is followed by a call made while the model is RESTARTING (a 1 s
/// backoff holds it there): the call waits and is served by the new
/// worker with the no-chaos answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_kills_never_fail_a_model_and_calls_made_during_each_restart_are_served() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, MINILM);
    add_model(&store, FACE);
    let config = format!(
        "[workers]\nbackoff_initial = 1\nbackoff_max = 1\n{}{}",
        minilm_config(""),
        lite_config("face", FACE, "")
    );
    let sc = Sidecar::start(store, &config);
    let supervisor = sc.child.id();
    sc.ready("minilm").await;
    sc.ready("face").await;
    let mut text = sc.text().await;
    let mut lite = LiteServiceClient::new(sc.channel().await);
    let face_answer = lite
        .infer(face_request())
        .await
        .expect("infer")
        .into_inner();
    let embed_answer = text
        .embed(embed_request())
        .await
        .expect("embed")
        .into_inner();
    const KILLS: u32 = 8;
    for round in 0..2 * KILLS {
        let id = ["face", "minilm"][round as usize % 2];
        let before = sc.ready(id).await;
        signal(before.worker_pid, Signal::SIGKILL);
        sc.eventually(id, Duration::from_secs(10), |m| {
            m.state == ModelState::Restarting as i32
        })
        .await;
        // Made during the backoff: it waits for the next worker (with
        // `no-cache`: the result cache would answer it at once).
        if id == "face" {
            let r = lite
                .infer(chaos::request(face_request(), Duration::from_secs(30)))
                .await
                .unwrap_or_else(|e| panic!("kill {round}: a call during the restart: {e:?}"))
                .into_inner();
            assert_eq!(r.outputs, face_answer.outputs, "kill {round}");
        } else {
            let r = text
                .embed(chaos::request(embed_request(), Duration::from_secs(30)))
                .await
                .unwrap_or_else(|e| panic!("kill {round}: a call during the restart: {e:?}"))
                .into_inner();
            let vectors = |e: &[sidecar_proto::v1::Embedding]| -> Vec<Vec<f32>> {
                e.iter().map(|v| v.values.clone()).collect()
            };
            let cos =
                chaos::min_cosine(&vectors(&r.embeddings), &vectors(&embed_answer.embeddings));
            assert!(cos >= MIN_COSINE, "kill {round}: cosine {cos}");
        }
        let after = sc.model(id).await;
        assert_eq!(after.state, ModelState::Ready as i32, "{after:?}");
        assert_ne!(after.worker_pid, before.worker_pid);
        assert_eq!(after.restarts, before.restarts + 1, "{after:?}");
        assert!(!e2e::alive(before.worker_pid));
    }
    let (_, metrics) = sc.admin_get("/metrics");
    for id in ["face", "minilm"] {
        let m = sc.model(id).await;
        assert_eq!(m.state, ModelState::Ready as i32, "{m:?}");
        assert_eq!(m.restarts, KILLS, "{m:?}");
        assert_eq!(m.last_kill_reason, KillReason::Crash as i32);
        assert!(
            m.last_error
                .contains("a SIGKILL from outside the supervisor")
                && m.last_error.contains("signal 9"),
            "{}",
            m.last_error
        );
        let line =
            format!("sidecar_worker_restarts_total{{model=\"{id}\",reason=\"crash\"}} {KILLS}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    assert_eq!(sc.child.id(), supervisor);
    assert!(e2e::alive(supervisor));
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}

/// `scripts/chaos.sh` for 30 s (after 10 s without kills): 8 client tasks,
/// a `kill -9` every 5 s round robin. Zero errors, answers equal to the
/// no-chaos ones, every model READY, the supervisor unchanged.
///
/// Calls in flight at a kill fail with UNAVAILABLE until the transparent
/// retry of deterministic calls is in: this test reports them by code and
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_of_kills_lose_no_call_and_change_no_answer() {
    let _serial = serial().await;
    let sc = chaos::start().await;
    let plan = Plan {
        threads: 8,
        calm: Duration::from_secs(10),
        chaos: Duration::from_secs(30),
        kill_every: Duration::from_secs(5),
        deadline: Duration::from_secs(30),
    };
    let report = chaos::run(&sc, &plan).await;
    eprintln!("{report}");
    let kills = &report.chaos.kills;
    assert!(kills.len() >= 4, "{} kills in 30 s", kills.len());
    assert!(
        kills.iter().any(|k| k.in_flight > 0),
        "no kill landed while calls were in flight"
    );
    for m in &report.models {
        assert_eq!(m.state, ModelState::Ready, "{m:?}");
        let killed = kills.iter().filter(|k| k.model == m.model).count() as u32;
        assert_eq!(m.restarts, killed, "{m:?}");
    }
    assert_eq!(report.supervisor.0, report.supervisor.1);
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    for phase in [&report.calm, &report.chaos] {
        assert!(phase.call_count() > 0);
        assert_eq!(phase.mismatch_count(), 0, "{report}");
        assert!(phase.min_cosine >= MIN_COSINE, "{report}");
    }
    // Without kills no worker dies: nothing to retry.
    assert_eq!(report.calm.retried.values().sum::<usize>(), 0, "{report}");
    assert_eq!(report.calm.error_count(), 0, "{report}");
    assert_eq!(report.chaos.error_count(), 0, "{report}");
}
