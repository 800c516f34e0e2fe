//! `ipc`: the shared-memory channel between the sidecar supervisor and one
//! worker process.
//!
//! Owns: the memfd region (created by the supervisor, inherited by exactly
//! one child, never named under `/dev/shm`), its versioned `#[repr(C)]`
//! header, two single-producer/single-consumer rings of frames (request id,
//! kind, flags, length, payload), eventfd doorbells (no spinning on an idle
//! channel), a socketpair that tells each side at once when the other dies,
//! and per-request flow control; an in-process peer for tests and
//! standalone runs ([`loopback`]); and [`malloc`], which keeps freed heap
//! for the channel's large payloads. Must not: know about models, protobuf
//! messages or gRPC (its payloads are opaque bytes), or run a worker: what
//! a worker does with its frames (serve loop, outbox, heartbeats, request
//! names, memory reports) is `worker-runtime`'s, and the `/proc` readers
//! are `procmem`'s.
//!
//! Front ends: [`AsyncChannel`] (tokio, for the supervisor) and
//! [`BlockingChannel`] (threads, for workers). All `unsafe` code is in the
//! private `sys` module.
//!
//! ```no_run
//! # async fn demo() -> ipc::Result<()> {
//! let (supervisor_end, worker_end) = ipc::create(ipc::ChannelConfig::default())?;
//! let mut cmd = std::process::Command::new("worker-text");
//! let _child = worker_end.spawn(&mut cmd, Some(9 /* SIGKILL */))?;
//! let chan = ipc::AsyncChannel::new(supervisor_end)?;
//! let mut answers = chan.request(b"payload").await?;
//! while let Some(frame) = answers.next().await {
//!     let _frame = frame?;
//! }
//! # Ok(()) }
//! ```

mod blocking;
mod channel_async;
mod death_watch;
mod ends;
mod error;
mod flow;
mod frame;
mod layout;
pub mod loopback;
pub mod malloc;
mod passed;
mod pool;
mod ring;
mod sys;

pub use blocking::{BlockingChannel, Received};
pub use channel_async::{AsyncChannel, Frame, ResponseStream, Stats};
pub use ends::{ChannelConfig, ENV_VAR, Ends, FILES_ENV_VAR, Side, create, inherited_files};
pub use error::{Blocked, Error, Result};
pub use frame::{Flags, HEADER_LEN, Kind, Meta, decode as decode_header, frame_size};
pub use layout::{MAX_RING_BYTES, MIN_RING_BYTES};
pub use passed::MAX_PASSED;

/// How long a side waiting for a frame watches the ring before it sleeps on
/// its doorbell. Bounded, so an idle channel costs no CPU; see
/// `ipc/README.md` for what it buys on a round trip.
pub const DEFAULT_SPIN: std::time::Duration = std::time::Duration::from_micros(20);
