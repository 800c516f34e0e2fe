//! The llama.cpp model and its context, and one generation.
//!
//! The worker serves one model for its whole life, so the model is leaked
//! to a `'static` borrow that the context can hold. One sequence at a time
//! in this version: the KV cache is cleared before each request.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use sidecar_proto::v1::{
    ChatMessage, FinishReason, GenerateRequest, OutputConstraint, SamplingParams, TextModelDetails,
    TextOptions, TokenizeRequest, TokenizeResponse, output_constraint,
};

use crate::error::{Code, WorkerError};
use crate::text::{Filtered, StopFilter, Utf8Stream};

/// Default per-sequence context when the request names none.
const DEFAULT_CONTEXT: u32 = 4096;
const DEFAULT_BATCH: u32 = 512;
const DEFAULT_MAX_TOKENS: u32 = 256;
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

fn backend() -> Result<&'static LlamaBackend, WorkerError> {
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let b = LlamaBackend::init()
        .map_err(|e| WorkerError::new(Code::Internal, format!("llama.cpp backend: {e}")))?;
    Ok(BACKEND.get_or_init(|| b))
}

/// A loaded model with its context.
pub struct Engine {
    model: &'static LlamaModel,
    ctx: LlamaContext<'static>,
    details: TextModelDetails,
    batch_size: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("details", &self.details)
            .finish()
    }
}

/// Threads to use when the model's options name none: the cores this
/// process may run on.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Checks the GGUF magic so that a wrong file gets a clear reason.
fn check_gguf(path: &Path) -> Result<(), WorkerError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    match read {
        Err(e) => Err(WorkerError::new(
            Code::Unavailable,
            format!("cannot read model file {}: {e}", path.display()),
        )),
        Ok(()) if &magic != b"GGUF" => Err(WorkerError::new(
            Code::Unavailable,
            format!(
                "{} is not a GGUF model file (starts with {:02x?}, expected \"GGUF\")",
                path.display(),
                magic
            ),
        )),
        Ok(()) => Ok(()),
    }
}

/// Everything one generation produced, for the final message.
#[derive(Debug)]
pub struct Finished {
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens, the stop string's excluded.
    pub completion_tokens: u32,
    /// Prompt processing time.
    pub prompt: Duration,
    /// Generation time after the prompt.
    pub generation: Duration,
    /// Time to the first generated token.
    pub first_token: Duration,
    /// Text held back and never sent with a token.
    pub tail: String,
    /// Seed used.
    pub seed: u64,
}

/// One generated token as the client sees it.
#[derive(Debug)]
pub struct Token {
    /// Token id.
    pub id: i32,
    /// Text to emit now (may be empty).
    pub text: String,
    /// Index among generated tokens.
    pub index: u32,
}

/// What the caller of `generate` decides after each token.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep going.
    Continue,
    /// Stop now with this error.
    Abort(Code, String),
}

