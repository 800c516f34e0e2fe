//! MediaPipe Hands as its legacy graph (`hand_landmark_tracking_cpu`)
//! runs it, on the models given as `pipeline.palm_detection` and
//! `pipeline.hand_landmark`:
//!
//! 1. While fewer than `max_hands` hands are tracked from the previous
//!    frame (always, in static-image mode), the palm detector runs on the
//!    whole frame; its best `max_hands` palms become regions: the box
//!    turned so that wrist (keypoint 0) → middle-finger MCP (keypoint 2)
//!    points up, moved half its height towards the fingers, squared on its
//!    long side and scaled 2.6 (`PalmDetectionDetectionToRoi`).
//! 2. New regions and tracked ones are associated as
//!    `AssociationNormRectCalculator` does (min similarity 0.5): in order,
//!    palms then tracked hands, each region replaces the earlier ones it
//!    overlaps, so a tracked hand wins over the palm found on it.
//! 3. The landmark model runs on each region's 224x224 crop (RGB 0..1,
//!    edges replicated); a hand whose presence score is under
//!    `min_tracking_score` is dropped. Landmarks (z divided by 0.4 as the
//!    graph's `normalize_z`), world landmarks (turned by the region) and
//!    handedness (binary: "Left" at a score ≥ 0.5, else "Right").
//! 4. The next frame's region of each hand comes from its landmarks
//!    (`HandLandmarkLandmarksToRoi`): the rotated box around the wrist and
//!    the MCP/PIP joints, turned by wrist → mean of the index/ring and
//!    middle MCPs, scaled 2, moved 0.1 of its height towards the fingers,
//!    squared.
//!
//! One difference, where MediaPipe's answer would surprise its user: the
//! legacy graph can return more than `max_hands` hands (new palms that
//! overlap no tracked hand are added to them); here the regions are cut
//! to `max_hands`, the tracked hands kept first.

use std::f32::consts::FRAC_PI_2;
use std::path::Path;
use std::time::Instant;

use litert::Runtime;
use opencv::core::Mat;
use sidecar_proto::v1::{
    Box as PixelBox, Detection, Hand, HandsTask, Landmark, LandmarkRegion, PipelineModels, Point,
    StageTiming, WorldLandmark,
};
use worker_runtime::{WorkerError, deadline};

use super::model::Model;
use super::palm::{Palm, PalmDetection};
use super::roi::{
    Border, Crop, FrameSize, RectTransform, Region, TensorSpec, rotate_world, rotation,
};
use crate::error::lite_error;

/// The landmark model's input (`ImageToTensorCalculator` of
/// `hand_landmark_cpu`).
pub const INPUT: TensorSpec = TensorSpec {
    width: 224,
    height: 224,
    range: (0.0, 1.0),
    border: Border::Replicate,
    keep_aspect: true,
};

/// Landmarks per hand.
pub const LANDMARKS: usize = 21;
/// The largest `max_hands` a task may ask for.
pub const MAX_HANDS: u32 = 4;
/// `TensorsToLandmarksCalculator.normalize_z` of the landmark graph.
const NORMALIZE_Z: f32 = 0.4;
/// Similarity above which two regions are one hand.
const SAME_HAND_IOU: f32 = 0.5;
/// Palm → region (`PalmDetectionDetectionToRoi`).
const FROM_PALM: RectTransform = RectTransform {
    scale_x: 2.6,
    scale_y: 2.6,
    shift_x: 0.0,
    shift_y: -0.5,
    square_long: true,
};
/// Landmarks → next region (`HandLandmarkLandmarksToRoi`).
const FROM_LANDMARKS: RectTransform = RectTransform {
    scale_x: 2.0,
    scale_y: 2.0,
    shift_x: 0.0,
    shift_y: -0.1,
    square_long: true,
};
/// The landmarks the next region is drawn around: the wrist and the MCP
/// and PIP joints (thumb: CMC, MCP, IP), steadier than the finger tips.
const STEADY: [usize; 12] = [0, 1, 2, 3, 5, 6, 9, 10, 13, 14, 17, 18];

