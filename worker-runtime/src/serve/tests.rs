//! The serve loop with a tiny family, over real in-process channels: the
//! standalone driver's (`ipc::loopback`), and one this test plays the
//! supervisor on (cancels, heartbeats, the supervisor going away).

use std::sync::mpsc;
use std::time::Duration;

use ipc::{AsyncChannel, ChannelConfig, Flags, Kind};
use prost::Message;
use sidecar_proto::v1::{
    GenerateRequest, GenerateStreamResponse, ModelFamily, TokenDelta, TokenizeRequest,
    TokenizeResponse, generate_stream_response,
};
use sidecar_proto::worker::{
    Heartbeat, Hello, Load, Loaded, WorkerRequest, WorkerResponse, worker_request, worker_response,
};

use super::*;
use crate::deadline;
use crate::standalone::{exchange, request, start, stream};
use crate::{Code, not_loaded};

/// Counts: Tokenize answers at once with the text's length; Generate
/// streams `max_tokens` deltas, one per step, pausing while its reader is
/// behind; a model file named "bad" does not load.
#[derive(Debug, Default)]
struct Counting {
    loaded: bool,
    /// (request id, deadline, tokens left).
    streams: Vec<(u64, i64, u32)>,
    tokens: u64,
}

impl Family for Counting {
    const FAMILY: ModelFamily = ModelFamily::Text;
    const VERSION: &'static str = "9.9.9";
    const CAPABILITIES: &'static [&'static str] = &["count", "stream"];

    fn load(&mut self, load: &Load) -> Result<Loaded, WorkerError> {
        if load.path == "bad" {
            return Err(WorkerError::invalid("bad: not a model"));
        }
        self.loaded = true;
        Ok(Loaded::default())
    }

    fn request(&mut self, cx: &mut Context, call: Call) -> Result<(), WorkerError> {
        if !self.loaded {
            return Err(not_loaded());
        }
        match call.body {
            worker_request::Body::Tokenize(t) if t.text == "fail" => {
                Err(WorkerError::invalid("text \"fail\" fails"))
            }
            worker_request::Body::Tokenize(t) => {
                let tokens = vec![t.text.len() as i32];
                // "big:N": an answer with a piece of N bytes.
                let pieces = match t.text.strip_prefix("big:") {
                    Some(n) => vec!["p".repeat(n.parse().unwrap_or(0))],
                    None => Vec::new(),
                };
                let r = TokenizeResponse { tokens, pieces };
                cx.answer(call.id, worker_response::Body::Tokenize(r));
                Ok(())
            }
            worker_request::Body::Generate(g) => {
                self.streams.push((call.id, call.deadline_ms, g.max_tokens));
                Ok(())
            }
            _ => Err(WorkerError::unimplemented("not counted")),
        }
    }

    fn cancel(&mut self, id: u64) -> bool {
        let before = self.streams.len();
        self.streams.retain(|s| s.0 != id);
        self.streams.len() < before
    }

    fn has_work(&self) -> bool {
        !self.streams.is_empty()
    }

    fn step(&mut self, cx: &mut Context) -> Result<bool, WorkerError> {
        let now = deadline::now_ms();
        let (late, on_time): (Vec<_>, Vec<_>) = self
            .streams
            .drain(..)
            .partition(|s| deadline::passed(s.1, now));
        self.streams = on_time;
        for (id, ..) in late {
            cx.fail(id, &deadline::exceeded());
        }
        let mut stepped = false;
        for (id, _, left) in &mut self.streams {
            if cx.holds(*id) {
                continue;
            }
            *left -= 1;
            self.tokens += 1;
            stepped = true;
            let delta = GenerateStreamResponse {
                msg: Some(generate_stream_response::Msg::Delta(TokenDelta {
                    index: *left,
                    ..Default::default()
                })),
            };
            let r = WorkerResponse {
                body: Some(worker_response::Body::Text(delta)),
                ..Default::default()
            };
            let flags = if *left == 0 { Flags::END } else { Flags::NONE };
            cx.respond(*id, &r, flags);
        }
        self.streams.retain(|s| s.2 > 0);
        Ok(stepped)
    }

    fn in_flight(&self) -> u32 {
        self.streams.len() as u32
    }

    fn tokens_generated(&self) -> u64 {
        self.tokens
    }
}

fn load(path: &str) -> Vec<u8> {
    request(worker_request::Body::Load(Load {
        path: path.into(),
        ..Default::default()
    }))
}

fn tokenize(text: &str) -> Vec<u8> {
    request(worker_request::Body::Tokenize(TokenizeRequest {
        text: text.into(),
        ..Default::default()
    }))
}

