//! A generation model's context: `parallel` KV slots in one llama.cpp
//! context, each sequence in its own slot, decoded together one step at a
//! time. With prompt-prefix reuse on, a slot keeps its KV cache after a
//! call and a new call goes to the free slot sharing the longest prefix
//! with its prompt ([`crate::prefix`]).

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use sidecar_proto::v1::{
    ChatMessage, GenerateRequest, OutputConstraint, TextModelDetails, TextOptions,
    output_constraint,
};
use std::num::NonZeroU32;

use crate::model::{Model, backend, threads};
use crate::prefix::{Choice, Slots};
use crate::sampling::{check_stops, sampler};
use crate::seq::{Seq, SeqSpec};
use worker_runtime::{Code, WorkerError};

/// Default per-sequence context when the request names none.
const DEFAULT_CONTEXT: u32 = 4096;
const DEFAULT_BATCH: u32 = 512;
const DEFAULT_MAX_TOKENS: u32 = 256;
const DEFAULT_PARALLEL: u32 = 4;

/// A loaded model with its context.
pub struct Engine {
    model: &'static LlamaModel,
    /// Template for Chat requests that name none (empty: the model's).
    default_template: String,
    ctx: LlamaContext<'static>,
    details: TextModelDetails,
    batch_size: usize,
    /// The decode batch, reused from step to step (llama.cpp allocates one
    /// array per token slot when a batch is made).
    batch: LlamaBatch<'static>,
    /// The model's end-of-generation tokens (`ignore_eos`, `min_tokens`).
    eog: Vec<LlamaToken>,
    /// What each slot's KV cache holds; `None`: prompt-prefix reuse is off
    /// and every call starts in a cleared slot.
    kept: Option<Slots<LlamaToken>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("details", &self.details)
            .finish()
    }
}

