//! What chat and completions share: the sampling options checked and
//! mapped onto `SamplingParams`, the model check, the answer's pieces.

use sidecar_proto::v1::{FinishReason, SamplingParams, Usage};

use super::Ctx;
use super::errors::ApiError;
use super::router::Call;
use super::types::{GenBody, Stop};
use crate::config::Family;
use crate::error::Error;

/// Most stop strings (the text worker's limit).
pub(super) const MAX_STOPS: usize = 16;
/// Longest stop string, bytes (the text worker's limit).
pub(super) const MAX_STOP_BYTES: usize = 256;

/// A checked request's generation options.
#[derive(Debug)]
pub(super) struct Options {
    /// Sampling.
    pub(super) sampling: SamplingParams,
    /// 0: the model's default.
    pub(super) max_tokens: u32,
    /// Stop strings.
    pub(super) stop: Vec<String>,
    /// SSE answer.
    pub(super) stream: bool,
    /// A usage chunk at the end of the stream.
    pub(super) include_usage: bool,
}

impl Options {
    /// The call's default deadline: the route's own (`route`, e.g.
    /// `openai.chat_timeout`) or else `deadlines.stream` / `.unary`.
    pub(super) fn timeout(
        &self,
        route: Option<std::time::Duration>,
        config: &crate::config::Config,
    ) -> std::time::Duration {
        route.unwrap_or(if self.stream {
            config.deadlines.stream
        } else {
            config.deadlines.unary
        })
    }
}

/// Checks `s` (`max_tokens` replaced by `max_override` when given):
/// a 400 names the field, the value and the limit.
pub(super) fn options(s: &GenBody, max_override: Option<u32>) -> Result<Options, ApiError> {
    if s.model.is_empty() {
        return Err(ApiError::invalid("model", "model is required"));
    }
    if let Some(n) = s.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            format!("n = {n}: this server returns 1 choice per request (n = 1 only)"),
        ));
    }
    if let Some(t) = s.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature = {t} is outside 0..=2"),
        ));
    }
    if let Some(p) = s.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p = {p} is outside (0, 1]"),
        ));
    }
    for (name, v) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if let Some(v) = v.filter(|v| *v != 0.0) {
            return Err(ApiError::invalid(
                name,
                format!("{name} = {v} is not supported (only 0); use repeat_penalty"),
            ));
        }
    }
    if s.logprobs
        .as_ref()
        .is_some_and(|v| !(v.is_null() || *v == serde_json::Value::Bool(false)))
        || s.top_logprobs.is_some()
    {
        return Err(ApiError::invalid(
            "logprobs",
            "logprobs and top_logprobs are not supported by this server",
        ));
    }
    if s.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid(
            "logit_bias",
            "logit_bias is not supported by this server",
        ));
    }
    let seed = match s.seed {
        Some(v) if v < 0 => {
            return Err(ApiError::invalid(
                "seed",
                format!("seed = {v}: must be 0 or more"),
            ));
        }
        Some(v) => Some(v as u64),
        None => None,
    };
    let max_tokens = max_override.or(s.max_tokens);
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens = 0: must be at least 1",
        ));
    }
    if let (Some(min), Some(max)) = (s.min_tokens, max_tokens)
        && min > max
    {
        return Err(ApiError::invalid(
            "min_tokens",
            format!("min_tokens = {min} is more than max_tokens = {max}"),
        ));
    }
    let stop = match &s.stop {
        None => Vec::new(),
        Some(Stop::One(one)) => vec![one.clone()],
        Some(Stop::Many(many)) => many.clone(),
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop has {} strings, at most {MAX_STOPS} are allowed",
                stop.len()
            ),
        ));
    }
    for (i, one) in stop.iter().enumerate() {
        if one.is_empty() || one.len() > MAX_STOP_BYTES {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "stop[{i}] is {} bytes, must be 1..={MAX_STOP_BYTES}",
                    one.len()
                ),
            ));
        }
    }
    Ok(Options {
        sampling: SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: None,
            seed,
            min_tokens: s.min_tokens,
            ignore_eos: s.ignore_eos,
        },
        max_tokens: max_tokens.unwrap_or(0),
        stop,
        stream: s.stream.unwrap_or(false),
        include_usage: s
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// What a route asks of a TEXT model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// `/v1/completions`: a generation model.
    Generate,
    /// `/v1/chat/completions`: a generation model with a chat template.
    Chat,
    /// `/v1/embeddings`: an embedding model.
    Embed,
}

