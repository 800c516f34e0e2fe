//! Traffic against the real sidecar with SmolLM2: client classes (allowed
//! `x-client-id` values) with rate limits (RESOURCE_EXHAUSTED with
//! `retry-after-ms` and RetryInfo), the fair queue (deficit round robin
//! across classes, priority within one, bounds that name themselves),
//! capacity that follows the model (`parallel`, `max_in_flight`), and
//! hostile settings and metadata.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Sidecar, greedy, serial, smollm2_config, store};
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{LoadModelRequest, ModelFamily, ModelInfo, TokenizeRequest};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// `msg` as client `client` (an allowed `x-client-id`), at `priority`.
fn as_client<T>(msg: T, client: &str, priority: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("x-client-id", client.parse().expect("client id"));
    if let Some(p) = priority {
        req.metadata_mut()
            .insert("x-priority", p.parse().expect("priority"));
    }
    req
}

fn tokenize(text: &str) -> TokenizeRequest {
    TokenizeRequest {
        model_id: "smollm2".into(),
        text: text.into(),
        ..Default::default()
    }
}

async fn text(sc: &Sidecar) -> TextServiceClient<Channel> {
    sc.text().await
}

/// The supervisor is the same process, its probes answer 200, SmolLM2 is
/// READY and answers.
async fn still_serving(sc: &Sidecar, pid: u32) {
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid), "the supervisor is alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    let m = sc.model("smollm2").await;
    assert_eq!(m.state, sidecar_proto::v1::ModelState::Ready as i32);
    text(sc)
        .await
        .tokenize(tokenize("still here"))
        .await
        .expect("a call after the test");
}

/// The queue depth of `class` in GetModel.
fn class_depth(m: &ModelInfo, class: &str) -> u32 {
    m.traffic
        .iter()
        .find(|c| c.class == class)
        .unwrap_or_else(|| panic!("no class {class} in {:?}", m.traffic))
        .queue_depth
}

/// Acceptance: a client flooding at 20x its class's rate gets
/// RESOURCE_EXHAUSTED with `retry-after-ms` > 0 and a RetryInfo detail;
/// the other client's calls all succeed; the rejections are counted; a
/// call costing more than the burst is INVALID_ARGUMENT naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_class_is_rate_limited_and_the_other_is_served() {
    let _serial = serial().await;
    let config = format!(
        "[auth]\nclient_ids = [\"polite\", \"flood\"]\n\
         [traffic.classes.flood]\nmatch = [\"client:flood\"]\nrate = 5.0\nburst = 5\n\
         [traffic.classes.polite]\nmatch = [\"client:polite\"]\n{}",
        smollm2_config("")
    );
    let sc = Sidecar::start(store(), &config);
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let before = sc.metric("sidecar_rejected_total{model=\"smollm2\",reason=\"rate_limited\"}");

    // The flood: 100 calls a second (20x 5/s) for 2 s, each on its own.
    let flood_client = text(&sc).await;
    let started = Instant::now();
    let mut flood = Vec::new();
    for i in 0..200u64 {
        let mut c = flood_client.clone();
        flood.push(tokio::spawn(async move {
            // The same text every time: the result cache answers all but
            // the first, and each is still charged to the class (the
            // limit is on calls, whoever answers them).
            c.tokenize(as_client(tokenize("flood"), "flood", None))
                .await
                .map(|_| ())
        }));
        tokio::time::sleep_until((started + Duration::from_millis(10 * (i + 1))).into()).await;
        if i == 100 {
            // Meanwhile, the polite client: every call succeeds.
            let mut polite = text(&sc).await;
            for n in 0..20 {
                polite
                    .tokenize(as_client(tokenize(&format!("polite {n}")), "polite", None))
                    .await
                    .unwrap_or_else(|e| panic!("polite call {n}: {e:?}"));
            }
        }
    }
    let mut ok = 0u64;
    let mut limited = 0u64;
    for t in flood {
        match t.await.expect("task") {
            Ok(()) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains(
                        "client class \"flood\" is over its rate limit (traffic.classes.flood.rate = 5 per second, burst 5); this call costs 1; retry after"
                    ),
                    "{}",
                    s.message()
                );
                let ms: u64 = s
                    .metadata()
                    .get("retry-after-ms")
                    .expect("retry-after-ms metadata")
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("a number");
                assert!(ms > 0 && ms <= 1000, "retry-after-ms {ms}");
                let info = s.get_details_retry_info().expect("a RetryInfo detail");
                assert_eq!(info.retry_delay, Some(Duration::from_millis(ms)));
                limited += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // The bucket lets through its burst and 5 a second, no more.
    let most = 5 + (5.0 * secs).ceil() as u64 + 1;
    assert!(
        ok >= 5 && ok <= most,
        "{ok} flood calls passed in {secs:.1} s (at most {most})"
    );
    assert_eq!(ok + limited, 200);
    let after = sc.metric("sidecar_rejected_total{model=\"smollm2\",reason=\"rate_limited\"}");
    assert_eq!(after - before, limited, "every refusal is counted");

    // A call that costs more than the bucket holds can never pass.
    let err = text(&sc)
        .await
        .generate(as_client(greedy("Hi", 100), "flood", None))
        .await
        .expect_err("over the burst");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(
            "this call costs 101, more than client class \"flood\" may ever spend at once (traffic.classes.flood.burst = 5)"
        ),
        "{}",
        err.message()
    );
    still_serving(&sc, pid).await;
}

