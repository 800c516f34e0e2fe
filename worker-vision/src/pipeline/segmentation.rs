//! Person masks: MediaPipe's selfie segmentation model
//! (`SelfieSegmentationCpu`), and what every mask goes through on its way
//! to the client (threshold, 8-bit alpha or PNG, the blend with the
//! previous frame's mask that pose's `smooth_segmentation` asks for).
//!
//! Selfie segmentation as the graph does it: the whole frame stretched
//! (aspect ratio not kept) into the model's 256x256 (general) or 144x256
//! (landscape) input, RGB in 0..1, zero border; the output is already a
//! probability (activation NONE), resized bilinearly to the frame's size,
//! or, for a frame of more than the task's `max_mask_pixels`, to the
//! frame's aspect scaled down to that bound (an 8K frame's mask at full
//! size would be 33 MB, over the worker's response, and the model's mask
//! is 256x256 anyway).
//! The graph has no smoothing across frames, so neither has this.

use std::path::Path;
use std::sync::Arc;

use litert::{Compiled, HW_CPU, Runtime};
use opencv::core::{Mat, Size, Vector};
use opencv::imgcodecs;
use opencv::imgproc;
use opencv::prelude::*;
use sidecar_proto::v1::{SegmentationMask, SegmentationMaskFormat, SelfieSegmentationTask};
use worker_runtime::WorkerError;

use super::roi::{Border, Region, TensorSpec, to_tensor};
use crate::error::{cv, lite_error};

/// The default bound of a mask's pixels: a 1920x1080 frame's mask at
/// full size (2 MiB as raw alpha).
pub const DEFAULT_MAX_MASK_PIXELS: u64 = 1 << 21;
/// The most a task may ask for: a 3840x2160 frame's mask at full size
/// (8 MiB raw; a stream's smoothing keeps 4 bytes a pixel, 32 MiB).
pub const MAX_MASK_PIXELS: u64 = 1 << 23;

/// How a mask goes to the client: a threshold (0: none), an encoding and
/// the most pixels it may have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskSpec {
    /// 0: the probability as 8-bit alpha; else 255 at or above it, 0 below.
    pub threshold: f32,
    /// Raw bytes or PNG.
    pub format: SegmentationMaskFormat,
    /// Most pixels of the mask: a larger frame's mask is scaled down.
    pub max_pixels: u64,
}

impl MaskSpec {
    /// Checks a task's threshold, format and mask bound (`max_pixels`, 0:
    /// the default); `field` prefixes their names in errors
    /// (`selfie_segmentation.threshold`), `bound` names the bound's field.
    pub fn new(
        threshold: f32,
        format: i32,
        max_pixels: u64,
        field: &str,
        bound: &str,
    ) -> Result<MaskSpec, WorkerError> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(WorkerError::invalid(format!(
                "{field}threshold {threshold} is not within 0..1"
            )));
        }
        let format = SegmentationMaskFormat::try_from(format).map_err(|_| {
            WorkerError::invalid(format!(
                "{field}format {format} is not a SegmentationMaskFormat value (0 raw, 1 PNG)"
            ))
        })?;
        let max_pixels = match max_pixels {
            0 => DEFAULT_MAX_MASK_PIXELS,
            n if n > MAX_MASK_PIXELS => {
                return Err(WorkerError::invalid(format!(
                    "{field}{bound} {n} exceeds the limit of {MAX_MASK_PIXELS}"
                )));
            }
            n => n,
        };
        Ok(MaskSpec {
            threshold,
            format,
            max_pixels,
        })
    }

    /// The size of the mask of a `width` x `height` frame: the frame's when
    /// it has at most `max_pixels`, else the frame's aspect scaled down to
    /// fit (sides rounded down, at least 1).
    pub fn size_for(&self, width: i32, height: i32) -> (i32, i32) {
        let (w, h) = (width.max(1), height.max(1));
        let pixels = w as u64 * h as u64;
        if pixels <= self.max_pixels {
            return (w, h);
        }
        let s = (self.max_pixels as f64 / pixels as f64).sqrt();
        let (mut mw, mut mh) = (
            ((w as f64 * s).floor() as i32).max(1),
            ((h as f64 * s).floor() as i32).max(1),
        );
        // Rounding never lets it past the bound.
        while mw as u64 * mh as u64 > self.max_pixels {
            if mw >= mh { mw -= 1 } else { mh -= 1 }
        }
        (mw, mh)
    }

    /// A selfie segmentation task's mask, checked.
    pub fn of(t: &SelfieSegmentationTask) -> Result<MaskSpec, WorkerError> {
        MaskSpec::new(
            t.threshold,
            t.format,
            t.max_mask_pixels,
            "selfie_segmentation.",
            "max_mask_pixels",
        )
    }

    /// `mask` (CV_32F probabilities, already at [`MaskSpec::size_for`] the
    /// frame) for the client.
    pub fn encode(&self, mask: &Mat) -> Result<SegmentationMask, WorkerError> {
        let (w, h) = (mask.cols(), mask.rows());
        let mut bytes = Vec::with_capacity((w.max(0) as usize) * (h.max(0) as usize));
        for y in 0..h {
            let row = mask.at_row::<f32>(y).map_err(cv("mask row"))?;
            bytes.extend(row.iter().map(|&p| {
                if self.threshold > 0.0 {
                    if p >= self.threshold { 255 } else { 0 }
                } else {
                    (p * 255.0).round().clamp(0.0, 255.0) as u8
                }
            }));
        }
        let data = match self.format {
            SegmentationMaskFormat::Raw => bytes,
            SegmentationMaskFormat::Png => {
                let grey = Mat::new_rows_cols_with_data(h, w, &bytes).map_err(cv("mask"))?;
                let mut png = Vector::<u8>::new();
                imgcodecs::imencode(".png", &grey, &mut png, &Vector::new())
                    .map_err(cv("imencode"))?;
                png.to_vec()
            }
        };
        Ok(SegmentationMask {
            width: w as u32,
            height: h as u32,
            data: data.into(),
            format: self.format as i32,
        })
    }
}

