//! The worker's side of the protocol: hello, load, then requests one at a
//! time, with cancel and deadlines checked between tokens; heartbeats from
//! a thread of their own.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipc::{BlockingChannel, Flags, Kind};
use prost::Message;
use sidecar_proto::v1::{
    GenerateStreamResponse, GenerationDone, ModelFamily, TextOptions, TextTimings, TokenDelta,
    Usage, generate_stream_response,
};
use sidecar_proto::worker::{
    Heartbeat, Hello, Loaded, WorkerRequest, WorkerResponse, worker_request, worker_response,
};

use crate::engine::{Engine, Next, Token};
use crate::error::{Code, WorkerError};
use crate::memory;

/// Heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A request taken off the channel.
struct Incoming {
    id: u64,
    req: WorkerRequest,
}

/// Serves the channel until the supervisor goes away.
pub fn serve(chan: Arc<BlockingChannel>) -> Result<(), WorkerError> {
    send_hello(&chan)?;
    start_heartbeats(chan.clone());
    let mut backlog: VecDeque<Incoming> = VecDeque::new();
    let mut engine: Option<Engine> = None;
    loop {
        let next = match backlog.pop_front() {
            Some(n) => n,
            None => match receive(&chan)? {
                Some(n) => n,
                None => continue,
            },
        };
        let id = next.id;
        let result = handle(&chan, &mut engine, next, &mut backlog);
        if let Err(e) = result {
            tracing::info!(request = id, code = ?e.code, "request failed: {}", e.message);
            send(
                &chan,
                id,
                Kind::Error,
                Flags::END,
                &e.to_proto(false).encode_to_vec(),
            )?;
        }
    }
}

fn send(
    chan: &BlockingChannel,
    id: u64,
    kind: Kind,
    flags: Flags,
    payload: &[u8],
) -> Result<(), WorkerError> {
    chan.send(id, kind, flags, payload)
        .map_err(WorkerError::from)
}

fn send_hello(chan: &BlockingChannel) -> Result<(), WorkerError> {
    let hello = Hello {
        protocol_version: sidecar_proto::WORKER_PROTOCOL_VERSION,
        family: ModelFamily::Text as i32,
        worker_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        capabilities: vec![
            "generate".into(),
            "stream".into(),
            "chat".into(),
            "tokenize".into(),
            "grammar".into(),
        ],
        memory: Some(memory::report()),
    };
    send(chan, 0, Kind::Hello, Flags::NONE, &hello.encode_to_vec())
}