/// Acceptance: with one slot held, class A at its bound (3 waiting, the
/// model's 16 not reached) and one call of class B behind them, the next
/// call of A is refused naming A's bound, and once the slot frees B is
/// served within the first round (A's weight is 1): the order of service
/// is asserted, not the time. Within one class, `x-priority` orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_at_its_bound_cannot_push_another_back() {
    let _serial = serial().await;
    let config = format!(
        "[workers]\nqueue_size = 16\n[auth]\nclient_ids = [\"a\", \"b\", \"holder\"]\n\
         [traffic.classes.a]\nmatch = [\"client:a\"]\nqueue = 3\n\
         [traffic.classes.b]\nmatch = [\"client:b\"]\n{}",
        smollm2_config("max_in_flight = 1")
    );
    let sc = Sidecar::start(store(), &config);
    let m = sc.ready("smollm2").await;
    assert_eq!(m.max_in_flight, 1);
    let pid = sc.child.id();
    let client = text(&sc).await;

    // Runs one round: holds the slot, queues `calls` (label, client,
    // priority) one after another (each seen queued before the next), then
    // frees the slot; returns the labels in the order their calls ended.
    let round = |calls: Vec<(&'static str, &'static str, Option<&'static str>)>,
                 refused: Option<(&'static str, &'static str)>| {
        let client = client.clone();
        let sc = &sc;
        async move {
            let mut holder = client.clone();
            let mut held = holder
                .generate_stream(as_client(
                    greedy("Once upon a time, in a land far away,", 900),
                    "holder",
                    None,
                ))
                .await
                .expect("the holder's stream")
                .into_inner();
            held.message().await.expect("a token").expect("first token");
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for (n, (label, who, priority)) in calls.into_iter().enumerate() {
                let mut c = client.clone();
                let order = order.clone();
                tasks.push(tokio::spawn(async move {
                    // Each its own prompt: identical greedy calls would be
                    // answered by one execution (the dedup).
                    let r = c
                        .generate(as_client(
                            greedy(&format!("Hello {label}"), 4),
                            who,
                            priority,
                        ))
                        .await;
                    order.lock().expect("order").push(label);
                    r.map(|_| ())
                }));
                sc.eventually("smollm2", Duration::from_secs(20), |m| {
                    m.queue_depth as usize == n + 1
                })
                .await;
            }
            if let Some((who, want)) = refused {
                let e = client
                    .clone()
                    .generate(as_client(greedy("Hello", 4), who, None))
                    .await
                    .expect_err("over the class's bound");
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains(want), "{}", e.message());
            }
            let m = sc.model("smollm2").await;
            assert_eq!(m.in_flight, 1, "the holder runs, the rest waits: {m:?}");
            drop(held);
            for t in tasks {
                t.await.expect("task").expect("served");
            }
            order.lock().expect("order").clone()
        }
    };

    let order = round(
        vec![
            ("a1", "a", None),
            ("a2", "a", None),
            ("a3", "a", None),
            ("b1", "b", None),
        ],
        Some((
            "a",
            "client class \"a\" has 3 calls waiting, its limit (traffic.classes.a.queue",
        )),
    )
    .await;
    let m = sc.model("smollm2").await;
    assert_eq!(class_depth(&m, "a"), 0);
    let b = order.iter().position(|l| *l == "b1").expect("b1 served");
    assert!(
        b <= 1,
        "b1 is served within the first round (one call of a, then b): {order:?}"
    );
    let a: Vec<&str> = order
        .iter()
        .copied()
        .filter(|l| l.starts_with('a'))
        .collect();
    assert_eq!(a, ["a1", "a2", "a3"], "a in arrival order: {order:?}");

    let order = round(
        vec![
            ("low", "a", Some("low")),
            ("normal", "a", None),
            ("high", "a", Some("high")),
        ],
        None,
    )
    .await;
    assert_eq!(order, ["high", "normal", "low"], "priority within a class");

    let m = sc.model("smollm2").await;
    assert_eq!(
        (m.in_flight, m.queue_depth),
        (0, 0),
        "no slot leaked: {m:?}"
    );
    still_serving(&sc, pid).await;
}

