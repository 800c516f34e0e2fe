//! The TEXT family in the runtime's serve loop: continuous batching: up
//! to `parallel` sequences share one llama.cpp context; new requests join
//! between decode steps, finished ones leave at once; a sequence whose
//! reader is slow (no credit) pauses alone. Cancels and deadlines are
//! checked between steps. Hello, heartbeats and the loop itself are
//! `worker_runtime`'s.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use ipc::Flags;
use sidecar_proto::v1::{
    GenerateRequest, GenerateStreamResponse, GenerationDone, ModelFamily, TextOptions, TextTimings,
    TokenDelta, Usage, generate_stream_response,
};
use sidecar_proto::worker::{Load, Loaded, WorkerResponse, worker_request, worker_response};
use worker_runtime::{Call, Context, Family, WorkerError, deadline, not_loaded};

use crate::embed::{EmbedJob, Embedder};
use crate::engine::Engine;
use crate::model::Model;
use crate::seq::{Event, Finished, Seq};

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
    /// The caller's partition (prompt-prefix reuse stays within it).
    partition: String,
    req: GenerateRequest,
}

/// A TEXT worker: its model, and the requests in its slots and queues.
#[derive(Default)]
pub struct Text {
    model: Option<Model>,
    /// The generation context, for a generation model.
    engine: Option<Engine>,
    /// The embedding context, for an embedding model.
    embedder: Option<Embedder>,
    /// Embed calls not finished yet, in arrival order.
    embeds: VecDeque<EmbedJob>,
    slots: Vec<Option<Active>>,
    waiting: VecDeque<Waiting>,
    /// Tokens sampled for requests since the worker started.
    tokens_generated: u64,
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Text")
            .field("loaded", &self.model.is_some())
            .field("slots", &self.slots.len())
            .field("waiting", &self.waiting.len())
            .field("embeds", &self.embeds.len())
            .finish_non_exhaustive()
    }
}

impl Family for Text {
    const FAMILY: ModelFamily = ModelFamily::Text;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [&'static str] = &[
        "generate", "stream", "chat", "tokenize", "grammar", "batching", "embed",
    ];

    fn load(&mut self, load: &Load) -> Result<Loaded, WorkerError> {
        let options = match &load.options {
            Some(sidecar_proto::worker::load::Options::Text(t)) => t.clone(),
            _ => TextOptions::default(),
        };
        let name = worker_runtime::model_name(load);
        tracing::info!(model = %load.model_id, path = %name, opened = %load.path, "loading");
        let model = Model::load(Path::new(&load.path), name, &options)?;
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
            _ if model.is_embedding() && options.prompt_cache == Some(true) => {
                return Err(WorkerError::invalid(
                    "text.prompt_cache is true, but the model file is an embedding model: prompt-prefix reuse applies to generation models",
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
        Ok(Loaded {
            text: Some(details),
            ..Default::default()
        })
    }

    fn request(&mut self, cx: &mut Context, call: Call) -> Result<(), WorkerError> {
        let (id, deadline_ms, arrived) = (call.id, call.deadline_ms, call.arrived);
        let partition = call.partition;
        let waiting = |req| Waiting {
            arrived,
            id,
            deadline_ms,
            partition,
            req,
        };
        match call.body {
            worker_request::Body::Tokenize(t) => {
                let model = self.model.as_ref().ok_or_else(not_loaded)?;
                cx.answer(id, worker_response::Body::Tokenize(model.tokenize(&t)));
                Ok(())
            }
            worker_request::Body::Embed(req) => match &self.embedder {
                Some(e) => e
                    .job(id, deadline_ms, &req, cx.max_answer_bytes())
                    .map(|job| self.embeds.push_back(job)),
                None => Err(self.not_served("Embed")),
            },
            worker_request::Body::Generate(req) => match &self.engine {
                Some(_) => {
                    self.waiting.push_back(waiting(req));
                    Ok(())
                }
                None => Err(self.not_served("Generate")),
            },
            worker_request::Body::Chat(c) => match &self.engine {
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
                    self.waiting.push_back(waiting(req));
                }),
                None => Err(self.not_served("Chat")),
            },
            _ => Err(WorkerError::unimplemented(
                "this call is not served by worker-text yet",
            )),
        }
    }

    /// Stops a request wherever it is.
    fn cancel(&mut self, id: u64) -> bool {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|a| a.id == id))
        {
            // Cancelled between steps: the slot's cache holds exactly
            // what the sequence decoded, which later calls may reuse.
            self.release(i);
        } else if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            self.waiting.remove(i);
        } else if let Some(i) = self.embeds.iter().position(|j| j.id == id) {
            self.embeds.remove(i);
        } else {
            return false;
        }
        true
    }

    fn has_work(&self) -> bool {
        self.slots.iter().any(Option::is_some)
            || !self.waiting.is_empty()
            || !self.embeds.is_empty()
    }

    /// Ends requests past their deadline, starts waiting ones in free
    /// slots, sends what that queued, then one decode step.
    fn step(&mut self, cx: &mut Context) -> Result<bool, WorkerError> {
        self.expire(cx);
        self.admit(cx);
        cx.flush()?;
        self.decode(cx)
    }

    fn in_flight(&self) -> u32 {
        (self.slots.iter().flatten().count() + self.waiting.len() + self.embeds.len()) as u32
    }

    fn tokens_generated(&self) -> u64 {
        self.tokens_generated
    }
}