fn start_heartbeats(chan: Arc<BlockingChannel>) {
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            for seq in 1u64.. {
                std::thread::sleep(HEARTBEAT);
                let beat = Heartbeat {
                    seq,
                    memory: Some(memory::report()),
                    in_flight: 0,
                    uptime_ms: started.elapsed().as_millis() as u64,
                };
                match chan.try_send(0, Kind::Heartbeat, Flags::NONE, &beat.encode_to_vec()) {
                    Ok(()) | Err(ipc::Error::WouldBlock(_)) => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the heartbeat thread: {e}");
    }
}

/// Waits for the next request; `None` for frames that need no answer.
fn receive(chan: &BlockingChannel) -> Result<Option<Incoming>, WorkerError> {
    let frame = match chan.recv() {
        Ok(f) => f,
        Err(ipc::Error::PeerGone) => {
            tracing::info!("supervisor gone; exiting");
            std::process::exit(0);
        }
        Err(e) => return Err(e.into()),
    };
    decode(frame.kind(), frame.request_id(), frame.payload())
}

fn decode(kind: Kind, id: u64, payload: &[u8]) -> Result<Option<Incoming>, WorkerError> {
    if kind != Kind::Request {
        // A cancel for a request that is already answered, or a stray frame.
        return Ok(None);
    }
    let req = WorkerRequest::decode(payload)
        .map_err(|e| WorkerError::new(Code::Internal, format!("undecodable request {id}: {e}")))?;
    Ok(Some(Incoming { id, req }))
}

fn handle(
    chan: &BlockingChannel,
    engine: &mut Option<Engine>,
    incoming: Incoming,
    backlog: &mut VecDeque<Incoming>,
) -> Result<(), WorkerError> {
    let Incoming { id, req } = incoming;
    match req.body {
        Some(worker_request::Body::Load(load)) => {
            let started = Instant::now();
            let options = match load.options {
                Some(sidecar_proto::worker::load::Options::Text(t)) => t,
                _ => TextOptions::default(),
            };
            tracing::info!(model = %load.model_id, path = %load.path, "loading");
            let mut loaded = Engine::load(Path::new(&load.path), &options)?;
            warm_up(&mut loaded)?;
            let details = loaded.details().clone();
            *engine = Some(loaded);
            let answer = WorkerResponse {
                body: Some(worker_response::Body::Loaded(Loaded {
                    text: Some(details),
                    lite: None,
                    memory: Some(memory::report()),
                    load_us: started.elapsed().as_micros() as u64,
                })),
            };
            send(
                chan,
                id,
                Kind::Response,
                Flags::END,
                &answer.encode_to_vec(),
            )
        }
        Some(worker_request::Body::Generate(g)) => {
            let engine = loaded(engine)?;
            generate(chan, engine, id, req.deadline_unix_ms, &g, backlog)
        }
        Some(worker_request::Body::Chat(c)) => {
            let engine = loaded(engine)?;
            let g = sidecar_proto::v1::GenerateRequest {
                model_id: c.model_id,
                prompt: engine.chat_prompt(&c.messages, &c.chat_template)?,
                sampling: c.sampling,
                max_tokens: c.max_tokens,
                stop: c.stop,
                constraint: c.constraint,
                add_special: Some(true),
            };
            generate(chan, engine, id, req.deadline_unix_ms, &g, backlog)
        }
        Some(worker_request::Body::Tokenize(t)) => {
            let answer = WorkerResponse {
                body: Some(worker_response::Body::Tokenize(
                    loaded(engine)?.tokenize(&t),
                )),
            };
            send(
                chan,
                id,
                Kind::Response,
                Flags::END,
                &answer.encode_to_vec(),
            )
        }
        Some(_) => Err(WorkerError::new(
            Code::Unimplemented,
            "this call is not served by worker-text yet",
        )),
        None => Err(WorkerError::invalid("empty request")),
    }
}

fn loaded(engine: &mut Option<Engine>) -> Result<&mut Engine, WorkerError> {
    engine
        .as_mut()
        .ok_or_else(|| WorkerError::new(Code::FailedPrecondition, "no model loaded"))
}

/// One short generation, so that READY means the model has answered once.
fn warm_up(engine: &mut Engine) -> Result<(), WorkerError> {
    let req = sidecar_proto::v1::GenerateRequest {
        prompt: "Hello".into(),
        max_tokens: 1,
        sampling: Some(sidecar_proto::v1::SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    engine.generate(&req, |_| Next::Continue).map(|_| ())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn generate(
    chan: &BlockingChannel,
    engine: &mut Engine,
    id: u64,
    deadline_ms: i64,
    req: &sidecar_proto::v1::GenerateRequest,
    backlog: &mut VecDeque<Incoming>,
) -> Result<(), WorkerError> {
    let started = Instant::now();
    let mut send_error = None;
    let on_token = |t: Token| -> Next {
        let msg = GenerateStreamResponse {
            msg: Some(generate_stream_response::Msg::Delta(TokenDelta {
                text: t.text,
                token_id: t.id,
                index: t.index,
            })),
        };
        let body = WorkerResponse {
            body: Some(worker_response::Body::Text(msg)),
        };
        if let Err(e) = chan.send(id, Kind::Response, Flags::NONE, &body.encode_to_vec()) {
            send_error = Some(e);
            return Next::Abort(Code::Internal, "channel closed".into());
        }
        // Between tokens: a cancel for this request, or new requests.
        loop {
            match chan.try_recv() {
                Ok(Some(frame)) => {
                    if frame.kind() == Kind::Cancel {
                        if frame.request_id() == id {
                            return Next::Abort(
                                Code::Cancelled,
                                "cancelled by the supervisor".into(),
                            );
                        }
                        // A queued request whose caller went away: answer
                        // it as cancelled without running it.
                        let other = frame.request_id();
                        drop(frame);
                        if backlog.iter().any(|n| n.id == other) {
                            backlog.retain(|n| n.id != other);
                            let e = WorkerError::new(Code::Cancelled, "cancelled before it ran");
                            let _ = chan.send(
                                other,
                                Kind::Error,
                                Flags::END,
                                &e.to_proto(false).encode_to_vec(),
                            );
                        }
                        continue;
                    }
                    if let Ok(Some(n)) = decode(frame.kind(), frame.request_id(), frame.payload()) {
                        backlog.push_back(n);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    send_error = Some(e);
                    return Next::Abort(Code::Internal, "channel closed".into());
                }
            }
        }
        if deadline_ms > 0 && now_ms() >= deadline_ms {
            return Next::Abort(
                Code::DeadlineExceeded,
                "deadline passed during generation".into(),
            );
        }
        Next::Continue
    };
    let finished = engine.generate(req, on_token);
    if let Some(e) = send_error {
        return Err(e.into());
    }
    let f = finished?;
    let generation_s = f.generation.as_secs_f64();
    let done = GenerationDone {
        finish_reason: f.reason as i32,
        usage: Some(Usage {
            prompt_tokens: f.prompt_tokens,
            completion_tokens: f.completion_tokens,
        }),
        timings: Some(TextTimings {
            queue_us: 0,
            prompt_us: f.prompt.as_micros() as u64,
            generation_us: f.generation.as_micros() as u64,
            time_to_first_token_us: f.first_token.as_micros() as u64,
            total_us: started.elapsed().as_micros() as u64,
            tokens_per_second: if generation_s > 0.0 {
                f64::from(f.completion_tokens) / generation_s
            } else {
                0.0
            },
        }),
        seed: f.seed,
        text: f.tail,
    };
    let body = WorkerResponse {
        body: Some(worker_response::Body::Text(GenerateStreamResponse {
            msg: Some(generate_stream_response::Msg::Done(done)),
        })),
    };
    send(chan, id, Kind::Response, Flags::END, &body.encode_to_vec())
}
