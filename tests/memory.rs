//! The memory guard against the real sidecar and real models: a worker
//! over its budget is killed (callers get RESOURCE_EXHAUSTED, the model
//! says why with both figures, the supervisor stays ready); admission
//! unloads the least recently used idle model to fit another and refuses,
//! with the numbers, when only pinned models are left; idle models unload
//! after their keep-alive; every model's estimate against its measured
//! footprint is printed; a worker's channel stays resident only as far as
//! it is used.

use std::time::Duration;

use e2e::{Sidecar, add_model, greedy, lite_config, minilm_config, serial, store};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{
    DType, GetStatusRequest, InferRequest, KillReason, ModelInfo, ModelState, Tensor,
    generate_stream_response::Msg,
};
use tonic::Code;

const FACE: &str = "mediapipe/face_detection_short_range.tflite";
const MIB: u64 = 1 << 20;

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// Prints a model's estimate against what was measured.
/// Waits until the guard has sampled model `id` after now (its memory's
/// `sampled_unix_ms` moves past this moment): the figures read next are
/// measured ones, not the load's.
async fn sampled(sc: &Sidecar, id: &str) -> ModelInfo {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    sc.eventually(id, Duration::from_secs(20), |m| {
        m.memory.as_ref().is_some_and(|x| x.sampled_unix_ms > now)
    })
    .await
}

fn report(m: &ModelInfo) {
    let mem = m.memory.clone().unwrap_or_default();
    eprintln!(
        "{:>8}: estimate {:7.1} MiB | measured peak resident {:7.1} MiB (private {:6.1} MiB now, peak {:6.1} MiB; file-backed {:6.1} MiB)",
        m.model_id,
        mib(mem.estimate_bytes),
        mib(mem.peak_resident_bytes),
        mib(mem.host_private_bytes),
        mib(mem.peak_private_bytes),
        mib(mem.host_file_bytes)
    );
}

/// A sidecar with the face detector as LITE model `face`, sampled every
/// `sample_interval` seconds.
fn face_sidecar(sample_interval: f64, extra_model_keys: &str) -> Sidecar {
    let store = store();
    add_model(&store, FACE);
    let memory = format!("[memory]\nsample_interval = {sample_interval}\n");
    Sidecar::start(
        store,
        &format!("{memory}{}", lite_config("face", FACE, extra_model_keys)),
    )
}

