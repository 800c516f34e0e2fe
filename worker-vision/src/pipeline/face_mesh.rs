//! The face mesh task (MediaPipe's legacy Face Mesh,
//! `face_landmark_front_cpu`): face detection gives regions (the eyes
//! rotate them, scale 1.5, square on the long side), the landmark model
//! gives 468 points on each region's rotated 192x192 crop, and each face's
//! landmarks give the region of the next frame (eyes 33 → 263, scale 1.5).
//! In a stream the detector runs only while fewer than `max_faces` faces
//! are tracked; its regions are then merged with the tracked ones (a
//! tracked region replaces a detected one it overlaps by IoU > 0.5, as
//! AssociationNormRect does). ProcessBatch forgets the regions before each
//! image (static-image mode). A face whose presence is below
//! `min_tracking_score` is dropped and not tracked.

use std::time::Instant;

use opencv::core::Mat;
use opencv::prelude::*;
use sidecar_proto::v1::{
    FaceMesh, FaceMeshTask, Landmark, LandmarkRegion, ProcessResponse, StageTiming,
};
use worker_runtime::{WorkerError, deadline};

use crate::detect::{Ssd, frame_pixels};
use crate::pipeline::face_model::{FaceModels, MESH_POINTS};
use crate::pipeline::iris;
use crate::pipeline::roi::{FrameSize, RectTransform, Region, rotation};
use crate::ssd::Raw;
use crate::tasks::Detector;

/// Most faces one task may ask for.
pub const MAX_FACES: u32 = 8;
/// Detection → region (`FaceDetectionFrontDetectionToRoi`) and landmarks
/// → next region (`FaceLandmarkLandmarksToRoi`): squared, scaled 1.5.
const TO_REGION: RectTransform = RectTransform {
    scale_x: 1.5,
    scale_y: 1.5,
    shift_x: 0.0,
    shift_y: 0.0,
    square_long: true,
};
/// Overlap above which a tracked region replaces a detected one.
const SAME_FACE_IOU: f32 = 0.5;
/// Weighted NMS overlap of the face detector (MediaPipe's 0.3).
const NMS_IOU: f32 = 0.3;
/// The landmarks whose line (the eyes' outer corners) rotates the next
/// region.
const EYES: (usize, usize) = (33, 263);

/// A face-mesh task's options, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Most faces.
    pub max_faces: usize,
    /// Lowest detection score.
    pub min_detection: f32,
    /// Lowest face presence.
    pub min_tracking: f32,
    /// Iris landmarks.
    pub refine: bool,
}

/// A score option: 0 is the default 0.5, else within 0..1.
fn score(name: &str, v: f32) -> Result<f32, WorkerError> {
    if v == 0.0 {
        Ok(0.5)
    } else if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(WorkerError::invalid(format!(
            "face_mesh.{name} {v} is outside 0..1"
        )))
    }
}

impl Settings {
    /// Checks a task's options.
    pub fn of(t: &FaceMeshTask) -> Result<Settings, WorkerError> {
        let max_faces = match t.max_faces {
            0 => 1,
            n if n > MAX_FACES => {
                return Err(WorkerError::invalid(format!(
                    "face_mesh.max_faces {n} exceeds the limit of {MAX_FACES}"
                )));
            }
            n => n,
        } as usize;
        Ok(Settings {
            max_faces,
            min_detection: score("min_detection_score", t.min_detection_score)?,
            min_tracking: score("min_tracking_score", t.min_tracking_score)?,
            refine: t.refine_landmarks,
        })
    }
}