impl Engine {
    /// Makes the generation context for a loaded model.
    pub fn new(loaded: Model, options: &TextOptions) -> Result<Engine, WorkerError> {
        let (model, gpu_layers) = (loaded.llama, loaded.gpu_layers);
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
        let parallel = match options.parallel {
            0 => DEFAULT_PARALLEL,
            n if n > 64 => {
                return Err(WorkerError::invalid(format!(
                    "parallel {n} exceeds the limit of 64"
                )));
            }
            n => n,
        };
        let batch = match options.batch_size {
            0 => DEFAULT_BATCH,
            n => n,
        }
        .min(context * parallel);
        // llama.cpp aborts the process when n_ubatch is not a multiple of
        // n_seq_max: round it down (at least one token per sequence).
        let ubatch = (batch - batch % parallel).max(parallel);
        let threads = threads(options);
        // llama.cpp splits its context across the sequences.
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(context * parallel))
            .with_n_batch(batch.max(ubatch))
            .with_n_ubatch(ubatch)
            .with_n_seq_max(parallel)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model.new_context(backend()?, ctx_params).map_err(|e| {
            WorkerError::new(
                Code::Unavailable,
                format!("llama.cpp context of {context} tokens x {parallel} sequences: {e}"),
            )
        })?;
        let details = TextModelDetails {
            architecture: loaded.architecture(),
            training_context: train,
            context_size: context,
            parallel,
            vocab_size: model.n_vocab().max(0) as u32,
            embedding_size: model.n_embd().max(0) as u32,
            embeddings: false,
            has_chat_template: model.chat_template(None).is_ok(),
            max_input_tokens: 0,
            gpu_layers: gpu_layers.min(model.n_layer()) as i32,
            parameters: model.n_params(),
        };
        let vocab = model.vocab();
        let eog = (0..model.n_vocab())
            .map(LlamaToken)
            .filter(|t| vocab.is_eog(*t))
            .collect();
        Ok(Engine {
            model,
            default_template: options.chat_template.clone(),
            ctx,
            details,
            batch_size: batch.max(ubatch) as usize,
            batch: LlamaBatch::new(batch.max(ubatch) as usize, parallel as i32),
            eog,
            kept: options
                .prompt_cache
                .unwrap_or(true)
                .then(|| Slots::new(parallel as usize)),
        })
    }

    /// What the worker read from the file.
    pub fn details(&self) -> &TextModelDetails {
        &self.details
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
        let template = if template.is_empty() {
            self.default_template.as_str()
        } else {
            template
        };
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

    /// Starts a sequence for `req` in one of the `free` KV slots (not
    /// empty): validates it, tokenizes the prompt, builds the sampler,
    /// picks the slot (the longest kept prefix with prompt-prefix reuse on,
    /// else the first) and removes the slot's cache past what is reused.
    pub fn start(
        &mut self,
        free: &[usize],
        req: &GenerateRequest,
        partition: &str,
    ) -> Result<Seq, WorkerError> {
        if req.prompt.is_empty() {
            return Err(WorkerError::invalid("prompt must not be empty"));
        }
        check_stops(&req.stop)?;
        let p = req.sampling.unwrap_or_default();
        let min_tokens = p.min_tokens.unwrap_or(0);
        if req.constraint.is_some() && (p.ignore_eos == Some(true) || min_tokens > 0) {
            // A completed grammar allows only an end-of-generation token:
            // masking it would leave nothing the grammar accepts.
            return Err(WorkerError::invalid(
                "sampling.ignore_eos and sampling.min_tokens cannot be combined with a constraint (a complete grammar can only end)",
            ));
        }
        let grammar = self.constraint(req.constraint.as_ref())?;
        let (sampler, seed) = sampler(Some(&p), self.model.n_vocab(), grammar, &self.eog)?;
        let prompt = self.model.vocab().tokenize(
            req.prompt.as_bytes(),
            req.add_special.unwrap_or(true),
            true,
        );
        if prompt.is_empty() {
            return Err(WorkerError::invalid("prompt tokenizes to no tokens"));
        }
        let n_ctx = self.details.context_size as usize;
        let max_tokens = match req.max_tokens {
            0 => DEFAULT_MAX_TOKENS.min(n_ctx.saturating_sub(prompt.len()) as u32),
            n => n,
        } as usize;
        if prompt.len() + max_tokens > n_ctx {
            return Err(WorkerError::invalid(format!(
                "max_tokens {max_tokens} plus the prompt's {} tokens exceeds the model's context of {n_ctx} tokens per sequence",
                prompt.len()
            )));
        }
        if min_tokens as usize > max_tokens {
            let which = if req.max_tokens == 0 {
                " (the default)"
            } else {
                ""
            };
            return Err(WorkerError::invalid(format!(
                "sampling.min_tokens {min_tokens} exceeds max_tokens {max_tokens}{which}"
            )));
        }
        let first = *free
            .first()
            .ok_or_else(|| WorkerError::new(Code::Internal, "no free slot to start in"))?;
        let Choice { slot, reused } = match &self.kept {
            Some(kept) => kept.choose(free, &prompt, partition).unwrap_or(Choice {
                slot: first,
                reused: 0,
            }),
            None => Choice {
                slot: first,
                reused: 0,
            },
        };
        let reused = self.cut(slot, reused, partition)?;
        Ok(Seq::new(SeqSpec {
            slot,
            prompt,
            reused,
            max_tokens,
            min_tokens: min_tokens as usize,
            n_ctx,
            sampler,
            seed,
            stops: &req.stop,
        }))
    }

    /// Removes the slot's KV cache from position `reused` on; returns the
    /// positions kept (0 when llama.cpp cannot cut this model's memory
    /// part-way, as for recurrent models: then the whole slot is cleared).
    fn cut(&mut self, slot: usize, reused: usize, partition: &str) -> Result<usize, WorkerError> {
        let clear = |e| WorkerError::new(Code::Internal, format!("clear slot {slot}: {e}"));
        let mut reused = reused;
        if reused > 0
            && !self
                .ctx
                .clear_kv_cache_seq(Some(slot as u32), Some(reused as u32), None)
                .map_err(clear)?
        {
            reused = 0;
        }
        if reused == 0 {
            self.ctx
                .clear_kv_cache_seq(Some(slot as u32), None, None)
                .map_err(clear)?;
        }
        if let Some(kept) = self.kept.as_mut() {
            kept.start(slot, reused, partition);
        }
        Ok(reused)
    }

    /// A sequence left its slot: with prompt-prefix reuse on, the slot
    /// keeps its cache and remembers the tokens in it; else it is cleared.
    pub fn finish(&mut self, seq: &Seq) {
        match self.kept.as_mut() {
            Some(kept) => kept.keep(seq.slot, seq.tokens_in_cache()),
            None => self.free(seq.slot),
        }
    }

    /// Clears a slot's cache (after a failed decode its content is
    /// unknown; a warm-up leaves nothing behind).
    pub fn free(&mut self, slot: usize) {
        let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
        if let Some(kept) = self.kept.as_mut() {
            kept.forget(slot);
        }
    }

    /// One decode step over these sequences: one token for each that is
    /// generating, then prompt chunks in the rest of the batch; each
    /// sequence with logits samples its next token. Events land in the
    /// sequences. Returns the number of tokens sampled.
    pub fn step(&mut self, seqs: &mut [&mut Seq]) -> Result<usize, WorkerError> {
        let cap = self.batch_size;
        let batch = &mut self.batch;
        batch.clear();
        let mut used = 0usize;
        let add = |batch: &mut LlamaBatch, t: LlamaToken, pos: usize, slot: usize, logits: bool| {
            batch
                .add(t, pos as i32, &[slot as i32], logits)
                .map_err(|e| WorkerError::new(Code::Internal, format!("batch: {e}")))
        };
        for s in seqs.iter_mut() {
            s.logits_at = None;
            if let Some(t) = s.next_input.take() {
                add(batch, t, s.pos, s.slot, true)?;
                s.logits_at = Some(used);
                s.fed_back.push(t);
                s.pos += 1;
                used += 1;
            }
        }
        for s in seqs.iter_mut() {
            while s.fed < s.prompt.len() && used < cap {
                let last = s.fed + 1 == s.prompt.len();
                add(batch, s.prompt[s.fed], s.fed, s.slot, last)?;
                if last {
                    s.logits_at = Some(used);
                }
                s.fed += 1;
                s.pos = s.fed;
                used += 1;
            }
        }
        if used == 0 {
            return Ok(0);
        }
        self.ctx
            .decode(batch)
            .map_err(|e| WorkerError::new(Code::Internal, format!("decode: {e}")))?;
        let vocab = self.model.vocab();
        let mut sampled = 0;
        for s in seqs.iter_mut() {
            if let Some(i) = s.logits_at.take() {
                let token = if s.holds_eog() {
                    self.sample_without_eog(s, i as i32)?
                } else {
                    s.sampler.sample(&self.ctx, i as i32)
                };
                s.on_sampled(token, &vocab);
                sampled += 1;
            }
        }
        Ok(sampled)
    }

    /// Samples output `i` with every end-of-generation token removed
    /// (`min_tokens` not reached): the chain sees the logits with those
    /// tokens at minus infinity, then accepts its choice, as
    /// `llama_sampler_sample` does.
    fn sample_without_eog(&self, s: &mut Seq, i: i32) -> Result<LlamaToken, WorkerError> {
        let mut candidates = LlamaTokenDataArray::from_iter(self.ctx.candidates_ith(i), false);
        for t in &self.eog {
            if let Some(d) = candidates.data.get_mut(t.0 as usize) {
                d.set_logit(f32::NEG_INFINITY);
            }
        }
        candidates.apply_sampler(&mut s.sampler);
        let token = candidates.selected_token().ok_or_else(|| {
            WorkerError::new(Code::Internal, "the sampler chain selected no token")
        })?;
        s.sampler.accept(token);
        Ok(token)
    }
}
