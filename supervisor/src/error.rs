//! The supervisor's errors, and the one place they become gRPC statuses.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The response metadata that tells a rate-limited caller how long to wait,
/// in whole milliseconds (at least 1).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Everything a call or an operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Bad input; the message names the field, the value and the limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such model or file.
    #[error("{0}")]
    NotFound(String),
    /// The id is taken by something else.
    #[error("{0}")]
    AlreadyExists(String),
    /// Loading, restarting, draining, or the worker died mid-call:
    /// retryable.
    #[error("{0}")]
    Unavailable(String),
    /// The model is FAILED or cannot serve this call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Queue full, memory budget.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Over a client class's rate limit: RESOURCE_EXHAUSTED with
    /// `retry-after-ms` metadata and a `google.rpc.RetryInfo` detail.
    #[error("{message}")]
    RateLimited {
        /// Names the class, the limit and the call's cost.
        message: String,
        /// When the call would conform.
        retry_after: Duration,
    },
    /// The deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The client went away.
    #[error("{0}")]
    Cancelled(String),
    /// Not built yet; the message says what.
    #[error("{0}")]
    Unimplemented(String),
    /// No credentials, or credentials the sidecar does not know. The
    /// message never holds what the caller sent.
    #[error("{0}")]
    Unauthenticated(String),
    /// Known caller, missing scope; the message names the scope and the
    /// method.
    #[error("{0}")]
    PermissionDenied(String),
    /// A bad configuration.
    #[error("config: {0}")]
    Config(String),
    /// A bug, or an OS failure we did not expect.
    #[error("internal: {0}")]
    Internal(String),
    /// The call's worker (pid) died before the call's last frame: the
    /// error the caller sees (UNAVAILABLE, or RESOURCE_EXHAUSTED for a
    /// kill for memory). A deterministic call may be re-sent once
    /// (`api::deterministic`).
    #[error("{error}")]
    WorkerDied {
        /// The dead worker.
        pid: u32,
        /// What the caller sees.
        error: Box<Error>,
    },
}

