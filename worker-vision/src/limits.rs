//! What one request may cost a VISION worker: pixels per image or picture,
//! pictures per H.264 chunk, images per batch, tracks per tracking task.
//! Each comes from the model's `VisionOptions` (0: the default here) and
//! is checked against a hard cap when the model loads.

use sidecar_proto::v1::VisionOptions;
use worker_runtime::WorkerError;

/// Largest width or height accepted, whatever `max_pixels` says.
pub const MAX_SIDE: u32 = 16384;

/// Default pixels per image: 8K UHD (7680x4320).
pub const DEFAULT_MAX_PIXELS: u64 = 7680 * 4320;
/// Default pictures one H.264 chunk may complete.
pub const DEFAULT_MAX_PICTURES_PER_CHUNK: u32 = 64;
/// Default images of one ProcessBatch.
pub const DEFAULT_MAX_BATCH_IMAGES: u32 = 256;
/// Default tracks of one tracking task.
pub const DEFAULT_MAX_TRACKS: u32 = 256;
/// Default of `max_pending_bytes`: what one stream's waiting frames hold.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = sidecar_proto::VISION_MAX_PENDING_BYTES;

/// The caps the options may not exceed.
const CAP_PIXELS: u64 = MAX_SIDE as u64 * MAX_SIDE as u64;
const CAP_PICTURES_PER_CHUNK: u32 = 4096;
const CAP_BATCH_IMAGES: u32 = 1024;
const CAP_TRACKS: u32 = 4096;
const CAP_PENDING_BYTES: u64 = 16 << 30;

/// A model's limits, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most pixels (width x height) of an image or picture.
    pub max_pixels: u64,
    /// Most pictures one H.264 chunk may complete.
    pub max_pictures_per_chunk: u32,
    /// Most images of one ProcessBatch.
    pub max_batch_images: u32,
    /// Most tracks of one tracking task.
    pub max_tracks: u32,
    /// Most bytes one stream's waiting frames may hold.
    pub max_pending_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_pictures_per_chunk: DEFAULT_MAX_PICTURES_PER_CHUNK,
            max_batch_images: DEFAULT_MAX_BATCH_IMAGES,
            max_tracks: DEFAULT_MAX_TRACKS,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
        }
    }
}

fn pick<T: Copy + PartialOrd + Default + std::fmt::Display>(
    name: &str,
    value: T,
    default: T,
    cap: T,
) -> Result<T, WorkerError> {
    if value == T::default() {
        return Ok(default);
    }
    if value > cap {
        return Err(WorkerError::invalid(format!(
            "vision.{name} {value} exceeds the limit of {cap}"
        )));
    }
    Ok(value)
}

impl Limits {
    /// The limits `o` asks for (0: the default); over a cap is
    /// INVALID_ARGUMENT naming the option.
    pub fn from_options(o: &VisionOptions) -> Result<Limits, WorkerError> {
        Ok(Limits {
            max_pixels: pick("max_pixels", o.max_pixels, DEFAULT_MAX_PIXELS, CAP_PIXELS)?,
            max_pictures_per_chunk: pick(
                "max_pictures_per_chunk",
                o.max_pictures_per_chunk,
                DEFAULT_MAX_PICTURES_PER_CHUNK,
                CAP_PICTURES_PER_CHUNK,
            )?,
            max_batch_images: pick(
                "max_batch_images",
                o.max_batch_images,
                DEFAULT_MAX_BATCH_IMAGES,
                CAP_BATCH_IMAGES,
            )?,
            max_tracks: pick("max_tracks", o.max_tracks, DEFAULT_MAX_TRACKS, CAP_TRACKS)?,
            max_pending_bytes: pick(
                "max_pending_bytes",
                o.max_pending_bytes,
                DEFAULT_MAX_PENDING_BYTES,
                CAP_PENDING_BYTES,
            )?,
        })
    }

    /// Checks an image's or picture's size before anything of its size is
    /// allocated; `what` says what declared it ("a PNG", "the SPS").
    pub fn check_size(&self, at: &str, what: &str, w: u64, h: u64) -> Result<(), WorkerError> {
        if w == 0 || h == 0 {
            return Err(WorkerError::invalid(format!(
                "{at}: {what} of {w}x{h} pixels; each side must be 1..{MAX_SIDE}"
            )));
        }
        let pixels = w.saturating_mul(h);
        if w > u64::from(MAX_SIDE) || h > u64::from(MAX_SIDE) || pixels > self.max_pixels {
            return Err(WorkerError::invalid(format!(
                "{at}: {what} of {w}x{h} pixels ({pixels}) exceeds the limits of {MAX_SIDE} per side and {} pixels (max_pixels)",
                self.max_pixels
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_the_default_and_caps_hold() {
        let l = Limits::from_options(&VisionOptions::default()).expect("defaults");
        assert_eq!(l, Limits::default());
        assert_eq!(l.max_pixels, 33_177_600);
        let o = VisionOptions {
            max_pixels: 1920 * 1080,
            max_tracks: 8,
            ..Default::default()
        };
        let l = Limits::from_options(&o).expect("set");
        assert_eq!((l.max_pixels, l.max_tracks), (2_073_600, 8));
        let o = VisionOptions {
            max_batch_images: 5000,
            ..Default::default()
        };
        let e = Limits::from_options(&o).expect_err("over the cap");
        assert_eq!(
            e.message,
            "vision.max_batch_images 5000 exceeds the limit of 1024"
        );
        assert_eq!(l.max_pending_bytes, 128 << 20);
        let o = VisionOptions {
            max_pending_bytes: (16 << 30) + 1,
            ..Default::default()
        };
        let e = Limits::from_options(&o).expect_err("over the cap");
        assert_eq!(
            e.message,
            "vision.max_pending_bytes 17179869185 exceeds the limit of 17179869184"
        );
    }

    #[test]
    fn sizes_are_checked_per_side_and_in_pixels() {
        let l = Limits::default();
        assert!(l.check_size("f", "a PNG", 7680, 4320).is_ok());
        let e = l
            .check_size("images[0]", "a PNG", 30000, 30000)
            .expect_err("big");
        assert_eq!(
            e.message,
            "images[0]: a PNG of 30000x30000 pixels (900000000) exceeds the limits of 16384 per side and 33177600 pixels (max_pixels)"
        );
        let e = l.check_size("t", "a JPEG", 16000, 8000).expect_err("big");
        assert_eq!(
            e.message,
            "t: a JPEG of 16000x8000 pixels (128000000) exceeds the limits of 16384 per side and 33177600 pixels (max_pixels)"
        );
        assert!(l.check_size("t", "x", 0, 5).is_err());
    }
}
