//! An embedding model's context: many inputs per decode, each input its
//! own sequence, pooled by llama.cpp as the model file says (MEAN for
//! all-MiniLM-L6-v2). Calls share decodes: inputs are taken in arrival
//! order, as many per decode as the batch holds, so a call of 64 short
//! texts is one decode and a small call can ride along with a large one.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use sidecar_proto::v1::{
    EmbedRequest, EmbedResponse, Embedding, TextModelDetails, TextOptions, TextTimings, Truncation,
    Usage,
};

use crate::model::{Model, backend, threads};
use worker_runtime::{Code, WorkerError, deadline};

/// Most inputs one call may carry.
pub const MAX_INPUTS: usize = 1024;
/// Tokens per decode when the options name none.
const DEFAULT_BATCH: u32 = 512;
/// Inputs per decode when the options name none.
const DEFAULT_SEQS: u32 = 64;

/// The embedding context of a loaded model.
pub struct Embedder {
    model: Model,
    ctx: LlamaContext<'static>,
    details: TextModelDetails,
    /// Tokens per decode. An encoder sees the whole batch at once, so the
    /// logical and physical batch are the same size.
    batch_tokens: usize,
    /// Inputs per decode.
    max_seqs: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("details", &self.details)
            .finish()
    }
}

/// One Embed call: its inputs, tokenized, and the vectors done so far.
#[derive(Debug)]
pub struct EmbedJob {
    /// Request id.
    pub id: u64,
    /// Deadline, Unix ms (0: none).
    pub deadline_ms: i64,
    arrived: Instant,
    started: Option<Instant>,
    compute: Duration,
    normalize: bool,
    inputs: Vec<Input>,
    /// Inputs handed to a decode so far.
    next: usize,
    done: Vec<Embedding>,
}

#[derive(Debug)]
struct Input {
    tokens: Vec<LlamaToken>,
    truncated: bool,
}

impl EmbedJob {
    fn finished(&self) -> bool {
        self.done.len() == self.inputs.len()
    }

    fn response(self, dimensions: u32) -> EmbedResponse {
        let prompt_tokens = self.inputs.iter().map(|i| i.tokens.len() as u32).sum();
        let queued = self
            .started
            .map_or(Duration::ZERO, |s| s.duration_since(self.arrived));
        EmbedResponse {
            embeddings: self.done,
            dimensions,
            usage: Some(Usage {
                prompt_tokens,
                completion_tokens: 0,
                cached_tokens: 0,
            }),
            timings: Some(TextTimings {
                queue_us: queued.as_micros() as u64,
                prompt_us: self.compute.as_micros() as u64,
                total_us: self.arrived.elapsed().as_micros() as u64,
                ..Default::default()
            }),
        }
    }
}

/// Bytes of a protobuf varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The fewest bytes one `dims`-dimension embedding takes in an
/// EmbedResponse: its packed floats, its token count (at least one token),
/// and the field heads around them.
pub fn min_embedding_bytes(dims: usize) -> usize {
    let floats = 4 * dims;
    let inner = 1 + varint_len(floats as u64) + floats + 2;
    1 + varint_len(inner as u64) + inner
}

/// The most bytes one `dims`-dimension embedding takes in an
/// EmbedResponse (its token count at its largest, truncated set).
pub fn max_embedding_bytes(dims: usize) -> usize {
    let floats = 4 * dims;
    let inner = 1 + varint_len(floats as u64) + floats + 6 + 2;
    1 + varint_len(inner as u64) + inner
}

/// The most bytes of an EmbedResponse besides its embeddings: dimensions,
/// usage and timings at their largest.
const RESPONSE_REST: usize = 128;

/// Scales `v` to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// Cuts `tokens` to `max`, keeping a closing special token (BERT's [SEP])
/// at the end, as sentence-transformers truncates.
fn truncate(tokens: &mut Vec<LlamaToken>, max: usize, closing: Option<LlamaToken>) {
    let last = tokens.last().copied();
    let keep_last = last.is_some() && last == closing;
    tokens.truncate(if keep_last { max - 1 } else { max });
    if let (true, Some(t)) = (keep_last, last) {
        tokens.push(t);
    }
}

