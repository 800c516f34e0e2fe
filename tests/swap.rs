//! A model swapped for another file under its id while clients call it
//! (LoadModelRequest.replace): no call fails, the old worker is gone after
//! the drain, readiness holds throughout; a swap to a file that cannot load
//! leaves the old version serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{
    MINILM, SMOLLM2, Sidecar, add_model, greedy, impossible_gguf, minilm_config, smollm2_config,
};
use sidecar_proto::v1::{EmbedRequest, LoadModelRequest, ModelFamily, ModelState};
use tonic::Code;

/// The copy the swap loads: the same bytes under another name.
const SMOLLM2_COPY: &str = "smollm2/copy-of-smollm2.gguf";

fn swap_to(path: &str) -> LoadModelRequest {
    LoadModelRequest {
        model_id: "smollm2".into(),
        family: ModelFamily::Text as i32,
        path: path.into(),
        required: true,
        replace: true,
        drain_timeout_ms: 20_000,
        options: Some(sidecar_proto::v1::load_model_request::Options::Text(
            sidecar_proto::v1::TextOptions {
                context_size: 1024,
                threads: 1,
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    /// Per client, the version each answer of the swapped model named
    /// (`x-sidecar-model-version`), in call order; with whether the swap
    /// had returned when the call started.
    versions: std::sync::Mutex<Vec<Vec<(String, bool)>>>,
    swapped: AtomicBool,
}

impl Tally {
    /// Notes the version that answered a call of `client` to smollm2.
    fn version(&self, client: usize, md: &tonic::metadata::MetadataMap, after_swap: bool) {
        let v = md
            .get("x-sidecar-model-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut all = self.versions.lock().expect("lock");
        if all.len() <= client {
            all.resize(client + 1, Vec::new());
        }
        all[client].push((v, after_swap));
    }

    fn note<T>(&self, r: Result<T, tonic::Status>) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                let mut first = self.first_error.lock().expect("lock");
                first.get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_under_load_fails_no_call_and_drains_the_old_version() {
    let _serial = e2e::serial().await;
    let store = e2e::store();
    add_model(&store, MINILM);
    std::fs::copy(
        e2e::root().join("models").join(SMOLLM2),
        store.path().join(SMOLLM2_COPY),
    )
    .expect("copy the model");
    let config = format!(
        "{}{}",
        smollm2_config("preload = true\nrequired = true"),
        minilm_config("preload = true\nrequired = true")
    );
    let sc = Sidecar::start(store, &config);
    let before = sc.ready("smollm2").await;
    sc.ready("minilm").await;
    assert_eq!(before.version, 1);
    let old_pid = before.worker_pid;
    let supervisor = sc.child.id();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let (stop, tally, channel) = (stop.clone(), tally.clone(), sc.channel().await);
        clients.push(tokio::spawn(async move {
            let mut text = sidecar_proto::v1::text_service_client::TextServiceClient::new(channel);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                if c % 2 == 0 {
                    // Generate, streamed: every token stream must end with Done.
                    let mut req = tonic::Request::new(greedy(&format!("Count to {i}:"), 6));
                    req.metadata_mut()
                        .insert("cache-control", "no-cache".parse().expect("value"));
                    let after = tally.swapped.load(Ordering::SeqCst);
                    let r = match text.generate_stream(req).await {
                        Ok(s) => {
                            tally.version(c as usize, s.metadata(), after);
                            let mut s = s.into_inner();
                            let mut done = false;
                            let mut err = None;
                            loop {
                                match s.message().await {
                                    Ok(Some(m)) => {
                                        done |= matches!(
                                            m.msg,
                                            Some(sidecar_proto::v1::generate_stream_response::Msg::Done(_))
                                        );
                                    }
                                    Ok(None) => break,
                                    Err(e) => {
                                        err = Some(e);
                                        break;
                                    }
                                }
                            }
                            match (err, done) {
                                (Some(e), _) => Err(e),
                                (None, true) => Ok(()),
                                (None, false) => Err(tonic::Status::internal("stream ended without Done")),
                            }
                        }
                        Err(e) => Err(e),
                    };
                    tally.note(r);
                } else {
                    let mut req = tonic::Request::new(EmbedRequest {
                        model_id: "minilm".into(),
                        inputs: vec![format!("client {c} call {i}")],
                        ..Default::default()
                    });
                    req.metadata_mut()
                        .insert("cache-control", "no-cache".parse().expect("value"));
                    tally.note(text.embed(req).await);
                    // Generate too, on the swapped model, unary.
                    let mut req = tonic::Request::new(greedy(&format!("Say {i} {c}:"), 4));
                    req.metadata_mut()
                        .insert("cache-control", "no-cache".parse().expect("value"));
                    let after = tally.swapped.load(Ordering::SeqCst);
                    let r = text.generate(req).await;
                    if let Ok(r) = &r {
                        tally.version(c as usize, r.metadata(), after);
                    }
                    tally.note(r);
                }
            }
        }));
    }
    let mut not_ready = 0u32;
    let mut probe = |sc: &Sidecar| {
        if sc.admin_get("/readyz").0 != 200 {
            not_ready += 1;
        }
    };
    // Load before the swap.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(3) || tally.ok.load(Ordering::SeqCst) < 4 {
        probe(&sc);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            warm.elapsed() < Duration::from_secs(60),
            "no calls answered before the swap"
        );
    }
    let ok_before_swap = tally.ok.load(Ordering::SeqCst);

    let mut manage = sc.manage().await;
    let swap = tokio::spawn(async move { manage.load_model(swap_to(SMOLLM2_COPY)).await });
    while !swap.is_finished() {
        probe(&sc);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let swapped = swap.await.expect("task");
    tally.swapped.store(true, Ordering::SeqCst);
    let swapped = swapped
        .expect("the swap succeeds")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(swapped.version, 2, "{swapped:?}");
    assert_eq!(swapped.path, SMOLLM2_COPY);
    assert_eq!(swapped.state, ModelState::Ready as i32);
    assert_ne!(swapped.worker_pid, old_pid, "a new worker serves the id");
    // The old worker drains its calls, then goes.
    e2e::wait_gone(old_pid, Duration::from_secs(40), "the old version's worker").await;
    let ok_at_drain = tally.ok.load(Ordering::SeqCst);
    // Load after the swap, on the new version.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(2)
        || tally.ok.load(Ordering::SeqCst) < ok_at_drain + 4
    {
        probe(&sc);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            after.elapsed() < Duration::from_secs(60),
            "no calls answered after the swap"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    let (ok, failed) = (
        tally.ok.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
    );
    eprintln!(
        "swap under load: {ok} calls answered ({ok_before_swap} before the swap), {failed} failed; /readyz not 200 {not_ready} times"
    );
    assert_eq!(
        failed,
        0,
        "no call fails during a swap; first: {:?}",
        tally.first_error.lock().expect("lock")
    );
    assert_eq!(not_ready, 0, "/readyz is 200 throughout");
    // Every answer names one version; a client never goes back to the old
    // one, and calls made after the swap returned reach the new one.
    let versions = tally.versions.lock().expect("lock").clone();
    let mut counts = [0u64; 2];
    for (c, seen) in versions.iter().enumerate() {
        for w in seen.windows(2) {
            assert!(
                w[0].0 <= w[1].0,
                "client {c} went back from version {} to {}",
                w[0].0,
                w[1].0
            );
        }
        for (v, after) in seen {
            match v.as_str() {
                "1" => {
                    assert!(
                        !after,
                        "client {c}: a call made after the swap returned reached version 1"
                    );
                    counts[0] += 1;
                }
                "2" => counts[1] += 1,
                other => panic!("client {c}: an answer named version {other:?}"),
            }
        }
    }
    eprintln!("answers by version: 1: {}, 2: {}", counts[0], counts[1]);
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "both versions answered: {counts:?}"
    );
    let now = sc.model("smollm2").await;
    assert_eq!((now.version, now.worker_pid), (2, swapped.worker_pid));
    assert_eq!(now.swap, "", "no swap in progress after the drain");
    assert_eq!(sc.child.id(), supervisor);
    let (code, out, err) = sc.ctl(&["--json", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"version\":2"), "{out}");
}

#[tokio::test]
async fn a_swap_to_a_file_that_cannot_load_leaves_the_old_version_serving() {
    let _serial = e2e::serial().await;
    let store = e2e::store();
    // A header the supervisor refuses (`llama.block_count` past any model).
    std::fs::write(store.path().join("smollm2/broken.gguf"), impossible_gguf()).expect("write");
    // A header it accepts, then garbage llama.cpp refuses in the worker.
    let mut garbage = b"GGUF".to_vec();
    garbage.extend(3u32.to_le_bytes());
    garbage.extend(1u64.to_le_bytes());
    garbage.extend(0u64.to_le_bytes());
    garbage.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
    std::fs::write(store.path().join("smollm2/garbage.gguf"), garbage).expect("write");
    let sc = Sidecar::start(store, &smollm2_config("preload = true\nrequired = true"));
    let before = sc.ready("smollm2").await;
    let mut manage = sc.manage().await;
    let err = manage
        .load_model(swap_to("smollm2/broken.gguf"))
        .await
        .expect_err("the broken file does not load");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("version 2 did not load")
            && err.message().contains("version 1 keeps serving"),
        "{}",
        err.message()
    );
    let now = sc.model("smollm2").await;
    assert_eq!(
        (now.version, now.worker_pid, now.state, now.path.as_str()),
        (1, before.worker_pid, ModelState::Ready as i32, SMOLLM2)
    );
    assert_eq!(now.swap, "");
    sc.text()
        .await
        .generate(greedy("Hello", 3))
        .await
        .expect("the old version still serves");
    // The worker refuses the file: the swap ends at that first failed start
    // (no restarts while the old version serves).
    let started = Instant::now();
    let err = manage
        .load_model(swap_to("smollm2/garbage.gguf"))
        .await
        .expect_err("garbage does not load");
    // Version numbers are not given twice: 2 went to the swap above.
    assert!(
        err.message().contains("version 3 did not load")
            && err.message().contains("llama.cpp could not load")
            && err.message().contains("version 1 keeps serving"),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the swap gave up at the first failed start, not after the restart budget: {:?}",
        started.elapsed()
    );
    let now = sc.model("smollm2").await;
    assert_eq!(
        (now.version, now.worker_pid, now.state),
        (1, before.worker_pid, ModelState::Ready as i32)
    );
    sc.text()
        .await
        .generate(greedy("Hello again", 3))
        .await
        .expect("the old version still serves");
    // Options that need `replace` without it are refused.
    let err = manage
        .load_model(LoadModelRequest {
            replace: false,
            drain_timeout_ms: 5,
            ..swap_to(SMOLLM2_COPY)
        })
        .await
        .expect_err("drain without replace");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("set replace = true"),
        "{}",
        err.message()
    );
    let err = manage
        .load_model(LoadModelRequest {
            drain_timeout_ms: u32::MAX,
            ..swap_to("smollm2/broken.gguf")
        })
        .await
        .expect_err("too long a drain");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("drain_timeout_ms 4294967295 exceeds the limit of 3600000"),
        "{}",
        err.message()
    );
    // A swap to another family is refused.
    let err = manage
        .load_model(LoadModelRequest {
            family: ModelFamily::Lite as i32,
            options: None,
            ..swap_to("smollm2/broken.gguf")
        })
        .await
        .expect_err("family change");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("a swap keeps the family"),
        "{}",
        err.message()
    );
    assert_eq!(sc.admin_get("/readyz").0, 200);
}
