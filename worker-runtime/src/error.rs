//! The one error a worker answers a request with: a status code the
//! caller gets and a message that names the field, the value and the
//! limit.

/// gRPC status codes a worker answers with (numbers as in
/// `google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// The client went away or the supervisor cancelled.
    Cancelled = 1,
    /// Bad input: the message names the field, what was expected and got.
    InvalidArgument = 3,
    /// The request's deadline passed in the worker.
    DeadlineExceeded = 4,
    /// Out of a resource the request needs.
    ResourceExhausted = 8,
    /// The model cannot serve this call (wrong kind of model, none loaded,
    /// no GPU).
    FailedPrecondition = 9,
    /// Not served by this worker.
    Unimplemented = 12,
    /// A bug, or the native runtime failed.
    Internal = 13,
    /// The model could not be loaded.
    Unavailable = 14,
}

/// A failed request: its code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WorkerError {
    /// Status code for the caller.
    pub code: Code,
    /// Message for the caller.
    pub message: String,
}

impl WorkerError {
    /// An error with this code.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        WorkerError {
            code,
            message: message.into(),
        }
    }

    /// INVALID_ARGUMENT.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// FAILED_PRECONDITION.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// UNIMPLEMENTED.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    /// UNAVAILABLE (a model that could not be loaded).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// INTERNAL.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// CANCELLED: what a request the supervisor cancelled is answered with.
    pub fn cancelled() -> Self {
        Self::new(Code::Cancelled, "cancelled by the supervisor")
    }

    /// The wire form; `fatal`: the worker cannot go on (request id 0).
    pub fn to_proto(&self, fatal: bool) -> sidecar_proto::worker::WorkerError {
        sidecar_proto::worker::WorkerError {
            code: self.code as u32,
            message: self.message.clone(),
            fatal,
        }
    }
}

impl From<ipc::Error> for WorkerError {
    fn from(e: ipc::Error) -> Self {
        WorkerError::internal(format!("ipc: {e}"))
    }
}

/// FAILED_PRECONDITION "no model loaded": a call before a successful Load.
pub fn not_loaded() -> WorkerError {
    WorkerError::precondition("no model loaded")
}

/// RESOURCE_EXHAUSTED for an answer of `len` bytes when a frame of the
/// response ring carries at most `max`: the request gets this instead of
/// its answer, and the worker goes on.
pub fn answer_too_large(len: usize, max: usize) -> WorkerError {
    WorkerError::new(
        Code::ResourceExhausted,
        format!(
            "answer of {len} bytes exceeds the response ring's frame limit of {max} bytes; ask for less in one call (fewer inputs, pieces or outputs)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_google_rpc_numbers() {
        let numbers = [
            (Code::Cancelled, 1),
            (Code::InvalidArgument, 3),
            (Code::DeadlineExceeded, 4),
            (Code::ResourceExhausted, 8),
            (Code::FailedPrecondition, 9),
            (Code::Unimplemented, 12),
            (Code::Internal, 13),
            (Code::Unavailable, 14),
        ];
        for (code, n) in numbers {
            assert_eq!(
                WorkerError::new(code, "x").to_proto(false).code,
                n,
                "{code:?}"
            );
        }
    }

    #[test]
    fn constructors_pick_their_code_and_keep_the_message() {
        let cases = [
            (WorkerError::invalid("a"), Code::InvalidArgument),
            (WorkerError::precondition("a"), Code::FailedPrecondition),
            (WorkerError::unimplemented("a"), Code::Unimplemented),
            (WorkerError::unavailable("a"), Code::Unavailable),
            (WorkerError::internal("a"), Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(
                (e.code, e.message.as_str(), e.to_string()),
                (code, "a", "a".into())
            );
        }
        assert_eq!(
            WorkerError::cancelled().message,
            "cancelled by the supervisor"
        );
        assert_eq!(not_loaded().code, Code::FailedPrecondition);
        assert_eq!(not_loaded().message, "no model loaded");
    }

    #[test]
    fn the_wire_form_carries_code_message_and_fatal() {
        let p = WorkerError::invalid("max_tokens 9 exceeds 8").to_proto(true);
        assert_eq!(
            (p.code, p.message.as_str(), p.fatal),
            (3, "max_tokens 9 exceeds 8", true)
        );
    }

    #[test]
    fn channel_errors_are_internal() {
        let e = WorkerError::from(ipc::Error::PeerGone);
        assert_eq!(e.code, Code::Internal);
        assert!(e.message.starts_with("ipc: ipc peer gone"), "{e}");
    }
}
