//! The seam between the runtime's serve loop and a worker family: what a
//! family is asked ([`Family`]) and what it answers through ([`Context`]).

use std::sync::Arc;
use std::time::Instant;

use ipc::{BlockingChannel, Flags, Kind, Received};
use prost::Message;
use prost::bytes::Buf;
use sidecar_proto::v1::ModelFamily;
use sidecar_proto::worker::{
    Load, Loaded, WorkerRequest, WorkerResponse, worker_request, worker_response,
};

use crate::error::WorkerError;
use crate::outbox::Outbox;
use crate::regions::{Regions, Resolved};
use crate::requests::RequestNames;

/// A request as the serve loop hands it to its family.
#[derive(Debug)]
pub struct Call {
    /// The channel's request id (answers go to it).
    pub id: u64,
    /// Absolute deadline, Unix ms (0: none).
    pub deadline_ms: i64,
    /// When its frame reached the worker.
    pub arrived: Instant,
    /// The caller's identity (`WorkerRequest.cache_partition`): state kept
    /// between calls (worker-text's prompt prefixes) is shared only
    /// within one partition.
    pub partition: String,
    /// What is asked (never a Load: the loop hands those to
    /// [`Family::load`]).
    pub body: worker_request::Body,
    /// The shared-memory regions the request may name, by the caller's
    /// names (`WorkerRequest.regions`, attached).
    pub regions: Resolved,
}

/// What [`Family::read`] made of a REQUEST frame.
// Returned once per frame and consumed at once, never stored: boxing the
// request would only add an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Read {
    /// A request for [`Family::load`] or [`Family::request`].
    Request(WorkerRequest),
    /// Nothing left to do: the family answered it while the frame was held.
    Answered,
}

/// What one worker family (text, lite, vision) does its own way. The
/// runtime's serve loop ([`crate::serve`]) does the rest: HELLO,
/// heartbeats, reading frames, Load's answer, cancels, the outbox, the
/// supervisor's going away.
///
/// A loop turn: every waiting frame is handed over (a REQUEST to
/// [`Family::read`], then its body to [`Family::load`] or
/// [`Family::request`]; a CANCEL to [`Family::cancel`]), queued answers
/// are sent, [`Family::step`] runs once, queued answers are sent again.
/// When the family [`has_work`](Family::has_work) the loop does not block
/// on the channel; otherwise it sleeps until the next frame.
pub trait Family {
    /// The family HELLO announces.
    const FAMILY: ModelFamily;
    /// The worker binary's version (its crate's `CARGO_PKG_VERSION`).
    const VERSION: &'static str;
    /// What HELLO says the worker can do ("generate", "infer", ...).
    const CAPABILITIES: &'static [&'static str];

    /// Loads the model. The runtime adds the memory report and the load
    /// time to the answer and sends it; an error fails the Load call.
    fn load(&mut self, load: &Load) -> Result<Loaded, WorkerError>;

    /// Reads a REQUEST frame. The default decodes it into owned memory
    /// (the frame's ring space is freed at once). A family that reads in
    /// place overrides it: it may answer there and then, while the frame
    /// is held ([`Read::Answered`]). An error fails the request.
    fn read(&mut self, cx: &mut Context, frame: Received<'_>) -> Result<Read, WorkerError> {
        let _ = cx;
        decode(frame.payload()).map(Read::Request)
    }

    /// A request other than Load: answer it now through `cx`, or keep it
    /// for [`Family::step`]. An error fails the request.
    fn request(&mut self, cx: &mut Context, call: Call) -> Result<(), WorkerError>;

    /// Stops request `id` at once if this family holds it, and says so
    /// (the runtime then drops its queued answers and answers CANCELLED).
    /// A family that answers every call before it reads the next frame
    /// holds nothing.
    fn cancel(&mut self, id: u64) -> bool {
        let _ = id;
        false
    }

    /// Whether requests wait for [`Family::step`].
    fn has_work(&self) -> bool {
        false
    }

    /// One unit of the waiting work (a decode step, a stream's frame);
    /// true when one ran. An error ends the worker.
    fn step(&mut self, cx: &mut Context) -> Result<bool, WorkerError> {
        let _ = cx;
        Ok(false)
    }

    /// Requests held between turns (running or waiting), for heartbeats.
    fn in_flight(&self) -> u32 {
        0
    }

    /// Tokens generated since the worker started, for heartbeats.
    fn tokens_generated(&self) -> u64 {
        0
    }
}

/// Decodes a request frame's payload; a payload that is not a
/// `WorkerRequest` is INVALID_ARGUMENT "malformed request".
pub fn decode(payload: impl Buf) -> Result<WorkerRequest, WorkerError> {
    WorkerRequest::decode(payload)
        .map_err(|e| WorkerError::invalid(format!("malformed request: {e}")))
}

