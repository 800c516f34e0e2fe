//! `POST /v1/embeddings`.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use sidecar_proto::v1::EmbedRequest;
use sidecar_proto::v1::text_service_server::TextService;

use super::Ctx;
use super::errors::{ApiError, json};
use super::params::{Use, text_model};
use super::router::Call;
use super::types::{EmbedBody, read_json};
use crate::api::deterministic::methods::MAX_EMBED_INPUTS;

/// See the module.
pub(super) async fn handle(
    State(ctx): State<Ctx>,
    Extension(call): Extension<Call>,
    body: Body,
) -> Response {
    match run(&ctx, &call, body).await {
        Ok(r) => r,
        Err(e) => call.tag(e).into_response(),
    }
}

/// The texts of `input`: a string or a list of strings.
fn inputs(v: &Value) -> Result<Vec<String>, ApiError> {
    let texts = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_EMBED_INPUTS {
                return Err(ApiError::invalid(
                    "input",
                    format!(
                        "input has {} entries, must be 1..={MAX_EMBED_INPUTS}",
                        items.len()
                    ),
                ));
            }
            if items.iter().any(|i| i.is_number() || i.is_array()) {
                return Err(ApiError::invalid(
                    "input",
                    "input as token ids is not supported by this server: send the text",
                ));
            }
            let mut texts = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Some(t) = item.as_str() else {
                    return Err(ApiError::invalid(
                        &format!("input[{i}]"),
                        format!("input[{i}] is not a string"),
                    ));
                };
                texts.push(t.to_owned());
            }
            texts
        }
        _ => {
            return Err(ApiError::invalid(
                "input",
                "input must be a string or a list of strings",
            ));
        }
    };
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(ApiError::invalid(
            "input",
            format!("input[{i}] is empty: every input needs at least one character"),
        ));
    }
    Ok(texts)
}

async fn run(ctx: &Ctx, call: &Call, body: Body) -> Result<Response, ApiError> {
    let body: EmbedBody = read_json(body, ctx.body_limits(), call.declared).await?;
    if body.model.is_empty() {
        return Err(ApiError::invalid("model", "model is required"));
    }
    let texts = inputs(&body.input)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format {shown:?} is not supported: float or base64"),
            ));
        }
    };
    let resolved = text_model(ctx, call, &body.model, Use::Embed)?;
    let details = resolved.details.clone();
    // Checked before the call when the model's width is known (it has
    // loaded), so a wrong value costs no embedding and no charge.
    if let (Some(d), Some(width)) = (body.dimensions, details.map(|d| d.embedding_size))
        && d != width
    {
        return Err(wrong_dimensions(d, &body.model, width));
    }
    let config = &ctx.api.config;
    let default = config
        .openai
        .embeddings_timeout
        .unwrap_or(config.deadlines.unary);
    let message = EmbedRequest {
        model_id: body.model.clone(),
        inputs: texts,
        normalize: None,
        truncation: 0,
    };
    let req = resolved.pin(call.request(message, default, config.deadlines.max));
    let answer = ctx.api.embed(req).await?.into_inner();
    if let Some(d) = body.dimensions.filter(|&d| d != answer.dimensions) {
        return Err(wrong_dimensions(d, &body.model, answer.dimensions));
    }
    let data: Vec<Value> = answer
        .embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.values.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e.values)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let prompt = answer.usage.as_ref().map_or_else(
        || answer.embeddings.iter().map(|e| e.tokens).sum(),
        |u| u.prompt_tokens,
    );
    Ok(json(
        axum::http::StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }),
    ))
}

/// `dimensions` other than the model's width.
fn wrong_dimensions(d: u32, model: &str, width: u32) -> ApiError {
    ApiError::invalid(
        "dimensions",
        format!(
            "dimensions = {d}: model {model:?} gives {width}-dimensional vectors and cannot shorten them; omit dimensions or send {width}"
        ),
    )
}
