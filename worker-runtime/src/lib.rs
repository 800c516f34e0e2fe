//! `worker-runtime`: what every worker process (`worker-text`,
//! `worker-lite`, `worker-vision`) does the same way, so that each worker
//! crate keeps only its family: what it loads and how it answers.
//!
//! Owns: attaching to the channel and HELLO (protocol version, family,
//! version, pid, capabilities, memory); the heartbeat thread
//! ([`heartbeat`]: memory, requests in flight, uptime, tokens); the serve
//! loop ([`serve`]) and its seam, the [`Family`] trait; the per-request
//! [`Outbox`]; the one worker-side error ([`WorkerError`], [`Code`]) and
//! its wire form; request bookkeeping ([`RequestNames`], [`request_tag`]);
//! deadlines ([`deadline`]); the caller's shared-memory regions
//! ([`regions`]: attached, looked up per request, read and written with
//! `pread`/`pwrite`, detached); the memory report ([`memory`], from
//! `procmem`); exiting with status 0 when the supervisor is gone; the
//! standalone driver ([`standalone`]); and `main` itself ([`main`],
//! [`Binary`]); the worker's sandbox ([`sandbox`]), the same for every
//! family: no capability ([`caps`]), no_new_privs and rlimits
//! ([`privilege`]), Landlock around the model's descriptor the supervisor
//! handed over, the per-family seccomp allow-list ([`seccomp`]), and the
//! test-only sandbox probe (feature `sandbox-probe`).
//!
//! Must not: know any family's models or native libraries (llama.cpp,
//! LiteRT, OpenCV), talk gRPC, or reach into the channel's internals (it
//! uses `ipc`'s public API; the channel stays `ipc`'s one job).
#![forbid(unsafe_code)]

mod binary;
pub mod caps;
#[cfg(test)]
mod child_test;
pub mod deadline;
mod error;
mod family;
pub mod heartbeat;
pub mod memory;
mod outbox;
pub mod privilege;
mod probe;
pub mod regions;
mod requests;
pub mod sandbox;
pub mod seccomp;
mod serve;
pub mod standalone;

pub use binary::{Binary, LOG_ENV, main};
pub use error::{Code, WorkerError, answer_too_large, not_loaded};
pub use family::{Call, Context, Family, Read, decode, model_name};
pub use outbox::Outbox;
pub use regions::{Regions, Resolved};
pub use requests::{RequestNames, request_tag};
pub use serve::{serve, serve_sandboxed};
