//! Channels to a TCP or Unix-socket address, and per-call metadata and
//! deadlines: every call gets what is left of the example's one deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Messages up to 64 MiB both ways (the server's own limit still applies).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A channel to `HOST:PORT` or `unix:/PATH` (`unix:///PATH`), with HTTP/2
/// keepalive so a dead connection is noticed while calls run.
pub(crate) async fn connect(target: &str) -> Result<Channel, String> {
    if let Some(path) = target.strip_prefix("unix:") {
        let path = format!("/{}", path.trim_start_matches('/'));
        // tonic sends `localhost` as :authority over a Unix socket.
        let shown = path.clone();
        return Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| format!("cannot connect to unix:{shown}: {e}"));
    }
    Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| format!("bad --target {target:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))
}

/// What every call carries: the deadline, the token, the client id.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    end: Instant,
    token: Option<String>,
    client_id: Option<String>,
    next_id: std::cell::Cell<u64>,
}

impl Call {
    pub(crate) fn new(budget: Duration, token: Option<String>, client_id: Option<String>) -> Call {
        Call {
            end: Instant::now() + budget,
            token,
            client_id,
            next_id: std::cell::Cell::new(0),
        }
    }

    /// The same budget, without the client id (calls of any caller).
    pub(crate) fn anonymous(&self) -> Call {
        Call {
            client_id: None,
            ..self.clone()
        }
    }

    /// When the example's budget ends.
    pub(crate) fn end(&self) -> Instant {
        self.end
    }

    /// Time left, or DEADLINE_EXCEEDED when none.
    pub(crate) fn remaining(&self) -> Result<Duration, Status> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Status::deadline_exceeded("the example's deadline is spent"));
        }
        Ok(left)
    }

    /// `msg` with `grpc-timeout` = the time left (at most `cap`), an
    /// `x-request-id`, and the token or client id.
    pub(crate) fn request_within<T>(
        &self,
        msg: T,
        cap: Option<Duration>,
    ) -> Result<Request<T>, Status> {
        let mut left = self.remaining()?;
        if let Some(cap) = cap {
            left = left.min(cap);
        }
        let mut req = Request::new(msg);
        req.set_timeout(left);
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        let md = req.metadata_mut();
        let id = format!("rs-{}-{n}", std::process::id());
        md.insert("x-request-id", ascii(&id)?);
        if let Some(t) = &self.token {
            md.insert("authorization", ascii(&format!("Bearer {t}"))?);
        }
        if let Some(c) = &self.client_id {
            md.insert("x-client-id", ascii(c)?);
        }
        Ok(req)
    }

    /// [`Call::request_within`] without a cap.
    pub(crate) fn request<T>(&self, msg: T) -> Result<Request<T>, Status> {
        self.request_within(msg, None)
    }

    /// Runs `fut` until the deadline: the server enforces `grpc-timeout`,
    /// this enforces it here too (a server that never answers).
    pub(crate) async fn within<T>(
        &self,
        fut: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout_at(self.end, fut).await {
            Ok(r) => r.map_err(deadline_as_such),
            Err(_) => Err(Status::deadline_exceeded("the example's deadline passed")),
        }
    }
}

fn ascii(s: &str) -> Result<tonic::metadata::AsciiMetadataValue, Status> {
    MetadataValue::try_from(s)
        .map_err(|_| Status::invalid_argument(format!("metadata value {s:?} is not ASCII")))
}

/// tonic ends a call whose `grpc-timeout` passed on the client's side
/// with CANCELLED "Timeout expired" (tonic 0.14); every other gRPC client
/// says DEADLINE_EXCEEDED, and so does the server: say it too, so that
/// the retry rules see one code.
pub(crate) fn deadline_as_such(s: Status) -> Status {
    if s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired" {
        Status::deadline_exceeded("Deadline Exceeded (the call's grpc-timeout passed)")
    } else {
        s
    }
}

/// A code's name as gRPC spells it (RESOURCE_EXHAUSTED).
pub(crate) fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code;
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A status as one line: code, message.
pub(crate) fn show(s: &Status) -> String {
    format!("{}: {}", code_name(s.code()), s.message())
}
