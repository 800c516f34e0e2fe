//! Request validation and the sampler chain.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use sidecar_proto::v1::SamplingParams;

use worker_runtime::WorkerError;

const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;

pub(crate) fn check_stops(stops: &[String]) -> Result<(), WorkerError> {
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

/// The sampler chain for these parameters, with the seed it uses. With
/// `ignore_eos`, the end-of-generation tokens `eog` get a logit bias of
/// minus infinity (llama-server's way), so they are never sampled.
pub(crate) fn sampler(
    p: Option<&SamplingParams>,
    n_vocab: i32,
    grammar: Option<LlamaSampler>,
    eog: &[LlamaToken],
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
    if p.ignore_eos == Some(true) {
        let bias: Vec<LlamaLogitBias> = eog
            .iter()
            .map(|t| LlamaLogitBias::new(*t, f32::NEG_INFINITY))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &bias));
    }
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