/// A model's mask values made safe to keep and send: a value that is not
/// a finite number (a model file is not trusted) is no person (0), the
/// others are clamped to 0..1.
pub fn sanitize(probs: &mut [f32]) {
    for p in probs {
        *p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
    }
}

/// Checks a selfie segmentation task against the worker's models.
pub fn check(t: &SelfieSegmentationTask, loaded: bool) -> Result<(), WorkerError> {
    if !loaded {
        return Err(WorkerError::invalid(
            "selfie_segmentation needs pipeline.selfie_segmentation in the model's VisionOptions; this model was loaded without it",
        ));
    }
    MaskSpec::of(t).map(|_| ())
}

/// MediaPipe's `SegmentationSmoothingCalculator`: where the new mask is
/// uncertain (near 0.5) it keeps `ratio` of the previous one, where it is
/// sure it keeps itself. Masks of different sizes are not blended.
pub fn smooth(current: &mut Mat, previous: &Mat, ratio: f32) -> Result<(), WorkerError> {
    if ratio <= 0.0 || current.size().ok() != previous.size().ok() {
        return Ok(());
    }
    for y in 0..current.rows() {
        let prev = previous.at_row::<f32>(y).map_err(cv("mask row"))?;
        let cur = current.at_row_mut::<f32>(y).map_err(cv("mask row"))?;
        for (c, &p) in cur.iter_mut().zip(prev) {
            // 1 − (1 − H(c))², H the binary entropy, as MediaPipe's
            // polynomial in (c − 0.5)² approximates it.
            let t = *c - 0.5;
            let x = t * t;
            let poly =
                x * (5.68842 + x * (-0.748699 + x * (-57.8051 + x * (291.309 + x * -624.717))));
            let uncertainty = 1.0 - poly.min(1.0);
            *c += (p - *c) * (uncertainty * ratio);
        }
    }
    Ok(())
}

/// The selfie segmentation model, compiled for the CPU.
pub struct Selfie {
    compiled: Compiled,
    /// Input width and height.
    width: i32,
    height: i32,
}

impl std::fmt::Debug for Selfie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selfie")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl Selfie {
    /// Loads `path` as `pipeline.selfie_segmentation`: float32 input
    /// [1, 256, 256, 3] or [1, 144, 256, 3], one output [1, H, W, 1].
    pub fn load(rt: &Arc<Runtime>, path: &Path, threads: u32) -> Result<Selfie, WorkerError> {
        let field = "pipeline.selfie_segmentation";
        let compiled = rt
            .model(path)
            .and_then(|m| m.compile(HW_CPU, threads))
            .map_err(|e| WorkerError::invalid(format!("{field}: LiteRT could not load it: {e}")))?;
        let input = compiled
            .input_desc
            .first()
            .map(|d| (d.shape.clone(), d.element_type));
        let (width, height) = match input {
            Some((s, 1)) if s == [1, 256, 256, 3] => (256, 256),
            Some((s, 1)) if s == [1, 144, 256, 3] => (256, 144),
            other => {
                return Err(WorkerError::invalid(format!(
                    "{field}: the model's input is {other:?} (shape, type); a selfie segmentation model takes float32 [1, 256, 256, 3] or [1, 144, 256, 3]"
                )));
            }
        };
        let outputs: Vec<(&Vec<i32>, i32)> = compiled
            .output_desc
            .iter()
            .map(|d| (&d.shape, d.element_type))
            .collect();
        // Element type 1: float32.
        if outputs != [(&vec![1, height, width, 1], 1)] || compiled.input_desc.len() != 1 {
            return Err(WorkerError::invalid(format!(
                "{field}: the model's outputs are {outputs:?} (shape, type); a selfie segmentation model gives one float32 [1, {height}, {width}, 1] mask"
            )));
        }
        Ok(Selfie {
            compiled,
            width,
            height,
        })
    }

    /// The person probability of each pixel of a BGR frame (CV_32F),
    /// resized to `size` (the frame's, or smaller: [`MaskSpec::size_for`]).
    pub fn run(&mut self, frame: &Mat, size: (i32, i32)) -> Result<Mat, WorkerError> {
        // The whole frame stretched to the input (keep_aspect_ratio false).
        let spec = TensorSpec {
            width: self.width,
            height: self.height,
            range: (0.0, 1.0),
            border: Border::Zero,
            keep_aspect: false,
        };
        let (w, h) = (self.width, self.height);
        let mut cropped = Err(WorkerError::internal("the input was not written"));
        self.compiled
            .write_input(0, |buf| {
                cropped = to_tensor(frame, &Region::whole(), &spec, buf)
            })
            .map_err(lite_error)?;
        cropped?;
        self.compiled.run().map_err(lite_error)?;
        let mut probs: Vec<f32> = self
            .compiled
            .read_output(0, |b| {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            })
            .map_err(lite_error)?;
        if probs.len() != (w * h) as usize {
            return Err(WorkerError::internal(format!(
                "selfie segmentation gave {} values for a {w}x{h} mask",
                probs.len()
            )));
        }
        sanitize(&mut probs);
        let small = Mat::new_rows_cols_with_data(h, w, &probs).map_err(cv("mask"))?;
        let mut mask = Mat::default();
        imgproc::resize(
            &small,
            &mut mask,
            Size::new(size.0, size.1),
            0.0,
            0.0,
            imgproc::INTER_LINEAR,
        )
        .map_err(cv("resize mask"))?;
        Ok(mask)
    }
}