impl Engine {
    /// Loads the model and makes its context.
    pub fn load(path: &Path, options: &TextOptions) -> Result<Engine, WorkerError> {
        check_gguf(path)?;
        let backend = backend()?;
        let gpu_layers = match options.gpu_layers {
            Some(n) if n < 0 => u32::MAX,
            Some(n) => n as u32,
            None => 0,
        };
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            WorkerError::new(
                Code::Unavailable,
                format!("llama.cpp could not load {}: {e}", path.display()),
            )
        })?;
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let train = model.n_ctx_train();
        let context = match options.context_size {
            0 => train.min(DEFAULT_CONTEXT),
            n if n > train => {
                return Err(WorkerError::invalid(format!(
                    "context_size {n} exceeds the model's training context {train}"
                )));
            }
            n => n,
        };
        let batch = match options.batch_size {
            0 => DEFAULT_BATCH,
            n => n,
        }
        .min(context);
        let threads = match options.threads {
            0 => default_threads(),
            n => n,
        } as i32;
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(context))
            .with_n_batch(batch)
            .with_n_ubatch(batch)
            .with_n_seq_max(1)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model.new_context(backend, ctx_params).map_err(|e| {
            WorkerError::new(
                Code::Unavailable,
                format!("llama.cpp context of {context} tokens: {e}"),
            )
        })?;
        let details = TextModelDetails {
            architecture: model
                .meta_val_str("general.architecture")
                .unwrap_or_default(),
            training_context: train,
            context_size: context,
            parallel: 1,
            vocab_size: model.n_vocab().max(0) as u32,
            embedding_size: model.n_embd().max(0) as u32,
            embeddings: false,
            has_chat_template: model.chat_template(None).is_ok(),
            max_input_tokens: 0,
            gpu_layers: gpu_layers.min(model.n_layer()) as i32,
            parameters: model.n_params(),
        };
        Ok(Engine {
            model,
            ctx,
            details,
            batch_size: batch as usize,
        })
    }

    /// What the worker read from the file.
    pub fn details(&self) -> &TextModelDetails {
        &self.details
    }

    /// Tokenizes text with the model's vocabulary.
    pub fn tokenize(&self, req: &TokenizeRequest) -> TokenizeResponse {
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(req.text.as_bytes(), req.add_special.unwrap_or(true), true);
        let pieces = if req.with_pieces {
            tokens
                .iter()
                .map(|t| {
                    String::from_utf8_lossy(&vocab.token_to_piece(*t, true, None)).into_owned()
                })
                .collect()
        } else {
            Vec::new()
        };
        TokenizeResponse {
            tokens: tokens.iter().map(|t| t.0).collect(),
            pieces,
        }
    }

    /// Renders a conversation with the model's chat template, or the one
    /// the request names (a llama.cpp built-in name such as "chatml", or a
    /// template text llama.cpp recognises).
    pub fn chat_prompt(
        &self,
        messages: &[ChatMessage],
        template: &str,
    ) -> Result<String, WorkerError> {
        if messages.is_empty() {
            return Err(WorkerError::invalid(
                "messages must hold at least one message",
            ));
        }
        let tmpl = if template.is_empty() {
            self.model.chat_template(None).map_err(|_| {
                WorkerError::new(
                    Code::FailedPrecondition,
                    "this model has no chat template; name one in chat_template (for example \"chatml\")",
                )
            })?
        } else {
            LlamaChatTemplate::new(template)
                .map_err(|_| WorkerError::invalid("chat_template contains a NUL byte"))?
        };
        let mut chat = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            if m.role.is_empty() {
                return Err(WorkerError::invalid(format!(
                    "messages[{i}].role must not be empty"
                )));
            }
            chat.push(
                LlamaChatMessage::new(m.role.clone(), m.content.clone()).map_err(|_| {
                    WorkerError::invalid(format!("messages[{i}] contains a NUL byte"))
                })?,
            );
        }
        self.model
            .apply_chat_template(&tmpl, &chat, true)
            .map_err(|e| {
                let which = if template.is_empty() {
                    "the model's chat template".to_owned()
                } else {
                    format!("chat_template {template:?}")
                };
                WorkerError::invalid(format!("{which} cannot be applied by llama.cpp: {e}"))
            })
    }

    /// The grammar sampler for a constraint, if any.
    fn constraint(
        &self,
        c: Option<&OutputConstraint>,
    ) -> Result<Option<LlamaSampler>, WorkerError> {
        let grammar = match c.and_then(|c| c.kind.as_ref()) {
            None => return Ok(None),
            Some(output_constraint::Kind::Gbnf(g)) => g.clone(),
            Some(output_constraint::Kind::JsonSchema(schema)) => {
                llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
                    WorkerError::invalid(format!(
                        "constraint.json_schema is not a schema llama.cpp can convert: {e}"
                    ))
                })?
            }
        };
        LlamaSampler::grammar(self.model, &grammar, "root")
            .map(Some)
            .map_err(|e| {
                WorkerError::invalid(format!(
                    "constraint grammar does not parse (its start rule must be `root`): {e}"
                ))
            })
    }

    /// Generates for `req`, calling `on_token` after each token; it may
    /// stop the generation (cancel, deadline).
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        mut on_token: impl FnMut(Token) -> Next,
    ) -> Result<Finished, WorkerError> {
        let started = Instant::now();
        if req.prompt.is_empty() {
            return Err(WorkerError::invalid("prompt must not be empty"));
        }
        check_stops(&req.stop)?;
        let grammar = self.constraint(req.constraint.as_ref())?;
        let (mut sampler, seed) = sampler(req.sampling.as_ref(), self.model.n_vocab(), grammar)?;
        let vocab = self.model.vocab();
        let prompt = vocab.tokenize(req.prompt.as_bytes(), req.add_special.unwrap_or(true), true);
        let n_ctx = self.details.context_size as usize;
        let max_tokens = match req.max_tokens {
            0 => DEFAULT_MAX_TOKENS.min(n_ctx.saturating_sub(prompt.len()) as u32),
            n => n,
        } as usize;
        if prompt.is_empty() {
            return Err(WorkerError::invalid("prompt tokenizes to no tokens"));
        }
        if prompt.len() + max_tokens > n_ctx {
            return Err(WorkerError::invalid(format!(
                "max_tokens {max_tokens} plus the prompt's {} tokens exceeds the model's context of {n_ctx} tokens per sequence",
                prompt.len()
            )));
        }

        self.ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(self.batch_size.max(1), 1);
        let last = prompt.len() - 1;
        for (chunk_no, chunk) in prompt.chunks(self.batch_size.max(1)).enumerate() {
            batch.clear();
            for (i, t) in chunk.iter().enumerate() {
                let pos = chunk_no * self.batch_size + i;
                batch
                    .add(*t, pos as i32, &[0], pos == last)
                    .map_err(|e| WorkerError::new(Code::Internal, format!("batch: {e}")))?;
            }
            self.ctx
                .decode(&mut batch)
                .map_err(|e| WorkerError::new(Code::Internal, format!("decode prompt: {e}")))?;
        }
        let prompt_done = Instant::now();

        let mut utf8 = Utf8Stream::default();
        let mut stops = StopFilter::new(&req.stop);
        let mut piece = Vec::new();
        let mut pos = prompt.len();
        let mut generated = 0u32;
        let mut first_token = None;
        let reason = loop {
            if generated as usize >= max_tokens {
                break FinishReason::Length;
            }
            if pos >= n_ctx {
                break FinishReason::Context;
            }
            let token: LlamaToken = sampler.sample(&self.ctx, batch.n_tokens() - 1);
            first_token.get_or_insert_with(|| started.elapsed());
            if vocab.is_eog(token) {
                break FinishReason::Eos;
            }
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let decoded = utf8.push(&piece);
            let (text, stopped) = match stops.push(&decoded) {
                Filtered::Text(t) => (t, false),
                Filtered::Stopped(t) => (t, true),
            };
            if stopped {
                if !text.is_empty() {
                    // The text before the stop string still goes out.
                    let _ = on_token(Token {
                        id: token.0,
                        text,
                        index: generated,
                    });
                }
                break FinishReason::Stop;
            }
            let next = on_token(Token {
                id: token.0,
                text,
                index: generated,
            });
            generated += 1;
            if let Next::Abort(code, message) = next {
                return Err(WorkerError::new(code, message));
            }
            batch.clear();
            batch
                .add(token, pos as i32, &[0], true)
                .map_err(|e| WorkerError::new(Code::Internal, format!("batch: {e}")))?;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| WorkerError::new(Code::Internal, format!("decode: {e}")))?;
            pos += 1;
        };
        let mut tail = utf8.finish();
        if reason != FinishReason::Stop {
            let mut rest = match stops.push(&tail) {
                Filtered::Text(t) | Filtered::Stopped(t) => t,
            };
            rest.push_str(&stops.finish());
            tail = rest;
        } else {
            tail.clear();
        }
        Ok(Finished {
            reason,
            prompt_tokens: prompt.len() as u32,
            completion_tokens: generated,
            prompt: prompt_done - started,
            generation: prompt_done.elapsed(),
            first_token: first_token.unwrap_or_else(|| started.elapsed()),
            tail,
            seed,
        })
    }
}