/// The two models, loaded once per worker.
#[derive(Debug)]
pub struct Models {
    palm: Palm,
    landmark: Model,
}

impl Models {
    /// Loads the hands models when `pipeline` names them; None when it
    /// names neither, INVALID_ARGUMENT when it names one only or one does
    /// not fit its role.
    pub fn load(
        lib: &Path,
        pipeline: Option<&PipelineModels>,
        threads: u32,
    ) -> Result<Option<Models>, WorkerError> {
        let Some(p) = pipeline else {
            return Ok(None);
        };
        let (palm, landmark) = match (p.palm_detection.as_str(), p.hand_landmark.as_str()) {
            ("", "") => return Ok(None),
            ("", _) => {
                return Err(WorkerError::invalid(
                    "pipeline.palm_detection is required with pipeline.hand_landmark",
                ));
            }
            (_, "") => {
                return Err(WorkerError::invalid(
                    "pipeline.hand_landmark is required with pipeline.palm_detection",
                ));
            }
            pair => pair,
        };
        let rt = Runtime::load(lib).map_err(lite_error)?;
        let n = LANDMARKS as i32 * 3;
        Ok(Some(Models {
            palm: Palm::load(&rt, Path::new(palm), threads)?,
            landmark: Model::load(
                &rt,
                Path::new(landmark),
                threads,
                "pipeline.hand_landmark",
                "a hand landmark model",
                (&[1, 224, 224, 3], &[&[1, n], &[1, 1], &[1, 1], &[1, n]]),
            )?,
        }))
    }
}

/// A hands task's options, checked, and a stream's tracked hands.
#[derive(Debug, Clone, PartialEq)]
pub struct Hands {
    max_hands: usize,
    min_detection: f32,
    min_tracking: f32,
    static_mode: bool,
    /// Regions of the hands found on the previous frame.
    tracked: Vec<Region>,
}

fn score(field: &str, v: f32) -> Result<f32, WorkerError> {
    match v {
        0.0 => Ok(0.5),
        v if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        v => Err(WorkerError::invalid(format!(
            "hands.{field} {v} is outside 0..1"
        ))),
    }
}

impl Hands {
    /// Checks a task's options and that the worker has the models.
    pub fn check(t: &HandsTask, models: Option<&Models>) -> Result<(), WorkerError> {
        if models.is_none() {
            return Err(WorkerError::invalid(
                "hands needs pipeline.palm_detection and pipeline.hand_landmark; this model was loaded without them",
            ));
        }
        Hands::new(t).map(|_| ())
    }

    /// A task's options, checked; nothing tracked yet.
    pub fn new(t: &HandsTask) -> Result<Hands, WorkerError> {
        let max_hands = match t.max_hands {
            0 => 2,
            n if n > MAX_HANDS => {
                return Err(WorkerError::invalid(format!(
                    "hands.max_hands {n} exceeds the limit of {MAX_HANDS}"
                )));
            }
            n => n as usize,
        };
        Ok(Hands {
            max_hands,
            min_detection: score("min_detection_score", t.min_detection_score)?,
            min_tracking: score("min_tracking_score", t.min_tracking_score)?,
            static_mode: t.static_image_mode,
            tracked: Vec::new(),
        })
    }

    /// Forgets the tracked hands: the next frame starts afresh (each image
    /// of a batch).
    pub fn reset(&mut self) {
        self.tracked.clear();
    }

