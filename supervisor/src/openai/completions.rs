//! `POST /v1/completions`.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sidecar_proto::v1::GenerateRequest;
use sidecar_proto::v1::text_service_server::TextService;

use super::Ctx;
use super::errors::ApiError;
use super::params::{Options, Use, options, text_model};
use super::router::Call;
use super::sse::{Kind, Shape};
use super::types::{GenBody, read_json};

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

/// The prompt: a string, or a list of one string.
fn prompt(v: &Value) -> Result<String, ApiError> {
    let one = match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.len() == 1 => items[0].as_str().map(str::to_owned),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "prompt is a list of {} strings: this server completes 1 prompt per request",
                    items.len()
                ),
            ));
        }
        _ => None,
    };
    match one {
        Some(p) if !p.is_empty() => Ok(p),
        Some(_) => Err(ApiError::invalid("prompt", "prompt must not be empty")),
        None => Err(ApiError::invalid(
            "prompt",
            "prompt must be a string or a list of one string (token ids are not supported)",
        )),
    }
}

async fn run(ctx: &Ctx, call: &Call, body: Body) -> Result<Response, ApiError> {
    let body: GenBody = read_json(body, ctx.body_limits(), call.declared).await?;
    let opts = options(&body, None)?;
    let Some(p) = body.prompt.as_ref() else {
        return Err(ApiError::invalid("prompt", "prompt is required"));
    };
    let text = prompt(p)?;
    if body.echo == Some(true) {
        return Err(ApiError::invalid(
            "echo",
            "echo is not supported by this server",
        ));
    }
    if body.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "suffix is not supported by this server",
        ));
    }
    if let Some(b) = body.best_of.filter(|&b| b != 1) {
        return Err(ApiError::invalid(
            "best_of",
            format!("best_of = {b}: only 1 is supported"),
        ));
    }
    let model = body.model.clone();
    let resolved = text_model(ctx, call, &model, Use::Generate)?;
    let config = &ctx.api.config;
    let default = opts.timeout(config.openai.completions_timeout, config);
    let Options {
        sampling,
        max_tokens,
        stop,
        stream,
        include_usage,
    } = opts;
    let message = GenerateRequest {
        model_id: model.clone(),
        prompt: text,
        sampling: Some(sampling),
        max_tokens,
        stop,
        constraint: None,
        add_special: None,
    };
    let req = resolved.pin(call.request(message, default, config.deadlines.max));
    let shape = Shape::new(
        Kind::Completion,
        &call.id,
        model,
        &ctx.fingerprint,
        include_usage,
    );
    if stream {
        let tokens = ctx.api.generate_stream(req).await?.into_inner();
        return Ok(super::sse::response(tokens, shape, call.take_record()));
    }
    let answer = ctx.api.generate(req).await?.into_inner();
    Ok(shape.whole(&answer))
}
