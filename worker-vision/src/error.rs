//! Errors of the vision worker, each with the code the caller gets.

use sidecar_proto::worker::WorkerError;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// Bad input: the message names the image or option.
    #[error("{0}")]
    Invalid(String),
    /// The model cannot do this.
    #[error("{0}")]
    Precondition(String),
    /// Not served yet.
    #[error("{0}")]
    Unimplemented(String),
    /// The model could not be loaded.
    #[error("{0}")]
    Unavailable(String),
    /// OpenCV or LiteRT failed.
    #[error("{0}")]
    Internal(String),
    /// The supervisor cancelled (the client went away).
    #[error("cancelled by the supervisor")]
    Cancelled,
}

impl VisionError {
    /// The wire form (gRPC codes as numbers).
    pub fn to_proto(&self) -> WorkerError {
        let code = match self {
            VisionError::Invalid(_) => 3,
            VisionError::Precondition(_) => 9,
            VisionError::Unimplemented(_) => 12,
            VisionError::Internal(_) => 13,
            VisionError::Unavailable(_) => 14,
            VisionError::Cancelled => 1,
        };
        WorkerError {
            code,
            message: self.to_string(),
            fatal: false,
        }
    }
}

impl From<worker_lite::LiteError> for VisionError {
    fn from(e: worker_lite::LiteError) -> Self {
        VisionError::Internal(e.to_string())
    }
}

impl From<ipc::Error> for VisionError {
    fn from(e: ipc::Error) -> Self {
        VisionError::Internal(format!("ipc: {e}"))
    }
}
