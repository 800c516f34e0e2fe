//! The tasks a frame can get (faces, objects), shared by ProcessBatch and
//! the streams.

use opencv::core::Mat;
use opencv::prelude::*;
use sidecar_proto::v1::{Detection, FaceDetector, ProcessResponse, VisionTask, vision_task};
use worker_runtime::{WorkerError, deadline};

use crate::crop::AutoCrop;
use crate::detect::{Cascade, Ssd};
use crate::limits::Limits;
use crate::pipeline::face_mesh::{self, FaceTracker};
use crate::pipeline::face_model::FaceModels;
use crate::pipeline::hands::{self, Hands};
use crate::pipeline::{pose, segmentation};
use crate::template::Template;
use crate::track::Tracking;

/// The model's detector.
#[derive(Debug)]
pub enum Detector {
    /// An SSD `.tflite` through LiteRT.
    Ssd(Box<Ssd>),
    /// An OpenCV cascade.
    Cascade(Cascade),
}

/// The loaded model, its limits and the cascades requests may name.
#[derive(Debug)]
pub struct Served {
    /// The model's own detector.
    pub detector: Detector,
    /// What one request may cost.
    pub limits: Limits,
    /// The face mesh's models (`pipeline.face_landmark` and companions).
    pub face_mesh: Option<FaceModels>,
    /// The hands task's models (`pipeline.palm_detection`,
    /// `pipeline.hand_landmark`).
    pub hands: Option<hands::Models>,
    /// Debian's cascades, loaded on first use.
    haar: Option<Cascade>,
    lbp: Option<Cascade>,
    /// MediaPipe Pose's models (`pipeline.pose_detection`,
    /// `pipeline.pose_landmark`), when loaded.
    pub pose: Option<pose::Models>,
    /// The selfie segmentation model, when loaded.
    pub selfie: Option<segmentation::Selfie>,
}

impl Served {
    /// Serves this detector within these limits.
    pub fn new(detector: Detector, limits: Limits) -> Served {
        Served {
            detector,
            limits,
            face_mesh: None,
            hands: None,
            haar: None,
            lbp: None,
            pose: None,
            selfie: None,
        }
    }
}

/// Checks that `task` can run on a frame (streams check at open).
pub fn check(task: &vision_task::Task, s: &Served) -> Result<(), WorkerError> {
    match task {
        vision_task::Task::Faces(f) => {
            FaceDetector::try_from(f.detector).map(|_| ()).map_err(|_| {
                WorkerError::invalid(format!(
                    "faces.detector {} is not a FaceDetector value",
                    f.detector
                ))
            })
        }
        vision_task::Task::Objects(o) => {
            if !matches!(s.detector, Detector::Ssd(_)) {
                return Err(WorkerError::precondition(
                    "objects needs an SSD-style .tflite detector; this model is a cascade",
                ));
            }
            if o.ssd.is_some() {
                return Err(WorkerError::unimplemented(
                    "objects.ssd overrides are not served yet; load the model with its SsdOptions",
                ));
            }
            Ok(())
        }
        vision_task::Task::FaceMesh(f) => face_mesh::check(f, s.face_mesh.as_ref(), &s.detector),
        vision_task::Task::Hands(h) => Hands::check(h, s.hands.as_ref()),
        vision_task::Task::Pose(p) => pose::check(p, s.pose.is_some()),
        vision_task::Task::SelfieSegmentation(t) => segmentation::check(t, s.selfie.is_some()),
        // Checked when prepared (`Prepared::new`).
        vision_task::Task::TemplateMatching(_)
        | vision_task::Task::AutoCrop(_)
        | vision_task::Task::Tracking(_) => Ok(()),
    }
}

/// What the tasks of a call or stream set up once (the template) or keep
/// from frame to frame (the crop window).
#[derive(Debug, Default)]
pub struct Prepared {
    template: Option<Template>,
    crop: Option<AutoCrop>,
    tracking: Option<Tracking>,
    face_mesh: Option<FaceTracker>,
    hands: Option<Hands>,
    pose: Option<pose::State>,
    selfie: Option<segmentation::MaskSpec>,
}