    /// The hands on a BGR frame, and the time each stage took; the
    /// deadline (Unix ms, 0: none) is checked before each model run.
    pub fn run(
        &mut self,
        m: &mut Models,
        frame: &Mat,
        deadline_ms: i64,
    ) -> Result<(Vec<Hand>, Vec<StageTiming>), WorkerError> {
        let size = FrameSize::of(frame);
        let mut stages = Vec::new();
        // The previous frame's regions; this frame's hands replace them
        // (static mode ignores them).
        let mut tracked = std::mem::take(&mut self.tracked);
        if self.static_mode {
            tracked.clear();
        }
        // (region, the palm it came from)
        let mut regions: Vec<(Region, Option<PalmDetection>)> = Vec::new();
        if tracked.len() < self.max_hands {
            deadline::check(deadline_ms)?;
            let t0 = Instant::now();
            let mut palms = m.palm.detect(frame, self.min_detection)?;
            palms.truncate(self.max_hands);
            stages.push(stage("palm_detection", t0));
            for p in palms {
                let r = palm_region(&p, size);
                if r.is_usable() {
                    associate(&mut regions, (r, Some(p)));
                }
            }
        }
        for r in tracked {
            associate(&mut regions, (r, None));
        }
        // Over max_hands: the oldest entries are the new palms.
        let over = regions.len().saturating_sub(self.max_hands);
        regions.drain(..over);
        let mut hands = Vec::new();
        let ran = !regions.is_empty();
        let t0 = Instant::now();
        for (region, palm) in regions {
            deadline::check(deadline_ms)?;
            if let Some((hand, next)) = self.landmarks(m, frame, &region, palm.as_ref())? {
                hands.push(hand);
                if next.is_usable() {
                    self.tracked.push(next);
                }
            }
        }
        if ran {
            stages.push(stage("hand_landmark", t0));
        }
        Ok((hands, stages))
    }

    /// The landmark model on one region: the hand and its next region, or
    /// None when its presence is under the threshold.
    fn landmarks(
        &self,
        m: &mut Models,
        frame: &Mat,
        region: &Region,
        palm: Option<&PalmDetection>,
    ) -> Result<Option<(Hand, Region)>, WorkerError> {
        let crop = m.landmark.input(frame, region, &INPUT)?;
        m.landmark.run()?;
        let out = Outputs {
            landmarks: m.landmark.output(0)?,
            presence: first(&m.landmark.output(1)?),
            left: first(&m.landmark.output(2)?),
            world: m.landmark.output(3)?,
        };
        Ok(decode(&out, &crop, region, palm, self.min_tracking))
    }
}

/// The landmark model's outputs on one region.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// 21 × (x, y, z) in tensor pixels.
    pub landmarks: Vec<f32>,
    /// Hand presence, 0..1.
    pub presence: f32,
    /// The score of a left hand, 0..1.
    pub left: f32,
    /// 21 × (x, y, z) in metres.
    pub world: Vec<f32>,
}

/// One region's hand from the landmark model's outputs, and its region on
/// the next frame; None when its presence is under `min_tracking` (or not
/// a number), or when anything the client would get is not a finite
/// number (a model file is not trusted, and a degenerate crop maps points
/// to infinity): that hand is dropped and not tracked, so the palm
/// detector looks for it again on the next frame; the frame's other hands
/// are kept.
pub fn decode(
    out: &Outputs,
    crop: &Crop,
    region: &Region,
    palm: Option<&PalmDetection>,
    min_tracking: f32,
) -> Option<(Hand, Region)> {
    let presence = out.presence;
    if presence.is_nan() || presence < min_tracking {
        return None;
    }
    let size = crop.size;
    let (tw, th) = (INPUT.width as f32, INPUT.height as f32);
    let mut normalised = Vec::with_capacity(LANDMARKS);
    let mut landmarks = Vec::with_capacity(LANDMARKS);
    for p in out.landmarks.chunks_exact(3).take(LANDMARKS) {
        let (u, v) = (p[0] / tw, p[1] / th);
        let (x, y) = crop.to_pixels(u, v);
        normalised.push((x / size.width, y / size.height));
        landmarks.push(Landmark {
            x,
            y,
            z: crop.z_to_pixels(p[2] / tw / NORMALIZE_Z),
            visibility: 0.0,
            presence: 0.0,
        });
    }
    let world_landmarks: Vec<WorldLandmark> = out
        .world
        .chunks_exact(3)
        .take(LANDMARKS)
        .map(|p| {
            let (x, y) = rotate_world(p[0], p[1], region.rotation);
            WorldLandmark { x, y, z: p[2] }
        })
        .collect();
    let left = out.left;
    let (handedness, handedness_score) = if left >= 0.5 {
        ("Left", left)
    } else {
        ("Right", 1.0 - left)
    };
    let finite = landmarks.len() == LANDMARKS
        && world_landmarks.len() == LANDMARKS
        && landmarks
            .iter()
            .all(|l| [l.x, l.y, l.z].iter().all(|v| v.is_finite()))
        && world_landmarks
            .iter()
            .all(|l| [l.x, l.y, l.z].iter().all(|v| v.is_finite()))
        && [presence, handedness_score].iter().all(|v| v.is_finite());
    if !finite {
        return None;
    }
    let (cx, cy, w, h) = region.pixels(size);
    let hand = Hand {
        landmarks,
        world_landmarks,
        handedness: handedness.into(),
        handedness_score,
        presence,
        palm: palm.map(|p| palm_detection(p, size)),
        region: Some(LandmarkRegion {
            x_center: cx,
            y_center: cy,
            width: w,
            height: h,
            rotation: region.rotation,
        }),
    };
    Some((hand, next_region(&normalised, size)))
}