/// Checks that a face-mesh task can run on this worker: its options, the
/// landmark model, a face detector, and the iris model when refined.
pub fn check(
    t: &FaceMeshTask,
    models: Option<&FaceModels>,
    own: &Detector,
) -> Result<(), WorkerError> {
    let settings = Settings::of(t)?;
    let Some(models) = models else {
        return Err(WorkerError::invalid(
            "face_mesh needs pipeline.face_landmark (face_landmark.tflite) in the model's VISION options; \
             it is not set",
        ));
    };
    if models.detector.is_none() && !matches!(own, Detector::Ssd(d) if d.is_face_detector()) {
        return Err(WorkerError::invalid(
            "face_mesh needs a face detector: pipeline.face_detection is not set and the model's own \
             detector is not a BlazeFace (one class, six keypoints)",
        ));
    }
    if settings.refine && models.iris.is_none() {
        return Err(WorkerError::invalid(
            "face_mesh.refine_landmarks needs pipeline.iris_landmark (iris_landmark.tflite); it is not set",
        ));
    }
    Ok(())
}

/// A face mesh task's state in one stream: its options and the regions
/// tracked from the last frame's landmarks.
#[derive(Debug, Clone)]
pub struct FaceTracker {
    settings: Settings,
    regions: Vec<Region>,
}

/// What one frame's run needs besides the frame.
#[derive(Debug)]
pub struct Run<'a> {
    /// The face mesh's models.
    pub models: &'a mut FaceModels,
    /// The worker's own detector.
    pub own: &'a mut Detector,
    /// Unix ms, 0: none.
    pub deadline_ms: i64,
}

impl FaceTracker {
    /// A tracker for a checked task.
    pub fn new(t: &FaceMeshTask) -> Result<FaceTracker, WorkerError> {
        Ok(FaceTracker {
            settings: Settings::of(t)?,
            regions: Vec::new(),
        })
    }

    /// Forgets the tracked regions: the next frame is detected afresh
    /// (each image of a ProcessBatch).
    pub fn forget(&mut self) {
        self.regions.clear();
    }

    /// Runs the face mesh on a BGR frame into `r.face_meshes` and
    /// `r.stages`.
    pub fn run(
        &mut self,
        run: Run<'_>,
        frame: &Mat,
        r: &mut ProcessResponse,
    ) -> Result<(), WorkerError> {
        let size = FrameSize::of(frame);
        let prev = std::mem::take(&mut self.regions);
        let mut candidates: Vec<(Region, Option<Raw>)> = Vec::new();
        if prev.len() < self.settings.max_faces {
            deadline::check(run.deadline_ms)?;
            let t0 = Instant::now();
            let detector: &mut Ssd = match (run.models.detector.as_deref_mut(), &mut *run.own) {
                (Some(d), _) => d,
                (None, Detector::Ssd(d)) => d,
                (None, Detector::Cascade(_)) => {
                    return Err(WorkerError::internal("face_mesh without a face detector"));
                }
            };
            let mut found = detector.detect_raw(frame, self.settings.min_detection, NMS_IOU)?;
            found.truncate(self.settings.max_faces);
            for d in found {
                let region = detection_region(&d, size);
                // A collapsed or non-finite box gives no crop.
                if region.is_usable() {
                    candidates.push((region, Some(d)));
                }
            }
            r.stages.push(stage("face_detection", t0));
        }
        let regions = associate(candidates, prev, self.settings.max_faces);
        if regions.is_empty() {
            return Ok(());
        }
        let (mut mesh_us, mut iris_us) = (0u64, None);
        for (region, detection) in regions {
            deadline::check(run.deadline_ms)?;
            let t0 = Instant::now();
            let out = run.models.landmark.run(frame, &region)?;
            mesh_us += t0.elapsed().as_micros() as u64;
            if !kept(out.presence, &out.points, self.settings.min_tracking) {
                continue;
            }
            let mut points = out.points;
            let next = landmark_region(&points, size);
            if self.settings.refine {
                let t1 = Instant::now();
                if let Some(model) = run.models.iris.as_mut() {
                    iris::refine(model, frame, &mut points)?;
                    iris_us = Some(iris_us.unwrap_or(0) + t1.elapsed().as_micros() as u64);
                }
                // Iris points that are not numbers: the face is dropped.
                if !kept(out.presence, &points, self.settings.min_tracking) {
                    continue;
                }
            }
            if next.is_usable() {
                self.regions.push(next);
            }
            r.face_meshes.push(FaceMesh {
                landmarks: points
                    .iter()
                    .map(|p| Landmark {
                        x: p[0] * size.width,
                        y: p[1] * size.height,
                        z: p[2],
                        ..Default::default()
                    })
                    .collect(),
                presence: out.presence,
                detection: detection.map(|d| frame_pixels(&d, frame.cols(), frame.rows())),
                region: Some({
                    let (x_center, y_center, width, height) = region.pixels(size);
                    LandmarkRegion {
                        x_center,
                        y_center,
                        width,
                        height,
                        rotation: region.rotation,
                    }
                }),
            });
        }
        r.stages.push(StageTiming {
            stage: "face_landmark".into(),
            us: mesh_us,
        });
        if let Some(us) = iris_us {
            r.stages.push(StageTiming {
                stage: "iris_landmark".into(),
                us,
            });
        }
        Ok(())
    }
}