fn generate(tokens: u32, deadline_ms: i64) -> Vec<u8> {
    WorkerRequest {
        regions: Default::default(),
        request_tag: "gen".into(),
        cache_partition: String::new(),
        deadline_unix_ms: deadline_ms,
        body: Some(worker_request::Body::Generate(GenerateRequest {
            max_tokens: tokens,
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

#[test]
fn a_family_answers_fails_and_streams_over_the_loopback() {
    let s = start("worker-test", Counting::default).expect("session");
    let hello = Hello::decode(&s.hello[..]).expect("hello");
    assert_eq!(
        hello.protocol_version,
        sidecar_proto::WORKER_PROTOCOL_VERSION
    );
    assert_eq!(hello.family, ModelFamily::Text as i32);
    assert_eq!(hello.worker_version, "9.9.9");
    assert_eq!(hello.capabilities, ["count", "stream"]);
    assert_eq!(hello.pid, std::process::id());
    assert!(hello.memory.is_some_and(|m| m.rss_bytes > 0));

    assert_eq!(
        exchange(&s, &tokenize("x")).expect_err("not loaded"),
        "error (gRPC code 9): no model loaded"
    );
    assert_eq!(
        exchange(&s, &load("bad")).expect_err("refused"),
        "error (gRPC code 3): bad: not a model"
    );
    match exchange(&s, &load("good")).expect("loaded") {
        Some(worker_response::Body::Loaded(l)) => {
            assert!(
                l.memory.is_some_and(|m| m.rss_bytes > 0),
                "the runtime adds memory"
            );
        }
        other => panic!("{other:?}"),
    }
    match exchange(&s, &tokenize("four")).expect("answer") {
        Some(worker_response::Body::Tokenize(t)) => assert_eq!(t.tokens, [4]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        exchange(&s, &tokenize("fail")).expect_err("fails"),
        "error (gRPC code 3): text \"fail\" fails"
    );
    assert_eq!(
        exchange(&s, &request(worker_request::Body::VisionClose(true))).expect_err("other"),
        "error (gRPC code 12): not counted"
    );
    let empty = WorkerRequest::default().encode_to_vec();
    assert_eq!(
        exchange(&s, &empty).expect_err("empty"),
        "error (gRPC code 3): empty request"
    );
    let garbage = exchange(&s, &[0xff, 0xff]).expect_err("garbage");
    assert!(
        garbage.starts_with("error (gRPC code 3): malformed request"),
        "{garbage}"
    );

    let mut indices = Vec::new();
    stream(&s, &generate(3, 0), |body| match body {
        Some(worker_response::Body::Text(t)) => match t.msg {
            Some(generate_stream_response::Msg::Delta(d)) => indices.push(d.index),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    })
    .expect("stream");
    assert_eq!(indices, [2, 1, 0]);
    assert_eq!(
        exchange(&s, &generate(3, deadline::now_ms() - 1)).expect_err("late"),
        "error (gRPC code 4): deadline passed in the worker"
    );
}

/// A runtime for the test's side of the channel (the supervisor's).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits at most 10 s for `rx`.
fn within<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not happen within 10 s"))
}

#[test]
fn a_cancel_frees_a_paused_request_and_the_worker_ends_with_its_supervisor() {
    let config = ChannelConfig {
        credit_window: 4,
        ..ChannelConfig::with_ring_bytes(1 << 20)
    };
    let (supervisor_end, worker_end) = ipc::create(config).expect("channel");
    let worker = Arc::new(BlockingChannel::new(worker_end).expect("worker end"));
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let ended = serve_every(worker, Counting::default(), Duration::from_millis(20));
        let _ = done_tx.send(ended);
    });
    let rt = runtime();
    rt.block_on(async {
        let chan = AsyncChannel::new(supervisor_end).expect("supervisor end");
        let hello = chan.recv_control().await.expect("hello");
        assert_eq!(hello.kind, Kind::Hello);
        let mut loaded = chan.request(&load("good")).await.expect("load");
        let answer = loaded.next().await.expect("frame").expect("ok");
        assert_eq!(answer.kind, Kind::Response);

        // Endless, and never read: it pauses at its window of 4 frames.
        let mut endless = chan
            .request(&generate(u32::MAX, 0))
            .await
            .expect("generate");
        let beat = loop {
            let f = chan.recv_control().await.expect("heartbeat");
            assert_eq!(f.kind, Kind::Heartbeat);
            let beat = Heartbeat::decode(f.payload).expect("decode");
            if beat.tokens_generated >= 5 {
                break beat;
            }
        };
        // Four frames went out, the fifth waits in the outbox, and the
        // request generates no more while its reader is behind.
        assert_eq!(
            (beat.in_flight, beat.tokens_generated),
            (1, 5),
            "paused, in flight"
        );
        assert!(beat.memory.is_some_and(|m| m.rss_bytes > 0));

        endless
            .send(Kind::Cancel, Flags::NONE, &[])
            .await
            .expect("cancel");
        // Reading grants credit: read only once the worker has taken the
        // cancel (nothing in flight), or the credit could reach it first
        // and let the queued fifth frame out.
        loop {
            let f = chan.recv_control().await.expect("heartbeat");
            if Heartbeat::decode(f.payload).is_ok_and(|b| b.in_flight == 0) {
                break;
            }
        }
        let mut frames = Vec::new();
        while let Some(f) = endless.next().await {
            frames.push(f.expect("frame"));
        }
        let last = frames.pop().expect("the cancel's answer");
        assert_eq!(frames.len(), 4, "the frames sent before the cancel");
        assert_eq!(last.kind, Kind::Error);
        let e = sidecar_proto::worker::WorkerError::decode(last.payload).expect("error");
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::Cancelled as u32, "cancelled by the supervisor")
        );
        // The worker goes on serving.
        let mut next = chan.request(&tokenize("ab")).await.expect("tokenize");
        let f = next.next().await.expect("frame").expect("ok");
        let r = WorkerResponse::decode(f.payload).expect("answer");
        assert!(matches!(
            r.body,
            Some(worker_response::Body::Tokenize(t)) if t.tokens == [2]
        ));
    });
    drop(rt);
    let ended = within(&done, "the worker's end after its supervisor's");
    assert!(ended.is_ok(), "{ended:?}");
}

/// Answers Tokenize in place while it reads (as LITE answers Infer), fails
/// the text "fail", and notes for each frame whether the answer queued for
/// the frame before it was still waiting in the outbox.
#[derive(Debug, Default)]
struct InPlace {
    last: Option<u64>,
    held: Arc<std::sync::Mutex<Vec<bool>>>,
}

impl Family for InPlace {
    const FAMILY: ModelFamily = ModelFamily::Lite;
    const VERSION: &'static str = "0.0.1";
    const CAPABILITIES: &'static [&'static str] = &["in_place"];

    fn load(&mut self, _load: &Load) -> Result<Loaded, WorkerError> {
        Ok(Loaded::default())
    }

    fn read(&mut self, cx: &mut Context, frame: ipc::Received<'_>) -> Result<Read, WorkerError> {
        let id = frame.request_id();
        let req = crate::family::decode(frame.payload())?;
        if let Some(before) = self.last.replace(id) {
            self.held.lock().expect("held").push(cx.holds(before));
        }
        match req.body {
            Some(worker_request::Body::Tokenize(t)) if t.text == "fail" => {
                Err(WorkerError::invalid("fails"))
            }
            // Long work in units, as LITE's batches: stops at the first
            // unit boundary after a CANCEL or the deadline (10 s at most).
            Some(worker_request::Body::Tokenize(t)) if t.text == "wait" => {
                let start = std::time::Instant::now();
                while start.elapsed() < Duration::from_secs(10) {
                    cx.check_interrupted(id, req.deadline_unix_ms)?;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(WorkerError::internal("never interrupted"))
            }
            Some(worker_request::Body::Tokenize(t)) => {
                let r = WorkerResponse {
                    body: Some(worker_response::Body::Tokenize(TokenizeResponse {
                        tokens: vec![t.text.len() as i32],
                        pieces: Vec::new(),
                    })),
                    ..Default::default()
                };
                cx.chan()
                    .send(id, Kind::Response, Flags::END, &r.encode_to_vec())?;
                Ok(Read::Answered)
            }
            _ => Ok(Read::Request(req)),
        }
    }

    fn request(&mut self, _cx: &mut Context, _call: Call) -> Result<(), WorkerError> {
        Err(WorkerError::unimplemented("in place only"))
    }
}

#[test]
fn a_queued_answer_goes_out_before_the_next_frame_is_read() {
    let (supervisor_end, worker_end) =
        ipc::create(ChannelConfig::with_ring_bytes(1 << 20)).expect("channel");
    let worker = Arc::new(BlockingChannel::new(worker_end).expect("worker end"));
    let family = InPlace::default();
    let held = family.held.clone();
    let rt = runtime();
    rt.block_on(async {
        let chan = AsyncChannel::new(supervisor_end).expect("supervisor end");
        // Both frames wait in the ring before the worker starts: it reads
        // them in one turn.
        let mut failing = chan.request(&tokenize("fail")).await.expect("send");
        let mut in_place = chan.request(&tokenize("four")).await.expect("send");
        std::thread::spawn(move || serve_every(worker, family, Duration::from_secs(60)));
        assert_eq!(chan.recv_control().await.expect("hello").kind, Kind::Hello);
        let f = failing.next().await.expect("frame").expect("ok");
        assert_eq!(f.kind, Kind::Error);
        let f = in_place.next().await.expect("frame").expect("ok");
        assert_eq!(f.kind, Kind::Response);
    });
    assert_eq!(
        *held.lock().expect("held"),
        [false],
        "the first frame's error was sent before the second frame was read"
    );
}

/// Serves `family` on a channel of `ring_bytes` rings and runs `test` as
/// its supervisor; returns how the loop ended (it must end with the
/// supervisor, never before).
fn with_worker<F: Family + Send + 'static, Fut: std::future::Future<Output = ()>>(
    ring_bytes: usize,
    family: F,
    test: impl FnOnce(AsyncChannel) -> Fut,
) {
    let (supervisor_end, worker_end) =
        ipc::create(ChannelConfig::with_ring_bytes(ring_bytes)).expect("channel");
    let worker = Arc::new(BlockingChannel::new(worker_end).expect("worker end"));
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let ended = serve_every(worker, family, Duration::from_secs(60));
        let _ = done_tx.send(ended);
    });
    let rt = runtime();
    rt.block_on(async {
        let chan = AsyncChannel::new(supervisor_end).expect("supervisor end");
        assert_eq!(chan.recv_control().await.expect("hello").kind, Kind::Hello);
        test(chan).await;
    });
    assert!(
        done.try_recv().is_err(),
        "the worker's loop ended while its supervisor was there"
    );
    drop(rt);
    let ended = within(&done, "the worker's end after its supervisor's");
    assert!(ended.is_ok(), "{ended:?}");
}

