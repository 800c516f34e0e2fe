//! Hostile calls against what the workers do (issue 15, attacks 3 and 7,
//! and answers too large for a ring): each gets a clear error with the
//! right code naming the limit; the supervisor keeps its pid, its probes
//! answer 200, the model stays READY on the same worker (never killed, no
//! restart), both processes' memory stays under a stated figure, and the
//! next normal call succeeds.

use std::time::{Duration, Instant};

use e2e::{
    MINILM, QUICK_RESTARTS, Sidecar, add_model, float_pattern, greedy, lite_config, minilm_config,
    serial, smollm2_config, store,
};
use sidecar_proto::v1::generate_stream_response::Msg;
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{
    DType, EmbedRequest, InferBatchRequest, InferRequest, InputSet, ModelState, Tensor,
    TokenizeRequest,
};
use tonic::Code;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;

/// Asserts `pid`'s peak and current resident memory are under `limit`.
fn memory_under(pid: u32, what: &str, limit: u64) {
    let (hwm, rss) = (
        e2e::status_bytes(pid, "VmHWM"),
        e2e::status_bytes(pid, "VmRSS"),
    );
    eprintln!("{what}: VmHWM {} MiB, VmRSS {} MiB", hwm / MIB, rss / MIB);
    assert!(
        hwm < limit && rss < limit,
        "{what}'s memory peaked at {} MiB (now {} MiB); the limit is {} MiB",
        hwm / MIB,
        rss / MIB,
        limit / MIB
    );
}

