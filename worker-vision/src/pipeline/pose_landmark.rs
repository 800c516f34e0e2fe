//! MediaPipe's pose landmark model as `PoseLandmarkByRoiCpu` runs it: the
//! region cropped into 256x256 (RGB 0..1, border replicated, aspect kept),
//! `pose_landmark_full`; the pose presence against `min_tracking_score`
//! (`ThresholdingCalculator`: strictly above); 39 points (33 + the 2
//! auxiliary alignment points + 4 unused; x, y, z by 256, visibility and
//! presence through a sigmoid), refined on the heatmap (7x7 window), the
//! letterbox removed and projected back to the frame; world landmarks
//! turned by the region's rotation; the mask (sigmoid) warped back onto
//! the frame, at the frame's size or the smaller one a task's mask bound
//! asks for. Outputs that are not finite numbers are no pose.

use std::path::Path;
use std::sync::Arc;

use litert::Runtime;
use opencv::core::{self, Mat, Scalar, Size};
use opencv::imgproc;
use worker_runtime::WorkerError;

use super::model::Model;
use super::roi::{self, Border, Crop, Region, TensorSpec};
use super::segmentation;
use crate::error::cv;

/// Landmarks the landmark model gives (33 + 2 auxiliary + 4 unused).
const POINTS: usize = 39;
/// Landmarks returned; the auxiliary ones follow.
pub const POSE: usize = 33;

/// The landmark model's input (`PoseLandmarkByRoiCpu`).
const INPUT: TensorSpec = TensorSpec {
    width: 256,
    height: 256,
    range: (0.0, 1.0),
    border: Border::Replicate,
    keep_aspect: true,
};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Loads `pipeline.pose_landmark`. Outputs in order: landmarks [1, 195],
/// pose presence [1, 1], mask [1, 256, 256, 1] (logits), heatmap
/// [1, 64, 64, 39], world landmarks [1, 117]
/// (`TensorsToPoseLandmarksAndSegmentation` splits them so).
pub fn load(rt: &Arc<Runtime>, path: &Path, threads: u32) -> Result<Model, WorkerError> {
    Model::load(
        rt,
        path,
        threads,
        "pipeline.pose_landmark",
        "a pose landmark model (pose_landmark_full)",
        (
            &[1, 256, 256, 3],
            &[
                &[1, 195],
                &[1, 1],
                &[1, 256, 256, 1],
                &[1, 64, 64, 39],
                &[1, 117],
            ],
        ),
    )
}

/// The landmark model's answer on one region, normalised to the frame.
#[derive(Debug)]
pub struct Found {
    /// x, y (normalised to the frame), z (normalised like x), visibility,
    /// presence; 39 points.
    pub points: Vec<[f32; 5]>,
    /// 33 world landmarks, metres, turned like the region.
    pub world: Vec<[f32; 3]>,
    /// The pose presence score.
    pub score: f32,
    /// The person probability over the frame, at the size asked for.
    pub mask: Option<Mat>,
}

/// The landmark model's raw outputs on one region.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// 39 × (x, y, z, visibility, presence) in tensor pixels and logits.
    pub landmarks: Vec<f32>,
    /// The pose presence score.
    pub score: f32,
    /// The mask's logits, 256x256, when asked for.
    pub mask: Option<Vec<f32>>,
    /// The heatmap, 64x64x39.
    pub heat: Vec<f32>,
    /// 39 × (x, y, z) world landmarks, metres.
    pub world: Vec<f32>,
}

/// The landmarks in `region` of a BGR frame; None when the pose is not
/// present. `mask_size`: the person mask over the frame, at that size
/// (the frame's, or smaller), when asked for.
pub fn run(
    model: &mut Model,
    frame: &Mat,
    region: &Region,
    min_tracking: f32,
    mask_size: Option<(i32, i32)>,
) -> Result<Option<Found>, WorkerError> {
    let crop = model.input(frame, region, &INPUT)?;
    model.run()?;
    let score = model.output(1)?.first().copied().unwrap_or(0.0);
    // ThresholdingCalculator: present only above the threshold (not a
    // number: absent).
    if score.is_nan() || score <= min_tracking {
        return Ok(None);
    }
    let out = Outputs {
        landmarks: model.output(0)?,
        score,
        mask: match mask_size {
            Some(_) => Some(model.output(2)?),
            None => None,
        },
        heat: model.output(3)?,
        world: model.output(4)?,
    };
    decode(&out, &crop, region, mask_size)
}

