//! The result cache, in-flight dedup and the re-send after a worker death
//! (`api::deterministic`), end to end: the real sidecar and workers,
//! MiniLM for Embed, BlazeFace for ProcessBatch. A call that never reached
//! the worker is proven by the worker's own count of requests
//! (`Heartbeat.requests`, shown as `ModelInfo.worker_requests`).

use std::time::{Duration, Instant};

use e2e::vision::{BLAZEFACE, astronaut, faces};
use e2e::{MINILM, QUICK_RESTARTS, Sidecar, add_model, minilm_config, serial, store};
use nix::sys::signal::Signal;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    EmbedRequest, EmbedResponse, FaceDetector, Image, LoadModelRequest, ModelFamily,
    ProcessBatchRequest, TextOptions, UnloadModelRequest, image, load_model_request,
};
use tonic::Code;

/// The worker's request count once it is stable over a heartbeat and more
/// (the figure comes from heartbeats, one a second).
async fn requests_now(sc: &Sidecar, id: &str) -> u64 {
    let start = Instant::now();
    loop {
        let a = sc.model(id).await.worker_requests;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let b = sc.model(id).await.worker_requests;
        if a == b && b > 0 {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{id}: worker_requests never settled ({a}, {b})"
        );
    }
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix} sentence number {i} about caching embeddings"))
        .collect()
}

async fn embed(
    sc: &Sidecar,
    inputs: &[String],
    no_cache: bool,
) -> Result<(EmbedResponse, usize, bool), tonic::Status> {
    let mut req = tonic::Request::new(EmbedRequest {
        model_id: "minilm".into(),
        inputs: inputs.to_vec(),
        ..Default::default()
    });
    if no_cache {
        req.metadata_mut()
            .insert("cache-control", "no-cache".parse().expect("value"));
    }
    let resp = sc.text().await.embed(req).await?;
    let hits = resp
        .metadata()
        .get("x-sidecar-cache-hits")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("x-sidecar-cache-hits");
    let retried = resp.metadata().get("x-sidecar-retried").is_some();
    Ok((resp.into_inner(), hits, retried))
}