impl Embedder {
    /// Makes the embedding context for a loaded model.
    pub fn new(loaded: Model, options: &TextOptions) -> Result<Embedder, WorkerError> {
        let model = loaded.llama;
        let train = model.n_ctx_train();
        let max_input = match options.context_size {
            0 => loaded.max_input_tokens().min(train),
            n if n > train => {
                return Err(WorkerError::invalid(format!(
                    "context_size {n} exceeds the model's {train} positions"
                )));
            }
            n => n,
        };
        let batch = match options.batch_size {
            0 => DEFAULT_BATCH,
            n => n,
        }
        .max(max_input);
        let seqs = match options.parallel {
            0 => DEFAULT_SEQS,
            n => n,
        };
        let threads = threads(options);
        // llama.cpp gives each sequence at least 256 positions (it pads the
        // per-sequence context to 256). An encoder keeps no KV cache, so
        // this costs nothing; a causal embedding model would keep that
        // much per sequence.
        let per_seq = 256 * batch.div_ceil(256 * seqs).max(1);
        let params = LlamaContextParams::default()
            .with_embeddings(true)
            .with_n_ctx(NonZeroU32::new(per_seq * seqs))
            .with_n_batch(batch)
            .with_n_ubatch(batch)
            .with_n_seq_max(seqs)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model.new_context(backend()?, params).map_err(|e| {
            WorkerError::new(
                Code::Unavailable,
                format!("llama.cpp embedding context of {batch} tokens: {e}"),
            )
        })?;
        let details = TextModelDetails {
            architecture: loaded.architecture(),
            training_context: train,
            context_size: max_input,
            parallel: seqs,
            vocab_size: model.n_vocab().max(0) as u32,
            embedding_size: model.n_embd_out().max(0) as u32,
            embeddings: true,
            has_chat_template: false,
            max_input_tokens: max_input,
            gpu_layers: loaded.gpu_layers.min(model.n_layer()) as i32,
            parameters: model.n_params(),
        };
        Ok(Embedder {
            model: loaded,
            ctx,
            details,
            batch_tokens: batch as usize,
            max_seqs: seqs as usize,
        })
    }

    /// What the worker read from the file.
    pub fn details(&self) -> &TextModelDetails {
        &self.details
    }

    /// Validates and tokenizes a call whose answer may take at most
    /// `max_answer` bytes (the response ring's frame limit): a call whose
    /// embeddings cannot fit is refused before any work, naming how many
    /// inputs would. The deadline is checked between inputs.
    pub fn job(
        &self,
        id: u64,
        deadline_ms: i64,
        req: &EmbedRequest,
        max_answer: usize,
    ) -> Result<EmbedJob, WorkerError> {
        if req.inputs.is_empty() {
            return Err(WorkerError::invalid("inputs must hold at least one text"));
        }
        if req.inputs.len() > MAX_INPUTS {
            return Err(WorkerError::invalid(format!(
                "inputs holds {} texts; the limit is {MAX_INPUTS} per call",
                req.inputs.len()
            )));
        }
        let dims = self.details.embedding_size as usize;
        let least = req.inputs.len().saturating_mul(min_embedding_bytes(dims));
        if least > max_answer {
            let fit = max_answer.saturating_sub(RESPONSE_REST) / max_embedding_bytes(dims);
            return Err(WorkerError::new(
                Code::ResourceExhausted,
                format!(
                    "inputs holds {} texts; their {dims}-dimension embeddings take at least {least} bytes, more than the response ring's frame limit of {max_answer} bytes; send at most {fit} inputs per call",
                    req.inputs.len()
                ),
            ));
        }
        let cut = match Truncation::try_from(req.truncation) {
            Ok(Truncation::Unspecified) => false,
            Ok(Truncation::End) => true,
            Err(_) => {
                return Err(WorkerError::invalid(format!(
                    "truncation {} is not a Truncation value",
                    req.truncation
                )));
            }
        };
        let vocab = self.model.llama.vocab();
        let closing = [vocab.sep(), vocab.eos()]
            .into_iter()
            .find(|t| t.0 >= 0 && vocab.is_control(*t));
        let max = self.details.max_input_tokens as usize;
        let mut inputs = Vec::with_capacity(req.inputs.len());
        for (i, text) in req.inputs.iter().enumerate() {
            deadline::check(deadline_ms)?;
            let mut tokens = vocab.tokenize(text.as_bytes(), true, true);
            if tokens.is_empty() {
                return Err(WorkerError::invalid(format!(
                    "inputs[{i}] tokenizes to no tokens with this model"
                )));
            }
            let truncated = tokens.len() > max;
            if truncated && !cut {
                return Err(WorkerError::invalid(format!(
                    "inputs[{i}] is {} tokens, longer than the model's maximum input of {max} tokens (set truncation to TRUNCATION_END to keep the first {max})",
                    tokens.len()
                )));
            }
            if truncated {
                truncate(&mut tokens, max, closing);
            }
            inputs.push(Input { tokens, truncated });
        }
        Ok(EmbedJob {
            id,
            deadline_ms,
            arrived: Instant::now(),
            started: None,
            compute: Duration::ZERO,
            normalize: req.normalize.unwrap_or(true),
            inputs,
            next: 0,
            done: Vec::with_capacity(req.inputs.len()),
        })
    }