impl Text {
    /// A sequence leaves its slot; the slot keeps what it decoded (with
    /// prompt-prefix reuse on).
    fn release(&mut self, slot: usize) {
        if let (Some(a), Some(e)) = (self.slots[slot].take(), self.engine.as_mut()) {
            e.finish(&a.seq);
        }
    }

    /// Ends requests whose deadline passed.
    fn expire(&mut self, cx: &mut Context) {
        let now = deadline::now_ms();
        let late = |d: i64| deadline::passed(d, now);
        let expired = deadline::exceeded();
        for i in 0..self.slots.len() {
            if let Some(a) = &self.slots[i]
                && late(a.deadline_ms)
            {
                let id = a.id;
                self.release(i);
                cx.fail(id, &expired);
            }
        }
        let (keep, gone): (VecDeque<_>, VecDeque<_>) =
            self.waiting.drain(..).partition(|w| !late(w.deadline_ms));
        self.waiting = keep;
        for w in gone {
            cx.fail(w.id, &expired);
        }
        let (keep, gone): (VecDeque<_>, VecDeque<_>) =
            self.embeds.drain(..).partition(|j| !late(j.deadline_ms));
        self.embeds = keep;
        for j in gone {
            cx.fail(j.id, &expired);
        }
    }

    /// Starts waiting requests in free slots (the engine picks which).
    fn admit(&mut self, cx: &mut Context) {
        loop {
            let free: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots[i].is_none())
                .collect();
            if free.is_empty() {
                return;
            }
            let Some(w) = self.waiting.pop_front() else {
                return;
            };
            let Some(engine) = self.engine.as_mut() else {
                cx.fail(w.id, &not_loaded());
                continue;
            };
            match engine.start(&free, &w.req, &w.partition) {
                Ok(seq) => {
                    let slot = seq.slot();
                    self.slots[slot] = Some(Active {
                        id: w.id,
                        deadline_ms: w.deadline_ms,
                        arrived: w.arrived,
                        queued: w.arrived.elapsed(),
                        seq,
                    })
                }
                Err(e) => cx.fail(w.id, &e),
            }
        }
    }

    /// One decode step for every sequence whose reader keeps up (or the
    /// next inputs of the queued Embed calls); true when one ran.
    fn decode(&mut self, cx: &mut Context) -> Result<bool, WorkerError> {
        if let Some(embedder) = self.embedder.as_mut() {
            if self.embeds.is_empty() {
                return Ok(false);
            }
            for (id, result) in embedder.step(&mut self.embeds) {
                match result {
                    Ok(r) => cx.answer(id, worker_response::Body::Embed(r)),
                    Err(e) => cx.fail(id, &e),
                }
            }
            return Ok(true);
        }
        let Some(engine) = self.engine.as_mut() else {
            return Ok(false);
        };
        let mut seqs: Vec<&mut Seq> = self
            .slots
            .iter_mut()
            .flatten()
            .filter(|a| !cx.holds(a.id))
            .map(|a| &mut a.seq)
            .collect();
        if seqs.is_empty() {
            return Ok(false);
        }
        match engine.step(&mut seqs) {
            Ok(n) => self.tokens_generated += n as u64,
            Err(e) => {
                // A failed decode fails every sequence in it, and leaves
                // their caches unknown: they are cleared.
                for i in 0..self.slots.len() {
                    if let Some(a) = self.slots[i].take() {
                        engine.free(i);
                        cx.fail(a.id, &e);
                    }
                }
                return Ok(true);
            }
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
                cx.respond(id, &body, flags);
            }
            if done {
                self.release(i);
            }
        }
        Ok(true)
    }

    /// The error for a call this kind of model does not serve.
    fn not_served(&self, call: &str) -> WorkerError {
        match (&self.engine, &self.embedder) {
            (None, None) => not_loaded(),
            (_, Some(_)) => WorkerError::precondition(format!(
                "{call} needs a generation model; this is an embedding model (use Embed)"
            )),
            (Some(_), None) => WorkerError::precondition(format!(
                "{call} needs an embedding model; this is a generation model"
            )),
        }
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
            cached_tokens: f.cached_tokens,
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

/// One short Embed, so that READY means the model has answered once.
fn warm_up_embed(embedder: &mut Embedder) -> Result<(), WorkerError> {
    let req = sidecar_proto::v1::EmbedRequest {
        inputs: vec!["Hello".into()],
        ..Default::default()
    };
    let mut jobs = VecDeque::from([embedder.job(0, 0, &req, usize::MAX)?]);
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
    let mut seq = engine.start(&[0], &req, "")?;
    while !seq.is_done() {
        engine.step(&mut [&mut seq])?;
    }
    engine.free(0);
    Ok(())
}
