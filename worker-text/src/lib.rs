//! `worker-text`: one TEXT model (llama.cpp through `llama-cpp-2`) in its
//! own process, served over the `ipc` channel its supervisor gave it.
//!
//! Owns: loading a GGUF file, token-by-token generation with sampling and
//! stop strings, continuous batching, embeddings, cancellation and deadlines between tokens, heartbeats and
//! memory reports. Must not: talk gRPC to clients (the supervisor does), or
//! outlive its supervisor.
#![forbid(unsafe_code)]

pub mod embed;
pub mod engine;
pub mod error;
pub mod memory;
pub mod model;
pub mod sampling;
pub mod seq;
pub mod serve;
pub mod standalone;
pub mod text;

pub use error::{Code, WorkerError};