/// Whether a face goes to the client (and is tracked): its presence is
/// a number at least `min_tracking`, and every point is a finite number
/// (a model file is not trusted; a degenerate crop maps points to
/// infinity). A face that fails is dropped; the frame's others are kept.
pub fn kept(presence: f32, points: &[[f32; 3]], min_tracking: f32) -> bool {
    !presence.is_nan() && presence >= min_tracking && points.iter().flatten().all(|v| v.is_finite())
}

/// The regions of a frame (`AssociationNormRectCalculator`, min
/// similarity 0.5): the detected ones (best first), then the tracked ones,
/// each replacing the earlier ones it overlaps by IoU > 0.5, so that a
/// tracked face wins over its own detection. MediaPipe's graph can then
/// hold more than `max_faces` (new faces beside fewer tracked ones); here
/// the weakest new ones are left out, so a caller never gets more faces
/// than it asked for.
pub fn associate(
    detected: Vec<(Region, Option<Raw>)>,
    tracked: Vec<Region>,
    max_faces: usize,
) -> Vec<(Region, Option<Raw>)> {
    let mut regions: Vec<(Region, Option<Raw>)> = Vec::new();
    for c in detected
        .into_iter()
        .chain(tracked.into_iter().map(|p| (p, None)))
    {
        regions.retain(|k| k.0.iou(&c.0) <= SAME_FACE_IOU);
        regions.push(c);
    }
    while regions.len() > max_faces {
        // The last new face is the weakest detection left.
        match regions.iter().rposition(|r| r.1.is_some()) {
            Some(i) => {
                regions.remove(i);
            }
            None => regions.truncate(max_faces),
        }
    }
    regions
}

fn stage(name: &str, since: Instant) -> StageTiming {
    StageTiming {
        stage: name.into(),
        us: since.elapsed().as_micros() as u64,
    }
}

/// A face detection's region: rotated by the eyes (keypoints 0 → 1) to
/// 0°, square on the long side, scaled 1.5.
pub fn detection_region(d: &Raw, size: FrameSize) -> Region {
    let (p0, p1) = match d.keypoints.as_slice() {
        [a, b, ..] => (*a, *b),
        _ => ((0.0, 0.0), (1.0, 0.0)),
    };
    Region::from_box(d.xmin, d.ymin, d.xmax, d.ymax)
        .rotated(rotation(p0, p1, 0.0, size))
        .transform(&TO_REGION, size)
}

/// The next frame's region from a face's mesh points (normalised): their
/// bounding box, rotated by the eyes (33 → 263) to 0°, square on the long
/// side, scaled 1.5.
pub fn landmark_region(points: &[[f32; 3]], size: FrameSize) -> Region {
    let mesh: Vec<(f32, f32)> = points
        .iter()
        .take(MESH_POINTS)
        .map(|p| (p[0], p[1]))
        .collect();
    let at = |i: usize| mesh.get(i).copied().unwrap_or((0.0, 0.0));
    Region::around(&mesh)
        .unwrap_or_default()
        .rotated(rotation(at(EYES.0), at(EYES.1), 0.0, size))
        .transform(&TO_REGION, size)
}
