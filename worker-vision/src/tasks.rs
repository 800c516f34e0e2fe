//! The tasks a frame can get (faces, objects), shared by ProcessBatch and
//! the streams.

use std::time::Instant;

use opencv::core::Mat;
use opencv::prelude::*;
use sidecar_proto::v1::{
    Detection, FaceDetector, FrameTimings, ProcessBatchRequest, ProcessBatchResponse,
    ProcessResponse, VisionTask, vision_task,
};
use worker_runtime::{WorkerError, deadline};

use crate::crop::AutoCrop;
use crate::detect::{Cascade, Ssd};
use crate::image::to_bgr;
use crate::template::Template;
use crate::track::Tracking;

/// Most images of one ProcessBatch.
const MAX_IMAGES: usize = 256;

/// The model's detector.
#[derive(Debug)]
pub enum Detector {
    /// An SSD `.tflite` through LiteRT.
    Ssd(Box<Ssd>),
    /// An OpenCV cascade.
    Cascade(Cascade),
}

/// The loaded model and the cascades requests may name.
#[derive(Debug)]
pub struct Served {
    /// The model's own detector.
    pub detector: Detector,
    /// Debian's cascades, loaded on first use.
    haar: Option<Cascade>,
    lbp: Option<Cascade>,
}

impl Served {
    /// Serves this detector.
    pub fn new(detector: Detector) -> Served {
        Served {
            detector,
            haar: None,
            lbp: None,
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
}

impl Prepared {
    /// Prepares `tasks` (checked already).
    pub fn new(tasks: &[vision_task::Task]) -> Result<Prepared, WorkerError> {
        let mut p = Prepared::default();
        for t in tasks {
            match t {
                vision_task::Task::TemplateMatching(m) => p.template = Some(Template::new(m)?),
                vision_task::Task::AutoCrop(c) => p.crop = Some(AutoCrop::new(c)?),
                vision_task::Task::Tracking(t) => p.tracking = Some(Tracking::new(t)?),
                _ => {}
            }
        }
        Ok(p)
    }
}

/// Runs `tasks` on a decoded frame, filling `r`; `at` names the frame in
/// errors.
pub fn run(
    s: &mut Served,
    tasks: &[vision_task::Task],
    prepared: &mut Prepared,
    frame: &Mat,
    r: &mut ProcessResponse,
    at: &str,
) -> Result<(), WorkerError> {
    r.width = frame.cols() as u32;
    r.height = frame.rows() as u32;
    for task in tasks {
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
                        match &mut s.detector {
                            Detector::Ssd(d) => d.detect(frame, 0.5, 0.3)?,
                            Detector::Cascade(c) => c.detect(frame)?,
                        }
                    };
                    r.crop = Some(crop.window(frame, &faces)?);
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
                match &mut s.detector {
                    Detector::Ssd(d) => d.detect(frame, 0.5, 0.3)?,
                    Detector::Cascade(c) => c.detect(frame)?,
                }
            };
            Some(found)
        } else {
            None
        };
        r.tracks = tracking.step(frame, r.frame_index, detections.as_deref())?;
    }
    Ok(())
}

/// The task of a VisionTask message.
pub fn task_of(t: &VisionTask) -> Result<&vision_task::Task, WorkerError> {
    t.task
        .as_ref()
        .ok_or_else(|| WorkerError::invalid("a task without its kind"))
}

/// One task on every image, in order; the deadline (Unix ms, 0: none) is
/// checked before each image.
pub fn process_batch(
    s: &mut Served,
    req: &ProcessBatchRequest,
    deadline_ms: i64,
) -> Result<ProcessBatchResponse, WorkerError> {
    let n = req.images.len();
    if n == 0 || n > MAX_IMAGES {
        return Err(WorkerError::invalid(format!(
            "images holds {n} images; 1..{MAX_IMAGES} are allowed"
        )));
    }
    let task = req
        .task
        .as_ref()
        .ok_or_else(|| WorkerError::invalid("task is required"))
        .and_then(task_of)?;
    if let vision_task::Task::Tracking(_) = task {
        return Err(WorkerError::invalid(
            "tracking is a stream task; it is not allowed in ProcessBatch",
        ));
    }
    check(task, s)?;
    let tasks = std::slice::from_ref(task);
    let mut prepared = Prepared::new(tasks)?;
    let mut results = Vec::with_capacity(n);
    for (i, img) in req.images.iter().enumerate() {
        deadline::check(deadline_ms)?;
        let started = Instant::now();
        let frame = to_bgr(img, &format!("images[{i}]"))?;
        let decoded = started.elapsed();
        let mut r = ProcessResponse {
            frame_index: i as u64,
            ..Default::default()
        };
        // Images of a batch are independent: no smoothing across them.
        if let Some(c) = prepared.crop.as_mut() {
            c.reset();
        }
        run(
            s,
            tasks,
            &mut prepared,
            &frame,
            &mut r,
            &format!("images[{i}]"),
        )?;
        r.timings = Some(FrameTimings {
            decode_us: decoded.as_micros() as u64,
            process_us: (started.elapsed() - decoded).as_micros() as u64,
            total_us: started.elapsed().as_micros() as u64,
        });
        results.push(r);
    }
    Ok(ProcessBatchResponse { results })
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
