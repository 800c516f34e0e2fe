//! One sequence of a batch: its prompt, sampler, position, and what it
//! produced since the last step.

use std::time::{Duration, Instant};

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::vocab::LlamaVocab;
use sidecar_proto::v1::FinishReason;

use crate::text::{Filtered, StopFilter, Utf8Stream};

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

/// Everything one generation produced, for the final message.
#[derive(Debug)]
pub struct Finished {
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Of them, those whose KV cache the slot kept from an earlier call.
    pub cached_tokens: u32,
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

/// What a step produced for a sequence.
#[derive(Debug)]
pub enum Event {
    /// A token.
    Token(Token),
    /// The end.
    Done(Finished),
}

/// What `Seq::new` needs.
pub(crate) struct SeqSpec<'a> {
    pub(crate) slot: usize,
    pub(crate) prompt: Vec<LlamaToken>,
    /// Leading prompt tokens already in the slot's KV cache.
    pub(crate) reused: usize,
    pub(crate) max_tokens: usize,
    /// End-of-generation tokens and stop strings cannot end the call
    /// before this many tokens.
    pub(crate) min_tokens: usize,
    pub(crate) n_ctx: usize,
    pub(crate) sampler: LlamaSampler,
    pub(crate) seed: u64,
    pub(crate) stops: &'a [String],
}

/// A sequence in the batch.
pub struct Seq {
    pub(crate) slot: usize,
    pub(crate) prompt: Vec<LlamaToken>,
    /// Prompt tokens decoded so far.
    pub(crate) fed: usize,
    /// Position of the next token fed.
    pub(crate) pos: usize,
    /// The sampled token to feed next.
    pub(crate) next_input: Option<LlamaToken>,
    /// Generated tokens fed back (their KV is in the slot after the prompt).
    pub(crate) fed_back: Vec<LlamaToken>,
    /// Leading prompt tokens reused from the slot's cache.
    reused: usize,
    min_tokens: usize,
    /// Index of this sequence's logits in the current batch.
    pub(crate) logits_at: Option<usize>,
    pub(crate) sampler: LlamaSampler,
    max_tokens: usize,
    n_ctx: usize,
    seed: u64,
    utf8: Utf8Stream,
    stops: StopFilter,
    generated: u32,
    started: Instant,
    prompt_done: Option<Instant>,
    first_token: Option<Duration>,
    piece: Vec<u8>,
    done: bool,
    /// Produced since the caller last took them.
    pub events: Vec<Event>,
}

impl std::fmt::Debug for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seq")
            .field("slot", &self.slot)
            .field("fed", &self.fed)
            .field("pos", &self.pos)
            .field("generated", &self.generated)
            .finish()
    }
}

impl Seq {
    pub(crate) fn new(spec: SeqSpec<'_>) -> Seq {
        Seq {
            slot: spec.slot,
            prompt: spec.prompt,
            fed: spec.reused,
            pos: spec.reused,
            next_input: None,
            fed_back: Vec::new(),
            reused: spec.reused,
            min_tokens: spec.min_tokens,
            logits_at: None,
            sampler: spec.sampler,
            max_tokens: spec.max_tokens,
            n_ctx: spec.n_ctx,
            seed: spec.seed,
            utf8: Utf8Stream::default(),
            stops: StopFilter::new(spec.stops),
            generated: 0,
            started: Instant::now(),
            prompt_done: None,
            first_token: None,
            piece: Vec::new(),
            done: false,
            events: Vec::new(),
        }
    }

    /// The KV slot (llama.cpp sequence id).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Whether the final event was produced.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The tokens whose KV cache the slot holds now, in position order:
    /// the prompt decoded so far, then the generated tokens fed back.
    pub fn tokens_in_cache(&self) -> Vec<LlamaToken> {
        let mut t = Vec::with_capacity(self.fed + self.fed_back.len());
        t.extend_from_slice(&self.prompt[..self.fed]);
        t.extend_from_slice(&self.fed_back);
        t
    }

    /// End-of-generation tokens must not be sampled yet (`min_tokens`).
    pub(crate) fn holds_eog(&self) -> bool {
        (self.generated as usize) < self.min_tokens
    }

    /// Handles the token sampled for this sequence.
    pub(crate) fn on_sampled(&mut self, token: LlamaToken, vocab: &LlamaVocab<'_>) {
        let now = Instant::now();
        self.prompt_done.get_or_insert(now);
        self.first_token.get_or_insert(now - self.started);
        if vocab.is_eog(token) {
            return self.finish(FinishReason::Eos);
        }
        self.piece.clear();
        vocab.token_to_piece_into(token, &mut self.piece, false, None);
        let decoded = self.utf8.push(&self.piece);
        // A stop string completed before `min_tokens` is text.
        let may_stop = self.generated as usize >= self.min_tokens;
        match self.stops.push(&decoded, may_stop) {
            Filtered::Stopped(text) => {
                if !text.is_empty() {
                    // The text before the stop string still goes out; the
                    // token that completed the stop string is not counted.
                    self.events.push(Event::Token(Token {
                        id: token.0,
                        text,
                        index: self.generated,
                    }));
                }
                self.finish(FinishReason::Stop)
            }
            Filtered::Text(text) => {
                self.events.push(Event::Token(Token {
                    id: token.0,
                    text,
                    index: self.generated,
                }));
                self.generated += 1;
                if self.generated as usize >= self.max_tokens {
                    self.finish(FinishReason::Length)
                } else if self.pos >= self.n_ctx {
                    self.finish(FinishReason::Context)
                } else {
                    self.next_input = Some(token);
                }
            }
        }
    }

    fn finish(&mut self, reason: FinishReason) {
        let mut tail = self.utf8.finish();
        if reason == FinishReason::Stop {
            tail.clear();
        } else {
            let mut rest = match self.stops.push(&tail, true) {
                Filtered::Text(t) | Filtered::Stopped(t) => t,
            };
            rest.push_str(&self.stops.finish());
            tail = rest;
        }
        let prompt_done = self.prompt_done.unwrap_or_else(Instant::now);
        self.events.push(Event::Done(Finished {
            reason,
            prompt_tokens: self.prompt.len() as u32,
            cached_tokens: self.reused as u32,
            completion_tokens: self.generated,
            prompt: prompt_done - self.started,
            generation: prompt_done.elapsed(),
            first_token: self.first_token.unwrap_or_else(|| self.started.elapsed()),
            tail,
            seed: self.seed,
        }));
        self.next_input = None;
        self.done = true;
    }
}
