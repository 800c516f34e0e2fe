//! MediaPipe Pose (`PoseLandmarkCpu`, model complexity 1): one person, 33
//! landmarks with visibility and presence, 33 world landmarks, an optional
//! person mask.
//!
//! As the graph does it: pose detection (`PoseDetectionCpu`: 224x224
//! letterboxed, −1..1, 2254 anchors, 4 keypoints, weighted NMS at 0.3, the
//! best detection kept) → region (`PoseDetectionToRoi`: centre at the hip
//! keypoint 0, size twice its distance to the scale keypoint 1, rotated so
//! that 0 → 1 points up, then ×1.25, square in pixels) → `pose_landmark_full`
//! on the 256x256 crop (0..1, border replicated) → pose presence below
//! `min_tracking_score`: no pose; else 39 points (33 + the 2 auxiliary
//! alignment points + 4 unused), refined on the heatmap (7x7 window),
//! projected back to the frame; world landmarks rotated by the region's
//! rotation; the mask (sigmoid) warped back to the frame. In a stream the
//! next frame's region comes from the auxiliary points 33/34 (smoothed, as
//! `PoseLandmarkFiltering` always does) the same way as from a detection,
//! so the detector runs only when the pose was lost; landmarks, visibility
//! and world landmarks are smoothed when `smooth_landmarks` (default true),
//! masks blended with the previous one when `smooth_segmentation` (default
//! true). ProcessBatch resets the state before each image (static-image
//! mode: detector every time, no smoothing).

use std::path::Path;
use std::time::Instant;

use litert::{Compiled, HW_CPU, Runtime};
use opencv::core::{self, Mat, Point2f, RotatedRect, Scalar, Size, Size2f};
use opencv::imgproc;
use opencv::prelude::*;
use sidecar_proto::v1::{
    Box as PixelBox, Detection, Landmark, Point, Pose, PoseTask, StageTiming, WorldLandmark,
};
use worker_runtime::{WorkerError, deadline};

use crate::error::{cv, lite_error};
use crate::pipeline::pose_detection::Detector;
use crate::pipeline::segmentation::{self, MaskSpec};
use crate::pipeline::smoothing::{Landmarks, OneEuroConfig, Visibility};
use crate::ssd::Raw;

/// Landmarks the landmark model gives (33 + 2 auxiliary + 4 unused).
const POINTS: usize = 39;
/// Landmarks returned.
const POSE: usize = 33;
/// Time between frames assumed when the client's timestamps do not
/// increase (MediaPipe's Python solutions feed 30 fps).
const FRAME_US: i64 = 33_333;

/// A rotated rectangle, normalised to the frame: centre, size, rotation
/// (radians, clockwise on screen), MediaPipe's `NormalizedRect`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormRect {
    /// Centre x.
    pub x: f32,
    /// Centre y.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
    /// Rotation, radians.
    pub rotation: f32,
}

/// How a region becomes a model's input (`ImageToTensorCalculator`).
#[derive(Debug, Clone, Copy)]
pub struct Crop {
    /// Tensor width and height.
    pub width: i32,
    /// Tensor height.
    pub height: i32,
    /// Pad the region to the tensor's aspect ratio (letterbox).
    pub keep_aspect: bool,
    /// OpenCV border mode outside the frame.
    pub border: i32,
    /// Values of byte 0 and byte 255.
    pub range: (f32, f32),
}

/// What a crop did: the letterbox padding (left, top, right, bottom,
/// normalised to the tensor) and the frame → tensor pixel transform.
#[derive(Debug)]
pub struct Cropped {
    /// Padding, normalised.
    pub pad: [f32; 4],
    /// 3x3, frame pixels → tensor pixels.
    pub matrix: Mat,
}

/// Little-endian float32 bytes as floats.
pub fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// MediaPipe's `NormalizeRadians`: into −π..π.
fn normalize_radians(a: f32) -> f32 {
    use std::f32::consts::PI;
    a - 2.0 * PI * ((a + PI) / (2.0 * PI)).floor()
}

