//! The VISION family in the runtime's serve loop: load the detector, then
//! ProcessBatch calls and Process streams. Batches run one image per step,
//! in turn with the streams' frames, so a cancel or the deadline stops a
//! batch between two images; streams are served round-robin, one frame per
//! turn; a stream whose reader is slow (no credit) waits alone; a cancel
//! frees its batch or stream at once. An answer too large for the channel
//! is an error answer (RESOURCE_EXHAUSTED), never the worker's end. Hello,
//! heartbeats and the loop itself are `worker_runtime`'s.

use std::collections::VecDeque;
use std::path::Path;

use ipc::{Flags, Received};
use prost::Message;
use sidecar_proto::v1::{ModelFamily, VisionOptions};
use sidecar_proto::worker::{Load, Loaded, WorkerResponse, worker_request, worker_response};
use worker_runtime::{Call, Code, Context, Family, Read, WorkerError, decode, not_loaded};

use crate::batch::Batch;
use crate::detect::{Cascade, Ssd};
use crate::limits::Limits;
use crate::pipeline::face_model::FaceModels;
use crate::streams::Stream;
use crate::tasks::{Detector, Served};

/// A VISION worker: its detector, once loaded, its batches under way and
/// its open streams.
#[derive(Debug, Default)]
pub struct Vision {
    served: Option<Served>,
    batches: VecDeque<Batch>,
    streams: Vec<Stream>,
    /// Round-robin position among the streams.
    turn: usize,
    /// Whether the next step goes to a batch (batches and streams take
    /// turns).
    batch_turn: bool,
}

/// Queues `r` for `id`, or, when it is larger than one frame of the
/// channel, fails `id` with RESOURCE_EXHAUSTED naming both sizes; false
/// then.
fn respond(cx: &mut Context, id: u64, r: &WorkerResponse, flags: Flags) -> bool {
    let len = r.encoded_len();
    let max = cx.chan().max_payload();
    if len > max {
        let e = WorkerError::new(Code::ResourceExhausted, too_large(len, max));
        cx.fail(id, &e);
        return false;
    }
    cx.respond(id, r, flags);
    true
}

/// Why an answer of `len` bytes cannot go, and what a caller can change:
/// the size of the worker's response ring is the server's
/// (`workers.channel_bytes`); the masks' size and encoding, and the
/// images per batch, are the caller's.
pub(crate) fn too_large(len: usize, max: usize) -> String {
    format!(
        "the answer is {len} bytes; the channel carries at most {max} bytes per answer (workers.channel_bytes); ask for less in one call: fewer images per batch, a smaller max_mask_pixels (pose: segmentation_max_pixels) or PNG masks"
    )
}