/// Acceptance: a text model loaded with `parallel = 8` runs 8 calls at
/// once (GetModel says 8; 8 open GenerateStreams are all in flight, none
/// queued); `max_in_flight` in the config and in LoadModel overrides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_follows_the_models_parallel_slots() {
    let _serial = serial().await;
    let config = format!(
        "{}[[models]]\nid = \"capped\"\nfamily = \"text\"\npath = \"{}\"\npreload = false\nmax_in_flight = 2\ntext = {{ context_size = 256, threads = 1, parallel = 8 }}\n",
        smollm2_config("").replace(
            "context_size = 1024, threads = 1",
            "context_size = 512, threads = 1, parallel = 8"
        ),
        e2e::SMOLLM2
    );
    let sc = Sidecar::start(store(), &config);
    let m = sc.ready("smollm2").await;
    assert_eq!(m.max_in_flight, 8, "{m:?}");
    assert_eq!(m.text_details.as_ref().expect("details").parallel, 8);
    let pid = sc.child.id();

    // Eight streams open at once, each holding its call (nothing read
    // past the first token).
    let open = |model: &'static str, n: usize| {
        let sc = &sc;
        async move {
            let client = text(sc).await;
            let mut tasks = Vec::new();
            for i in 0..n {
                let mut c = client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut req = greedy(&format!("Count slowly to one hundred, part {i}."), 200);
                    req.model_id = model.into();
                    let mut s = c.generate_stream(req).await?.into_inner();
                    s.message().await?;
                    Ok::<_, tonic::Status>(s)
                }));
            }
            tasks
        }
    };
    let streams = open("smollm2", 8).await;
    let m = sc
        .eventually("smollm2", Duration::from_secs(60), |m| m.in_flight == 8)
        .await;
    assert_eq!(m.queue_depth, 0, "none queued: {m:?}");
    for t in streams {
        t.abort();
    }
    sc.eventually("smollm2", Duration::from_secs(60), |m| m.in_flight == 0)
        .await;

    // The config's override: 2 of 3 run, 1 waits.
    let capped = sc.model("capped").await;
    assert_eq!(capped.max_in_flight, 2, "{capped:?}");
    let streams = open("capped", 3).await;
    let m = sc
        .eventually("capped", Duration::from_secs(60), |m| {
            m.in_flight == 2 && m.queue_depth == 1
        })
        .await;
    assert_eq!(m.max_in_flight, 2);
    for t in streams {
        t.abort();
    }

    // LoadModel's override.
    let loaded = sc
        .manage()
        .await
        .load_model(LoadModelRequest {
            model_id: "loaded".into(),
            family: ModelFamily::Text as i32,
            path: e2e::SMOLLM2.into(),
            max_in_flight: 3,
            options: Some(sidecar_proto::v1::load_model_request::Options::Text(
                sidecar_proto::v1::TextOptions {
                    context_size: 256,
                    threads: 1,
                    parallel: 8,
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .await
        .expect("LoadModel")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(loaded.max_in_flight, 3, "{loaded:?}");
    let e = sc
        .manage()
        .await
        .load_model(LoadModelRequest {
            model_id: "toomany".into(),
            family: ModelFamily::Text as i32,
            path: e2e::SMOLLM2.into(),
            max_in_flight: 5000,
            ..Default::default()
        })
        .await
        .expect_err("over the limit");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("max_in_flight 5000 exceeds the limit of 1024"),
        "{}",
        e.message()
    );
    still_serving(&sc, pid).await;
}

/// Starts the sidecar on `config` expecting it to refuse it: (exit code,
/// stderr).
fn refused_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("sidecar.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodel_store = \"{}\"\ncontrol_socket = \"{}\"\n{config}",
            dir.path().display(),
            dir.path().join("control.sock").display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(e2e::binary("sidecar"))
        .arg("--config")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sidecar");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the sidecar started with {config:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    (status.code().unwrap_or(-1), err)
}

/// Hostile settings stop the start with a message naming the key, the
/// value (escaped, cut) and the limit; a malformed `x-priority` is
/// INVALID_ARGUMENT naming the value, and the sidecar serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_settings_and_priorities_get_clear_errors() {
    let _serial = serial().await;
    let long = "x".repeat(10_000);
    for (config, want) in [
        (
            "[traffic.classes.a]\nrate = 1e300\n".to_owned(),
            "traffic.classes.a.rate = 1e300 is outside 0.001..=1000000 cost units per second",
        ),
        (
            "[traffic.default]\nrate = -5.0\n".to_owned(),
            "traffic.default.rate = -5.0 is outside",
        ),
        (
            "[traffic.classes.a]\nburst = 10\n".to_owned(),
            "traffic.classes.a.burst = 10 without traffic.classes.a.rate",
        ),
        (
            format!("[traffic.classes.{long}]\nweight = 1\n"),
            "... (10000 bytes) must be 1..32 characters of [a-z0-9_-]",
        ),
        (
            "[traffic.classes.\"bad\\u0001name\"]\nweight = 1\n".to_owned(),
            "the class name \"bad\\u{1}name\" must be",
        ),
        (
            format!("[traffic.classes.a]\nmatch = [\"token:{long}\"]\n"),
            "(10006 bytes) is not \"token:NAME\", \"uid:N\", \"client:NAME\" or \"anonymous\"",
        ),
        (
            "[traffic.classes.a]\nmatch = [\"client:\\u001b[31mred\"]\n".to_owned(),
            "the rule \"client:\\u{1b}[31mred\" is not",
        ),
        (
            "[traffic.classes.a]\nweight = 0\n".to_owned(),
            "traffic.classes.a.weight = 0 is outside 1..=1000",
        ),
        (
            "[[models]]\nid = \"m\"\nfamily = \"text\"\npath = \"m.gguf\"\nmax_in_flight = 0\n"
                .to_owned(),
            "model \"m\": max_in_flight = 0 is outside 1..=1024",
        ),
    ] {
        let (code, err) = refused_config(&config);
        assert_eq!(code, 2, "{config:.80}: {err}");
        assert!(err.contains(want), "{config:.80}: want {want:?} in {err}");
        assert!(
            err.len() < 2000,
            "the message is bounded: {} bytes",
            err.len()
        );
        assert!(
            !err.contains('\u{1b}') && !err.contains('\u{1}'),
            "no control character: {err:?}"
        );
    }

    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let mut c = text(&sc).await;
    for (value, want) in [
        (
            &b"urgent"[..],
            "x-priority \"urgent\" is not a priority: high, normal or low",
        ),
        (b"-1", "x-priority \"-1\" is not a priority"),
        (
            b"\xff\xfe",
            "x-priority \"\u{fffd}\u{fffd}\" is not a priority",
        ),
    ] {
        let mut req = tonic::Request::new(tokenize("hi"));
        req.metadata_mut().insert(
            "x-priority",
            tonic::metadata::MetadataValue::try_from(value).expect("a value the client sends"),
        );
        let e = c.tokenize(req).await.expect_err("a malformed priority");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{}", e.message());
    }
    let mut req = tonic::Request::new(tokenize("hi"));
    req.metadata_mut()
        .insert("x-priority", "9".repeat(3000).parse().expect("value"));
    let e = c.tokenize(req).await.expect_err("a long priority");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("... (3000 bytes) is not a priority"),
        "{}",
        e.message()
    );
    assert!(e.message().len() < 300, "{}", e.message());
    still_serving(&sc, pid).await;
}

/// A vision stream is charged one unit a frame: with DROP_OLDEST, the
/// frames over its class's rate are answered `dropped` by the supervisor
/// (counted as rate-limited); with the default policy they are held and
/// all processed, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vision_stream_is_limited_frame_by_frame() {
    use e2e::vision::{BLAZEFACE, config as stream_config, raw_frame};
    use sidecar_proto::v1::vision_service_client::VisionServiceClient;
    use sidecar_proto::v1::{OverflowPolicy, PixelFormat, ProcessRequest};

    let _serial = serial().await;
    let store = store();
    e2e::add_model(&store, BLAZEFACE);
    let config = format!(
        "[auth]\nclient_ids = [\"cam\"]\n[traffic.classes.cams]\nmatch = [\"client:cam\"]\nrate = 5.0\nburst = 2\n[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n"
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("faces").await;
    let pid = sc.child.id();
    let mut client = VisionServiceClient::new(sc.channel().await);
    let frames = |policy, n: u64| -> Vec<ProcessRequest> {
        // The worker itself never drops: it may hold 64.
        std::iter::once(stream_config(policy, 64))
            .chain((0..n).map(|i| raw_frame(i, 64, 64, PixelFormat::Rgb8, vec![128; 64 * 64 * 3])))
            .collect()
    };
    // The stream's frames are charged to the caller's class: `cam`'s
    // (5 a second), not the default class's (no rate).
    let as_cam = |frames: Vec<ProcessRequest>| {
        let mut req = tonic::Request::new(tokio_stream::iter(frames));
        req.metadata_mut()
            .insert("x-client-id", "cam".parse().expect("client id"));
        req
    };
    let head = "sidecar_rejected_total{model=\"faces\",reason=\"rate_limited\"}";
    let before = sc.metric(head);

    // An anonymous camera (the default class, without a rate) is never
    // limited, however fast it sends.
    let mut s = client
        .process(tokio_stream::iter(frames(OverflowPolicy::DropOldest, 20)))
        .await
        .expect("open")
        .into_inner();
    let mut anonymous = 0;
    while let Some(r) = s.message().await.expect("ends cleanly") {
        assert!(!r.dropped, "anonymous frame {} dropped", r.frame_index);
        anonymous += 1;
    }
    assert_eq!(anonymous, 20, "every anonymous frame processed");
    assert_eq!(sc.metric(head), before, "no anonymous frame refused");

    let started = Instant::now();
    let mut s = client
        .process(as_cam(frames(OverflowPolicy::DropOldest, 20)))
        .await
        .expect("open")
        .into_inner();
    let (mut indices, mut dropped) = (Vec::new(), 0u64);
    while let Some(r) = s.message().await.expect("ends cleanly") {
        dropped += u64::from(r.dropped);
        indices.push(r.frame_index);
    }
    let secs = started.elapsed().as_secs_f64();
    indices.sort_unstable();
    assert_eq!(
        indices,
        (0..20).collect::<Vec<u64>>(),
        "every frame answered once"
    );
    let most = 2 + (5.0 * secs).ceil() as u64 + 1;
    assert!(
        20 - dropped <= most,
        "{} frames processed in {secs:.2} s (at most {most})",
        20 - dropped
    );
    assert_eq!(
        sc.metric(head) - before,
        dropped,
        "each dropped frame is counted"
    );

    // The default policy holds the frames over the rate: none is dropped.
    let mut s = client
        .process(as_cam(frames(OverflowPolicy::Unspecified, 6)))
        .await
        .expect("open")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(r) = s.message().await.expect("ends cleanly") {
        assert!(!r.dropped, "frame {} dropped", r.frame_index);
        seen.push(r.frame_index);
    }
    assert_eq!(
        seen,
        (0..6).collect::<Vec<u64>>(),
        "all processed, in order"
    );
    assert_eq!(sc.metric(head) - before, dropped, "holding is no refusal");
    assert_eq!(sc.child.id(), pid);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    assert_eq!(sc.model("faces").await.restarts, 0);
}