    /// One decode over the next inputs of the queued calls, in order.
    /// Returns the calls that finished (or failed), removed from `jobs`.
    pub fn step(
        &mut self,
        jobs: &mut VecDeque<EmbedJob>,
    ) -> Vec<(u64, Result<EmbedResponse, WorkerError>)> {
        let started = Instant::now();
        let mut batch = LlamaBatch::new(self.batch_tokens, 1);
        // The job of each input in this decode; its sequence id is its index.
        let mut placed: Vec<usize> = Vec::new();
        let mut used = 0usize;
        'jobs: for (j, job) in jobs.iter_mut().enumerate() {
            while job.next < job.inputs.len() {
                let tokens = &job.inputs[job.next].tokens;
                if used + tokens.len() > self.batch_tokens || placed.len() == self.max_seqs {
                    break 'jobs;
                }
                let seq = placed.len() as i32;
                for (pos, t) in tokens.iter().enumerate() {
                    if let Err(e) = batch.add(*t, pos as i32, &[seq], true) {
                        return self.fail_placed(jobs, &placed, &format!("batch: {e}"));
                    }
                }
                used += tokens.len();
                placed.push(j);
                job.next += 1;
                job.started.get_or_insert(started);
            }
        }
        if placed.is_empty() {
            return Vec::new();
        }
        if let Err(e) = self.ctx.decode(&mut batch) {
            return self.fail_placed(jobs, &placed, &format!("decode: {e}"));
        }
        for (seq, &j) in placed.iter().enumerate() {
            let job = &mut jobs[j];
            let input = &job.inputs[job.done.len()];
            let mut values = match self.ctx.embeddings_seq_ith(seq as i32) {
                Ok(v) => v.to_vec(),
                Err(e) => {
                    return self.fail_placed(jobs, &placed, &format!("pooled embedding: {e}"));
                }
            };
            if job.normalize {
                l2_normalize(&mut values);
            }
            job.done.push(Embedding {
                values,
                tokens: input.tokens.len() as u32,
                truncated: input.truncated,
            });
        }
        // Models with a KV cache (causal embedding models) start clean.
        self.ctx.clear_kv_cache();
        let spent = started.elapsed();
        let mut touched = placed.clone();
        touched.dedup();
        for &j in &touched {
            jobs[j].compute += spent;
        }
        let dims = self.details.embedding_size;
        let mut out = Vec::new();
        let mut i = 0;
        while i < jobs.len() {
            if jobs[i].finished() {
                if let Some(job) = jobs.remove(i) {
                    out.push((job.id, Ok(job.response(dims))));
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// Fails and removes every call with an input in the failed decode.
    fn fail_placed(
        &mut self,
        jobs: &mut VecDeque<EmbedJob>,
        placed: &[usize],
        why: &str,
    ) -> Vec<(u64, Result<EmbedResponse, WorkerError>)> {
        self.ctx.clear_kv_cache();
        let mut idx = placed.to_vec();
        idx.dedup();
        idx.reverse();
        idx.into_iter()
            .filter_map(|j| jobs.remove(j))
            .map(|job| {
                (
                    job.id,
                    Err(WorkerError::new(Code::Internal, why.to_owned())),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn the_least_size_of_an_embedding_is_what_prost_encodes() {
        use prost::Message;
        use sidecar_proto::v1::{EmbedResponse, Embedding};
        for dims in [1usize, 31, 32, 384, 1024, 4096] {
            let one = EmbedResponse {
                embeddings: vec![Embedding {
                    values: vec![0.5; dims],
                    tokens: 1,
                    truncated: false,
                }],
                ..Default::default()
            };
            assert_eq!(one.encoded_len(), min_embedding_bytes(dims), "{dims}");
            let most = EmbedResponse {
                embeddings: vec![Embedding {
                    values: vec![0.5; dims],
                    tokens: u32::MAX,
                    truncated: true,
                }],
                ..Default::default()
            };
            assert_eq!(most.encoded_len(), max_embedding_bytes(dims), "{dims}");
        }
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn truncation_keeps_the_closing_token() {
        let t = |v: &[i32]| v.iter().map(|x| LlamaToken(*x)).collect::<Vec<_>>();
        let mut a = t(&[101, 1, 2, 3, 4, 102]);
        truncate(&mut a, 4, Some(LlamaToken(102)));
        assert_eq!(a, t(&[101, 1, 2, 102]));
        // No closing special token: plain cut.
        let mut b = t(&[1, 2, 3, 4, 5]);
        truncate(&mut b, 3, Some(LlamaToken(102)));
        assert_eq!(b, t(&[1, 2, 3]));
        let mut c = t(&[1, 2, 3, 4, 5]);
        truncate(&mut c, 3, None);
        assert_eq!(c, t(&[1, 2, 3]));
    }
}
