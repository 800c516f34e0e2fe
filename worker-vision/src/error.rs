//! The vision worker's errors are `worker_runtime::WorkerError`s; these
//! turn the native libraries' errors into one (the orphan rule keeps a
//! `From` impl out of this crate): OpenCV's and LiteRT's failures are
//! INTERNAL, named by what was being done.

use worker_runtime::WorkerError;

/// An OpenCV failure while doing `what`, as INTERNAL.
pub fn cv(what: &str) -> impl Fn(opencv::Error) -> WorkerError + '_ {
    move |e| WorkerError::internal(format!("{what}: {e}"))
}

/// A LiteRT failure of the detector, as INTERNAL.
pub fn lite_error(e: litert::LiteError) -> WorkerError {
    WorkerError::internal(e.to_string())
}
