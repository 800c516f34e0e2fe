//! The worker's side of the protocol: hello, load the detector, then
//! ProcessBatch calls one at a time. Streaming `Process` is not served yet
//! (UNIMPLEMENTED, said so).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipc::{BlockingChannel, Flags, Kind};
use opencv::prelude::*;
use prost::Message;
use sidecar_proto::v1::{
    Detection, FaceDetector, ModelFamily, ProcessBatchRequest, ProcessBatchResponse,
    ProcessResponse, VisionOptions, vision_task,
};
use sidecar_proto::worker::{
    Heartbeat, Hello, Load, Loaded, MemoryReport, WorkerRequest, WorkerResponse, worker_request,
    worker_response,
};

use crate::detect::{Cascade, Ssd};
use crate::error::VisionError;
use crate::image::to_bgr;

const HEARTBEAT: Duration = Duration::from_secs(1);
/// Most images of one ProcessBatch.
const MAX_IMAGES: usize = 256;

/// The model's detector.
enum Detector {
    Ssd(Box<Ssd>),
    Cascade(Cascade),
}

struct Served {
    detector: Detector,
    /// Debian's cascades, loaded on first use.
    haar: Option<Cascade>,
    lbp: Option<Cascade>,
}

fn memory() -> MemoryReport {
    let m = ipc::self_memory();
    MemoryReport {
        rss_bytes: m.rss_bytes,
        private_bytes: m.private_bytes,
        file_bytes: m.file_bytes,
        ..Default::default()
    }
}

/// Serves the channel until the supervisor goes away.
pub fn serve(chan: Arc<BlockingChannel>) -> Result<(), VisionError> {
    let hello = Hello {
        protocol_version: sidecar_proto::WORKER_PROTOCOL_VERSION,
        family: ModelFamily::Vision as i32,
        worker_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        capabilities: vec!["process_batch".into(), "faces".into(), "objects".into()],
        memory: Some(memory()),
    };
    chan.send(0, Kind::Hello, Flags::NONE, &hello.encode_to_vec())?;
    let in_flight = Arc::new(AtomicU32::new(0));
    start_heartbeats(chan.clone(), in_flight.clone());
    let mut served: Option<Served> = None;
    loop {
        let frame = match chan.recv() {
            Ok(f) => f,
            Err(ipc::Error::PeerGone) => gone(),
            Err(e) => return Err(e.into()),
        };
        let id = frame.request_id();
        if frame.kind() != Kind::Request {
            continue;
        }
        let req = WorkerRequest::decode(frame.payload());
        drop(frame);
        in_flight.store(1, Ordering::Relaxed);
        let outcome = match req {
            Err(e) => Err(VisionError::Invalid(format!("malformed request: {e}"))),
            Ok(req) => match req.body {
                Some(worker_request::Body::Load(load)) => load_model(&load).map(|s| {
                    served = Some(s);
                    worker_response::Body::Loaded(Loaded {
                        memory: Some(memory()),
                        ..Default::default()
                    })
                }),
                Some(worker_request::Body::VisionBatch(batch)) => match served.as_mut() {
                    Some(s) => process_batch(s, &batch).map(worker_response::Body::VisionBatch),
                    None => Err(VisionError::Precondition("no model loaded".into())),
                },
                Some(worker_request::Body::VisionOpen(_)) => Err(VisionError::Unimplemented(
                    "streaming Process is not served yet; use ProcessBatch".into(),
                )),
                Some(_) => Err(VisionError::Unimplemented(
                    "this call is not served by worker-vision".into(),
                )),
                None => Err(VisionError::Invalid("empty request".into())),
            },
        };
        in_flight.store(0, Ordering::Relaxed);
        let sent = match outcome {
            Ok(body) => {
                let r = WorkerResponse { body: Some(body) };
                chan.send(id, Kind::Response, Flags::END, &r.encode_to_vec())
            }
            Err(e) => {
                tracing::info!(request = id, "request failed: {e}");
                chan.send(id, Kind::Error, Flags::END, &e.to_proto().encode_to_vec())
            }
        };
        match sent {
            Ok(()) => {}
            Err(ipc::Error::PeerGone) => gone(),
            Err(e) => return Err(e.into()),
        }
    }
}

fn gone() -> ! {
    tracing::info!("supervisor gone; exiting");
    std::process::exit(0)
}

fn load_model(load: &Load) -> Result<Served, VisionError> {
    let options = match &load.options {
        Some(sidecar_proto::worker::load::Options::Vision(o)) => o.clone(),
        _ => VisionOptions::default(),
    };
    let path = Path::new(&load.path);
    tracing::info!(model = %load.model_id, path = %load.path, "loading");
    let detector = match path.extension().and_then(|e| e.to_str()) {
        Some("tflite") => {
            let lib = std::env::var_os(worker_lite::serve::RUNTIME_ENV).map_or_else(
                || PathBuf::from("runtime/litert/libLiteRt.so"),
                PathBuf::from,
            );
            Detector::Ssd(Box::new(Ssd::load(
                &lib,
                path,
                options.threads.max(1),
                options.ssd,
            )?))
        }
        Some("xml") => Detector::Cascade(Cascade::load(path)?),
        _ => {
            return Err(VisionError::Invalid(format!(
                "{}: a VISION model is an SSD-style .tflite detector or an OpenCV cascade .xml",
                load.path
            )));
        }
    };
    Ok(Served {
        detector,
        haar: None,
        lbp: None,
    })
}

