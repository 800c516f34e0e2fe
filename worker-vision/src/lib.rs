//! `worker-vision`: one VISION model (an SSD-style `.tflite` detector run
//! through `worker-lite`'s LiteRT wrapper, or an OpenCV cascade) in its own
//! process, served over the `ipc` channel its supervisor gave it.
//!
//! Owns: image decoding (raw pixels, JPEG/PNG), MediaPipe-style SSD
//! decoding, cascades, ProcessBatch, Process streams (per-stream frame
//! queues with an overflow policy, round-robin), template matching,
//! auto-crop, tracking with trajectories, H.264 streams (OpenH264).
#![forbid(unsafe_code)]

pub mod crop;
pub mod detect;
pub mod error;
pub mod h264;
pub mod image;
pub mod serve;
pub mod ssd;
pub mod standalone;
pub mod streams;
pub mod tasks;
pub mod template;
pub mod track;

pub use error::VisionError;
