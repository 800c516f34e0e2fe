//! `worker-vision`: one VISION model (an SSD-style `.tflite` detector run
//! through the `litert` wrapper, or an OpenCV cascade) in its own process,
//! served over the `ipc` channel its supervisor gave it by
//! `worker_runtime`'s serve loop.
//!
//! Owns: image decoding (raw pixels, JPEG/PNG), MediaPipe-style SSD
//! decoding, cascades, ProcessBatch, Process streams (per-stream frame
//! queues with an overflow policy, round-robin), template matching,
//! auto-crop, tracking with trajectories, H.264 streams (OpenH264): the
//! [`serve::Vision`] family. Must not: talk gRPC to clients, hold FFI code
//! (LiteRT's is `litert`'s), depend on another worker crate, or do what
//! every worker does the same way (hello, heartbeats, the loop, errors:
//! `worker_runtime`).
#![forbid(unsafe_code)]

pub mod annexb;
pub mod batch;
pub mod crop;
pub mod detect;
pub mod error;
pub mod h264;
pub mod header;
pub mod image;
pub mod limits;
pub mod pipeline;
pub mod serve;
pub mod sps;
pub mod ssd;
pub mod standalone;
pub mod streams;
pub mod tasks;
pub mod template;
pub mod track;

pub use serve::Vision;
