//! Generation end to end: a tonic client streams from the real sidecar,
//! worker-text and SmolLM2; bad input gets the right code and changes
//! nothing; a full queue refuses at once.

use std::time::{Duration, Instant};

use e2e::{Sidecar, greedy, serial, smollm2_config, store};
use sidecar_proto::v1::{
    FinishReason, GenerateRequest, LoadModelRequest, ModelFamily, SamplingParams,
    generate_stream_response::Msg,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_streams_token_by_token_and_matches_the_unary_call() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let mut text = sc.text().await;

    let mut stream = text
        .generate_stream(greedy("The capital of France is", 24))
        .await
        .expect("stream starts")
        .into_inner();
    let mut deltas = Vec::new();
    let mut done = None;
    while let Some(msg) = stream.message().await.expect("no error") {
        match msg.msg.expect("message") {
            Msg::Delta(d) => {
                assert!(done.is_none(), "token after the final message");
                assert_eq!(d.index as usize, deltas.len(), "indices count up");
                deltas.push(d);
            }
            Msg::Done(d) => done = Some(d),
        }
    }
    let done = done.expect("a final message");
    let usage = done.usage.expect("usage");
    let streamed: String = deltas
        .iter()
        .map(|d| d.text.as_str())
        .chain([done.text.as_str()])
        .collect();
    assert!(!streamed.trim().is_empty(), "generated text");
    assert!(usage.prompt_tokens >= 5, "{usage:?}");
    assert_eq!(
        usage.completion_tokens as usize,
        deltas.len(),
        "one message per token"
    );
    assert!(usage.completion_tokens <= 24);
    assert!(
        [FinishReason::Length as i32, FinishReason::Eos as i32].contains(&done.finish_reason),
        "{done:?}"
    );
    let timings = done.timings.expect("timings");
    assert!(
        timings.time_to_first_token_us > 0 && timings.tokens_per_second > 0.0,
        "{timings:?}"
    );

    // Greedy decoding: the unary call gives the same text.
    let whole = text
        .generate(greedy("The capital of France is", 24))
        .await
        .expect("generate")
        .into_inner();
    assert_eq!(whole.text, streamed);
    assert_eq!(
        whole.usage.expect("usage").completion_tokens,
        usage.completion_tokens
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let _serial = serial().await;
    let store = store();
    std::fs::write(
        store.path().join("not-a-model.gguf"),
        b"this is not a GGUF file",
    )
    .expect("write");
    let sc = Sidecar::start(store, &smollm2_config(""));
    let before = sc.ready("smollm2").await;
    let mut text = sc.text().await;

    let cases: Vec<(GenerateRequest, Code, &str)> = vec![
        (
            GenerateRequest {
                model_id: "nope".into(),
                ..greedy("x", 1)
            },
            Code::NotFound,
            "nope",
        ),
        (greedy("", 1), Code::InvalidArgument, "prompt"),
        (
            greedy("x", 100_000),
            Code::InvalidArgument,
            "max_tokens 100000",
        ),
        (
            GenerateRequest {
                sampling: Some(SamplingParams {
                    temperature: Some(7.0),
                    ..Default::default()
                }),
                ..greedy("x", 1)
            },
            Code::InvalidArgument,
            "sampling.temperature",
        ),
        (
            GenerateRequest {
                sampling: Some(SamplingParams {
                    top_p: Some(0.0),
                    ..Default::default()
                }),
                ..greedy("x", 1)
            },
            Code::InvalidArgument,
            "sampling.top_p",
        ),
        (
            GenerateRequest {
                stop: vec![String::new()],
                ..greedy("x", 1)
            },
            Code::InvalidArgument,
            "stop[0]",
        ),
    ];
    for (req, code, needle) in cases {
        let err = text.generate(req.clone()).await.expect_err("refused");
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{:?} lacks {needle:?}",
            err.message()
        );
    }

    let mut models = sc.manage().await;
    let load = |id: &str, path: &str| LoadModelRequest {
        model_id: id.into(),
        family: ModelFamily::Text as i32,
        path: path.into(),
        ..Default::default()
    };
    for (req, code) in [
        (load("evil", "../etc/passwd"), Code::InvalidArgument),
        (load("evil", "/etc/passwd"), Code::InvalidArgument),
        (load("Bad Id", "x"), Code::InvalidArgument),
        (load("missing", "missing.gguf"), Code::NotFound),
        (
            LoadModelRequest {
                family: 0,
                ..load("nofamily", "not-a-model.gguf")
            },
            Code::InvalidArgument,
        ),
    ] {
        let err = models.load_model(req.clone()).await.expect_err("refused");
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
    }
    let err = models
        .load_model(load("junk", "not-a-model.gguf"))
        .await
        .expect_err("not a GGUF file");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("not a GGUF model file"),
        "{}",
        err.message()
    );

    // Nothing above disturbed the model that works.
    let ok = text
        .generate(greedy("Hello", 4))
        .await
        .expect("still serves")
        .into_inner();
    assert!(ok.usage.expect("usage").completion_tokens > 0);
    let after = sc.model("smollm2").await;
    assert_eq!((after.worker_pid, after.restarts), (before.worker_pid, 0));
    assert_eq!(sc.admin_get("/livez").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let _serial = serial().await;
    let config = format!(
        "[workers]\nqueue_size = 1\nmax_in_flight = 1\n{}",
        smollm2_config("")
    );
    let sc = Sidecar::start(store(), &config);
    let worker = sc.ready("smollm2").await.worker_pid;
    let text = sc.text().await;

    // The worker is stopped, so the first call holds the one slot, the
    // second waits in the queue, and the third finds the queue full.
    e2e::signal(worker, nix::sys::signal::Signal::SIGSTOP);
    let mut running = text.clone();
    let first = tokio::spawn(async move { running.generate(greedy("Count to ten:", 8)).await });
    sc.eventually("smollm2", Duration::from_secs(10), |m| m.in_flight == 1)
        .await;
    let mut waiting = text.clone();
    let second = tokio::spawn(async move { waiting.generate(greedy("Hi", 2)).await });
    sc.eventually("smollm2", Duration::from_secs(10), |m| m.queue_depth == 1)
        .await;
    let started = Instant::now();
    // Not the waiting call's prompt: an identical greedy call would wait
    // for its answer (the dedup) instead of taking a place.
    let err = text
        .clone()
        .generate(greedy("Hi there", 2))
        .await
        .expect_err("queue full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("queue full"), "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    e2e::signal(worker, nix::sys::signal::Signal::SIGCONT);
    first.await.expect("join").expect("first call completes");
    second.await.expect("join").expect("second call completes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_repeat_and_stop_strings_are_never_emitted() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let sampled = |seed: u64| GenerateRequest {
        model_id: "smollm2".into(),
        prompt: "Once upon a time".into(),
        max_tokens: 32,
        sampling: Some(SamplingParams {
            temperature: Some(0.9),
            seed: Some(seed),
            ..Default::default()
        }),
        ..Default::default()
    };
    let a = text.generate(sampled(42)).await.expect("a").into_inner();
    let b = text.generate(sampled(42)).await.expect("b").into_inner();
    assert_eq!(
        (a.text.as_str(), a.seed),
        (b.text.as_str(), 42),
        "same seed, same output"
    );

    // Greedy output, then stop at a piece of it that spans tokens.
    let free = text
        .generate(greedy("The capital of France is", 24))
        .await
        .expect("free")
        .into_inner();
    let words: Vec<&str> = free.text.split_whitespace().collect();
    assert!(words.len() >= 3, "{:?}", free.text);
    let stop = format!("{} {}", words[1], words[2]);
    let at = free.text.find(&stop).expect("stop string occurs");
    let stopped = text
        .generate(GenerateRequest {
            stop: vec![stop.clone()],
            ..greedy("The capital of France is", 24)
        })
        .await
        .expect("stopped")
        .into_inner();
    assert_eq!(stopped.finish_reason, FinishReason::Stop as i32);
    assert_eq!(
        stopped.text,
        free.text[..at],
        "everything before the stop string, nothing of it"
    );
    assert!(!stopped.text.contains(&stop));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_batch_and_match_their_output_alone() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let ready = sc.ready("smollm2").await;
    assert_eq!(ready.text_details.expect("details").parallel, 4);
    let text = sc.text().await;
    let prompts = [
        "The capital of France is",
        "Water boils at",
        "The largest planet in the solar system is",
        "def fibonacci(n):",
    ];
    let mut alone = Vec::new();
    for p in prompts {
        alone.push(
            text.clone()
                .generate(greedy(p, 20))
                .await
                .expect("alone")
                .into_inner()
                .text,
        );
    }
    // All four at once share the worker's batch; a fifth waits for a slot.
    let mut tasks = Vec::new();
    for p in prompts.iter().chain(["Once upon a time"].iter()) {
        let mut t = text.clone();
        let req = greedy(p, 20);
        tasks.push(tokio::spawn(async move { t.generate(req).await }));
    }
    let mut together = Vec::new();
    let mut timings = Vec::new();
    for t in tasks {
        let r = t.await.expect("join").expect("batched call").into_inner();
        timings.push(r.timings.expect("timings"));
        together.push(r.text);
    }
    assert_eq!(
        &together[..4],
        &alone[..],
        "greedy output is the same alone or batched"
    );
    assert!(!together[4].is_empty());
    // Each call's timings add up (how long a queued call waited is proved
    // in `a_queued_call_reports_the_wait_it_had`).
    for t in &timings {
        assert!(t.total_us >= t.queue_us + t.prompt_us, "{t:?}");
        assert!(t.time_to_first_token_us >= t.queue_us, "{t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_reports_the_wait_it_had() {
    let _serial = serial().await;
    // One slot, held by a stream whose reader reads nothing more: the
    // worker pauses it (no credit), and a second call waits for the slot
    // until the stream is dropped. The supervisor lets 2 calls in flight
    // (`max_in_flight`; by default it follows `parallel`), so the second
    // waits in the worker, whose wait this test measures.
    let config =
        smollm2_config("max_in_flight = 2").replace("threads = 1 }", "threads = 1, parallel = 1 }");
    let sc = Sidecar::start(store(), &config);
    sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let mut holder = text
        .generate_stream(greedy("Once upon a time, in a land far away,", 1000))
        .await
        .expect("stream")
        .into_inner();
    holder
        .message()
        .await
        .expect("first token")
        .expect("message");
    let mut queued = text.clone();
    let sent = Instant::now();
    let call = tokio::spawn(async move { queued.generate(greedy("Hello", 2)).await });
    // Both calls are in the worker (the supervisor sent the second into
    // its channel): from here on the second waits for the slot.
    sc.eventually("smollm2", Duration::from_secs(10), |m| m.in_flight == 2)
        .await;
    let seen = Instant::now();
    // Hold the slot a known time, then free it.
    let hold = Duration::from_millis(800);
    while seen.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(holder);
    let freed = Instant::now();
    let r = call
        .await
        .expect("join")
        .expect("the queued call runs once the slot is free")
        .into_inner();
    let wall = sent.elapsed();
    let t = r.timings.expect("timings");
    let waited = freed.duration_since(seen);
    eprintln!("queued call: {t:?}; held {waited:?}, wall {wall:?}");
    // It waited at least from when it was seen in the worker until the
    // slot was freed (less one loop turn of the worker: it reads a new
    // frame within milliseconds of its arrival), and never longer than
    // the call took.
    assert!(
        t.queue_us as u128 >= waited.as_micros() - 50_000,
        "queue_us {} < the {waited:?} the slot was held",
        t.queue_us
    );
    assert!(t.queue_us as u128 <= wall.as_micros(), "{t:?} > {wall:?}");
    assert!(t.total_us >= t.queue_us + t.prompt_us, "{t:?}");
    assert!(t.time_to_first_token_us >= t.queue_us, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_its_slot_at_once() {
    let _serial = serial().await;
    // One slot: the next call can only run once the abandoned one is gone.
    let config = smollm2_config("").replace("threads = 1 }", "threads = 1, parallel = 1 }");
    let sc = Sidecar::start(store(), &format!("[workers]\nmax_in_flight = 1\n{config}"));
    sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let mut stream = text
        .generate_stream(greedy("Once upon a time, in a land far away,", 1000))
        .await
        .expect("stream")
        .into_inner();
    stream
        .message()
        .await
        .expect("first token")
        .expect("message");
    drop(stream);
    // 1000 tokens would take several seconds; the slot must be free at once.
    let mut req = tonic::Request::new(greedy("Hello", 2));
    req.set_timeout(Duration::from_secs(2));
    text.generate(req)
        .await
        .expect("served right after the cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sequence_stops_within_one_step_and_the_others_carry_on() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let long = |prompt: &str| greedy(prompt, 200);
    let mut a = text
        .generate_stream(long("Count from 1 to 1000: 1, 2, 3, 4,"))
        .await
        .expect("stream a")
        .into_inner();
    let mut b = text
        .generate_stream(long("List the even numbers: 2, 4, 6, 8,"))
        .await
        .expect("stream b")
        .into_inner();
    // Read A as fast as it comes and cancel it after a few tokens.
    let seen = 8;
    for _ in 0..seen {
        a.message().await.expect("a token").expect("message");
    }
    drop(a);
    // B carries on to its end.
    let mut deltas = 0;
    let done = loop {
        match b.message().await.expect("b carries on").and_then(|m| m.msg) {
            Some(Msg::Delta(_)) => deltas += 1,
            Some(Msg::Done(d)) => break d,
            None => panic!("B ended without its final message"),
        }
    };
    let b_tokens = done.usage.expect("usage").completion_tokens;
    assert_eq!(b_tokens, 200, "B ran to its length: {done:?}");
    assert_eq!(deltas, 200);

    // The worker's own count of sampled tokens, once it has settled: B's
    // 200 plus what A got before the cancel reached the worker.
    // Heartbeats report it every second: wait (at most 20 s) until it has
    // reached B's and A's read tokens and then stayed the same for 1.5 s.
    let limit = Instant::now() + Duration::from_secs(20);
    let (mut last, mut since) = (u64::MAX, Instant::now());
    let total = loop {
        let now = sc.model("smollm2").await.tokens_generated;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now >= u64::from(b_tokens) + seen
            && since.elapsed() >= Duration::from_millis(1500)
        {
            break now;
        }
        assert!(
            Instant::now() < limit,
            "the worker's token count did not settle: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a_generated = total - u64::from(b_tokens);
    eprintln!("A: {seen} tokens read, {a_generated} generated");
    assert!(a_generated >= seen, "{a_generated} < {seen}");
    // Typically 2 more than read: one token already on its way to the
    // client when it went away, and the decode step that was running when
    // the cancel arrived (the worker checks between steps). One more step
    // of slack for a loaded machine; without the cancel it would be 200.
    assert!(
        a_generated <= seen + 3,
        "A generated {} tokens after the client read {seen} and went away",
        a_generated
    );
}