impl Family for Vision {
    const FAMILY: ModelFamily = ModelFamily::Vision;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [&'static str] = &[
        "process_batch",
        "process",
        "faces",
        "objects",
        "hands",
        "pose",
        "face_mesh",
        "selfie_segmentation",
    ];

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
                let s = self.served.as_ref().ok_or_else(not_loaded)?;
                self.batches
                    .push_back(Batch::start(id, call.deadline_ms, batch, call.regions, s)?);
            }
            worker_request::Body::VisionOpen(config) => {
                let s = self.served.as_ref().ok_or_else(not_loaded)?;
                self.streams
                    .push(Stream::open(id, call.deadline_ms, &config, s)?);
            }
            worker_request::Body::VisionFrame(f) => {
                let limits = self.limits();
                // No stream: it ended already (an error raced the frame).
                let Some(i) = self.streams.iter().position(|s| s.id == id) else {
                    return Ok(());
                };
                match self.streams[i].push(f, &limits, &call.regions) {
                    Ok(dropped) => {
                        for d in dropped {
                            let r = WorkerResponse {
                                body: Some(worker_response::Body::Vision(d)),
                                more: false,
                            };
                            cx.respond(id, &r, Flags::NONE);
                        }
                    }
                    Err(e) => {
                        self.streams.remove(i);
                        cx.fail(id, &e);
                    }
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
        if let Some(i) = self.batches.iter().position(|b| b.id == id) {
            self.batches.remove(i);
            return true;
        }
        let Some(i) = self.streams.iter().position(|s| s.id == id) else {
            return false;
        };
        self.streams.remove(i);
        true
    }

    fn has_work(&self) -> bool {
        !self.batches.is_empty() || self.streams.iter().any(Stream::has_pending)
    }

    /// One image of the oldest batch or one frame of the next stream
    /// (round-robin) whose reader keeps up, the two kinds taking turns to
    /// go first; true when one ran.
    fn step(&mut self, cx: &mut Context) -> Result<bool, WorkerError> {
        self.batch_turn = !self.batch_turn;
        for work in turn_order(self.batch_turn) {
            let ran = match work {
                Work::Batch => self.step_batch(cx)?,
                Work::Stream => self.step_stream(cx)?,
            };
            if ran {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn in_flight(&self) -> u32 {
        (self.batches.len() + self.streams.len()) as u32
    }
}

/// A kind of work a turn may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Batch,
    Stream,
}

/// The order a turn tries the two kinds of work in: the one whose turn it
/// is first, then the other when the first has none. (Trying only the
/// first made a lone stream's frame wait a whole idle sleep, 200 ms, on
/// every other turn: the loop saw no progress and slept.)
fn turn_order(batch_first: bool) -> [Work; 2] {
    if batch_first {
        [Work::Batch, Work::Stream]
    } else {
        [Work::Stream, Work::Batch]
    }
}

impl Vision {
    /// The loaded model's limits (the defaults before it loads).
    fn limits(&self) -> Limits {
        self.served.as_ref().map(|s| s.limits).unwrap_or_default()
    }

    /// One image of the oldest batch; true when one ran.
    fn step_batch(&mut self, cx: &mut Context) -> Result<bool, WorkerError> {
        let (Some(served), Some(batch)) = (self.served.as_mut(), self.batches.front_mut()) else {
            return Ok(false);
        };
        let id = batch.id;
        match batch.step(served, cx.max_answer_bytes()) {
            Ok(None) => {}
            Ok(Some(r)) => {
                self.batches.pop_front();
                let r = WorkerResponse {
                    body: Some(worker_response::Body::VisionBatch(r)),
                    more: false,
                };
                respond(cx, id, &r, Flags::END);
            }
            Err(e) => {
                self.batches.pop_front();
                cx.fail(id, &e);
            }
        }
        Ok(true)
    }

    /// One frame of the next stream (round-robin) whose reader keeps up;
    /// true when one ran.
    fn step_stream(&mut self, cx: &mut Context) -> Result<bool, WorkerError> {
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
                    for (k, r) in results.into_iter().enumerate() {
                        let r = WorkerResponse {
                            body: Some(worker_response::Body::Vision(r)),
                            more: k < last,
                        };
                        if !respond(cx, id, &r, Flags::NONE) {
                            // Failed: the stream ends here.
                            self.streams.remove(i);
                            break;
                        }
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
    load_with(load, &litert::runtime_path())
}

/// Loads the model with the LiteRT runtime at `lib`.
pub(crate) fn load_with(load: &Load, lib: &Path) -> Result<Served, WorkerError> {
    let options = match &load.options {
        Some(sidecar_proto::worker::load::Options::Vision(o)) => o.clone(),
        _ => VisionOptions::default(),
    };
    // Limits over their caps are refused before anything loads.
    let limits = Limits::from_options(&options)?;
    let path = Path::new(&load.path);
    let name = worker_runtime::model_name(load);
    tracing::info!(model = %load.model_id, path = %name, opened = %load.path, "loading");
    // The kind by the store name's extension: the opened path
    // (`/proc/self/fd/N`) has none.
    let detector = match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some("tflite") => Detector::Ssd(Box::new(Ssd::load(
            lib,
            path,
            options.threads.max(1),
            options.ssd.clone(),
        )?)),
        Some("xml") => Detector::Cascade(Cascade::load(path)?),
        _ => {
            return Err(WorkerError::invalid(format!(
                "{name}: a VISION model is an SSD-style .tflite detector or an OpenCV cascade .xml"
            )));
        }
    };
    let mut served = Served::new(detector, limits);
    served.face_mesh = FaceModels::load(lib, options.pipeline.as_ref(), options.threads.max(1))?;
    crate::pipeline::load(&mut served, lib, &options)?;
    served.hands = crate::pipeline::hands::Models::load(
        lib,
        options.pipeline.as_ref(),
        options.threads.max(1),
    )?;
    Ok(served)
}

#[cfg(test)]
mod turn_tests {
    use super::*;

    #[test]
    fn every_turn_tries_both_kinds_of_work_the_turns_one_first() {
        assert_eq!(turn_order(true), [Work::Batch, Work::Stream]);
        assert_eq!(turn_order(false), [Work::Stream, Work::Batch]);
    }
}
