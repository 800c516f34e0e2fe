//! The OpenAI-compatible HTTP API: `/v1/models`, `/v1/chat/completions`,
//! `/v1/completions` and `/v1/embeddings`, served with axum (HTTP/1.1 and
//! HTTP/2) on the main runtime, on a listener of its own (`[openai]`:
//! TCP or a Unix socket).
//!
//! Nothing here runs a call: each route reads and checks its JSON body,
//! builds the `tonic::Request` a gRPC client's call would be (the caller's
//! `auth::Identity`, its request id, `x-priority`, `cache-control`, a
//! `grpc-timeout` from the route's default deadline shortened by an
//! `x-request-timeout` header) and calls `api::text::TextApi`'s
//! `TextService` methods, so queues, rate limits, the result cache and
//! dedup, re-sends, deadlines, request ids and metrics are those of the
//! gRPC API. Answers and token streams are written in OpenAI's JSON and
//! SSE shapes; errors in its `{"error": {...}}` shape, with the HTTP
//! status `error::http_status` gives the gRPC code.
//!
//! The listener's connections go through `net` as the gRPC port's do
//! (connection cap, idle timeout, HTTP/2 limits, `[tls]`); tokens and
//! scopes are `auth::Auth`'s (every route needs `infer`).

mod chat;
mod completions;
mod embeddings;
mod errors;
mod listen;
mod models;
mod params;
mod router;
mod sse;
mod types;

use std::sync::Arc;

use crate::api::text::TextApi;
use crate::auth::Auth;
use crate::registry::Registry;

pub use listen::{Server, start};

/// What every route needs.
#[derive(Debug, Clone)]
struct Ctx {
    api: TextApi,
    registry: Arc<Registry>,
    auth: Arc<Auth>,
    /// Unix seconds at start: a model's `created` until it is loaded.
    started_unix: u64,
    /// `system_fingerprint` of every answer.
    fingerprint: Arc<str>,
}

impl Ctx {
    /// How a request body is read (`types::read_json`).
    fn body_limits(&self) -> types::BodyLimits {
        let config = &self.api.config;
        types::BodyLimits {
            bytes: config.openai.max_body_bytes as usize,
            patience: config
                .connections
                .idle_timeout
                .min(std::time::Duration::from_secs(30)),
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
