//! The routes, and what runs around each: the request id (answered in
//! `x-request-id` on every answer), the caller and its scope (`auth`),
//! the metrics (`protocol="http"`, the route's name as `method`), the
//! `x-request-timeout` header; and the `tonic::Request` a route hands to
//! `TextApi`, carrying what the gRPC layers would have put there.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tonic::Code;

use super::Ctx;
use super::errors::ApiError;
use crate::auth::{Identity, Method, Scope};
use crate::metrics::{CallInfo, Record};

/// The routes and their metric names.
const ROUTES: [(&str, &str); 5] = [
    ("/v1/models", "openai/models"),
    ("/v1/models/{model}", "openai/models"),
    ("/v1/chat/completions", "openai/chat.completions"),
    ("/v1/completions", "openai/completions"),
    ("/v1/embeddings", "openai/embeddings"),
];

/// The app: every route behind the request-id, auth and metrics layers.
pub(super) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/v1/models", get(super::models::list))
        .route("/v1/models/{model}", get(super::models::one))
        .route("/v1/chat/completions", post(super::chat::handle))
        .route("/v1/completions", post(super::completions::handle))
        .route("/v1/embeddings", post(super::embeddings::handle))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), guard))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(ctx.clone(), request_id))
        .with_state(ctx)
}

/// The call's request id (the client's `x-request-id` when it is one the
/// gRPC API would take, else a new one).
#[derive(Debug, Clone)]
pub(super) struct RequestId(pub String);

/// What a route knows of its call.
#[derive(Debug, Clone)]
pub(super) struct Call {
    /// The request id.
    pub(super) id: String,
    /// The caller.
    pub(super) identity: Identity,
    /// `x-request-timeout`, when sent.
    pub(super) timeout: Option<Duration>,
    /// `x-priority` and `cache-control`, passed on as gRPC metadata.
    forward: Vec<(&'static str, String)>,
    /// `content-length`, when sent.
    pub(super) declared: Option<u64>,
    /// The call's metrics record; a streaming route takes it into its
    /// stream, which finishes it.
    pub(super) record: Arc<Mutex<Option<Record>>>,
}

impl Call {
    /// The request `TextApi` gets: the id, the identity, the forwarded
    /// headers, and a `grpc-timeout` of `default` shortened by
    /// `x-request-timeout`, never over `max` (`deadlines.max`).
    pub(super) fn request<T>(
        &self,
        message: T,
        default: Duration,
        max: Duration,
    ) -> tonic::Request<T> {
        let timeout = self
            .timeout
            .map_or(default, |t| t.min(default))
            .min(max)
            .max(Duration::from_micros(1));
        let mut req = tonic::Request::new(message);
        let md = req.metadata_mut();
        if let Ok(v) = self.id.parse() {
            md.insert("x-request-id", v);
        }
        if let Ok(v) = grpc_timeout(timeout).parse() {
            md.insert("grpc-timeout", v);
        }
        for (name, value) in &self.forward {
            if let Ok(v) = value.parse() {
                md.insert(*name, v);
            }
        }
        req.extensions_mut().insert(self.identity.clone());
        req
    }

