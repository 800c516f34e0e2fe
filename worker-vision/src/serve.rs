//! The VISION family in the runtime's serve loop: load the detector, then
//! ProcessBatch calls and Process streams. Streams are served round-robin,
//! one frame per turn; a stream whose reader is slow (no credit) waits
//! alone; a cancel frees its stream at once. Hello, heartbeats and the
//! loop itself are `worker_runtime`'s.

use std::path::Path;

use ipc::{Flags, Received};
use sidecar_proto::v1::{ModelFamily, VisionOptions};
use sidecar_proto::worker::{Load, Loaded, WorkerResponse, worker_request, worker_response};
use worker_runtime::{Call, Context, Family, Read, WorkerError, decode, not_loaded};

use crate::detect::{Cascade, Ssd};
use crate::streams::Stream;
use crate::tasks::{self, Detector, Served};

/// A VISION worker: its detector, once loaded, and its open streams.
#[derive(Debug, Default)]
pub struct Vision {
    served: Option<Served>,
    streams: Vec<Stream>,
    /// Round-robin position among the streams.
    turn: usize,
}

impl Family for Vision {
    const FAMILY: ModelFamily = ModelFamily::Vision;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [&'static str] = &["process_batch", "process", "faces", "objects"];

    fn load(&mut self, load: &Load) -> Result<Loaded, WorkerError> {
        self.served = Some(load_model(load)?);
        Ok(Loaded::default())
    }

    /// Decodes a request without copying its payload out of the channel:
    /// a stream frame's pixels go straight into the matrix the tasks read,
    /// a batch is served at once. Anything else may be kept (a stream's
    /// template), so it is decoded again into owned bytes, or it would
    /// hold the channel's space.
    fn read(&mut self, cx: &mut Context, frame: Received<'_>) -> Result<Read, WorkerError> {
        let payload = cx.chan().payload_bytes(frame);
        let req = decode(payload.clone())?;
        match req.body {
            Some(worker_request::Body::VisionFrame(_) | worker_request::Body::VisionBatch(_)) => {
                Ok(Read::Request(req))
            }
            _ => decode(&payload[..]).map(Read::Request),
        }
    }

    fn request(&mut self, cx: &mut Context, call: Call) -> Result<(), WorkerError> {
        let id = call.id;
        match call.body {
            worker_request::Body::VisionBatch(batch) => {
                let s = self.served.as_mut().ok_or_else(not_loaded)?;
                let r = tasks::process_batch(s, &batch, call.deadline_ms)?;
                cx.answer(id, worker_response::Body::VisionBatch(r));
            }
            worker_request::Body::VisionOpen(config) => {
                let s = self.served.as_ref().ok_or_else(not_loaded)?;
                self.streams.push(Stream::open(id, &config, s)?);
            }
            worker_request::Body::VisionFrame(f) => {
                // No stream: it ended already (an error raced the frame).
                if let Some(s) = self.streams.iter_mut().find(|s| s.id == id)
                    && let Some(dropped) = s.push(f)
                {
                    let r = WorkerResponse {
                        body: Some(worker_response::Body::Vision(dropped)),
                        more: false,
                    };
                    cx.respond(id, &r, Flags::NONE);
                }
            }
            worker_request::Body::VisionClose(_) => {
                if let Some(s) = self.streams.iter_mut().find(|s| s.id == id) {
                    s.closed = true;
                }
                self.end_closed(cx);
            }
            _ => {
                return Err(WorkerError::unimplemented(
                    "this call is not served by worker-vision",
                ));
            }
        }
        Ok(())
    }

    fn cancel(&mut self, id: u64) -> bool {
        let Some(i) = self.streams.iter().position(|s| s.id == id) else {
            return false;
        };
        self.streams.remove(i);
        true
    }

    fn has_work(&self) -> bool {
        self.streams.iter().any(Stream::has_pending)
    }

    /// One frame of the next stream (round-robin) whose reader keeps up;
    /// true when one ran.
    fn step(&mut self, cx: &mut Context) -> Result<bool, WorkerError> {
        let Some(served) = self.served.as_mut() else {
            return Ok(false);
        };
        let n = self.streams.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            let s = &self.streams[i];
            if !s.has_pending() || cx.holds(s.id) {
                continue;
            }
            self.turn = i + 1;
            let id = s.id;
            match self.streams[i].step(served) {
                // An H.264 chunk that completed no picture is acknowledged
                // with an empty answer, so the supervisor's count of frames
                // in flight stays true.
                Some(Ok(results)) if results.is_empty() => {
                    cx.respond(id, &WorkerResponse::default(), Flags::NONE);
                }
                Some(Ok(results)) => {
                    let last = results.len() - 1;
                    for (i, r) in results.into_iter().enumerate() {
                        let r = WorkerResponse {
                            body: Some(worker_response::Body::Vision(r)),
                            more: i < last,
                        };
                        cx.respond(id, &r, Flags::NONE);
                    }
                }
                Some(Err(e)) => {
                    self.streams.remove(i);
                    cx.fail(id, &e);
                }
                None => {}
            }
            self.end_closed(cx);
            return Ok(true);
        }
        Ok(false)
    }

    fn in_flight(&self) -> u32 {
        self.streams.len() as u32
    }
}

impl Vision {
    /// Ends the closed streams that have nothing left to do.
    fn end_closed(&mut self, cx: &mut Context) {
        let done: Vec<u64> = self
            .streams
            .iter()
            .filter(|s| s.closed && !s.has_pending())
            .map(|s| s.id)
            .collect();
        self.streams.retain(|s| !done.contains(&s.id));
        for id in done {
            cx.respond(id, &WorkerResponse::default(), Flags::END);
        }
    }
}

fn load_model(load: &Load) -> Result<Served, WorkerError> {
    let options = match &load.options {
        Some(sidecar_proto::worker::load::Options::Vision(o)) => o.clone(),
        _ => VisionOptions::default(),
    };
    let path = Path::new(&load.path);
    tracing::info!(model = %load.model_id, path = %load.path, "loading");
    let detector = match path.extension().and_then(|e| e.to_str()) {
        Some("tflite") => Detector::Ssd(Box::new(Ssd::load(
            &litert::runtime_path(),
            path,
            options.threads.max(1),
            options.ssd,
        )?)),
        Some("xml") => Detector::Cascade(Cascade::load(path)?),
        _ => {
            return Err(WorkerError::invalid(format!(
                "{}: a VISION model is an SSD-style .tflite detector or an OpenCV cascade .xml",
                load.path
            )));
        }
    };
    Ok(Served::new(detector))
}