async fn infer(sc: &Sidecar, id: &str) -> Result<(), tonic::Status> {
    let mut client = LiteServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect");
    client
        .infer(InferRequest {
            output_placements: Default::default(),
            model_id: id.into(),
            inputs: vec![Tensor {
                shm: Default::default(),
                name: "input".into(),
                dtype: DType::DtypeFloat32 as i32,
                shape: vec![1, 128, 128, 3],
                data: e2e::float_pattern(128 * 128 * 3).into(),
            }],
            outputs: vec![],
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_budget_is_killed_and_its_callers_get_resource_exhausted() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, e2e::MINILM);
    // SmolLM2's worker holds ~100 MiB of private memory (KV cache and
    // buffers); its budget is 20 MiB. It loads on demand, so the call
    // below is in the worker when the guard's next sample comes.
    let config = format!(
        "[memory]\nsample_interval = 0.3\n[workers]\nbackoff_initial = 0.05\nbackoff_max = 0.2\n\
         [[models]]\nid = \"smollm2\"\nfamily = \"text\"\npath = \"{}\"\npreload = false\n\
         memory_budget = \"20MiB\"\ntext = {{ context_size = 1024, threads = 1 }}\n{}",
        e2e::SMOLLM2,
        minilm_config("")
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("minilm").await;
    let mut text = sc.text().await;
    let outcome = async {
        let mut stream = text
            .generate_stream(greedy("Once upon a time, in a land far away,", 400))
            .await?
            .into_inner();
        while let Some(m) = stream.message().await? {
            if matches!(m.msg, Some(Msg::Done(_))) {
                return Ok(());
            }
        }
        Ok::<(), tonic::Status>(())
    }
    .await;
    let err = outcome.expect_err("the worker is killed mid-call");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("smollm2")
            && err
                .message()
                .contains("over the model's budget of 20.0 MiB")
            && err.message().contains("reason oom"),
        "{}",
        err.message()
    );
    eprintln!("caller got: {}", err.message());

    // The actor records the death once the process is reaped.
    let m = sc
        .eventually("smollm2", Duration::from_secs(10), |m| {
            m.last_kill_reason == KillReason::Oom as i32
        })
        .await;
    assert!(
        m.last_error.contains("private memory") && m.last_error.contains("20.0 MiB"),
        "the event names both figures: {}",
        m.last_error
    );
    eprintln!("model event: {}", m.last_error);

    // The supervisor stays ready and the other model serves.
    assert_eq!(sc.admin_get("/readyz").0, 200);
    assert_eq!(sc.admin_get("/livez").0, 200);
    let minilm = sc.ready("minilm").await;
    let oom_adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", minilm.worker_pid))
        .expect("oom_score_adj");
    assert_eq!(
        oom_adj.trim(),
        "800",
        "workers are the kernel's first OOM pick"
    );
    sc.text()
        .await
        .embed(sidecar_proto::v1::EmbedRequest {
            model_id: "minilm".into(),
            inputs: vec!["still serving".into()],
            ..Default::default()
        })
        .await
        .expect("the other model serves");
    report(&sc.model("minilm").await);
    report(&sc.model("smollm2").await);
}

/// Three LITE models whose estimates are set to 200 MiB each, under a
/// 500 MiB limit: two fit.
fn three_models(a_pinned: bool, b_pinned: bool) -> String {
    let model = |id: &str, extra: &str| {
        lite_config(id, FACE, &format!("memory_estimate = \"200MiB\"\n{extra}"))
    };
    format!(
        "[memory]\nlimit = \"500MiB\"\nhost_reserve = 0\nsample_interval = 0.2\n{}{}{}",
        model("a", &format!("pinned = {a_pinned}")),
        model("b", &format!("pinned = {b_pinned}")),
        model("c", "preload = false\nrequired = false"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_unloads_the_least_recently_used_idle_model_and_refuses_when_only_pinned_are_left()
 {
    let _serial = serial().await;
    let store = store();
    add_model(&store, FACE);
    let sc = Sidecar::start(store, &three_models(true, false));
    sc.ready("a").await;
    let b = sc.ready("b").await;
    // The guard samples both (every 0.2 s): the report below has measured
    // figures.
    sampled(&sc, "a").await;
    sampled(&sc, "b").await;
    infer(&sc, "b").await.expect("b serves");
    infer(&sc, "a").await.expect("a serves");
    // c loads on demand: 200 MiB more than the limit allows. b (unpinned,
    // idle, used before a) is unloaded to make room; a is pinned.
    infer(&sc, "c").await.expect("c loads and serves");
    let c = sc.ready("c").await;
    sampled(&sc, "c").await;
    let b_now = sc.model("b").await;
    assert_eq!(b_now.worker_pid, 0, "b's worker is gone: {b_now:?}");
    assert!(!e2e::alive(b.worker_pid), "b's process is gone");
    assert!(
        b_now
            .last_error
            .contains("unloaded to make room for model \"c\""),
        "{}",
        b_now.last_error
    );
    assert_eq!(b_now.restarts, 0, "an eviction is not a restart");
    // b loads again on its next call, unloading c (the idle unpinned one).
    infer(&sc, "b").await.expect("b loads again");
    let c_now = sc.model("c").await;
    assert_eq!(c_now.worker_pid, 0, "c made room: {c_now:?}");
    assert!(!e2e::alive(c.worker_pid));
    sampled(&sc, "b").await;
    for id in ["a", "b", "c"] {
        report(&sc.model(id).await);
    }
    drop(sc);

    // a and b pinned: nothing may go, so c is refused with the numbers.
    let store = e2e::store();
    add_model(&store, FACE);
    let sc = Sidecar::start(store, &three_models(true, true));
    sc.ready("a").await;
    sc.ready("b").await;
    let err = infer(&sc, "c").await.expect_err("no room");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    for words in [
        "model \"c\" needs 200.0 MiB",
        "100.0 MiB is free to models",
        "limit 500.0 MiB",
        "400.0 MiB held by other models",
        "0.0 MiB kept in reserve",
    ] {
        assert!(
            err.message().contains(words),
            "{words:?} not in {}",
            err.message()
        );
    }
    eprintln!("refused: {}", err.message());
    assert_eq!(sc.model("a").await.state, ModelState::Ready as i32);
    assert_eq!(sc.model("b").await.state, ModelState::Ready as i32);
    // The refused model is loadable later; the supervisor stays ready.
    assert_eq!(sc.admin_get("/readyz").0, 200);
    let mut admin = sc.admin().await;
    let status = admin
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let host = status.host.expect("host memory");
    assert!(host.total_bytes > 0 && host.available_bytes > 0, "{host:?}");
    assert!(!status.gpu_monitoring || !status.gpus.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_model_unloads_after_its_keep_alive_and_loads_again_on_a_call() {
    let _serial = serial().await;
    let sc = face_sidecar(0.2, "preload = false\nkeep_alive = 1.0");
    infer(&sc, "face").await.expect("loads on demand");
    let first = sc.ready("face").await;
    let idle = sc
        .eventually("face", Duration::from_secs(10), |m| m.worker_pid == 0)
        .await;
    assert!(
        idle.last_error.contains("without calls (keep_alive)"),
        "{idle:?}"
    );
    assert!(!e2e::alive(first.worker_pid));
    infer(&sc, "face").await.expect("loads again");
    let again = sc.ready("face").await;
    assert_ne!(again.worker_pid, first.worker_pid);
    assert_eq!(again.restarts, 0);
    // The LITE estimate from the file (no memory_estimate set).
    report(&sampled(&sc, "face").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lite_channel_used_one_call_at_a_time_stays_near_its_largest_message() {
    let _serial = serial().await;
    let sc = face_sidecar(1.0, "");
    sc.ready("face").await;
    // 400 calls of a 192 KiB input: 77 MB through a ring of 64 MiB.
    for _ in 0..400 {
        infer(&sc, "face").await.expect("infer");
    }
    let channel = sampled(&sc, "face")
        .await
        .memory
        .expect("memory")
        .channel_bytes;
    eprintln!("worker's resident channel after 400 calls: {channel} bytes");
    assert!(channel > 0, "the channel is sampled");
    assert!(
        channel < 8 << 20,
        "rings start over at their front when empty: {channel} bytes resident"
    );
}