impl Error {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::AlreadyExists(_) => "already_exists",
            Error::Unavailable(_) => "unavailable",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::ResourceExhausted(_) => "resource_exhausted",
            Error::RateLimited { .. } => "rate_limited",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::Cancelled(_) => "cancelled",
            Error::Unimplemented(_) => "unimplemented",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Config(_) => "config",
            Error::Internal(_) => "internal",
            Error::WorkerDied { error, .. } => error.kind(),
        }
    }

    /// The same error, its message ending with the call's request line
    /// (`[request ID client NAME]`: the request id and the caller's
    /// identity, see `auth::Identity`), so a caller's report can be matched
    /// with the logs. Empty parts are left out.
    pub fn with_request_id(self, id: &str, client: &str) -> Error {
        let line = request_line(id, client);
        self.map_message(&|m: String| {
            if line.is_empty() || m.ends_with(&line) || (!id.is_empty() && m.contains(id)) {
                m
            } else {
                format!("{m} {line}")
            }
        })
    }

    /// The same error without the request line of call `id` by `client`
    /// (and without `id` anywhere in its message): what another caller
    /// may be shown of it (a deduplicated call's answer, see
    /// `cache::flight`), before its own line is added.
    pub fn without_request_id(self, id: &str, client: &str) -> Error {
        let line = request_line(id, client);
        self.map_message(&|m: String| {
            let m = match m.strip_suffix(&line) {
                Some(rest) if !line.is_empty() => rest.trim_end().to_owned(),
                _ => m,
            };
            if id.is_empty() {
                m
            } else {
                m.replace(id, "(another call)")
            }
        })
    }

    /// The same error with its message rewritten by `tag`.
    pub fn map_message(self, tag: &dyn Fn(String) -> String) -> Error {
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(tag(m)),
            Error::NotFound(m) => Error::NotFound(tag(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(tag(m)),
            Error::Unavailable(m) => Error::Unavailable(tag(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(tag(m)),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(tag(m)),
            Error::RateLimited {
                message,
                retry_after,
            } => Error::RateLimited {
                message: tag(message),
                retry_after,
            },
            Error::DeadlineExceeded(m) => Error::DeadlineExceeded(tag(m)),
            Error::Cancelled(m) => Error::Cancelled(tag(m)),
            Error::Unimplemented(m) => Error::Unimplemented(tag(m)),
            Error::Unauthenticated(m) => Error::Unauthenticated(tag(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(tag(m)),
            Error::Config(m) => Error::Config(tag(m)),
            Error::Internal(m) => Error::Internal(tag(m)),
            Error::WorkerDied { pid, error } => Error::WorkerDied {
                pid,
                error: Box::new(error.map_message(tag)),
            },
        }
    }

    /// A worker's ERROR frame, by its gRPC code number.
    pub fn from_worker(code: u32, message: String) -> Error {
        match Code::from_i32(code as i32) {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(message),
            Code::NotFound => Error::NotFound(message),
            Code::DeadlineExceeded => Error::DeadlineExceeded(message),
            Code::Cancelled => Error::Cancelled(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::ResourceExhausted => Error::ResourceExhausted(message),
            Code::Unimplemented => Error::Unimplemented(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            _ => Error::Internal(message),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let e = match e {
            Error::WorkerDied { error, .. } => *error,
            other => other,
        };
        if let Error::RateLimited {
            message,
            retry_after,
        } = e
        {
            // Whole milliseconds, rounded up: a client that waits this long
            // conforms.
            let ms = retry_after.as_micros().div_ceil(1000).max(1);
            let ms = u64::try_from(ms).unwrap_or(u64::MAX);
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert(RETRY_AFTER_MS, ms.into());
            return Status::with_error_details_and_metadata(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(Duration::from_millis(ms))),
                metadata,
            );
        }
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Unavailable(_) => Code::Unavailable,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) | Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Config(_) | Error::Internal(_) => Code::Internal,
            Error::WorkerDied { .. } => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

/// The HTTP status a call's gRPC code becomes on the OpenAI-compatible
/// HTTP API (`openai`): the one step after [`From<Error> for Status`], so
/// the variants are mapped once. A FAILED model (FAILED_PRECONDITION) is
/// 503 as a loading or restarting one is; a rate limit or a full queue
/// (RESOURCE_EXHAUSTED) 429; a client that went away 499 (nginx's "client
/// closed request": nobody reads it).
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable | Code::FailedPrecondition => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// `[request ID client NAME]`, empty parts left out.
fn request_line(id: &str, client: &str) -> String {
    match (id.is_empty(), client.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("[request {id}]"),
        (true, false) => format!("[client {client}]"),
        (false, false) => format!("[request {id} client {client}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_callers_request_line_is_replaced_by_ones_own() {
        let leader = Error::WorkerDied {
            pid: 7,
            error: Box::new(Error::Unavailable("worker died".into())),
        }
        .with_request_id("r-1", "token:alice");
        let shown = leader
            .without_request_id("r-1", "token:alice")
            .with_request_id("r-2", "token:bob");
        let m = shown.to_string();
        assert_eq!(m, "worker died [request r-2 client token:bob]");
        let e = Error::InvalidArgument("request r-1: bad [request r-1 client a]".into())
            .without_request_id("r-1", "a")
            .with_request_id("r-2", "b");
        assert_eq!(
            e.to_string(),
            "request (another call): bad [request r-2 client b]"
        );
    }

    #[test]
    fn every_error_has_the_http_status_a_client_expects() {
        for (e, want) in [
            (Error::InvalidArgument("x".into()), 400),
            (Error::Unauthenticated("x".into()), 401),
            (Error::PermissionDenied("x".into()), 403),
            (Error::NotFound("x".into()), 404),
            (Error::ResourceExhausted("x".into()), 429),
            (
                Error::RateLimited {
                    message: "x".into(),
                    retry_after: Duration::from_millis(5),
                },
                429,
            ),
            (Error::Unavailable("x".into()), 503),
            (Error::FailedPrecondition("x".into()), 503),
            (Error::DeadlineExceeded("x".into()), 504),
            (Error::Internal("x".into()), 500),
            (
                Error::WorkerDied {
                    pid: 1,
                    error: Box::new(Error::Unavailable("x".into())),
                },
                503,
            ),
        ] {
            assert_eq!(http_status(Status::from(e.clone()).code()), want, "{e:?}");
        }
    }

    #[test]
    fn a_rate_limited_error_carries_retry_after_and_retry_info() {
        let e = Error::RateLimited {
            message: "over the limit".into(),
            retry_after: Duration::from_micros(1500),
        }
        .with_request_id("r1", "etl");
        let status = Status::from(e);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "over the limit [request r1 client etl]");
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AFTER_MS)
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
        let info = status.get_details_retry_info().expect("RetryInfo detail");
        assert_eq!(info.retry_delay, Some(Duration::from_millis(2)));
        let zero = Status::from(Error::RateLimited {
            message: "m".into(),
            retry_after: Duration::ZERO,
        });
        assert_eq!(
            zero.metadata()
                .get(RETRY_AFTER_MS)
                .and_then(|v| v.to_str().ok()),
            Some("1"),
            "never 0"
        );
    }
}