fn check_stops(stops: &[String]) -> Result<(), WorkerError> {
    if stops.len() > MAX_STOPS {
        return Err(WorkerError::invalid(format!(
            "stop has {} strings, at most {MAX_STOPS} are allowed",
            stops.len()
        )));
    }
    for (i, s) in stops.iter().enumerate() {
        if s.is_empty() || s.len() > MAX_STOP_BYTES {
            return Err(WorkerError::invalid(format!(
                "stop[{i}] is {} bytes, must be 1..={MAX_STOP_BYTES}",
                s.len()
            )));
        }
    }
    Ok(())
}

/// The sampler chain for these parameters, with the seed it uses.
fn sampler(
    p: Option<&SamplingParams>,
    n_vocab: i32,
    grammar: Option<LlamaSampler>,
) -> Result<(LlamaSampler, u64), WorkerError> {
    let d = SamplingParams::default();
    let p = p.unwrap_or(&d);
    let temperature = p.temperature.unwrap_or(0.8);
    let top_k = p.top_k.unwrap_or(40);
    let top_p = p.top_p.unwrap_or(0.95);
    let min_p = p.min_p.unwrap_or(0.05);
    let repeat_penalty = p.repeat_penalty.unwrap_or(1.0);
    let repeat_last_n = p.repeat_last_n.unwrap_or(64);
    let range = |name: &str, v: f32, lo: f32, hi: f32, lo_open: bool| {
        let ok = v.is_finite() && v <= hi && if lo_open { v > lo } else { v >= lo };
        if ok {
            Ok(())
        } else {
            let open = if lo_open { "(" } else { "[" };
            Err(WorkerError::invalid(format!(
                "sampling.{name} {v} is out of range {open}{lo}, {hi}]"
            )))
        }
    };
    range("temperature", temperature, 0.0, 2.0, false)?;
    range("top_p", top_p, 0.0, 1.0, true)?;
    range("min_p", min_p, 0.0, 1.0, false)?;
    range("repeat_penalty", repeat_penalty, 0.0, 10.0, false)?;
    if top_k as i64 > i64::from(n_vocab) {
        return Err(WorkerError::invalid(format!(
            "sampling.top_k {top_k} exceeds the vocabulary size {n_vocab}"
        )));
    }
    let seed = p.seed.unwrap_or_else(random_seed);
    let mut chain = Vec::new();
    // The grammar first: it removes every token the grammar does not allow.
    chain.extend(grammar);
    if repeat_penalty != 1.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            repeat_last_n as i32,
            repeat_penalty,
            0.0,
            0.0,
        ));
    }
    if temperature == 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if top_k > 0 {
            chain.push(LlamaSampler::top_k(top_k as i32));
        }
        chain.push(LlamaSampler::top_p(top_p, 1));
        chain.push(LlamaSampler::min_p(min_p, 1));
        chain.push(LlamaSampler::temp(temperature));
        chain.push(LlamaSampler::dist(seed as u32));
    }
    Ok((LlamaSampler::chain_simple(chain), seed))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & 0xFFFF_FFFF
}
