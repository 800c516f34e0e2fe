//! `worker-lite`: one LITE model (a LiteRT `.tflite` file) in its own
//! process, served over the `ipc` channel its supervisor gave it; and the
//! LiteRT wrapper (`litert`) that `worker-vision` uses for `.tflite`
//! detectors.
//!
//! Owns: loading `libLiteRt.so` at run time and a model with it, tensor
//! checks, inference with tensor bytes copied once each way, heartbeats.
//! Must not: talk gRPC to clients, or outlive its supervisor.

pub mod error;
pub mod litert;
pub mod memory;
pub mod serve;
pub mod standalone;
pub mod tensor;
pub mod wire;

pub use error::{CallError, Code, LiteError};