/// Repeats `inputs` until the cache answers all of them (the model file's
/// digest is computed on the first call, in the background).
async fn warm(sc: &Sidecar, inputs: &[String]) -> EmbedResponse {
    let start = Instant::now();
    loop {
        let (r, hits, _) = embed(sc, inputs, false).await.expect("embed");
        if hits == inputs.len() {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cache never answered: {hits} hits of {}",
            inputs.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn bits(r: &EmbedResponse) -> Vec<Vec<u32>> {
    r.embeddings
        .iter()
        .map(|e| e.values.iter().map(|v| v.to_bits()).collect())
        .collect()
}

fn healthy(sc: &Sidecar) {
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    assert!(e2e::alive(sc.child.id()), "the supervisor lives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_answers_come_from_the_cache_per_text_until_no_cache_or_an_unload() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, MINILM);
    let sc = Sidecar::start(store, &minilm_config(""));
    sc.ready("minilm").await;
    let inputs = texts("first", 64);
    let first = warm(&sc, &inputs).await;
    assert_eq!(first.embeddings.len(), 64);

    // A second identical call never reaches the worker, bit for bit.
    let before = requests_now(&sc, "minilm").await;
    let stats = sc.model("minilm").await.cache.expect("cache stats");
    let (again, hits, _) = embed(&sc, &inputs, false).await.expect("embed");
    assert_eq!(hits, 64);
    assert_eq!(bits(&again), bits(&first), "the same vectors, bit for bit");
    assert_eq!(again.dimensions, 384);
    let tokens: u32 = again.embeddings.iter().map(|e| e.tokens).sum();
    assert_eq!(again.usage.expect("usage").prompt_tokens, tokens);
    assert_eq!(
        requests_now(&sc, "minilm").await,
        before,
        "never reached the worker"
    );

    // 63 cached texts and one new one: the worker computes one text.
    let mut mixed = inputs[..63].to_vec();
    mixed.push("a text the cache has never seen".into());
    let (m, hits, _) = embed(&sc, &mixed, false).await.expect("mixed");
    assert_eq!(hits, 63);
    assert_eq!(bits(&m)[..63], bits(&first)[..63], "merged in order");
    assert_eq!(m.embeddings.len(), 64);
    assert_eq!(m.embeddings[63].values.len(), 384);
    assert_eq!(requests_now(&sc, "minilm").await, before + 1, "one call");
    let after = sc.model("minilm").await.cache.expect("cache stats");
    assert_eq!(after.misses, stats.misses + 1, "one text missed: {after:?}");
    assert_eq!(after.hits, stats.hits + 64 + 63, "{after:?}");

    // no-cache: a fresh execution.
    let (fresh, hits, _) = embed(&sc, &inputs, true).await.expect("no-cache");
    assert_eq!(hits, 0);
    assert_eq!(fresh.embeddings.len(), 64);
    assert_eq!(
        requests_now(&sc, "minilm").await,
        before + 2,
        "no-cache reaches the worker"
    );

    // Unload, then load again: nothing is answered from the old entries.
    let mut manage = sc.manage().await;
    manage
        .unload_model(UnloadModelRequest {
            model_id: "minilm".into(),
            ..Default::default()
        })
        .await
        .expect("unload");
    manage
        .load_model(LoadModelRequest {
            model_id: "minilm".into(),
            family: ModelFamily::Text as i32,
            path: MINILM.into(),
            options: Some(load_model_request::Options::Text(TextOptions {
                threads: 1,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("load");
    sc.ready("minilm").await;
    let info = sc.model("minilm").await;
    let c = info.cache.expect("cache stats");
    assert_eq!((c.entries, c.bytes, c.hits), (0, 0, 0), "{c:?}");
    let loaded = requests_now(&sc, "minilm").await;
    let (r, hits, _) = embed(&sc, &inputs, false).await.expect("after the load");
    assert_eq!(hits, 0, "the unload dropped the answers");
    assert_eq!(r.embeddings.len(), 64);
    assert_eq!(requests_now(&sc, "minilm").await, loaded + 1);
    healthy(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_holds_under_ten_times_its_size_of_distinct_answers() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, MINILM);
    let bound = 256u64 << 10;
    let config = format!("[cache]\nmax_bytes = \"256KiB\"\n{}", minilm_config(""));
    let sc = Sidecar::start(store, &config);
    sc.ready("minilm").await;
    warm(&sc, &texts("warm", 4)).await;
    let rss = e2e::status_bytes(sc.child.id(), "VmRSS");
    let mut pushed = 0u64;
    let mut round = 0;
    while pushed < 10 * bound {
        let (r, _, _) = embed(&sc, &texts(&format!("round {round}"), 64), false)
            .await
            .expect("embed");
        pushed += r
            .embeddings
            .iter()
            .map(|e| 4 * e.values.len() as u64)
            .sum::<u64>();
        round += 1;
        let c = sc.model("minilm").await.cache.expect("cache stats");
        assert!(
            c.bytes <= bound,
            "round {round}: {} bytes held, bound {bound}",
            c.bytes
        );
    }
    let c = sc.model("minilm").await.cache.expect("cache stats");
    assert!(c.evictions > 0, "{c:?}");
    assert!(c.bytes > bound / 2, "it filled up: {c:?}");
    let metrics = sc.admin_get("/metrics").1;
    assert!(
        metrics.contains("sidecar_cache_evictions_total{model=\"minilm\"}"),
        "{metrics}"
    );
    // A flood of 64 identical calls at once (the followers one flight
    // takes: workers.queue_size; past it a call runs on its own through
    // the queue and its bounds): one execution or hits, the same answer
    // for all.
    let before = requests_now(&sc, "minilm").await;
    let flood = texts("flood", 16);
    let mut calls = Vec::new();
    for _ in 0..64 {
        let mut c = sc.text().await;
        let req = EmbedRequest {
            model_id: "minilm".into(),
            inputs: flood.clone(),
            ..Default::default()
        };
        calls.push(tokio::spawn(async move { c.embed(req).await }));
    }
    let mut answers = Vec::new();
    for c in calls {
        answers.push(bits(
            &c.await.expect("joined").expect("served").into_inner(),
        ));
    }
    assert!(answers.iter().all(|a| *a == answers[0]));
    assert_eq!(
        requests_now(&sc, "minilm").await,
        before + 1,
        "one execution"
    );
    let grown = e2e::status_bytes(sc.child.id(), "VmRSS").saturating_sub(rss);
    assert!(grown < 48 << 20, "the supervisor grew {} MiB", grown >> 20);
    // 10 000 inputs: refused by name before any lookup.
    let err = embed(&sc, &texts("many", 10_000), false)
        .await
        .expect_err("too many");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("10000") && err.message().contains("1024"),
        "{err:?}"
    );
    healthy(&sc);
}

fn big_images(n: usize) -> Vec<Image> {
    (0..n)
        .map(|k| Image {
            data: Some(image::Data::Raw(sidecar_proto::v1::RawImage {
                shm: Default::default(),
                width: 1920,
                height: 1080,
                format: sidecar_proto::v1::PixelFormat::Bgr8 as i32,
                stride: 0,
                data: (0..1920 * 1080 * 3)
                    .map(|i| ((i / 3 + k * 17) % 251) as u8)
                    .collect::<Vec<u8>>()
                    .into(),
            })),
        })
        .collect()
}

/// Holds the vision model's only in-flight slot (`max_in_flight = 1`)
/// with an open Process stream until the sender is dropped, so calls sent
/// meanwhile wait in its queue and overlap for sure.
async fn hold_slot(
    client: &VisionServiceClient<tonic::transport::Channel>,
) -> tokio::sync::mpsc::Sender<sidecar_proto::v1::ProcessRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(e2e::vision::config(
        sidecar_proto::v1::OverflowPolicy::Unspecified,
        2,
    ))
    .await
    .expect("queued");
    let mut c = client.clone();
    tokio::spawn(async move {
        if let Ok(r) = c
            .process(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            let mut s = r.into_inner();
            while let Ok(Some(_)) = s.message().await {}
        }
    });
    tx
}

/// Waits until `n` more calls wait for one in flight than `before`.
async fn followers(sc: &Sidecar, before: u64, n: u64) {
    sc.eventually("faces", Duration::from_secs(30), |m| {
        m.cache.as_ref().is_some_and(|c| c.shared >= before + n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_process_batches_in_flight_run_once_and_a_failure_goes_to_all() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, BLAZEFACE);
    let config = format!(
        "[workers]\nmax_in_flight = 1\n[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n"
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("faces").await;
    let client = VisionServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let batch = |images: Vec<Image>| ProcessBatchRequest {
        model_id: "faces".into(),
        task: Some(faces(FaceDetector::Unspecified)),
        images,
    };
    // The digest first: a call the cache answers.
    let start = Instant::now();
    loop {
        let r = client
            .clone()
            .process_batch(batch(vec![astronaut()]))
            .await
            .expect("astronaut");
        if r.metadata()
            .get("x-sidecar-cache-hits")
            .and_then(|v| v.to_str().ok())
            == Some("1")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cache never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = requests_now(&sc, "faces").await;
    let shared = sc.model("faces").await.cache.expect("stats").shared;
    let images = big_images(4);
    let slot = hold_slot(&client).await;
    sc.eventually("faces", Duration::from_secs(30), |m| m.in_flight == 1)
        .await;
    let mut calls = Vec::new();
    for _ in 0..16 {
        let mut c = client.clone();
        let req = batch(images.clone());
        calls.push(tokio::spawn(async move { c.process_batch(req).await }));
    }
    followers(&sc, shared, 15).await;
    // A waiter whose deadline passes leaves alone; the others still get
    // the shared answer. (tonic's client times out at the same deadline
    // and reports it first; the supervisor's own DEADLINE_EXCEEDED for a
    // waiter is `cache::flight`'s and the pipeline's unit tests'.)
    let mut hasty = tonic::Request::new(batch(images.clone()));
    hasty.set_timeout(Duration::from_millis(300));
    let err = client
        .clone()
        .process_batch(hasty)
        .await
        .expect_err("too short");
    assert!(
        err.code() == Code::DeadlineExceeded
            || (err.code() == Code::Cancelled && err.message() == "Timeout expired"),
        "{err:?}"
    );
    followers(&sc, shared, 16).await;
    drop(slot);
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.expect("joined").expect("served").into_inner());
    }
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "the same answer for all 16"
    );
    assert_eq!(answers[0].results.len(), 4);
    // The stream that held the slot, and the batch: two requests.
    assert_eq!(
        requests_now(&sc, "faces").await,
        before + 2,
        "16 identical calls ran once in the worker"
    );

    // A shared execution that fails fails for every waiter alike.
    let before = requests_now(&sc, "faces").await;
    let shared = sc.model("faces").await.cache.expect("stats").shared;
    let mut imgs = images.clone();
    imgs.push(Image {
        data: Some(image::Data::Encoded(
            vec![0x89, b'P', b'N', b'G', 1, 2, 3].into(),
        )),
    });
    let slot = hold_slot(&client).await;
    sc.eventually("faces", Duration::from_secs(30), |m| m.in_flight == 1)
        .await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut c = client.clone();
        let req = batch(imgs.clone());
        calls.push(tokio::spawn(async move { c.process_batch(req).await }));
    }
    followers(&sc, shared, 7).await;
    drop(slot);
    let mut errors = Vec::new();
    for c in calls {
        errors.push(c.await.expect("joined").expect_err("a bad image"));
    }
    // The worker's message, naming the image by its index in the client's
    // call (4: the first 4 come from the cache; the worker saw 1 image).
    let words = |e: &tonic::Status| {
        e.message()
            .split(" [request")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    for e in &errors {
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(words(e), words(&errors[0]));
        assert!(e.message().starts_with("images[4]: "), "{e:?}");
    }
    // Each error names its own call, never the leader's.
    let lines: std::collections::HashSet<String> = errors
        .iter()
        .map(|e| {
            e.message()
                .rsplit(" [request ")
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        lines.len(),
        errors.len(),
        "one request line each: {errors:?}"
    );
    assert_eq!(
        requests_now(&sc, "faces").await,
        before + 2,
        "one execution"
    );
    let info = sc.model("faces").await;
    assert_eq!(info.restarts, 0);
    healthy(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embed_whose_worker_is_killed_mid_call_is_sent_again_to_the_new_worker() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, MINILM);
    let config = format!("{QUICK_RESTARTS}{}", minilm_config(""));
    let sc = Sidecar::start(store, &config);
    let pid = sc.ready("minilm").await.worker_pid;
    // Long texts: a call that takes seconds on one thread.
    let inputs: Vec<String> = (0..96)
        .map(|i| {
            format!(
                "{i} {}",
                "the worker is killed while it embeds this text ".repeat(20)
            )
        })
        .collect();
    let call = {
        let sc_api = sc.api;
        let inputs = inputs.clone();
        tokio::spawn(async move {
            let mut c = sidecar_proto::v1::text_service_client::TextServiceClient::connect(
                format!("http://{sc_api}"),
            )
            .await
            .expect("connect");
            let mut req = tonic::Request::new(EmbedRequest {
                model_id: "minilm".into(),
                inputs,
                truncation: sidecar_proto::v1::Truncation::End as i32,
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(120));
            c.embed(req).await
        })
    };
    sc.eventually("minilm", Duration::from_secs(30), |m| m.in_flight == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    e2e::signal(pid, Signal::SIGKILL);
    let resp = call
        .await
        .expect("joined")
        .expect("served after the respawn");
    assert_eq!(
        resp.metadata()
            .get("x-sidecar-retried")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(resp.into_inner().embeddings.len(), 96);
    let info = sc.model("minilm").await;
    assert_ne!(info.worker_pid, pid, "a new worker");
    assert_eq!(info.retries, 1);
    assert_eq!(info.restarts, 1);
    assert!(!e2e::alive(pid));
    let metrics = sc.admin_get("/metrics").1;
    assert!(
        metrics.contains("sidecar_retries_total{model=\"minilm\"} 1"),
        "{metrics}"
    );
    healthy(&sc);
}
