//! `GET /v1/models` and `GET /v1/models/{model}`: the TEXT models that
//! are READY or can be loaded (lazy, loading, restarting); FAILED and
//! unloading ones are left out.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, http::StatusCode};
use serde_json::{Value, json};

use super::Ctx;
use super::errors::{ApiError, json};
use super::router::Call;
use crate::config::Family;
use crate::error::Error;
use crate::lifecycle::State as ModelState;

/// Every model this API serves, as OpenAI's model objects.
fn served(ctx: &Ctx) -> Vec<(String, Value)> {
    ctx.registry
        .list()
        .into_iter()
        .filter(|h| h.spec.family == Family::Text)
        .filter_map(|h| {
            let s = h.status();
            if matches!(
                s.state,
                ModelState::Failed | ModelState::Stopped | ModelState::Unloading
            ) {
                return None;
            }
            // When its worker was loaded; a lazy model: when the sidecar
            // started.
            let created = if s.loaded_unix_ms > 0 {
                (s.loaded_unix_ms / 1000) as u64
            } else {
                ctx.started_unix
            };
            let id = h.spec.id.clone();
            let v = json!({"id": id, "object": "model", "created": created, "owned_by": "sidecar"});
            Some((id, v))
        })
        .collect()
}

/// `GET /v1/models`.
pub(super) async fn list(State(ctx): State<Ctx>) -> Response {
    let data: Vec<Value> = served(&ctx).into_iter().map(|(_, v)| v).collect();
    json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{model}`.
pub(super) async fn one(
    State(ctx): State<Ctx>,
    Extension(call): Extension<Call>,
    model: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    // A path that is not UTF-8 once decoded (`/v1/models/%FF`): the
    // same JSON error shape as every other answer.
    let model = match model {
        Ok(Path(model)) => model,
        Err(e) => {
            return ApiError::from(
                Error::InvalidArgument(format!("the model id in the path: {e}"))
                    .with_request_id(&call.id, &call.identity.to_string()),
            )
            .with_param("model")
            .into_response();
        }
    };
    match served(&ctx).into_iter().find(|(id, _)| *id == model) {
        Some((_, v)) => json(StatusCode::OK, &v),
        None => {
            let shown: String = model.chars().take(128).collect();
            ApiError::from(
                Error::NotFound(format!(
                    "model {shown:?} is not a text model this server serves"
                ))
                .with_request_id(&call.id, &call.identity.to_string()),
            )
            .with_param("model")
            .into_response()
        }
    }
}
