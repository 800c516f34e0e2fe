//! `worker-lite`: one LITE model (a LiteRT `.tflite` file) in its own
//! process, served over the `ipc` channel its supervisor gave it by
//! `worker_runtime`'s serve loop.
//!
//! Owns: loading a model with `libLiteRt.so` through the `litert` wrapper
//! (`load`), tensor checks against the API's types (`tensor`), Infer
//! requests read in place and answers written in place (`wire`), and the
//! [`serve::Lite`] family. Must not: talk gRPC to clients, hold FFI code
//! (that is `litert`'s), or do what every worker does the same way
//! (hello, heartbeats, the loop, errors: `worker_runtime`).
#![forbid(unsafe_code)]

pub mod load;
pub mod serve;
pub mod standalone;
pub mod tensor;
pub mod wire;

pub use serve::Lite;
