//! `worker-vision`: one VISION model (an SSD-style `.tflite` detector run
//! through `worker-lite`'s LiteRT wrapper, or an OpenCV cascade) in its own
//! process, served over the `ipc` channel its supervisor gave it.
//!
//! Owns: image decoding (raw pixels, JPEG/PNG), MediaPipe-style SSD
//! decoding, cascades, ProcessBatch. Not yet: streaming Process (H.264,
//! tracking, template matching, auto-crop).
#![forbid(unsafe_code)]

pub mod detect;
pub mod error;
pub mod image;
pub mod serve;
pub mod ssd;

pub use error::VisionError;