/// What a family answers through: the outbox (answers wait there per
/// request, so a slow reader pauses only its own request), the channel
/// (for answers written in place), and the callers' request names.
#[derive(Debug)]
pub struct Context {
    chan: Arc<BlockingChannel>,
    pub(crate) outbox: Outbox,
    pub(crate) names: RequestNames,
    /// The worker's open shared-memory regions.
    pub(crate) regions: Regions,
    /// The regions of the frame being read ([`Family::read`]).
    pub(crate) frame_regions: Resolved,
}

impl Context {
    pub(crate) fn new(chan: Arc<BlockingChannel>) -> Self {
        Context {
            outbox: Outbox::new(chan.max_payload()),
            chan,
            names: RequestNames::default(),
            regions: Regions::default(),
            frame_regions: Resolved::default(),
        }
    }

    /// The shared-memory regions the frame being read may name (for a
    /// family that reads frames in place, in [`Family::read`]; a
    /// [`Call`] carries its own).
    pub fn frame_regions(&self) -> &Resolved {
        &self.frame_regions
    }

    /// Regions this worker holds open.
    pub fn open_regions(&self) -> usize {
        self.regions.len()
    }

    /// The channel, for a family that reads or writes frames in place
    /// (`payload_bytes`, `send_with`).
    pub fn chan(&self) -> &Arc<BlockingChannel> {
        &self.chan
    }

    /// The caller's name for request `id` ("" when unknown), for log lines.
    pub fn request_name(&self, id: u64) -> &str {
        self.names.get(id)
    }

    /// The largest answer frame the response ring carries, in bytes. An
    /// answer queued through [`Context::respond`] or [`Context::answer`]
    /// that is larger ends its request with [`crate::answer_too_large`]
    /// instead (it is never encoded); a family that writes answers in
    /// place checks it before the work.
    pub fn max_answer_bytes(&self) -> usize {
        self.outbox.max_payload()
    }

    /// `Err` when an answer of `len` bytes cannot go through the response
    /// ring: RESOURCE_EXHAUSTED naming both sizes.
    pub fn check_answer_len(&self, len: usize) -> Result<(), WorkerError> {
        let max = self.max_answer_bytes();
        if len > max {
            return Err(crate::error::answer_too_large(len, max));
        }
        Ok(())
    }

    /// Whether the supervisor has cancelled request `id`, which this
    /// family is still working on (its last frame not sent). For long work
    /// done inside [`Family::read`] or [`Family::request`], where the loop
    /// cannot hand over the CANCEL frame: the channel applies a CANCEL to
    /// the request's credit as soon as it sees the frame, and the frame
    /// itself still reaches [`Family::cancel`] later (by then the request
    /// is answered, so nothing more happens).
    pub fn cancel_requested(&self, id: u64) -> bool {
        // An open request has a window of credit until a CANCEL lifts it
        // (`None`: unlimited); its last frame closes it.
        self.chan.credit(id).is_none()
    }

    /// Between two units of long work on request `id`:
    /// DEADLINE_EXCEEDED once `deadline_ms` (0: none) has passed, CANCELLED
    /// once the supervisor cancelled it.
    pub fn check_interrupted(&self, id: u64, deadline_ms: i64) -> Result<(), WorkerError> {
        crate::deadline::check(deadline_ms)?;
        if self.cancel_requested(id) {
            return Err(WorkerError::cancelled());
        }
        Ok(())
    }

    /// Queues an answer frame of `id` (encoded only if it fits the ring).
    pub fn respond(&mut self, id: u64, response: &WorkerResponse, flags: Flags) {
        self.outbox
            .push_message(id, Kind::Response, flags, response);
    }

    /// Queues the last answer of `id`.
    pub fn answer(&mut self, id: u64, body: worker_response::Body) {
        let r = WorkerResponse {
            body: Some(body),
            ..Default::default()
        };
        self.respond(id, &r, Flags::END);
    }

    /// Fails request `id` with `e` (its last frame) and logs it.
    pub fn fail(&mut self, id: u64, e: &WorkerError) {
        let request_id = self.names.get(id);
        tracing::info!(request = id, request_id, code = ?e.code, "request failed: {}", e.message);
        self.outbox
            .push_message(id, Kind::Error, Flags::END, &e.to_proto(false));
    }

    /// Whether answers of `id` wait (its reader is behind: pause it).
    pub fn holds(&self, id: u64) -> bool {
        self.outbox.holds(id)
    }

    /// Sends what waits now, without blocking. The supervisor being gone
    /// is not an error here: the serve loop sees it next and ends.
    pub fn flush(&mut self) -> Result<(), WorkerError> {
        match self.outbox.flush(&self.chan) {
            Ok(()) | Err(ipc::Error::PeerGone) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// What messages call a Load's model: its path in the store (`name`), or
/// the path opened when none is given (standalone runs). The file itself
/// is opened at `path`, the descriptor the supervisor handed over.
pub fn model_name(load: &Load) -> &str {
    if load.name.is_empty() {
        &load.path
    } else {
        &load.name
    }
}
