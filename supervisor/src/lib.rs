//! The sidecar supervisor: the gRPC API, one actor per model owning its
//! worker process, health, and the admin port.
//!
//! Owns: routing calls to workers over `ipc`, deadlines, bounded queues,
//! the worker lifecycle (spawn, hello, load, heartbeats, the one kill path,
//! restarts with backoff, FAILED), the model store. Must not: link
//! llama.cpp, OpenCV or LiteRT; those live in the worker binaries.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod openai;
pub mod pulse;
pub mod registry;
pub mod reload;
pub mod shared;
pub mod shm;
pub mod store;
pub mod traffic;
pub mod worker;

#[cfg(test)]
mod tests;

pub use config::{Cli, Config};
pub use error::Error;
