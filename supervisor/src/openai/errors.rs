//! Errors in OpenAI's shape: `{"error": {"message", "type", "param",
//! "code"}}`, with the HTTP status `error::http_status` gives the call's
//! gRPC code, `retry-after` and `retry-after-ms` on a 429.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::Code;

use crate::error::{Error, RETRY_AFTER_MS, http_status};

/// One refused call.
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    /// The gRPC code (metrics label, HTTP status).
    pub(super) code: Code,
    /// The message: names the field, the value and the limit.
    pub(super) message: String,
    /// The body field at fault (`messages[2].content`), when one is.
    pub(super) param: Option<String>,
    /// Milliseconds a rate-limited client should wait.
    pub(super) retry_after_ms: Option<u64>,
    /// The HTTP status when it is not the code's (413 for a body over the
    /// limit, 404 for an unknown route, 405).
    pub(super) status: Option<StatusCode>,
}

impl ApiError {
    /// A 400 naming `param`.
    pub(super) fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: Code::InvalidArgument,
            message: message.into(),
            param: Some(param.to_owned()),
            retry_after_ms: None,
            status: None,
        }
    }

    /// The same error naming `param`.
    pub(super) fn with_param(mut self, param: &str) -> ApiError {
        self.param = Some(param.to_owned());
        self
    }

    /// The same error with another HTTP status.
    pub(super) fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }

    fn http(&self) -> StatusCode {
        self.status.unwrap_or_else(|| {
            StatusCode::from_u16(http_status(self.code))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        })
    }

    /// OpenAI's `type` and `code` for the status.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self.http().as_u16() {
            400 | 413 | 405 => ("invalid_request_error", None),
            401 => ("authentication_error", Some("invalid_api_key")),
            403 => ("permission_error", None),
            // A model the registry does not hold; an unknown route has
            // its own status set.
            404 if self.code == Code::NotFound && self.status.is_none() => {
                ("invalid_request_error", Some("model_not_found"))
            }
            404 => ("invalid_request_error", Some("unknown_url")),
            429 if self.retry_after_ms.is_some() && self.code == Code::ResourceExhausted => {
                ("rate_limit_error", Some("rate_limit_exceeded"))
            }
            429 => ("rate_limit_error", None),
            503 => ("server_error", Some("model_unavailable")),
            504 => ("timeout_error", Some("deadline_exceeded")),
            _ => ("server_error", None),
        }
    }

    /// The JSON body.
    pub(super) fn body(&self) -> serde_json::Value {
        let (kind, code) = self.kind();
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": code,
            }
        })
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        let retry_after_ms = s
            .metadata()
            .get(RETRY_AFTER_MS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        ApiError {
            code: s.code(),
            message: s.message().to_owned(),
            param: None,
            retry_after_ms,
            status: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError::from(tonic::Status::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.http();
        let mut resp = json(status, &self.body());
        if status == StatusCode::TOO_MANY_REQUESTS {
            // A full queue names no time: a second, as llama-server's
            // and vLLM's clients back off.
            let ms = self.retry_after_ms.unwrap_or(1000).max(1);
            let h = resp.headers_mut();
            h.insert("retry-after", HeaderValue::from(ms.div_ceil(1000)));
            h.insert(RETRY_AFTER_MS, HeaderValue::from(ms));
        }
        resp.extensions_mut().insert(self.code);
        resp
    }
}

/// A JSON answer.
pub(super) fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_take_openais_shape_and_the_one_mapping() {
        let e = ApiError::from(Error::RateLimited {
            message: "over".into(),
            retry_after: std::time::Duration::from_millis(1500),
        });
        let resp = e.clone().into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["retry-after-ms"], "1500");
        assert_eq!(e.body()["error"]["type"], "rate_limit_error");
        assert_eq!(e.body()["error"]["message"], "over");
        let nf = ApiError::from(Error::NotFound("model \"x\" is not loaded".into()));
        assert_eq!(nf.clone().into_response().status(), 404);
        assert_eq!(nf.body()["error"]["code"], "model_not_found");
        let bad = ApiError::invalid("n", "n = 2: only 1 is supported");
        assert_eq!(bad.body()["error"]["param"], "n");
        assert_eq!(bad.into_response().status(), 400);
        let dl = ApiError::from(Error::DeadlineExceeded("late".into()));
        assert_eq!(dl.into_response().status(), 504);
        let failed = ApiError::from(Error::FailedPrecondition("FAILED".into()));
        assert_eq!(failed.into_response().status(), 503);
    }
}