/// Crops `rect` of a BGR frame of `size` (w, h) into an RGB float tensor
/// (`buf`, little-endian f32) as `ImageToTensorCalculator` does on the CPU:
/// the rectangle's corners mapped onto the tensor's by a perspective warp,
/// bilinear.
pub fn crop_rgb(
    frame: &Mat,
    rect: &NormRect,
    size: (f32, f32),
    spec: &Crop,
    buf: &mut [u8],
) -> Result<Cropped, WorkerError> {
    let (fw, fh) = size;
    let (mut w, mut h) = (rect.w * fw, rect.h * fh);
    let mut pad = [0.0; 4];
    if spec.keep_aspect {
        let tensor = spec.height as f32 / spec.width as f32;
        let roi = h / w;
        if tensor > roi {
            let p = (1.0 - roi / tensor) / 2.0;
            h = w * tensor;
            pad = [0.0, p, 0.0, p];
        } else {
            let p = (1.0 - tensor / roi) / 2.0;
            w = h / tensor;
            pad = [p, 0.0, p, 0.0];
        }
    }
    let rotated = RotatedRect::new(
        Point2f::new(rect.x * fw, rect.y * fh),
        Size2f::new(w, h),
        rect.rotation.to_degrees(),
    )
    .map_err(cv("RotatedRect"))?;
    let mut corners = Mat::default();
    imgproc::box_points(rotated, &mut corners).map_err(cv("boxPoints"))?;
    let (tw, th) = (spec.width as f32, spec.height as f32);
    let dst = Mat::from_slice_2d(&[[0.0f32, th], [0.0, 0.0], [tw, 0.0], [tw, th]])
        .map_err(cv("corners"))?;
    let matrix = imgproc::get_perspective_transform(&corners, &dst, core::DECOMP_LU)
        .map_err(cv("getPerspectiveTransform"))?;
    let mut out = Mat::default();
    imgproc::warp_perspective(
        frame,
        &mut out,
        &matrix,
        Size::new(spec.width, spec.height),
        imgproc::INTER_LINEAR,
        spec.border,
        Scalar::default(),
    )
    .map_err(cv("warpPerspective"))?;
    let pixels = out.data_bytes().map_err(cv("pixels"))?;
    let (lo, hi) = spec.range;
    let scale = (hi - lo) / 255.0;
    if pixels.len() * 4 != buf.len() {
        return Err(WorkerError::internal(format!(
            "a {}x{} crop is {} bytes; the model's input holds {}",
            spec.width,
            spec.height,
            pixels.len() * 4,
            buf.len()
        )));
    }
    for (px, out) in pixels.chunks_exact(3).zip(buf.chunks_exact_mut(12)) {
        // BGR in the frame, RGB into the model.
        for c in 0..3 {
            let v = lo + f32::from(px[2 - c]) * scale;
            out[c * 4..c * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    Ok(Cropped { pad, matrix })
}

/// The rectangle `AlignmentPointsRectsCalculator` makes from a centre and
/// a scale point (pixels): centred on the first, twice their distance
/// wide and high, rotated so that centre → scale point is at 90°.
pub fn alignment_rect(c: (f32, f32), s: (f32, f32), size: (f32, f32)) -> NormRect {
    let (fw, fh) = size;
    let side = ((s.0 - c.0).powi(2) + (s.1 - c.1).powi(2)).sqrt() * 2.0;
    NormRect {
        x: c.0 / fw,
        y: c.1 / fh,
        w: side / fw,
        h: side / fh,
        rotation: normalize_radians(
            std::f32::consts::FRAC_PI_2 - (-(s.1 - c.1)).atan2(s.0 - c.0),
        ),
    }
}

/// `RectTransformationCalculator` as pose configures it: square on the
/// long side in pixels, then ×1.25.
pub fn pose_region(r: NormRect, size: (f32, f32)) -> NormRect {
    let long = (r.w * size.0).max(r.h * size.1);
    NormRect {
        w: long / size.0 * 1.25,
        h: long / size.1 * 1.25,
        ..r
    }
}

/// Output indices of the landmark model.
#[derive(Debug, Clone, Copy)]
struct Outputs {
    landmarks: usize,
    flag: usize,
    mask: usize,
    heatmap: usize,
    world: usize,
}

/// The pose detector and landmark model, loaded once per worker.
pub struct Models {
    detector: Detector,
    landmark: Compiled,
    outputs: Outputs,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("pose::Models").finish_non_exhaustive()
    }
}

impl Models {
    /// Loads `pipeline.pose_detection` and `pipeline.pose_landmark`,
    /// refusing a model whose tensors do not fit its role.
    pub fn load(
        lib: &Path,
        detection: &Path,
        landmark: &Path,
        threads: u32,
    ) -> Result<Models, WorkerError> {
        let detector = Detector::load(lib, detection, threads)?;
        let field = "pipeline.pose_landmark";
        let landmark = Runtime::load(lib)
            .map_err(lite_error)?
            .model(landmark)
            .and_then(|m| m.compile(HW_CPU, threads))
            .map_err(|e| WorkerError::invalid(format!("{field}: LiteRT could not load it: {e}")))?;
        let input = landmark.input_desc.first().map(|d| (&d.shape, d.element_type));
        let shapes: Vec<&Vec<i32>> = landmark.output_desc.iter().map(|d| &d.shape).collect();
        let find = |want: &[i32]| shapes.iter().position(|s| s.as_slice() == want);
        let outputs = match (
            input,
            find(&[1, 195]),
            find(&[1, 1]),
            find(&[1, 256, 256, 1]),
            find(&[1, 64, 64, 39]),
            find(&[1, 117]),
        ) {
            (Some((s, 1)), Some(landmarks), Some(flag), Some(mask), Some(heatmap), Some(world))
                if s.as_slice() == [1, 256, 256, 3] && shapes.len() == 5 =>
            {
                Outputs {
                    landmarks,
                    flag,
                    mask,
                    heatmap,
                    world,
                }
            }
            _ => {
                return Err(WorkerError::invalid(format!(
                    "{field}: the model takes {input:?} (shape, type) and gives {shapes:?}; a pose landmark model takes float32 [1, 256, 256, 3] and gives [1, 195] landmarks, [1, 1] presence, [1, 256, 256, 1] mask, [1, 64, 64, 39] heatmap, [1, 117] world landmarks"
                )));
            }
        };
        Ok(Models {
            detector,
            landmark,
            outputs,
        })
    }
}

/// A pose task's options, checked.
#[derive(Debug, Clone, Copy)]
struct Options {
    min_detection: f32,
    min_tracking: f32,
    smooth: bool,
    mask: Option<MaskSpec>,
    smooth_mask: bool,
}

fn score(v: f32, name: &str) -> Result<f32, WorkerError> {
    if !(0.0..=1.0).contains(&v) {
        return Err(WorkerError::invalid(format!(
            "pose.{name} {v} is not within 0..1"
        )));
    }
    Ok(if v > 0.0 { v } else { 0.5 })
}

/// Checks a pose task against the worker's models.
pub fn check(t: &PoseTask, loaded: bool) -> Result<(), WorkerError> {
    if !loaded {
        return Err(WorkerError::invalid(
            "pose needs pipeline.pose_detection and pipeline.pose_landmark in the model's VisionOptions; this model was loaded without them",
        ));
    }
    State::new(t).map(|_| ())
}

/// A stream's pose state: the tracked region and the filters.
#[derive(Debug)]
pub struct State {
    options: Options,
    /// The region from the last frame's landmarks, while tracking.
    region: Option<NormRect>,
    landmarks: Landmarks,
    visibility: Visibility,
    world: Landmarks,
    auxiliary: Landmarks,
    mask: Option<Mat>,
    /// The last frame's time, µs.
    last_us: Option<i64>,
}

impl State {
    /// Checks `t` and starts with nothing tracked.
    pub fn new(t: &PoseTask) -> Result<State, WorkerError> {
        let options = Options {
            min_detection: score(t.min_detection_score, "min_detection_score")?,
            min_tracking: score(t.min_tracking_score, "min_tracking_score")?,
            smooth: t.smooth_landmarks.unwrap_or(true),
            mask: if t.segmentation {
                Some(MaskSpec::new(
                    t.segmentation_threshold,
                    t.segmentation_format,
                    "pose.segmentation_",
                )?)
            } else {
                None
            },
            smooth_mask: t.smooth_segmentation.unwrap_or(true),
        };
        Ok(State {
            options,
            region: None,
            // PoseLandmarkFiltering's parameters.
            landmarks: Landmarks::new(OneEuroConfig::new(0.05, 80.0, 1.0)),
            visibility: Visibility::new(0.1),
            world: Landmarks::new(OneEuroConfig {
                disable_value_scaling: true,
                ..OneEuroConfig::new(0.1, 40.0, 1.0)
            }),
            auxiliary: Landmarks::new(OneEuroConfig::new(0.01, 10.0, 1.0)),
            mask: None,
            last_us: None,
        })
    }

    /// Forgets the tracked pose (a frame without one, or a new image of a
    /// batch).
    pub fn reset(&mut self) {
        self.region = None;
        self.landmarks.reset();
        self.visibility.reset();
        self.world.reset();
        self.auxiliary.reset();
        self.mask = None;
        self.last_us = None;
    }

    /// Tracks `region` from the next frame on (tests: a region as
    /// MediaPipe found it).
    #[cfg(test)]
    pub(crate) fn track(&mut self, region: NormRect) {
        self.region = Some(region);
    }

    /// The filters' clock: the client's timestamp while it increases, else
    /// one frame at 30 fps after the last.
    fn clock(&mut self, timestamp_us: i64) -> i64 {
        let t = match self.last_us {
            Some(last) if timestamp_us <= last => last + FRAME_US,
            None if timestamp_us <= 0 => FRAME_US,
            _ => timestamp_us,
        };
        self.last_us = Some(t);
        t
    }
}

/// One frame's pose, stages timed into `stages`; None without a person.
pub fn run(
    m: &mut Models,
    st: &mut State,
    frame: &Mat,
    timestamp_us: i64,
    deadline_ms: i64,
    stages: &mut Vec<StageTiming>,
) -> Result<Option<Pose>, WorkerError> {
    let size = (frame.cols() as f32, frame.rows() as f32);
    let t_us = st.clock(timestamp_us);
    let mut detection = None;
    let region = match st.region.take() {
        Some(r) => r,
        None => {
            deadline::check(deadline_ms)?;
            let t0 = Instant::now();
            let found = m.detector.detect(frame, st.options.min_detection)?;
            stages.push(stage("pose_detection", t0));
            let Some(d) = found.into_iter().next() else {
                st.reset();
                return Ok(None);
            };
            if d.keypoints.len() < 2 {
                return Err(WorkerError::internal("pose detection without keypoints"));
            }
            let px = |k: usize| (d.keypoints[k].0 * size.0, d.keypoints[k].1 * size.1);
            let r = pose_region(alignment_rect(px(0), px(1), size), size);
            detection = Some(to_pixels(&d, size));
            r
        }
    };
    deadline::check(deadline_ms)?;
    let t0 = Instant::now();
    let want_mask = st.options.mask.is_some();
    let found = landmarks(m, frame, &region, size, st.options.min_tracking, want_mask)?;
    let Some(mut found) = found else {
        stages.push(stage("pose_landmark", t0));
        st.reset();
        return Ok(None);
    };
    let px = |p: &[f32; 5]| (p[0] * size.0, p[1] * size.1);
    let aux_rect = alignment_rect(px(&found.points[POSE]), px(&found.points[POSE + 1]), size);
    let object_scale = (aux_rect.w * size.0 + aux_rect.h * size.1) / 2.0;
    let mut points: Vec<[f32; 3]> = found.points[..POSE]
        .iter()
        .map(|p| [p[0] * size.0, p[1] * size.1, p[2] * size.0])
        .collect();
    let mut visibility: Vec<f32> = found.points[..POSE].iter().map(|p| p[3]).collect();
    if st.options.smooth {
        st.visibility.apply(&mut visibility);
        st.landmarks.apply(&mut points, t_us, object_scale);
        st.world.apply(&mut found.world, t_us, 1.0);
    }
    // The next frame's region: from the auxiliary points, always smoothed.
    let mut aux: Vec<[f32; 3]> = found.points[POSE..POSE + 2]
        .iter()
        .map(|p| [p[0] * size.0, p[1] * size.1, p[2] * size.0])
        .collect();
    st.auxiliary.apply(&mut aux, t_us, object_scale);
    st.region = Some(pose_region(
        alignment_rect((aux[0][0], aux[0][1]), (aux[1][0], aux[1][1]), size),
        size,
    ));
    let segmentation = match (st.options.mask, found.mask.take()) {
        (Some(spec), Some(mut mask)) => {
            if st.options.smooth_mask
                && let Some(prev) = &st.mask
            {
                segmentation::smooth(&mut mask, prev, 0.7)?;
            }
            let encoded = spec.encode(&mask)?;
            st.mask = Some(mask);
            Some(encoded)
        }
        _ => None,
    };
    stages.push(stage("pose_landmark", t0));
    Ok(Some(Pose {
        landmarks: points
            .iter()
            .zip(&visibility)
            .zip(&found.points)
            .map(|((p, &v), raw)| Landmark {
                x: p[0],
                y: p[1],
                z: p[2],
                visibility: v,
                presence: raw[4],
            })
            .collect(),
        world_landmarks: found
            .world
            .iter()
            .map(|w| WorldLandmark {
                x: w[0],
                y: w[1],
                z: w[2],
            })
            .collect(),
        score: found.score,
        segmentation,
        detection,
    }))
}

fn stage(name: &str, t0: Instant) -> StageTiming {
    StageTiming {
        stage: name.into(),
        us: t0.elapsed().as_micros() as u64,
    }
}

/// A detection normalised to the frame, in frame pixels (keypoints not
/// clamped: the scale point may lie outside the frame).
fn to_pixels(d: &Raw, size: (f32, f32)) -> Detection {
    let (w, h) = size;
    let (x0, y0) = (d.xmin.clamp(0.0, 1.0) * w, d.ymin.clamp(0.0, 1.0) * h);
    let (x1, y1) = (d.xmax.clamp(0.0, 1.0) * w, d.ymax.clamp(0.0, 1.0) * h);
    Detection {
        r#box: Some(PixelBox {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }),
        score: d.score,
        class_id: 0,
        label: "person".into(),
        keypoints: d
            .keypoints
            .iter()
            .map(|&(x, y)| Point { x: x * w, y: y * h })
            .collect(),
    }
}

/// The landmark model's answer on one region, in frame-normalised terms.
struct Found {
    /// x, y (normalised to the frame), z (normalised like x), visibility,
    /// presence; 39 points.
    points: Vec<[f32; 5]>,
    /// 33 world landmarks, metres, rotated like the region.
    world: Vec<[f32; 3]>,
    score: f32,
    /// The person probability at the frame's size.
    mask: Option<Mat>,
}

fn landmarks(
    m: &mut Models,
    frame: &Mat,
    region: &NormRect,
    size: (f32, f32),
    min_tracking: f32,
    want_mask: bool,
) -> Result<Option<Found>, WorkerError> {
    let spec = Crop {
        width: 256,
        height: 256,
        keep_aspect: true,
        border: core::BORDER_REPLICATE,
        range: (0.0, 1.0),
    };
    let mut cropped = Err(WorkerError::internal("the pose crop was not written"));
    m.landmark
        .write_input(0, |buf| cropped = crop_rgb(frame, region, size, &spec, buf))
        .map_err(lite_error)?;
    let cropped = cropped?;
    m.landmark.run().map_err(lite_error)?;
    let o = m.outputs;
    let read = |i: usize| m.landmark.read_output(i, floats).map_err(lite_error);
    let score = read(o.flag)?.first().copied().unwrap_or(0.0);
    if !(score >= min_tracking) {
        return Ok(None);
    }
    let raw = read(o.landmarks)?;
    let heat = read(o.heatmap)?;
    let world = read(o.world)?;
    if raw.len() != POINTS * 5 || heat.len() != 64 * 64 * POINTS || world.len() != POINTS * 3 {
        return Err(WorkerError::internal(
            "the pose landmark model's outputs changed size",
        ));
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
    refine(&mut points, &heat, 64, 64, 7);
    let [left, top, right, bottom] = cropped.pad;
    let (cos, sin) = (region.rotation.cos(), region.rotation.sin());
    for p in &mut points {
        // Letterbox removal, then from the region to the frame.
        let x = (p[0] - left) / (1.0 - left - right) - 0.5;
        let y = (p[1] - top) / (1.0 - top - bottom) - 0.5;
        p[0] = (cos * x - sin * y) * region.w + region.x;
        p[1] = (sin * x + cos * y) * region.h + region.y;
        p[2] /= 1.0 - left - right;
        p[2] *= region.w;
    }
    let world = world
        .chunks_exact(3)
        .take(POSE)
        .map(|w| [cos * w[0] - sin * w[1], sin * w[0] + cos * w[1], w[2]])
        .collect();
    let mask = if want_mask {
        let logits = read(o.mask)?;
        let probs: Vec<f32> = logits.iter().map(|&v| sigmoid(v)).collect();
        let small = Mat::new_rows_cols_with_data(256, 256, &probs).map_err(cv("mask"))?;
        let mut full = Mat::default();
        imgproc::warp_perspective(
            &small,
            &mut full,
            &cropped.matrix,
            Size::new(size.0 as i32, size.1 as i32),
            imgproc::INTER_LINEAR | imgproc::WARP_INVERSE_MAP,
            core::BORDER_CONSTANT,
            Scalar::default(),
        )
        .map_err(cv("warp mask"))?;
        Some(full)
    } else {
        None
    };
    Ok(Some(Found {
        points,
        world,
        score,
        mask,
    }))
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
