//! The worker's side of the protocol: hello, load, then continuous
//! batching: up to `parallel` sequences share one llama.cpp context; new
//! requests join between decode steps, finished ones leave at once; a
//! sequence whose reader is slow (no credit) pauses alone. Cancels and
//! deadlines are checked between steps; heartbeats come from a thread of
//! their own.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipc::{BlockingChannel, Flags, Kind, Outbox, Received};
use prost::Message;
use sidecar_proto::v1::{
    GenerateRequest, GenerateStreamResponse, GenerationDone, ModelFamily, TextOptions, TextTimings,
    TokenDelta, Usage, generate_stream_response,
};
use sidecar_proto::worker::{
    Heartbeat, Hello, Load, Loaded, WorkerRequest, WorkerResponse, worker_request, worker_response,
};

use crate::embed::{EmbedJob, Embedder};
use crate::engine::Engine;
use crate::error::{Code, WorkerError};
use crate::memory;
use crate::model::Model;
use crate::seq::{Event, Finished, Seq};

/// Heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Serves the channel until the supervisor goes away.
pub fn serve(chan: Arc<BlockingChannel>) -> Result<(), WorkerError> {
    send_hello(&chan)?;
    let counters = Arc::new(Counters::default());
    start_heartbeats(chan.clone(), counters.clone());
    let mut s = Scheduler {
        counters,
        chan: &chan,
        model: None,
        engine: None,
        embedder: None,
        embeds: VecDeque::new(),
        slots: Vec::new(),
        waiting: VecDeque::new(),
        outbox: Outbox::default(),
        names: ipc::RequestNames::default(),
    };
    loop {
        if !s.has_work() {
            match chan.recv() {
                Ok(frame) => s.on_frame(frame)?,
                Err(ipc::Error::PeerGone) => gone(),
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            match chan.try_recv() {
                Ok(Some(frame)) => s.on_frame(frame)?,
                Ok(None) => break,
                Err(ipc::Error::PeerGone) => gone(),
                Err(e) => return Err(e.into()),
            }
        }
        s.expire();
        s.admit();
        s.count();
        s.flush()?;
        let stepped = s.step()?;
        s.flush()?;
        if !stepped && s.has_work() {
            chan.wait(Some(Duration::from_millis(200)))?;
        }
    }
}

fn gone() -> ! {
    tracing::info!("supervisor gone; exiting");
    std::process::exit(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A request in a slot.
struct Active {
    id: u64,
    deadline_ms: i64,
    /// When the request reached the worker.
    arrived: Instant,
    /// How long it waited for a slot.
    queued: Duration,
    seq: Seq,
}

/// A generation waiting for a free slot.
struct Waiting {
    arrived: Instant,
    id: u64,
    deadline_ms: i64,
    req: GenerateRequest,
}

/// What the heartbeats report.
#[derive(Debug, Default)]
struct Counters {
    /// Requests running or waiting.
    in_flight: AtomicU32,
    /// Tokens sampled for requests since the worker started.
    tokens_generated: AtomicU64,
}

struct Scheduler<'c> {
    counters: Arc<Counters>,
    chan: &'c BlockingChannel,
    model: Option<Model>,
    /// The generation context, for a generation model.
    engine: Option<Engine>,
    /// The embedding context, for an embedding model.
    embedder: Option<Embedder>,
    /// Embed calls not finished yet, in arrival order.
    embeds: VecDeque<EmbedJob>,
    slots: Vec<Option<Active>>,
    waiting: VecDeque<Waiting>,
    outbox: Outbox,
    /// The callers' request ids, for log lines.
    names: ipc::RequestNames,
}

impl Scheduler<'_> {
    fn count(&self) {
        let n = self.slots.iter().flatten().count() + self.waiting.len() + self.embeds.len();
        self.counters.in_flight.store(n as u32, Ordering::Relaxed);
    }

    fn has_work(&self) -> bool {
        self.slots.iter().any(Option::is_some)
            || !self.waiting.is_empty()
            || !self.embeds.is_empty()
            || !self.outbox.is_empty()
    }

    fn queue(&mut self, id: u64, kind: Kind, flags: Flags, bytes: Vec<u8>) {
        self.outbox.push(id, kind, flags, bytes);
    }

    fn answer(&mut self, id: u64, body: worker_response::Body) {
        let r = WorkerResponse {
            body: Some(body),
            ..Default::default()
        };
        self.queue(id, Kind::Response, Flags::END, r.encode_to_vec());
    }

    fn fail(&mut self, id: u64, e: &WorkerError) {
        let request_id = self.names.get(id);
        tracing::info!(request = id, request_id, code = ?e.code, "request failed: {}", e.message);
        self.queue(
            id,
            Kind::Error,
            Flags::END,
            e.to_proto(false).encode_to_vec(),
        );
    }

    fn on_frame(&mut self, frame: Received<'_>) -> Result<(), WorkerError> {
        let (kind, id) = (frame.kind(), frame.request_id());
        match kind {
            Kind::Request => {
                let req = WorkerRequest::decode(frame.payload()).map_err(|e| {
                    WorkerError::new(Code::Internal, format!("undecodable request {id}: {e}"))
                });
                drop(frame);
                match req {
                    Ok(req) => {
                        tracing::debug!(request = id, request_id = %req.request_tag, "request");
                        self.names.insert(id, req.request_tag.clone());
                        self.on_request(id, req)
                    }
                    Err(e) => self.fail(id, &e),
                }
            }
            Kind::Cancel => {
                drop(frame);
                self.cancel(id);
            }
            _ => {}
        }
        Ok(())
    }

    fn on_request(&mut self, id: u64, req: WorkerRequest) {
        let deadline_ms = req.deadline_unix_ms;
        let result = match req.body {
            Some(worker_request::Body::Load(load)) => self.load(id, load),
            Some(worker_request::Body::Tokenize(t)) => match &self.model {
                Some(m) => {
                    let body = worker_response::Body::Tokenize(m.tokenize(&t));
                    self.answer(id, body);
                    Ok(())
                }
                None => Err(not_loaded()),
            },
            Some(worker_request::Body::Embed(req)) => match &self.embedder {
                Some(e) => e
                    .job(id, deadline_ms, &req)
                    .map(|job| self.embeds.push_back(job)),
                None => Err(self.not_served("Embed")),
            },
            Some(worker_request::Body::Generate(g)) => match &self.engine {
                Some(_) => {
                    self.waiting.push_back(Waiting {
                        arrived: Instant::now(),
                        id,
                        deadline_ms,
                        req: g,
                    });
                    Ok(())
                }
                None => Err(self.not_served("Generate")),
            },
            Some(worker_request::Body::Chat(c)) => match &self.engine {
                Some(e) => e.chat_prompt(&c.messages, &c.chat_template).map(|prompt| {
                    let req = GenerateRequest {
                        model_id: c.model_id,
                        prompt,
                        sampling: c.sampling,
                        max_tokens: c.max_tokens,
                        stop: c.stop,
                        constraint: c.constraint,
                        add_special: Some(true),
                    };
                    self.waiting.push_back(Waiting {
                        arrived: Instant::now(),
                        id,
                        deadline_ms,
                        req,
                    });
                }),
                None => Err(self.not_served("Chat")),
            },
            Some(_) => Err(WorkerError::new(
                Code::Unimplemented,
                "this call is not served by worker-text yet",
            )),
            None => Err(WorkerError::invalid("empty request")),
        };
        if let Err(e) = result {
            self.fail(id, &e);
        }
    }

    fn load(&mut self, id: u64, load: Load) -> Result<(), WorkerError> {
        let started = Instant::now();
        let options = match load.options {
            Some(sidecar_proto::worker::load::Options::Text(t)) => t,
            _ => TextOptions::default(),
        };
        tracing::info!(model = %load.model_id, path = %load.path, "loading");
        let model = Model::load(Path::new(&load.path), &options)?;
        let details = match options.embeddings {
            Some(false) if model.is_embedding() => {
                return Err(WorkerError::invalid(
                    "text.embeddings is false, but the model file is an embedding model (pooling, bidirectional attention): it cannot generate",
                ));
            }
            Some(true) if !model.is_embedding() => {
                return Err(WorkerError::invalid(
                    "text.embeddings is true, but the model file declares no pooling: it is a generation model",
                ));
            }
            _ if model.is_embedding() => {
                let mut embedder = Embedder::new(model, &options)?;
                warm_up_embed(&mut embedder)?;
                let details = embedder.details().clone();
                self.embedder = Some(embedder);
                details
            }
            _ => {
                let mut engine = Engine::new(model, &options)?;
                warm_up(&mut engine)?;
                let details = engine.details().clone();
                self.slots = (0..details.parallel).map(|_| None).collect();
                self.engine = Some(engine);
                details
            }
        };
        self.model = Some(model);
        self.answer(
            id,
            worker_response::Body::Loaded(Loaded {
                text: Some(details),
                lite: None,
                memory: Some(memory::report()),
                load_us: started.elapsed().as_micros() as u64,
            }),
        );
        Ok(())
    }

    /// Stops a request wherever it is and answers it as cancelled.
    fn cancel(&mut self, id: u64) {
        let cancelled = WorkerError::new(Code::Cancelled, "cancelled by the supervisor");
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|a| a.id == id))
        {
            self.release(i);
            self.outbox.forget(id);
            self.fail(id, &cancelled);
        } else if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            self.waiting.remove(i);
            self.fail(id, &cancelled);
        } else if let Some(i) = self.embeds.iter().position(|j| j.id == id) {
            self.embeds.remove(i);
            self.fail(id, &cancelled);
        }
    }

    fn release(&mut self, slot: usize) {
        self.slots[slot] = None;
        if let Some(e) = self.engine.as_mut() {
            e.free(slot);
        }
    }

    /// Ends requests whose deadline passed.
    fn expire(&mut self) {
        let now = now_ms();
        let late = |d: i64| d > 0 && now >= d;
        let expired = WorkerError::new(Code::DeadlineExceeded, "deadline passed in the worker");
        for i in 0..self.slots.len() {
            if let Some(a) = &self.slots[i]
                && late(a.deadline_ms)
            {
                let id = a.id;
                self.release(i);
                self.fail(id, &expired);
            }
        }
        let (keep, gone): (VecDeque<_>, VecDeque<_>) =
            self.waiting.drain(..).partition(|w| !late(w.deadline_ms));
        self.waiting = keep;
        for w in gone {
            self.fail(w.id, &expired);
        }
        let (keep, gone): (VecDeque<_>, VecDeque<_>) =
            self.embeds.drain(..).partition(|j| !late(j.deadline_ms));
        self.embeds = keep;
        for j in gone {
            self.fail(j.id, &expired);
        }
    }

    /// Starts waiting requests in free slots.
    fn admit(&mut self) {
        while let Some(slot) = self.slots.iter().position(Option::is_none) {
            let Some(w) = self.waiting.pop_front() else {
                return;
            };
            let Some(engine) = self.engine.as_mut() else {
                self.fail(w.id, &not_loaded());
                continue;
            };
            match engine.start(slot, &w.req) {
                Ok(seq) => {
                    self.slots[slot] = Some(Active {
                        id: w.id,
                        deadline_ms: w.deadline_ms,
                        arrived: w.arrived,
                        queued: w.arrived.elapsed(),
                        seq,
                    })
                }
                Err(e) => self.fail(w.id, &e),
            }
        }
    }

    /// Sends what waits; a request without credit stays paused.
    fn flush(&mut self) -> Result<(), WorkerError> {
        match self.outbox.flush(self.chan) {
            Err(ipc::Error::PeerGone) => gone(),
            other => other.map_err(WorkerError::from),
        }
    }

    /// One decode step for every sequence whose reader keeps up; true when
    /// one ran.
    fn step(&mut self) -> Result<bool, WorkerError> {
        if let Some(embedder) = self.embedder.as_mut() {
            if self.embeds.is_empty() {
                return Ok(false);
            }
            for (id, result) in embedder.step(&mut self.embeds) {
                match result {
                    Ok(r) => self.answer(id, worker_response::Body::Embed(r)),
                    Err(e) => self.fail(id, &e),
                }
            }
            return Ok(true);
        }
        let Some(engine) = self.engine.as_mut() else {
            return Ok(false);
        };
        let outbox = &self.outbox;
        let mut seqs: Vec<&mut Seq> = self
            .slots
            .iter_mut()
            .flatten()
            .filter(|a| !outbox.holds(a.id))
            .map(|a| &mut a.seq)
            .collect();
        if seqs.is_empty() {
            return Ok(false);
        }
        let sampled = engine.step(&mut seqs);
        if let Ok(n) = sampled {
            self.counters
                .tokens_generated
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Err(e) = sampled {
            // A failed decode fails every sequence in it.
            for i in 0..self.slots.len() {
                if let Some(a) = &self.slots[i] {
                    let id = a.id;
                    self.release(i);
                    self.fail(id, &e);
                }
            }
            return Ok(true);
        }
        for i in 0..self.slots.len() {
            let Some(a) = self.slots[i].as_mut() else {
                continue;
            };
            let (id, arrived, queued) = (a.id, a.arrived, a.queued);
            let events = std::mem::take(&mut a.seq.events);
            let done = a.seq.is_done();
            for ev in events {
                let (msg, flags) = match ev {
                    Event::Token(t) => (
                        generate_stream_response::Msg::Delta(TokenDelta {
                            text: t.text,
                            token_id: t.id,
                            index: t.index,
                        }),
                        Flags::NONE,
                    ),
                    Event::Done(f) => (
                        generate_stream_response::Msg::Done(final_message(f, arrived, queued)),
                        Flags::END,
                    ),
                };
                let body = WorkerResponse {
                    body: Some(worker_response::Body::Text(GenerateStreamResponse {
                        msg: Some(msg),
                    })),
                    ..Default::default()
                };
                self.queue(id, Kind::Response, flags, body.encode_to_vec());
            }
            if done {
                self.release(i);
            }
        }
        Ok(true)
    }
}