impl Prepared {
    /// The auto-crop state, if the tasks crop.
    pub fn crop_mut(&mut self) -> Option<&mut AutoCrop> {
        self.crop.as_mut()
    }

    /// The face mesh's tracked regions, if the tasks hold one.
    pub fn face_mesh_mut(&mut self) -> Option<&mut FaceTracker> {
        self.face_mesh.as_mut()
    }

    /// The hands task's tracked hands, if the tasks find hands.
    pub fn hands_mut(&mut self) -> Option<&mut Hands> {
        self.hands.as_mut()
    }

    /// Static-image mode for the next frame (each image of a batch is
    /// alone): the tracked regions and filters forgotten.
    pub fn still(&mut self) {
        if let Some(c) = self.crop.as_mut() {
            c.reset();
        }
        if let Some(f) = self.face_mesh.as_mut() {
            f.forget();
        }
        if let Some(h) = self.hands.as_mut() {
            h.reset();
        }
        if let Some(p) = self.pose.as_mut() {
            p.reset();
        }
    }

    /// Prepares `tasks` (checked already) within the model's limits.
    pub fn new(tasks: &[vision_task::Task], limits: &Limits) -> Result<Prepared, WorkerError> {
        let mut p = Prepared::default();
        for t in tasks {
            match t {
                vision_task::Task::TemplateMatching(m) => {
                    p.template = Some(Template::new(m, limits)?);
                }
                vision_task::Task::AutoCrop(c) => p.crop = Some(AutoCrop::new(c)?),
                vision_task::Task::FaceMesh(f) => p.face_mesh = Some(FaceTracker::new(f)?),
                vision_task::Task::Tracking(t) => {
                    p.tracking = Some(Tracking::new(t, limits.max_tracks)?);
                }
                vision_task::Task::Hands(h) => p.hands = Some(Hands::new(h)?),
                vision_task::Task::Pose(t) => p.pose = Some(pose::State::new(t)?),
                vision_task::Task::SelfieSegmentation(t) => {
                    p.selfie = Some(segmentation::MaskSpec::of(t)?);
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

/// Runs `tasks` on a decoded frame, filling `r`; `at` names the frame in
/// errors. The deadline (Unix ms, 0: none) is checked before each
/// detector run and between tracking updates.
pub fn run(
    s: &mut Served,
    tasks: &[vision_task::Task],
    prepared: &mut Prepared,
    frame: &Mat,
    r: &mut ProcessResponse,
    at: &str,
    deadline_ms: i64,
) -> Result<(), WorkerError> {
    r.width = frame.cols() as u32;
    r.height = frame.rows() as u32;
    for task in tasks {
        // Each task runs the detector or another whole-frame pass.
        deadline::check(deadline_ms)?;
        match task {
            vision_task::Task::Faces(f) => {
                let min = if f.min_score > 0.0 { f.min_score } else { 0.5 };
                let mut faces = match FaceDetector::try_from(f.detector) {
                    Ok(FaceDetector::Haar) => {
                        cascade(&mut s.haar, "haarcascade_frontalface_default.xml")?
                            .detect(frame)?
                    }
                    Ok(FaceDetector::Lbp) => {
                        cascade(&mut s.lbp, "lbpcascade_frontalface_improved.xml")?.detect(frame)?
                    }
                    _ => match &mut s.detector {
                        Detector::Ssd(d) => d.detect(frame, min, 0.3)?,
                        Detector::Cascade(c) => c.detect(frame)?,
                    },
                };
                limit(&mut faces, f.max_faces);
                r.faces = faces;
            }
            vision_task::Task::Objects(o) => {
                let Detector::Ssd(d) = &mut s.detector else {
                    return Err(WorkerError::precondition("objects needs an SSD detector"));
                };
                let min = if o.min_score > 0.0 { o.min_score } else { 0.5 };
                let iou = if o.iou_threshold > 0.0 {
                    o.iou_threshold
                } else {
                    0.3
                };
                let mut objects = d.detect(frame, min, iou)?;
                limit(&mut objects, o.max_detections);
                r.objects = objects;
            }
            vision_task::Task::TemplateMatching(_) => {
                if let Some(t) = &prepared.template {
                    r.template_match = Some(t.find(frame, at)?);
                }
            }
            vision_task::Task::AutoCrop(_) => {
                if let Some(crop) = prepared.crop.as_mut() {
                    // The frame's faces: this frame's face task's, or the
                    // model's own detector run for the crop.
                    let faces = if !crop.wants_faces() || !r.faces.is_empty() {
                        r.faces.clone()
                    } else {
                        deadline::check(deadline_ms)?;
                        match &mut s.detector {
                            Detector::Ssd(d) => d.detect(frame, 0.5, 0.3)?,
                            Detector::Cascade(c) => c.detect(frame)?,
                        }
                    };
                    r.crop = Some(crop.window(frame, &faces)?);
                }
            }
            vision_task::Task::FaceMesh(_) => {
                if let (Some(t), Some(models)) = (prepared.face_mesh.as_mut(), s.face_mesh.as_mut())
                {
                    let run = face_mesh::Run {
                        models,
                        own: &mut s.detector,
                        deadline_ms,
                    };
                    t.run(run, frame, r)?;
                }
            }
            vision_task::Task::Hands(_) => {
                if let (Some(h), Some(m)) = (prepared.hands.as_mut(), s.hands.as_mut()) {
                    let (hands, stages) = h.run(m, frame, deadline_ms)?;
                    r.hands = hands;
                    r.stages.extend(stages);
                }
            }
            vision_task::Task::Pose(_) => {
                if let (Some(m), Some(st)) = (s.pose.as_mut(), prepared.pose.as_mut()) {
                    r.pose = pose::run(m, st, frame, r.timestamp_us, deadline_ms, &mut r.stages)?;
                }
            }
            vision_task::Task::SelfieSegmentation(_) => {
                if let (Some(m), Some(spec)) = (s.selfie.as_mut(), prepared.selfie.as_ref()) {
                    let t0 = std::time::Instant::now();
                    let mask = m.run(frame, spec.size_for(frame.cols(), frame.rows()))?;
                    r.segmentation = Some(spec.encode(&mask)?);
                    r.stages.push(sidecar_proto::v1::StageTiming {
                        stage: "selfie_segmentation".into(),
                        us: t0.elapsed().as_micros() as u64,
                    });
                }
            }
            // After the other tasks: it may use their detections.
            vision_task::Task::Tracking(_) => {}
        }
    }
    if let Some(tracking) = prepared.tracking.as_mut() {
        let detections = if tracking.wants_detections() {
            let found = if !r.faces.is_empty()
                || tasks
                    .iter()
                    .any(|t| matches!(t, vision_task::Task::Faces(_)))
            {
                r.faces.clone()
            } else if tasks
                .iter()
                .any(|t| matches!(t, vision_task::Task::Objects(_)))
            {
                r.objects.clone()
            } else {
                deadline::check(deadline_ms)?;
                match &mut s.detector {
                    Detector::Ssd(d) => d.detect(frame, 0.5, 0.3)?,
                    Detector::Cascade(c) => c.detect(frame)?,
                }
            };
            Some(found)
        } else {
            None
        };
        r.tracks = tracking.step(frame, r.frame_index, detections.as_deref(), deadline_ms)?;
    }
    Ok(())
}

/// The task of a VisionTask message.
pub fn task_of(t: &VisionTask) -> Result<&vision_task::Task, WorkerError> {
    t.task
        .as_ref()
        .ok_or_else(|| WorkerError::invalid("a task without its kind"))
}

fn cascade<'a>(slot: &'a mut Option<Cascade>, name: &str) -> Result<&'a mut Cascade, WorkerError> {
    if slot.is_none() {
        *slot = Some(Cascade::system(name)?);
    }
    slot.as_mut()
        .ok_or_else(|| WorkerError::internal("cascade slot"))
}

/// Keeps the `max` best (0: all).
fn limit(d: &mut Vec<Detection>, max: u32) {
    d.sort_by(|a, b| b.score.total_cmp(&a.score));
    if max > 0 {
        d.truncate(max as usize);
    }
}
