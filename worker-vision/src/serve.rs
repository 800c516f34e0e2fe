//! The worker's side of the protocol: hello, load the detector, then
//! ProcessBatch calls and Process streams. Streams are served round-robin,
//! one frame per turn; a stream whose reader is slow (no credit) waits
//! alone; a cancel frees its stream at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipc::{BlockingChannel, Flags, Kind, Outbox, Received};
use prost::Message;
use sidecar_proto::v1::{ModelFamily, VisionOptions};
use sidecar_proto::worker::{
    Hello, Load, Loaded, WorkerRequest, WorkerResponse, worker_request, worker_response,
};

use crate::detect::{Cascade, Ssd};
use crate::error::VisionError;
use crate::streams::Stream;
use crate::tasks::{self, Detector, Served};

struct Worker {
    chan: Arc<BlockingChannel>,
    served: Option<Served>,
    streams: Vec<Stream>,
    /// Round-robin position among the streams.
    turn: usize,
    outbox: Outbox,
    /// The callers' request ids, for log lines.
    names: ipc::RequestNames,
    in_flight: Arc<AtomicU32>,
}

/// Serves the channel until the supervisor goes away.
pub fn serve(chan: Arc<BlockingChannel>) -> Result<(), VisionError> {
    let hello = Hello {
        protocol_version: sidecar_proto::WORKER_PROTOCOL_VERSION,
        family: ModelFamily::Vision as i32,
        worker_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        capabilities: vec![
            "process_batch".into(),
            "process".into(),
            "faces".into(),
            "objects".into(),
        ],
        memory: Some(worker_lite::memory::report()),
    };
    chan.send(0, Kind::Hello, Flags::NONE, &hello.encode_to_vec())?;
    let in_flight = Arc::new(AtomicU32::new(0));
    worker_lite::serve::start_heartbeats(chan.clone(), in_flight.clone());
    let mut w = Worker {
        chan: chan.clone(),
        served: None,
        streams: Vec::new(),
        turn: 0,
        outbox: Outbox::default(),
        names: ipc::RequestNames::default(),
        in_flight,
    };
    loop {
        if !w.has_work() {
            match chan.recv() {
                Ok(f) => w.on_frame(f),
                Err(ipc::Error::PeerGone) => gone(),
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            match chan.try_recv() {
                Ok(Some(f)) => w.on_frame(f),
                Ok(None) => break,
                Err(ipc::Error::PeerGone) => gone(),
                Err(e) => return Err(e.into()),
            }
        }
        w.flush()?;
        let stepped = w.step();
        w.flush()?;
        w.in_flight.store(w.streams.len() as u32, Ordering::Relaxed);
        if !stepped && w.has_work() {
            chan.wait(Some(Duration::from_millis(200)))?;
        }
    }
}

fn gone() -> ! {
    tracing::info!("supervisor gone; exiting");
    std::process::exit(0)
}

impl Worker {
    fn has_work(&self) -> bool {
        !self.outbox.is_empty() || self.streams.iter().any(|s| s.has_pending())
    }

    fn queue(&mut self, id: u64, kind: Kind, flags: Flags, bytes: Vec<u8>) {
        self.outbox.push(id, kind, flags, bytes);
    }

    fn answer(&mut self, id: u64, body: Option<worker_response::Body>, flags: Flags) {
        self.answer_part(id, body, flags, false);
    }

    /// An answer; `more`: another answer to the same frame message follows.
    fn answer_part(
        &mut self,
        id: u64,
        body: Option<worker_response::Body>,
        flags: Flags,
        more: bool,
    ) {
        let r = WorkerResponse { more, body };
        self.queue(id, Kind::Response, flags, r.encode_to_vec());
    }

    fn fail(&mut self, id: u64, e: &VisionError) {
        let request_id = self.names.get(id);
        tracing::info!(request = id, request_id, "request failed: {e}");
        self.queue(id, Kind::Error, Flags::END, e.to_proto().encode_to_vec());
    }

    fn on_frame(&mut self, frame: Received<'_>) {
        let (id, kind) = (frame.request_id(), frame.kind());
        match kind {
            Kind::Request => match self.decode(frame) {
                Ok(req) => {
                    if !req.request_tag.is_empty() {
                        self.names.insert(id, req.request_tag.clone());
                    }
                    self.on_request(id, req)
                }
                Err(e) => self.fail(id, &VisionError::Invalid(format!("malformed request: {e}"))),
            },
            Kind::Cancel => {
                drop(frame);
                if let Some(i) = self.streams.iter().position(|s| s.id == id) {
                    self.streams.remove(i);
                    self.outbox.forget(id);
                    self.fail(id, &VisionError::Cancelled);
                }
            }
            _ => {}
        }
    }

    /// Decodes a request without copying its payload out of the channel:
    /// a stream frame's pixels go straight into the matrix the tasks read,
    /// a batch is served at once. Anything else may be kept (a stream's
    /// template), so it is decoded again into owned bytes, or it would
    /// hold the channel's space.
    fn decode(&self, frame: Received<'_>) -> Result<WorkerRequest, prost::DecodeError> {
        let payload = self.chan.payload_bytes(frame);
        let req = WorkerRequest::decode(payload.clone())?;
        match req.body {
            Some(worker_request::Body::VisionFrame(_) | worker_request::Body::VisionBatch(_)) => {
                Ok(req)
            }
            _ => WorkerRequest::decode(&payload[..]),
        }
    }

    fn on_request(&mut self, id: u64, req: WorkerRequest) {
        let result = match req.body {
            Some(worker_request::Body::Load(load)) => load_model(&load).map(|s| {
                self.served = Some(s);
                self.answer(
                    id,
                    Some(worker_response::Body::Loaded(Loaded {
                        memory: Some(worker_lite::memory::report()),
                        ..Default::default()
                    })),
                    Flags::END,
                );
            }),
            Some(worker_request::Body::VisionBatch(batch)) => match self.served.as_mut() {
                Some(s) => tasks::process_batch(s, &batch).map(|r| {
                    self.answer(id, Some(worker_response::Body::VisionBatch(r)), Flags::END)
                }),
                None => Err(not_loaded()),
            },
            Some(worker_request::Body::VisionOpen(config)) => match &self.served {
                Some(s) => Stream::open(id, &config, s).map(|stream| self.streams.push(stream)),
                None => Err(not_loaded()),
            },
            Some(worker_request::Body::VisionFrame(f)) => {
                match self.streams.iter_mut().find(|s| s.id == id) {
                    // A frame for a stream already ended (an error raced it).
                    None => Ok(()),
                    Some(s) => {
                        if let Some(dropped) = s.push(f) {
                            self.answer(
                                id,
                                Some(worker_response::Body::Vision(dropped)),
                                Flags::NONE,
                            );
                        }
                        Ok(())
                    }
                }
            }
            Some(worker_request::Body::VisionClose(_)) => {
                if let Some(s) = self.streams.iter_mut().find(|s| s.id == id) {
                    s.closed = true;
                }
                self.end_closed();
                Ok(())
            }
            Some(_) => Err(VisionError::Unimplemented(
                "this call is not served by worker-vision".into(),
            )),
            None => Err(VisionError::Invalid("empty request".into())),
        };
        if let Err(e) = result {
            self.fail(id, &e);
        }
    }

    /// Ends the closed streams that have nothing left to do.
    fn end_closed(&mut self) {
        let done: Vec<u64> = self
            .streams
            .iter()
            .filter(|s| s.closed && !s.has_pending())
            .map(|s| s.id)
            .collect();
        self.streams.retain(|s| !done.contains(&s.id));
        for id in done {
            self.answer(id, None, Flags::END);
        }
    }

    /// One frame of the next stream (round-robin) whose reader keeps up;
    /// true when one ran.
    fn step(&mut self) -> bool {
        let Some(served) = self.served.as_mut() else {
            return false;
        };
        let n = self.streams.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            let s = &self.streams[i];
            if !s.has_pending() || self.outbox.holds(s.id) {
                continue;
            }
            self.turn = i + 1;
            let id = s.id;
            match self.streams[i].step(served) {
                // An H.264 chunk that completed no picture is acknowledged
                // with an empty answer, so the supervisor's count of frames
                // in flight stays true.
                Some(Ok(results)) if results.is_empty() => self.answer(id, None, Flags::NONE),
                Some(Ok(results)) => {
                    let last = results.len() - 1;
                    for (i, r) in results.into_iter().enumerate() {
                        let body = Some(worker_response::Body::Vision(r));
                        self.answer_part(id, body, Flags::NONE, i < last);
                    }
                }
                Some(Err(e)) => {
                    self.streams.remove(i);
                    self.fail(id, &e);
                }
                None => {}
            }
            self.end_closed();
            return true;
        }
        false
    }

    /// Sends what waits; a request without credit stays paused.
    fn flush(&mut self) -> Result<(), VisionError> {
        match self.outbox.flush(&self.chan) {
            Err(ipc::Error::PeerGone) => gone(),
            other => other.map_err(VisionError::from),
        }
    }
}

fn not_loaded() -> VisionError {
    VisionError::Precondition("no model loaded".into())
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
    Ok(Served::new(detector))
}
