//! `POST /v1/chat/completions`.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sidecar_proto::v1::text_service_server::TextService;
use sidecar_proto::v1::{ChatMessage, ChatRequest, OutputConstraint, output_constraint};

use super::Ctx;
use super::errors::ApiError;
use super::params::{Options, Use, options, text_model};
use super::router::Call;
use super::sse::{Kind, Shape};
use super::types::{Content, GenBody, read_json};

/// Most messages of one chat.
pub(super) const MAX_MESSAGES: usize = 1024;

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

async fn run(ctx: &Ctx, call: &Call, body: Body) -> Result<Response, ApiError> {
    let body: GenBody = read_json(body, ctx.body_limits(), call.declared).await?;
    let opts = options(&body, body.max_completion_tokens)?;
    let (messages, constraint) = check(&body)?;
    let model = body.model.clone();
    let resolved = text_model(ctx, call, &model, Use::Chat)?;
    let config = &ctx.api.config;
    let default = opts.timeout(config.openai.chat_timeout, config);
    let Options {
        sampling,
        max_tokens,
        stop,
        stream,
        include_usage,
    } = opts;
    let message = ChatRequest {
        model_id: model.clone(),
        messages,
        sampling: Some(sampling),
        max_tokens,
        stop,
        constraint,
        chat_template: String::new(),
    };
    let req = resolved.pin(call.request(message, default, config.deadlines.max));
    let shape = Shape::new(Kind::Chat, &call.id, model, &ctx.fingerprint, include_usage);
    if stream {
        let tokens = ctx.api.chat_stream(req).await?.into_inner();
        return Ok(super::sse::response(tokens, shape, call.take_record()));
    }
    let answer = ctx.api.chat(req).await?.into_inner();
    Ok(shape.whole(&answer))
}

/// The messages and the output constraint, checked.
fn check(body: &GenBody) -> Result<(Vec<ChatMessage>, Option<OutputConstraint>), ApiError> {
    for (name, list) in [("tools", &body.tools), ("functions", &body.functions)] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(ApiError::invalid(
                name,
                format!("{name} (tool calling) is not supported by this server"),
            ));
        }
    }
    let Some(list) = body.messages.as_ref() else {
        return Err(ApiError::invalid("messages", "messages is required"));
    };
    let n = list.len();
    if n == 0 || n > MAX_MESSAGES {
        return Err(ApiError::invalid(
            "messages",
            format!("messages has {n} entries, must be 1..={MAX_MESSAGES}"),
        ));
    }
    let mut messages = Vec::with_capacity(n);
    for (i, m) in list.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!(
                        "messages[{i}].role {shown:?} is not supported: system, developer, user or assistant"
                    ),
                ));
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                &format!("messages[{i}].content[{j}].text"),
                                format!("messages[{i}].content[{j}] is a text part without text"),
                            ));
                        }
                        (other, _) => {
                            let shown: String = other.chars().take(32).collect();
                            return Err(ApiError::invalid(
                                &format!("messages[{i}].content[{j}].type"),
                                format!(
                                    "messages[{i}].content[{j}].type {shown:?} is not supported: only text parts are"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage {
            role: role.to_owned(),
            content,
        });
    }
    let constraint = match &body.response_format {
        None => None,
        Some(f) => match f.kind.as_str() {
            "text" => None,
            // Any JSON object: the schema every object satisfies.
            "json_object" => Some(output_constraint::Kind::JsonSchema(
                r#"{"type":"object"}"#.to_owned(),
            )),
            "json_schema" => {
                let schema = f
                    .json_schema
                    .as_ref()
                    .and_then(|s| s.schema.as_ref())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "response_format.json_schema.schema",
                            "response_format of type json_schema needs json_schema.schema",
                        )
                    })?;
                Some(output_constraint::Kind::JsonSchema(schema.to_string()))
            }
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(ApiError::invalid(
                    "response_format.type",
                    format!(
                        "response_format.type {shown:?} is not supported: text, json_object or json_schema"
                    ),
                ));
            }
        }
        .map(|kind| OutputConstraint { kind: Some(kind) }),
    };
    Ok((messages, constraint))
}
