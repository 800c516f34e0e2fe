//! Errors a worker answers with, each with the gRPC code the caller gets.

/// gRPC status codes used by the worker (numbers as in google.rpc.Code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// The client went away or the supervisor cancelled.
    Cancelled = 1,
    /// Bad input.
    InvalidArgument = 3,
    /// The deadline passed.
    DeadlineExceeded = 4,
    /// The model cannot serve this call.
    FailedPrecondition = 9,
    /// Not served by this worker (yet).
    Unimplemented = 12,
    /// A bug or a runtime failure.
    Internal = 13,
    /// The model could not be loaded.
    Unavailable = 14,
}

/// A failed request: code and a message that names the field and the limit.
#[derive(Debug, thiserror::Error)]
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

    /// The wire form.
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
        WorkerError::new(Code::Internal, format!("ipc: {e}"))
    }
}