    /// The record, for a stream to finish.
    pub(super) fn take_record(&self) -> Option<Record> {
        self.record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// `e` with the call's request line, as the gRPC path writes it.
    pub(super) fn tag(&self, e: ApiError) -> ApiError {
        let line = format!("[request {} client {}]", self.id, self.identity);
        if e.message.contains(&self.id) {
            return e;
        }
        ApiError {
            message: format!("{} {line}", e.message),
            ..e
        }
    }
}

/// `timeout` as a `grpc-timeout` value (at most 8 digits).
fn grpc_timeout(timeout: Duration) -> String {
    let us = timeout.as_micros();
    if us < 100_000_000 {
        format!("{us}u")
    } else if us / 1000 < 100_000_000 {
        format!("{}m", us / 1000)
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

async fn request_id(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| ctx.registry.shared().request_ids.next());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Auth, metrics and the call's context around each route.
async fn guard(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    // Only matched routes reach this layer: the path is one of ROUTES
    // (`/v1/models/{model}` for any model id).
    let path = req.uri().path().to_owned();
    let name = ROUTES
        .iter()
        .find(|(p, _)| *p == path)
        .map_or("openai/models", |(_, n)| n);
    let info = Arc::new(CallInfo::new(name, "http"));
    let record = Arc::new(Mutex::new(Some(Record::new(
        info.clone(),
        ctx.registry.shared().metrics.clone(),
    ))));
    let id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let stamp = info.clone();
    let finish =
        move |mut resp: Response, record: &Mutex<Option<Record>>| {
            stamp.stamp_version(resp.headers_mut());
            if let Some(mut r) = record.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let code = resp.extensions().get::<Code>().copied().unwrap_or(
                    if resp.status().is_success() {
                        Code::Ok
                    } else {
                        Code::Unknown
                    },
                );
                r.finish(code as i32);
            }
            resp
        };
    crate::metrics::within(Some(info), async move {
        let method = Method {
            label: format!(
                "{} {}",
                req.method(),
                path.chars().take(128).collect::<String>()
            ),
            scope: Scope::Infer,
        };
        let decision = ctx.auth.decide_for(&req, &method);
        let client = decision.identity.to_string();
        crate::metrics::note_client(&client);
        if let Some(refusal) = decision.refusal {
            tracing::info!(client = %client, route = name, "call refused: {refusal}");
            let e = ApiError::from(refusal.with_request_id(&id, &client));
            return finish(e.into_response(), &record);
        }
        let timeout = match timeout_header(req.headers()) {
            Ok(t) => t,
            Err(e) => {
                let e = ApiError::from(
                    crate::error::Error::InvalidArgument(e).with_request_id(&id, &client),
                );
                return finish(e.into_response(), &record);
            }
        };
        let forward = ["x-priority", "cache-control"]
            .into_iter()
            .filter_map(|name| {
                let v = req.headers().get(name)?.to_str().ok()?;
                Some((name, v.to_owned()))
            })
            .collect();
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        req.extensions_mut().insert(decision.identity.clone());
        req.extensions_mut().insert(Call {
            id,
            identity: decision.identity,
            timeout,
            forward,
            declared,
            record: record.clone(),
        });
        let resp = next.run(req).await;
        finish(resp, &record)
    })
    .await
}

/// `x-request-timeout`: seconds, more than 0.
fn timeout_header(headers: &axum::http::HeaderMap) -> Result<Option<Duration>, String> {
    let Some(v) = headers.get("x-request-timeout") else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("");
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(Some(
            Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX),
        )),
        _ => Err(format!(
            "header x-request-timeout {:?} is not a number of seconds more than 0",
            text.chars().take(64).collect::<String>()
        )),
    }
}

async fn unknown_route(State(ctx): State<Ctx>, req: Request) -> Response {
    no_route(&ctx, &req, StatusCode::NOT_FOUND, "no route")
}

async fn wrong_method(State(ctx): State<Ctx>, req: Request) -> Response {
    no_route(
        &ctx,
        &req,
        StatusCode::METHOD_NOT_ALLOWED,
        "wrong method for",
    )
}

/// A request no route takes: OpenAI's error JSON, counted as `unknown`.
fn no_route(ctx: &Ctx, req: &Request, status: StatusCode, what: &str) -> Response {
    let shown: String = req.uri().path().chars().take(128).collect();
    let mut record = Record::new(
        Arc::new(CallInfo::new("unknown", "http")),
        ctx.registry.shared().metrics.clone(),
    );
    let code = if status == StatusCode::NOT_FOUND {
        Code::NotFound
    } else {
        Code::InvalidArgument
    };
    record.finish(code as i32);
    ApiError {
        code,
        message: format!(
            "{what} {} {shown:?}: this server serves GET /v1/models, GET /v1/models/ID, POST /v1/chat/completions, POST /v1/completions and POST /v1/embeddings",
            req.method()
        ),
        param: None,
        retry_after_ms: None,
        status: Some(status),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_fit_grpc_timeout() {
        assert_eq!(grpc_timeout(Duration::from_millis(1)), "1000u");
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(grpc_timeout(Duration::from_secs(3600)), "3600000m");
        for t in [
            Duration::from_micros(1),
            Duration::from_secs(99),
            Duration::from_secs(101),
            Duration::from_secs(3600 * 24 * 365 * 10),
        ] {
            let v = grpc_timeout(t);
            let back = crate::api::parse_grpc_timeout(&v).expect("parses");
            assert!(back <= t && v.len() <= 9, "{t:?} {v}");
        }
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-request-timeout", HeaderValue::from_static("0.001"));
        assert_eq!(timeout_header(&h), Ok(Some(Duration::from_millis(1))));
        h.insert("x-request-timeout", HeaderValue::from_static("-1"));
        let e = timeout_header(&h).unwrap_err();
        assert!(e.contains("\"-1\""), "{e}");
    }
}