/// The one frame of a unary answer: (kind, payload).
async fn one(chan: &AsyncChannel, payload: &[u8]) -> (Kind, Vec<u8>) {
    let mut s = chan.request(payload).await.expect("send");
    let f = s.next().await.expect("a frame").expect("ok");
    assert!(f.flags.is_end(), "one frame");
    (f.kind, f.payload.to_vec())
}

fn worker_error(kind: Kind, payload: &[u8]) -> sidecar_proto::worker::WorkerError {
    assert_eq!(kind, Kind::Error);
    sidecar_proto::worker::WorkerError::decode(payload).expect("an error")
}

#[test]
fn an_answer_too_large_for_the_ring_is_that_requests_error_and_the_worker_serves_on() {
    let ring = 64 << 10;
    with_worker(ring, Counting::default(), |chan| async move {
        let max = chan.max_payload();
        let (kind, _) = one(&chan, &load("good")).await;
        assert_eq!(kind, Kind::Response);
        for round in 0..3 {
            let (kind, payload) = one(&chan, &tokenize(&format!("big:{}", 2 * ring))).await;
            let e = worker_error(kind, &payload);
            assert_eq!(e.code, Code::ResourceExhausted as u32, "{e:?}");
            let size: usize = e
                .message
                .strip_prefix("answer of ")
                .and_then(|m| m.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("round {round}: {}", e.message));
            assert!(size > 2 * ring, "round {round}: {}", e.message);
            assert!(
                e.message.contains(&format!(
                    "exceeds the response ring's frame limit of {max} bytes"
                )),
                "round {round}: {}",
                e.message
            );
            // The next call is served by the same loop.
            let (kind, payload) = one(&chan, &tokenize("four")).await;
            assert_eq!(kind, Kind::Response);
            let r = WorkerResponse::decode(&payload[..]).expect("answer");
            assert!(matches!(
                r.body,
                Some(worker_response::Body::Tokenize(t)) if t.tokens == [4]
            ));
        }
        // Just under the limit still goes through.
        let (kind, _) = one(&chan, &tokenize(&format!("big:{}", max - 64))).await;
        assert_eq!(kind, Kind::Response);
    });
}