fn first(v: &[f32]) -> f32 {
    v.first().copied().unwrap_or(0.0)
}

fn stage(name: &str, t0: Instant) -> StageTiming {
    StageTiming {
        stage: name.into(),
        us: t0.elapsed().as_micros() as u64,
    }
}

/// `AssociationNormRectCalculator`: `r` replaces the regions it overlaps.
fn associate(
    regions: &mut Vec<(Region, Option<PalmDetection>)>,
    r: (Region, Option<PalmDetection>),
) {
    regions.retain(|(k, _)| k.iou(&r.0) <= SAME_HAND_IOU);
    regions.push(r);
}

/// A palm → the region the landmark model crops.
pub fn palm_region(p: &PalmDetection, size: FrameSize) -> Region {
    let (x0, y0, x1, y1) = p.bounds;
    let turn = match (p.keypoints.first(), p.keypoints.get(2)) {
        (Some(&wrist), Some(&middle)) => rotation(wrist, middle, FRAC_PI_2, size),
        _ => 0.0,
    };
    Region::from_box(x0, y0, x1, y1)
        .rotated(turn)
        .transform(&FROM_PALM, size)
}

/// A hand's landmarks (normalised to the frame) → its region on the next
/// frame.
pub fn next_region(landmarks: &[(f32, f32)], size: FrameSize) -> Region {
    let steady: Vec<(f32, f32)> = STEADY
        .iter()
        .filter_map(|&i| landmarks.get(i).copied())
        .collect();
    let at = |i: usize| landmarks.get(i).copied().unwrap_or_default();
    // Towards the fingers: the index and ring MCPs' midpoint, averaged
    // with the middle MCP.
    let (i, mid, r) = (at(5), at(9), at(13));
    let toward = (
        ((i.0 + r.0) / 2.0 + mid.0) / 2.0,
        ((i.1 + r.1) / 2.0 + mid.1) / 2.0,
    );
    let turn = rotation(at(0), toward, FRAC_PI_2, size);
    Region::around_rotated(&steady, turn, size)
        .unwrap_or_default()
        .transform(&FROM_LANDMARKS, size)
}

/// A palm in frame pixels.
fn palm_detection(p: &PalmDetection, size: FrameSize) -> Detection {
    let (x0, y0, x1, y1) = p.bounds;
    Detection {
        r#box: Some(PixelBox {
            x: x0 * size.width,
            y: y0 * size.height,
            width: (x1 - x0) * size.width,
            height: (y1 - y0) * size.height,
        }),
        score: p.score,
        class_id: 0,
        label: "palm".into(),
        keypoints: p
            .keypoints
            .iter()
            .map(|&(x, y)| Point {
                x: x * size.width,
                y: y * size.height,
            })
            .collect(),
    }
}

#[cfg(test)]
#[path = "hands_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "hands_video_tests.rs"]
mod video_tests;
