//! AutoFlip-style cropping: the largest window of the target aspect ratio
//! that fits the frame, centred on the faces (when asked and found) or on
//! the centroid of the spectral-residual saliency map, moved smoothly from
//! frame to frame (exponential moving average, bounded step).

use opencv::core::{Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;
use opencv::saliency::StaticSaliencySpectralResidual;
use sidecar_proto::v1::{AutoCropTask, Box as PixelBox, CropFocus, CropWindow, Detection};
use worker_runtime::WorkerError;

use crate::error::cv;

/// A crop task's options and its state across frames.
#[derive(Debug)]
pub struct AutoCrop {
    aspect: f32,
    focus: CropFocus,
    smoothing: f32,
    max_shift: f32,
    /// Window centre of the previous frame.
    centre: Option<(f32, f32)>,
}

impl AutoCrop {
    /// Checks the options.
    pub fn new(t: &AutoCropTask) -> Result<AutoCrop, WorkerError> {
        if !(t.aspect_ratio > 0.0 && t.aspect_ratio.is_finite()) {
            return Err(WorkerError::invalid(format!(
                "auto_crop.aspect_ratio {} must be a positive width / height",
                t.aspect_ratio
            )));
        }
        let unit = |v: f32, name: &str, default: f32| -> Result<f32, WorkerError> {
            match v {
                0.0 => Ok(default),
                v if (0.0..=1.0).contains(&v) => Ok(v),
                v => Err(WorkerError::invalid(format!(
                    "auto_crop.{name} {v} is outside 0..1"
                ))),
            }
        };
        Ok(AutoCrop {
            aspect: t.aspect_ratio,
            focus: CropFocus::try_from(t.focus).map_err(|_| {
                WorkerError::invalid(format!(
                    "auto_crop.focus {} is not a CropFocus value",
                    t.focus
                ))
            })?,
            smoothing: unit(t.smoothing, "smoothing", 0.85)?,
            max_shift: unit(t.max_shift, "max_shift", 0.05)?,
            centre: None,
        })
    }

    /// Whether this crop follows faces (so the frame needs face detection).
    pub fn wants_faces(&self) -> bool {
        self.focus != CropFocus::Saliency
    }

    /// Forgets the previous frame (independent images of a batch).
    pub fn reset(&mut self) {
        self.centre = None;
    }

    /// The window for this frame, given its faces.
    pub fn window(&mut self, frame: &Mat, faces: &[Detection]) -> Result<CropWindow, WorkerError> {
        let (w, h) = (frame.cols() as f32, frame.rows() as f32);
        let (cw, ch) = if w / h > self.aspect {
            (h * self.aspect, h)
        } else {
            (w, w / self.aspect)
        };
        let boxes: Vec<PixelBox> = faces.iter().filter_map(|f| f.r#box).collect();
        let (target, focus) = if self.wants_faces() && !boxes.is_empty() {
            // The centre of the box holding every face.
            let x0 = boxes.iter().map(|b| b.x).fold(f32::MAX, f32::min);
            let y0 = boxes.iter().map(|b| b.y).fold(f32::MAX, f32::min);
            let x1 = boxes.iter().map(|b| b.x + b.width).fold(f32::MIN, f32::max);
            let y1 = boxes
                .iter()
                .map(|b| b.y + b.height)
                .fold(f32::MIN, f32::max);
            (((x0 + x1) / 2.0, (y0 + y1) / 2.0), "faces")
        } else if self.focus == CropFocus::Faces {
            ((w / 2.0, h / 2.0), "center")
        } else {
            match salient_centre(frame)? {
                Some(c) => (c, "saliency"),
                None => ((w / 2.0, h / 2.0), "center"),
            }
        };
        let centre = match self.centre {
            None => target,
            Some((px, py)) => {
                let step = self.max_shift * w;
                let smooth = |p: f32, t: f32| {
                    let v = self.smoothing * p + (1.0 - self.smoothing) * t;
                    p + (v - p).clamp(-step, step)
                };
                (smooth(px, target.0), smooth(py, target.1))
            }
        };
        // Keep the window inside the frame.
        let cx = centre.0.clamp(cw / 2.0, w - cw / 2.0);
        let cy = centre.1.clamp(ch / 2.0, h - ch / 2.0);
        self.centre = Some((cx, cy));
        Ok(CropWindow {
            r#box: Some(PixelBox {
                x: cx - cw / 2.0,
                y: cy - ch / 2.0,
                width: cw,
                height: ch,
            }),
            focus: focus.into(),
        })
    }
}

/// Centroid of the spectral-residual saliency map (computed at 64 px wide,
/// as the method intends), in frame pixels; None on a featureless frame.
fn salient_centre(frame: &Mat) -> Result<Option<(f32, f32)>, WorkerError> {
    let mut sal = StaticSaliencySpectralResidual::create().map_err(cv("saliency"))?;
    let mut map = Mat::default();
    // `compute_saliency` lives on the Saliency trait.
    opencv::saliency::SaliencyTrait::compute_saliency(&mut sal, frame, &mut map)
        .map_err(cv("computeSaliency"))?;
    let mut small = Mat::default();
    imgproc::resize(
        &map,
        &mut small,
        Size::new(64, 64),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )
    .map_err(cv("resize"))?;
    let (mut sum, mut sx, mut sy) = (0f64, 0f64, 0f64);
    for y in 0..64 {
        for x in 0..64 {
            let v = f64::from(*small.at_2d::<f32>(y, x).map_err(cv("saliency map"))?);
            sum += v;
            sx += v * (f64::from(x) + 0.5);
            sy += v * (f64::from(y) + 0.5);
        }
    }
    if sum <= f64::EPSILON {
        return Ok(None);
    }
    let (fw, fh) = (f64::from(frame.cols()), f64::from(frame.rows()));
    Ok(Some((
        (sx / sum / 64.0 * fw) as f32,
        (sy / sum / 64.0 * fh) as f32,
    )))
}