/// The supervisor is the same live process, its probes answer 200, and
/// model `id` is READY on the same worker, never restarted.
async fn unharmed(sc: &Sidecar, supervisor: u32, id: &str, worker: u32) {
    assert_eq!(sc.child.id(), supervisor);
    assert!(e2e::alive(supervisor), "the supervisor is alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    let (code, body) = sc.admin_get("/readyz");
    assert_eq!(code, 200, "{body}");
    let m = sc.model(id).await;
    assert_eq!(m.state, ModelState::Ready as i32, "{m:?}");
    assert_eq!(
        (m.worker_pid, m.restarts),
        (worker, 0),
        "the same worker, never restarted: {m:?}"
    );
    assert!(e2e::alive(worker), "the worker is alive");
}

/// 2 MB of text that tokenizes to about a million tokens: with its
/// pieces, an answer of several MB.
fn two_megabytes() -> String {
    "a b c d e f g h ".repeat(2 << 20 >> 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_of_2_mb_with_pieces_seven_times_while_a_stream_runs() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let worker = sc.ready("smollm2").await.worker_pid;
    let supervisor = sc.child.id();
    let text = sc.text().await;

    let mut streaming = text.clone();
    let stream = tokio::spawn(async move {
        let mut s = streaming
            .generate_stream(greedy("Once upon a time, in a land far away,", 120))
            .await
            .expect("stream")
            .into_inner();
        let mut deltas = 0u32;
        loop {
            match s.message().await.expect("the stream carries on") {
                Some(m) => match m.msg {
                    Some(Msg::Delta(_)) => deltas += 1,
                    Some(Msg::Done(d)) => return (deltas, d),
                    None => panic!("empty message"),
                },
                None => panic!("the stream ended without its final message"),
            }
        }
    });

    let big = two_megabytes();
    assert_eq!(big.len(), 2 << 20);
    let started = Instant::now();
    for round in 0..7 {
        let err = text
            .clone()
            .tokenize(TokenizeRequest {
                model_id: "smollm2".into(),
                text: big.clone(),
                with_pieces: true,
                ..Default::default()
            })
            .await
            .expect_err("an answer larger than the ring");
        assert_eq!(
            err.code(),
            Code::ResourceExhausted,
            "round {round}: {err:?}"
        );
        let m = err.message();
        assert!(
            m.contains("answer of ")
                && m.contains(" bytes exceeds the response ring's frame limit of 4194288 bytes"),
            "round {round}: {m}"
        );
        let m_worker = sc.model("smollm2").await;
        assert_eq!(
            m_worker.worker_pid, worker,
            "round {round}: the worker was not killed"
        );
    }
    let took = started.elapsed();
    eprintln!("7 Tokenize calls of 2 MB with pieces in {took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");

    let (deltas, done) = tokio::time::timeout(Duration::from_secs(120), stream)
        .await
        .expect("the stream ends")
        .expect("join");
    let usage = done.usage.expect("usage");
    assert!(usage.completion_tokens > 0, "{done:?}");
    assert_eq!(
        deltas, usage.completion_tokens,
        "every token came: {done:?}"
    );

    unharmed(&sc, supervisor, "smollm2", worker).await;
    memory_under(worker, "the SmolLM2 worker", 768 * MIB);
    memory_under(supervisor, "the supervisor", 512 * MIB);
    // The next normal call (pieces and all) succeeds.
    let ok = text
        .clone()
        .tokenize(TokenizeRequest {
            model_id: "smollm2".into(),
            text: "Hello world".into(),
            with_pieces: true,
            ..Default::default()
        })
        .await
        .expect("a normal Tokenize")
        .into_inner();
    assert!(
        !ok.tokens.is_empty() && ok.pieces.len() == ok.tokens.len(),
        "{ok:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_of_1024_inputs_whose_answer_exceeds_the_ring_is_refused_and_the_worker_serves_on() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, MINILM);
    // A 1 MiB response ring: 1024 MiniLM embeddings (384 floats each)
    // take about 1.6 MB.
    let config = format!("[workers]\nchannel_bytes = 1048576\n{}", minilm_config(""));
    let sc = Sidecar::start(store, &config);
    let worker = sc.ready("minilm").await.worker_pid;
    let supervisor = sc.child.id();
    let mut text = sc.text().await;
    let inputs: Vec<String> = (0..1024).map(|i| format!("sentence number {i}")).collect();
    let started = Instant::now();
    let err = text
        .embed(EmbedRequest {
            model_id: "minilm".into(),
            inputs: inputs.clone(),
            ..Default::default()
        })
        .await
        .expect_err("an answer larger than the ring");
    eprintln!("refused in {:?}: {}", started.elapsed(), err.message());
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let m = err.message();
    assert!(
        m.contains("inputs holds 1024 texts; their 384-dimension embeddings take at least ")
            && m.contains(
                "bytes, more than the response ring's frame limit of 1048560 bytes; send at most "
            ),
        "{m}"
    );
    // The number it names is true: that many inputs are answered.
    let fit: usize = m
        .rsplit("send at most ")
        .next()
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {m}"));
    assert!((600..1024).contains(&fit), "{fit}");
    unharmed(&sc, supervisor, "minilm", worker).await;
    let ok = text
        .embed(EmbedRequest {
            model_id: "minilm".into(),
            inputs: inputs[..fit].to_vec(),
            ..Default::default()
        })
        .await
        .expect("the count the error names is served")
        .into_inner();
    assert_eq!((ok.embeddings.len(), ok.dimensions), (fit, 384));
    unharmed(&sc, supervisor, "minilm", worker).await;
    memory_under(worker, "the MiniLM worker", 512 * MIB);
    memory_under(supervisor, "the supervisor", 512 * MIB);
}

/// The heaviest MediaPipe model: about 80 ms per invoke on one thread.
const POSE: &str = "mediapipe/pose_landmark_full.tflite";

async fn lite(sc: &Sidecar) -> LiteServiceClient<Channel> {
    LiteServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn pose_input() -> Tensor {
    Tensor {
        shm: Default::default(),
        name: "input_1".into(),
        dtype: DType::DtypeFloat32 as i32,
        shape: vec![1, 256, 256, 3],
        data: float_pattern(256 * 256 * 3).into(),
    }
}

/// An expensive batch: `sets` pose images (768 KiB each), one small output.
fn pose_batch(sets: usize) -> InferBatchRequest {
    let input = pose_input();
    InferBatchRequest {
        model_id: "pose".into(),
        sets: (0..sets)
            .map(|_| InputSet {
                output_placements: Default::default(),
                inputs: vec![input.clone()],
            })
            .collect(),
        outputs: vec!["Identity".into()],
    }
}

/// A sidecar serving the pose model. A call without a deadline of its own
/// gets 50 ms (the server's default for unary calls: a client's own 50 ms
/// timer would fire while it still uploads a 60 MiB batch, and tonic
/// reports that as CANCELLED without asking the server); a worker that
/// goes on 200 ms past a deadline's cancel is killed (so a batch that did
/// not stop at the next invoke would cost its worker).
fn pose_sidecar() -> Sidecar {
    let store = store();
    add_model(&store, POSE);
    let quick = QUICK_RESTARTS.replace("cancel_grace = 1", "cancel_grace = 0.2\nunary = 0.05");
    assert_ne!(quick, QUICK_RESTARTS);
    Sidecar::start(store, &format!("{quick}{}", lite_config("pose", POSE, "")))
}

/// Runs the expensive batch once, whole, and returns how long it took:
/// the precondition of the tests below is that it takes far longer than
/// a 50 ms deadline plus the 200 ms cancel grace.
async fn expensive(client: &mut LiteServiceClient<Channel>) -> Duration {
    let started = Instant::now();
    let full = client
        .infer_batch(long(pose_batch(SETS)))
        .await
        .expect("a full batch")
        .into_inner();
    let took = started.elapsed();
    assert_eq!(full.results.len(), SETS);
    eprintln!("a batch of {SETS} sets takes {took:?}");
    assert!(
        took > Duration::from_millis(900),
        "the batch is not expensive enough to prove anything: {took:?}"
    );
    took
}

/// A request with a deadline of 30 s.
fn long<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(Duration::from_secs(30));
    req
}

/// A single Infer that must succeed within `within`.
async fn infer_within(client: &mut LiteServiceClient<Channel>, within: Duration) {
    let mut req = tonic::Request::new(InferRequest {
        output_placements: Default::default(),
        model_id: "pose".into(),
        inputs: vec![pose_input()],
        outputs: vec!["Identity".into()],
    });
    req.set_timeout(within);
    let r = client.infer(req).await.expect("the next call succeeds");
    assert_eq!(r.into_inner().outputs[0].shape, [1, 195]);
}

/// Sets in the expensive batch: 80 × 768 KiB = 60 MiB (within the 64 MiB
/// message limit), over a second of work.
const SETS: usize = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_expensive_lite_batches_with_a_50_ms_deadline_never_cost_the_worker() {
    let _serial = serial().await;
    let sc = pose_sidecar();
    let worker = sc.ready("pose").await.worker_pid;
    let supervisor = sc.child.id();
    let mut client = lite(&sc).await;

    let full_time = expensive(&mut client).await;

    let cpu_before = e2e::cpu_seconds(worker).expect("worker cpu");
    let started = Instant::now();
    for round in 0..7 {
        // The server's 50 ms default deadline applies.
        let err = client
            .infer_batch(pose_batch(SETS))
            .await
            .expect_err("past its deadline");
        assert_eq!(err.code(), Code::DeadlineExceeded, "round {round}: {err:?}");
        assert!(
            err.message().contains("deadline passed"),
            "round {round}: {}",
            err.message()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // The worker stopped each batch at the next invoke: the next call is
    // served at once (it would wait behind a running batch otherwise), and
    // the seven batches together cost the worker less than two full ones.
    infer_within(&mut client, Duration::from_secs(1)).await;
    let spent = e2e::cpu_seconds(worker).expect("worker cpu") - cpu_before;
    eprintln!("7 batches past their deadline cost the worker {spent:.2} s of CPU");
    assert!(
        spent < 2.0 * full_time.as_secs_f64(),
        "{spent:.2} s of CPU for 7 batches past a 50 ms deadline (one full batch: {full_time:?})"
    );
    unharmed(&sc, supervisor, "pose", worker).await;
    memory_under(worker, "the LITE worker", 512 * MIB);
    memory_under(supervisor, "the supervisor", 1024 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lite_batch_whose_client_goes_away_stops_at_the_next_invoke() {
    let _serial = serial().await;
    let sc = pose_sidecar();
    let worker = sc.ready("pose").await.worker_pid;
    let supervisor = sc.child.id();
    let mut client = lite(&sc).await;

    let full_time = expensive(&mut client).await;
    // A deadline of 30 s: only the cancel stops it.
    let cpu_before = e2e::cpu_seconds(worker).expect("worker cpu");
    let mut going = client.clone();
    let call = tokio::spawn(async move { going.infer_batch(long(pose_batch(SETS))).await });
    // Wait (bounded) until the worker is busy with it.
    let started = Instant::now();
    while e2e::cpu_seconds(worker).expect("worker cpu") - cpu_before < 0.15 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the worker never started the batch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.abort();
    assert!(call.await.expect_err("aborted").is_cancelled());
    // The batch's remaining invokes take most of a second; the next call
    // is served within one invoke of the cancel.
    let started = Instant::now();
    infer_within(&mut client, full_time / 3).await;
    eprintln!("served {:?} after the client went away", started.elapsed());
    unharmed(&sc, supervisor, "pose", worker).await;
    memory_under(worker, "the LITE worker", 512 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lite_batch_whose_answer_exceeds_the_ring_is_refused_before_any_work() {
    let _serial = serial().await;
    let sc = pose_sidecar();
    let worker = sc.ready("pose").await.worker_pid;
    let supervisor = sc.child.id();
    let mut client = lite(&sc).await;
    // Every output of 80 sets: about 900 KB each, 72 MB in all, past the
    // 64 MiB ring; the request itself (60 MiB) fits.
    let mut req = pose_batch(SETS);
    req.outputs.clear();
    let cpu_before = e2e::cpu_seconds(worker).expect("worker cpu");
    let err = client
        .infer_batch(long(req))
        .await
        .expect_err("too large an answer");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let m = err.message();
    assert!(
        m.contains("(80 sets of about ")
            && m.contains("bytes of outputs) exceeds the response ring's frame limit of ")
            && m.contains("send at most "),
        "{m}"
    );
    let spent = e2e::cpu_seconds(worker).expect("worker cpu") - cpu_before;
    assert!(
        spent < 2.0,
        "refused before the 80 invokes: {spent:.2} s of CPU"
    );
    infer_within(&mut client, Duration::from_secs(5)).await;
    unharmed(&sc, supervisor, "pose", worker).await;
    memory_under(worker, "the LITE worker", 768 * MIB);
}