/// The final message; times count from the request's arrival in the
/// worker (the supervisor adds its own queueing).
fn final_message(f: Finished, arrived: Instant, queued: Duration) -> GenerationDone {
    let generation_s = f.generation.as_secs_f64();
    GenerationDone {
        finish_reason: f.reason as i32,
        usage: Some(Usage {
            prompt_tokens: f.prompt_tokens,
            completion_tokens: f.completion_tokens,
        }),
        timings: Some(TextTimings {
            queue_us: queued.as_micros() as u64,
            prompt_us: f.prompt.as_micros() as u64,
            generation_us: f.generation.as_micros() as u64,
            time_to_first_token_us: (queued + f.first_token).as_micros() as u64,
            total_us: arrived.elapsed().as_micros() as u64,
            tokens_per_second: if generation_s > 0.0 {
                f64::from(f.completion_tokens) / generation_s
            } else {
                0.0
            },
        }),
        seed: f.seed,
        text: f.tail,
    }
}

fn not_loaded() -> WorkerError {
    WorkerError::new(Code::FailedPrecondition, "no model loaded")
}

impl Scheduler<'_> {
    /// The error for a call this kind of model does not serve.
    fn not_served(&self, call: &str) -> WorkerError {
        match (&self.engine, &self.embedder) {
            (None, None) => not_loaded(),
            (_, Some(_)) => WorkerError::new(
                Code::FailedPrecondition,
                format!("{call} needs a generation model; this is an embedding model (use Embed)"),
            ),
            (Some(_), None) => WorkerError::new(
                Code::FailedPrecondition,
                format!("{call} needs an embedding model; this is a generation model"),
            ),
        }
    }
}