#[test]
fn long_work_sees_a_cancel_and_a_deadline_between_its_units() {
    with_worker(1 << 20, InPlace::default(), |chan| async move {
        let started = std::time::Instant::now();
        let mut waiting = chan.request(&tokenize("wait")).await.expect("send");
        waiting
            .send(Kind::Cancel, Flags::NONE, &[])
            .await
            .expect("cancel");
        let f = waiting.next().await.expect("frame").expect("ok");
        let e = worker_error(f.kind, &f.payload);
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::Cancelled as u32, "cancelled by the supervisor")
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped at a unit boundary, not after 10 s: {:?}",
            started.elapsed()
        );

        let started = std::time::Instant::now();
        let late = WorkerRequest {
            deadline_unix_ms: deadline::now_ms() + 100,
            body: Some(worker_request::Body::Tokenize(TokenizeRequest {
                text: "wait".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let (kind, payload) = one(&chan, &late.encode_to_vec()).await;
        let e = worker_error(kind, &payload);
        assert_eq!(e.code, Code::DeadlineExceeded as u32, "{e:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(90) && took < Duration::from_secs(5),
            "{took:?}"
        );
        // And the loop goes on serving.
        let (kind, _) = one(&chan, &tokenize("four")).await;
        assert_eq!(kind, Kind::Response);
    });
}