/// One task on every image, in order.
fn process_batch(
    s: &mut Served,
    req: &ProcessBatchRequest,
) -> Result<ProcessBatchResponse, VisionError> {
    let n = req.images.len();
    if n == 0 || n > MAX_IMAGES {
        return Err(VisionError::Invalid(format!(
            "images holds {n} images; 1..{MAX_IMAGES} are allowed"
        )));
    }
    let task = req
        .task
        .as_ref()
        .and_then(|t| t.task.as_ref())
        .ok_or_else(|| VisionError::Invalid("task is required".into()))?;
    let mut results = Vec::with_capacity(n);
    for (i, img) in req.images.iter().enumerate() {
        let started = Instant::now();
        let frame = to_bgr(img, &format!("images[{i}]"))?;
        let decoded = started.elapsed();
        let mut r = ProcessResponse {
            frame_index: i as u64,
            width: frame.cols() as u32,
            height: frame.rows() as u32,
            ..Default::default()
        };
        match task {
            vision_task::Task::Faces(f) => {
                let min = if f.min_score > 0.0 { f.min_score } else { 0.5 };
                let mut faces = match FaceDetector::try_from(f.detector) {
                    Ok(FaceDetector::Haar) => {
                        cascade(&mut s.haar, "haarcascade_frontalface_default.xml")?
                            .detect(&frame)?
                    }
                    Ok(FaceDetector::Lbp) => {
                        cascade(&mut s.lbp, "lbpcascade_frontalface_improved.xml")?
                            .detect(&frame)?
                    }
                    Ok(FaceDetector::Unspecified) => match &mut s.detector {
                        Detector::Ssd(d) => d.detect(&frame, min, 0.3)?,
                        Detector::Cascade(c) => c.detect(&frame)?,
                    },
                    Err(_) => {
                        return Err(VisionError::Invalid(format!(
                            "faces.detector {} is not a FaceDetector value",
                            f.detector
                        )));
                    }
                };
                limit(&mut faces, f.max_faces);
                r.faces = faces;
            }
            vision_task::Task::Objects(o) => {
                let Detector::Ssd(d) = &mut s.detector else {
                    return Err(VisionError::Precondition(
                        "objects needs an SSD-style .tflite detector; this model is a cascade"
                            .into(),
                    ));
                };
                if o.ssd.is_some() {
                    return Err(VisionError::Unimplemented(
                        "objects.ssd overrides are not served yet; load the model with its SsdOptions".into(),
                    ));
                }
                let min = if o.min_score > 0.0 { o.min_score } else { 0.5 };
                let iou = if o.iou_threshold > 0.0 {
                    o.iou_threshold
                } else {
                    0.3
                };
                let mut objects = d.detect(&frame, min, iou)?;
                limit(&mut objects, o.max_detections);
                r.objects = objects;
            }
            vision_task::Task::Tracking(_) => {
                return Err(VisionError::Invalid(
                    "tracking is a stream task; it is not allowed in ProcessBatch".into(),
                ));
            }
            vision_task::Task::TemplateMatching(_) | vision_task::Task::AutoCrop(_) => {
                return Err(VisionError::Unimplemented(
                    "template matching and auto-crop are not served yet".into(),
                ));
            }
        }
        r.timings = Some(sidecar_proto::v1::FrameTimings {
            decode_us: decoded.as_micros() as u64,
            process_us: (started.elapsed() - decoded).as_micros() as u64,
            total_us: started.elapsed().as_micros() as u64,
        });
        results.push(r);
    }
    Ok(ProcessBatchResponse { results })
}

fn cascade<'a>(slot: &'a mut Option<Cascade>, name: &str) -> Result<&'a mut Cascade, VisionError> {
    if slot.is_none() {
        *slot = Some(Cascade::system(name)?);
    }
    slot.as_mut()
        .ok_or_else(|| VisionError::Internal("cascade slot".into()))
}

/// Keeps the `max` best (0: all).
fn limit(d: &mut Vec<Detection>, max: u32) {
    d.sort_by(|a, b| b.score.total_cmp(&a.score));
    if max > 0 {
        d.truncate(max as usize);
    }
}

fn start_heartbeats(chan: Arc<BlockingChannel>, in_flight: Arc<AtomicU32>) {
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            for seq in 1u64.. {
                std::thread::sleep(HEARTBEAT);
                let beat = Heartbeat {
                    seq,
                    memory: Some(memory()),
                    in_flight: in_flight.load(Ordering::Relaxed),
                    uptime_ms: started.elapsed().as_millis() as u64,
                    tokens_generated: 0,
                };
                match chan.try_send(0, Kind::Heartbeat, Flags::NONE, &beat.encode_to_vec()) {
                    Ok(()) | Err(ipc::Error::WouldBlock(_)) => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the heartbeat thread: {e}");
    }
}