/// The model a route resolved, and what its worker read from the file.
pub(super) struct Resolved {
    /// The version every later step of the call uses.
    pub(super) handle: crate::worker::WorkerHandle,
    /// What the worker read (`None`: not loaded yet).
    pub(super) details: Option<sidecar_proto::v1::TextModelDetails>,
}

impl Resolved {
    /// Pins `req` to the version resolved (`api::Resolved`).
    pub(super) fn pin<T>(&self, mut req: tonic::Request<T>) -> tonic::Request<T> {
        req.extensions_mut()
            .insert(crate::api::Resolved(self.handle.clone()));
        req
    }
}

/// Checks that `model` is a TEXT model fit for `usage` before anything is
/// charged or sent: an unknown (or over-long) id is 404 `model_not_found`,
/// another family 404, a model that cannot serve the route (an embedding
/// model asked to chat, a generation model asked to embed, a chat without
/// a template) 400, which clients do not retry. What the worker read from
/// the file decides when the model has loaded; before that, its
/// `text.embeddings` setting when given. Returns the version found and
/// what its worker read.
pub(super) fn text_model(
    ctx: &Ctx,
    call: &Call,
    model: &str,
    usage: Use,
) -> Result<Resolved, ApiError> {
    let client = call.identity.to_string();
    // An id, an alias, or "id@version" (at most "@4294967295" more).
    if model.len() > crate::ids::MAX_MODEL_ID + 11 {
        crate::metrics::note_model(crate::metrics::UNKNOWN_MODEL);
        return Err(ApiError::from(
            Error::NotFound(format!(
                "no model has an id of {} bytes: ids are at most {} characters of [a-z0-9._-]",
                model.len(),
                crate::ids::MAX_MODEL_ID
            ))
            .with_request_id(&call.id, &client),
        )
        .with_param("model"));
    }
    let handle = ctx.registry.get(model).map_err(|e| {
        // As `api::call_worker` names it: made-up ids are one series.
        crate::metrics::note_model(crate::metrics::UNKNOWN_MODEL);
        ApiError::from(e.with_request_id(&call.id, &client)).with_param("model")
    })?;
    if handle.spec.family != Family::Text {
        crate::metrics::note_model(&handle.spec.id);
        return Err(ApiError::from(
            Error::NotFound(format!(
                "model {model:?} is not a text model: the OpenAI API serves the TEXT models of GET /v1/models"
            ))
            .with_request_id(&call.id, &client),
        )
        .with_param("model"));
    }
    let details = handle.status().details;
    let embeds = details
        .as_ref()
        .map(|d| d.embeddings)
        .or(handle.spec.text.embeddings);
    let refusal = match (usage, embeds) {
        (Use::Embed, Some(false)) => Some(format!(
            "model {model:?} generates text and cannot embed: /v1/embeddings needs an embedding model"
        )),
        (Use::Generate | Use::Chat, Some(true)) => Some(format!(
            "model {model:?} is an embedding model: use /v1/embeddings"
        )),
        (Use::Chat, _) if details.as_ref().is_some_and(|d| !d.has_chat_template) => Some(format!(
            "model {model:?} has no chat template in its file: use /v1/completions with a prompt"
        )),
        _ => None,
    };
    if let Some(message) = refusal {
        crate::metrics::note_model(&handle.spec.id);
        return Err(ApiError::from(
            Error::InvalidArgument(message).with_request_id(&call.id, &client),
        )
        .with_param("model"));
    }
    Ok(Resolved { handle, details })
}

/// OpenAI's `finish_reason`: `stop` for EOS or a stop string, `length`
/// for `max_tokens` or the context.
pub(super) fn finish_reason(code: i32) -> &'static str {
    match FinishReason::try_from(code) {
        Ok(FinishReason::Length | FinishReason::Context) => "length",
        _ => "stop",
    }
}

/// OpenAI's `usage`, with the prompt tokens a slot's kept KV cache
/// held (prompt-prefix reuse) as `prompt_tokens_details.cached_tokens`.
pub(super) fn usage(u: Option<&Usage>) -> serde_json::Value {
    let (p, c, cached) = u.map_or((0, 0, 0), |u| {
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens)
    });
    serde_json::json!({
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": u64::from(p) + u64::from(c),
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}
