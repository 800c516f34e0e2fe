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
//! true). Masks are made, smoothed and kept at the task's bounded mask size
//! (`segmentation_max_pixels`), never at an 8K frame's 33 MP: a stream
//! holds at most 4 bytes per mask pixel. Model outputs that are not finite
//! numbers are no pose (the frame's result is empty, nothing tracked). ProcessBatch resets the state before each image (static-image
//! mode: detector every time, no smoothing).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use litert::Runtime;
use opencv::core::Mat;
use opencv::prelude::*;
use sidecar_proto::v1::{
    Box as PixelBox, Detection, Landmark, Point, Pose, PoseTask, StageTiming, WorldLandmark,
};
use worker_runtime::{WorkerError, deadline};

use super::model::Model;
use super::pose_detection::Detector;
use super::pose_landmark::{self, POSE};
use super::roi::{self, FrameSize, RectTransform, Region};
use super::segmentation::{self, MaskSpec};
use super::smoothing::{Landmarks, OneEuroConfig, Visibility};
use crate::ssd::Raw;

/// Time between frames assumed when the client's timestamps do not
/// increase (MediaPipe's Python solutions feed 30 fps).
const FRAME_US: i64 = 33_333;

/// The region `AlignmentPointsRectsCalculator` then
/// `RectTransformationCalculator` make for pose from a centre and a scale
/// point (normalised to the frame): centred on the first, twice their
/// distance across, turned so that centre → scale point points up
/// (90°), ×1.25, square in pixels. The second: the region before the
/// transformation (the object's scale for the filters).
pub fn pose_region(c: (f32, f32), s: (f32, f32), size: FrameSize) -> (Region, Region) {
    let (cx, cy) = (c.0 * size.width, c.1 * size.height);
    let (sx, sy) = (s.0 * size.width, s.1 * size.height);
    let side = ((sx - cx).powi(2) + (sy - cy).powi(2)).sqrt() * 2.0;
    let turn = roi::rotation(c, s, std::f32::consts::FRAC_PI_2, size);
    let raw = Region::from_pixels(cx, cy, side, side, turn, size);
    let t = RectTransform {
        scale_x: 1.25,
        scale_y: 1.25,
        square_long: true,
        ..Default::default()
    };
    (raw.transform(&t, size), raw)
}

/// The pose detector and landmark model, loaded once per worker.
#[derive(Debug)]
pub struct Models {
    detector: Detector,
    /// `pose_landmark_full` (see `pose_landmark::load`).
    landmark: Model,
}

impl Models {
    /// Loads `pipeline.pose_detection` and `pipeline.pose_landmark`,
    /// refusing a model whose tensors do not fit its role.
    pub fn load(
        rt: &Arc<Runtime>,
        detection: &Path,
        landmark: &Path,
        threads: u32,
    ) -> Result<Models, WorkerError> {
        let detector = Detector::load(rt, detection, threads)?;
        let landmark = pose_landmark::load(rt, landmark, threads)?;
        Ok(Models { detector, landmark })
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
    region: Option<Region>,
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
                    t.segmentation_max_pixels,
                    "pose.segmentation_",
                    "max_pixels",
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

    /// Bytes of image-sized state the stream holds: the previous mask
    /// (smoothing), at most 4 × the task's mask bound, whatever the
    /// frame's size.
    pub fn held_bytes(&self) -> usize {
        self.mask
            .as_ref()
            .map_or(0, |m| m.total() * m.elem_size().unwrap_or(0))
    }

    /// The region tracked to the next frame.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> Option<Region> {
        self.region
    }

    /// The filters' clock: the client's timestamp while it increases, else
    /// one frame at 30 fps after the last.
    fn clock(&mut self, timestamp_us: i64) -> i64 {
        let t = match self.last_us {
            Some(last) if timestamp_us <= last => last.saturating_add(FRAME_US),
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
    let size = FrameSize::of(frame);
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
                return Err(WorkerError::internal("a pose detection without keypoints"));
            }
            let r = pose_region(d.keypoints[0], d.keypoints[1], size).0;
            // A detection whose region cannot be cropped (NaN, no size)
            // is no person.
            if !r.is_usable() {
                st.reset();
                return Ok(None);
            }
            detection = Some(to_pixels(&d, size));
            r
        }
    };
    deadline::check(deadline_ms)?;
    let t0 = Instant::now();
    let mask_size = st
        .options
        .mask
        .map(|spec| spec.size_for(frame.cols(), frame.rows()));
    let found = pose_landmark::run(
        &mut m.landmark,
        frame,
        &region,
        st.options.min_tracking,
        mask_size,
    )?;
    let Some(mut found) = found else {
        stages.push(stage("pose_landmark", t0));
        st.reset();
        return Ok(None);
    };
    let (w, h) = (size.width, size.height);
    // In pixels (z scaled as x), as the filters and the client take them.
    let pixels = |p: &[f32; 5]| [p[0] * w, p[1] * h, p[2] * w];
    let mut points: Vec<[f32; 3]> = found.points[..POSE].iter().map(pixels).collect();
    let mut visibility: Vec<f32> = found.points[..POSE].iter().map(|p| p[3]).collect();
    let xy = |p: &[f32; 5]| (p[0], p[1]);
    let object = pose_region(xy(&found.points[POSE]), xy(&found.points[POSE + 1]), size).1;
    let object_scale = (object.width * w + object.height * h) / 2.0;
    if st.options.smooth {
        st.visibility.apply(&mut visibility);
        st.landmarks.apply(&mut points, t_us, object_scale);
        st.world.apply(&mut found.world, t_us, 1.0);
    }
    // The next frame's region: from the auxiliary points, always smoothed.
    let mut aux: Vec<[f32; 3]> = found.points[POSE..POSE + 2].iter().map(pixels).collect();
    st.auxiliary.apply(&mut aux, t_us, object_scale);
    let norm = |p: &[f32; 3]| (p[0] / w, p[1] / h);
    let next = pose_region(norm(&aux[0]), norm(&aux[1]), size).0;
    // A model file is not trusted: a region that is not finite (or has no
    // size) is not tracked; the next frame runs the detector.
    let finite = [
        next.x_center,
        next.y_center,
        next.width,
        next.height,
        next.rotation,
    ]
    .iter()
    .all(|v| v.is_finite());
    st.region = (finite && next.width > 0.0).then_some(next);
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

/// A detection normalised to the frame, in frame pixels: the box clamped
/// to the frame, the keypoints not (the scale points often lie outside).
fn to_pixels(d: &Raw, size: FrameSize) -> Detection {
    let (w, h) = (size.width, size.height);
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

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn the_filters_clock_saturates_at_the_last_timestamp() {
        let mut st = State::new(&PoseTask::default()).expect("state");
        assert_eq!(st.clock(i64::MAX), i64::MAX);
        assert_eq!(
            st.clock(5),
            i64::MAX,
            "no overflow past the largest timestamp"
        );
        let mut st = State::new(&PoseTask::default()).expect("state");
        assert_eq!(st.clock(0), FRAME_US);
        assert_eq!(st.clock(0), 2 * FRAME_US);
        assert_eq!(st.clock(1_000_000), 1_000_000);
    }
}
