//! Errors of the LiteRT wrapper and of the worker's calls.

use sidecar_proto::worker::WorkerError;

/// gRPC status codes the worker answers with (numbers as in google.rpc.Code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// The supervisor cancelled.
    Cancelled = 1,
    /// Bad input: the message names the tensor, what was expected and got.
    InvalidArgument = 3,
    /// The deadline passed.
    DeadlineExceeded = 4,
    /// The model cannot serve this (e.g. no GPU).
    FailedPrecondition = 9,
    /// Not served by this worker.
    Unimplemented = 12,
    /// A runtime failure.
    Internal = 13,
    /// The model could not be loaded.
    Unavailable = 14,
}

/// What can go wrong in the LiteRT wrapper.
#[derive(Debug, thiserror::Error)]
pub enum LiteError {
    /// The runtime refused (its status and what we asked).
    #[error("{0}")]
    Runtime(String),
    /// A bad argument from our side.
    #[error("{0}")]
    Invalid(String),
}

/// A failed call: code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// Status code for the caller.
    pub code: Code,
    /// Message for the caller.
    pub message: String,
}

impl CallError {
    /// An error with this code.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        CallError {
            code,
            message: message.into(),
        }
    }

    /// INVALID_ARGUMENT.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// The wire form.
    pub fn to_proto(&self) -> WorkerError {
        WorkerError {
            code: self.code as u32,
            message: self.message.clone(),
            fatal: false,
        }
    }
}

impl From<LiteError> for CallError {
    fn from(e: LiteError) -> Self {
        match e {
            LiteError::Runtime(m) => CallError::new(Code::Internal, m),
            LiteError::Invalid(m) => CallError::invalid(m),
        }
    }
}

impl From<ipc::Error> for CallError {
    fn from(e: ipc::Error) -> Self {
        CallError::new(Code::Internal, format!("ipc: {e}"))
    }
}