/// The pose from the landmark model's outputs on `crop` of `region`;
/// None when a point the client gets or the next region is drawn from
/// (the 33 landmarks and the 2 auxiliary ones), a world landmark or the
/// score is not a finite number, before or after the projection onto the
/// frame (a model file is not trusted; a degenerate crop maps points to
/// infinity): that frame has no pose, and nothing is tracked from it.
/// Mask values that are not numbers are no person (0).
pub fn decode(
    out: &Outputs,
    crop: &Crop,
    region: &Region,
    mask_size: Option<(i32, i32)>,
) -> Result<Option<Found>, WorkerError> {
    let (raw, heat, world) = (&out.landmarks, &out.heat, &out.world);
    if raw.len() != POINTS * 5 || heat.len() != 64 * 64 * POINTS || world.len() != POINTS * 3 {
        return Err(WorkerError::internal(
            "the pose landmark model's outputs changed size",
        ));
    }
    let used = (POSE + 2) * 5;
    if !out.score.is_finite()
        || raw[..used].iter().any(|v| !v.is_finite())
        || world[..POSE * 3].iter().any(|v| !v.is_finite())
    {
        return Ok(None);
    }
    let mut points: Vec<[f32; 5]> = raw
        .chunks_exact(5)
        .map(|p| {
            [
                p[0] / 256.0,
                p[1] / 256.0,
                p[2] / 256.0,
                sigmoid(p[3]),
                sigmoid(p[4]),
            ]
        })
        .collect();
    refine(&mut points, heat, 64, 64, 7);
    for p in &mut points {
        let (x, y) = crop.to_frame(p[0], p[1]);
        p[2] = crop.z_to_pixels(p[2]) / crop.size.width;
        (p[0], p[1]) = (x, y);
    }
    if points[..POSE + 2].iter().flatten().any(|v| !v.is_finite()) {
        return Ok(None);
    }
    let world: Vec<[f32; 3]> = world
        .chunks_exact(3)
        .take(POSE)
        .map(|v| {
            let (x, y) = roi::rotate_world(v[0], v[1], region.rotation);
            [x, y, v[2]]
        })
        .collect();
    if world.iter().flatten().any(|v| !v.is_finite()) {
        return Ok(None);
    }
    let mask = match (&out.mask, mask_size) {
        (Some(logits), Some(size)) => {
            let mut probs: Vec<f32> = logits.iter().map(|&v| sigmoid(v)).collect();
            segmentation::sanitize(&mut probs);
            Some(unwarp(&probs, crop, size)?)
        }
        _ => None,
    };
    Ok(Some(Found {
        points,
        world,
        score: out.score,
        mask,
    }))
}

/// The crop's 256x256 mask warped back onto the frame (`WarpAffineCalculator`
/// with the crop's inverse, zero outside the region), straight at `size`
/// (the frame's, or smaller: the frame's pixels scaled, centres kept).
fn unwarp(probs: &[f32], crop: &Crop, size: (i32, i32)) -> Result<Mat, WorkerError> {
    let (tw, th) = (INPUT.width, INPUT.height);
    if probs.len() != (tw * th) as usize {
        return Err(WorkerError::internal(format!(
            "the pose mask has {} values, not {tw}x{th}",
            probs.len()
        )));
    }
    let small = Mat::new_rows_cols_with_data(th, tw, probs).map_err(cv("mask"))?;
    // Tensor pixels → frame pixels → mask pixels.
    let o = crop.to_pixels(0.0, 0.0);
    let u = crop.to_pixels(1.0 / tw as f32, 0.0);
    let v = crop.to_pixels(0.0, 1.0 / th as f32);
    let sx = f64::from(size.0) / f64::from(crop.size.width);
    let sy = f64::from(size.1) / f64::from(crop.size.height);
    let m = Mat::from_slice_2d(&[
        [
            sx * f64::from(u.0 - o.0),
            sx * f64::from(v.0 - o.0),
            sx * (f64::from(o.0) + 0.5) - 0.5,
        ],
        [
            sy * f64::from(u.1 - o.1),
            sy * f64::from(v.1 - o.1),
            sy * (f64::from(o.1) + 0.5) - 0.5,
        ],
    ])
    .map_err(cv("mask matrix"))?;
    let mut full = Mat::default();
    imgproc::warp_affine(
        &small,
        &mut full,
        &m,
        Size::new(size.0, size.1),
        imgproc::INTER_LINEAR,
        core::BORDER_CONSTANT,
        Scalar::default(),
    )
    .map_err(cv("warp mask"))?;
    Ok(full)
}

/// `RefineLandmarksFromHeatmapCalculator`: each point moved to the
/// sigmoid-weighted mean of its `kernel`² heatmap window when the window's
/// best confidence is at least 0.5.
fn refine(points: &mut [[f32; 5]], heat: &[f32], hw: usize, hh: usize, kernel: i32) {
    let channels = points.len();
    let offset = (kernel - 1) / 2;
    for (i, p) in points.iter_mut().enumerate() {
        // Truncation toward zero, as the calculator's int conversion.
        let (col, row) = ((p[0] * hw as f32) as i32, (p[1] * hh as f32) as i32);
        if col < 0 || col >= hw as i32 || row < 0 || row >= hh as i32 {
            continue;
        }
        let (mut sum, mut wx, mut wy, mut best) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for r in (row - offset).max(0)..(row + offset + 1).min(hh as i32) {
            for c in (col - offset).max(0)..(col + offset + 1).min(hw as i32) {
                let v = sigmoid(heat[(r as usize * hw + c as usize) * channels + i]);
                sum += v;
                best = best.max(v);
                wx += c as f32 * v;
                wy += r as f32 * v;
            }
        }
        if best >= 0.5 && sum > 0.0 {
            p[0] = wx / hw as f32 / sum;
            p[1] = wy / hh as f32 / sum;
        }
    }
}
