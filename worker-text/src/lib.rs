//! `worker-text`: one TEXT model (llama.cpp through `llama-cpp-2`) in its
//! own process, served over the `ipc` channel its supervisor gave it by
//! `worker_runtime`'s serve loop.
//!
//! Owns: loading a GGUF file, token-by-token generation with sampling and
//! stop strings, continuous batching, embeddings, cancellation and
//! deadlines between tokens (the [`serve::Text`] family). Must not: talk
//! gRPC to clients (the supervisor does), or do what every worker does the
//! same way (hello, heartbeats, the loop, errors: `worker_runtime`).
#![forbid(unsafe_code)]

pub mod embed;
pub mod engine;
pub mod model;
pub mod prefix;
pub mod sampling;
pub mod seq;
pub mod serve;
pub mod standalone;
pub mod text;

pub use serve::Text;