/// One short Embed, so that READY means the model has answered once.
fn warm_up_embed(embedder: &mut Embedder) -> Result<(), WorkerError> {
    let req = sidecar_proto::v1::EmbedRequest {
        inputs: vec!["Hello".into()],
        ..Default::default()
    };
    let mut jobs = VecDeque::from([embedder.job(0, 0, &req)?]);
    while !jobs.is_empty() {
        if let Some((_, Err(e))) = embedder.step(&mut jobs).pop() {
            return Err(e);
        }
    }
    Ok(())
}

/// One short generation, so that READY means the model has answered once.
fn warm_up(engine: &mut Engine) -> Result<(), WorkerError> {
    let req = GenerateRequest {
        prompt: "Hello".into(),
        max_tokens: 1,
        sampling: Some(sidecar_proto::v1::SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut seq = engine.start(0, &req)?;
    while !seq.is_done() {
        engine.step(&mut [&mut seq])?;
    }
    engine.free(0);
    Ok(())
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
            "batching".into(),
            "embed".into(),
        ],
        memory: Some(memory::report()),
    };
    chan.send(0, Kind::Hello, Flags::NONE, &hello.encode_to_vec())
        .map_err(WorkerError::from)
}

fn start_heartbeats(chan: Arc<BlockingChannel>, counters: Arc<Counters>) {
    let started = Instant::now();
    let beats = ipc::spawn_heartbeats(chan, HEARTBEAT, move |seq| {
        Heartbeat {
            seq,
            memory: Some(memory::report()),
            in_flight: counters.in_flight.load(Ordering::Relaxed),
            uptime_ms: started.elapsed().as_millis() as u64,
            tokens_generated: counters.tokens_generated.load(Ordering::Relaxed),
        }
        .encode_to_vec()
    });
    if let Err(e) = beats {
        tracing::error!("cannot start the heartbeat thread: {e}");
    }
}
