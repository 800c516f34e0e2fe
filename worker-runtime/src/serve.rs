//! The serve loop every worker runs: HELLO, the heartbeat thread, then
//! frames → family → outbox until the supervisor goes away.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipc::{BlockingChannel, Flags, Kind, Received};
use prost::Message;
use sidecar_proto::worker::{Hello, WorkerRequest, worker_request, worker_response};

use crate::error::WorkerError;
use crate::family::{Call, Context, Family, Read};
use crate::heartbeat::{self, Counters};
use crate::memory;
use crate::requests::request_tag;

/// How long a loop with work that cannot go on (every reader behind)
/// sleeps at most before it looks again.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Serves the channel with `family` until the supervisor goes away, then
/// returns `Ok` (the worker's process should exit with status 0). An error
/// is a broken channel or a family's failed step: the worker cannot go on.
pub fn serve<F: Family>(chan: Arc<BlockingChannel>, family: F) -> Result<(), WorkerError> {
    serve_every(chan, family, heartbeat::PERIOD)
}

/// [`serve`], telling the supervisor in the HELLO what the worker's
/// sandbox holds and lacks.
pub fn serve_sandboxed<F: Family>(
    chan: Arc<BlockingChannel>,
    family: F,
    sandbox: &crate::sandbox::Report,
) -> Result<(), WorkerError> {
    serve_with(chan, family, heartbeat::PERIOD, Some(sandbox.to_proto()))
}

/// Why the loop ends.
enum Stop {
    /// The supervisor is gone (the channel's peer).
    Gone,
    /// The channel broke or the family failed.
    Failed(WorkerError),
}

impl From<ipc::Error> for Stop {
    fn from(e: ipc::Error) -> Self {
        match e {
            ipc::Error::PeerGone => Stop::Gone,
            e => Stop::Failed(e.into()),
        }
    }
}

impl From<WorkerError> for Stop {
    fn from(e: WorkerError) -> Self {
        Stop::Failed(e)
    }
}

/// [`serve`] with heartbeats every `period`.
pub(crate) fn serve_every<F: Family>(
    chan: Arc<BlockingChannel>,
    family: F,
    period: Duration,
) -> Result<(), WorkerError> {
    serve_with(chan, family, period, None)
}

fn serve_with<F: Family>(
    chan: Arc<BlockingChannel>,
    mut family: F,
    period: Duration,
    sandbox: Option<sidecar_proto::worker::Sandbox>,
) -> Result<(), WorkerError> {
    let counters = Arc::new(Counters::default());
    let mut cx = Context::new(chan.clone());
    let stop = match send_hello::<F>(&chan, sandbox) {
        Err(stop) => stop,
        Ok(()) => {
            heartbeat::start(chan.clone(), period, counters.clone());
            loop {
                if let Err(stop) = turn(&chan, &mut family, &mut cx, &counters) {
                    break stop;
                }
            }
        }
    };
    match stop {
        Stop::Gone => {
            tracing::info!("supervisor gone; exiting");
            // The model is not dropped: the worker exits at once, as it
            // always has, and a hang or a crash in a native runtime's
            // teardown (llama.cpp, LiteRT, OpenCV) cannot turn its exit 0
            // into a signal or a slow death.
            std::mem::forget(family);
            Ok(())
        }
        Stop::Failed(e) => Err(e),
    }
}

fn send_hello<F: Family>(
    chan: &BlockingChannel,
    sandbox: Option<sidecar_proto::worker::Sandbox>,
) -> Result<(), Stop> {
    let hello = Hello {
        protocol_version: sidecar_proto::WORKER_PROTOCOL_VERSION,
        family: F::FAMILY as i32,
        worker_version: F::VERSION.into(),
        pid: std::process::id(),
        capabilities: F::CAPABILITIES.iter().map(|&c| c.into()).collect(),
        memory: Some(memory::report()),
        sandbox,
    };
    Ok(chan.send(0, Kind::Hello, Flags::NONE, &hello.encode_to_vec())?)
}

/// Whether the loop must not block on the channel.
fn busy<F: Family>(family: &F, cx: &Context) -> bool {
    family.has_work() || !cx.outbox.is_empty()
}

/// One turn: the frames waiting (blocking for one when idle), each followed
/// by the queued answers, one step, the queued answers; the counters for
/// the heartbeats.
fn turn<F: Family>(
    chan: &BlockingChannel,
    family: &mut F,
    cx: &mut Context,
    counters: &Counters,
) -> Result<(), Stop> {
    // Queued answers go out after each frame: a family that answers in
    // place while it reads (LITE runs a whole inference there) must not
    // keep another request's queued answer waiting behind the next frame.
    if !busy(family, cx) {
        let frame = chan.recv()?;
        on_frame(family, cx, counters, frame);
        cx.outbox.flush(chan)?;
    }
    while let Some(frame) = chan.try_recv()? {
        on_frame(family, cx, counters, frame);
        cx.outbox.flush(chan)?;
    }
    let stepped = family.step(cx)?;
    cx.outbox.flush(chan)?;
    counters
        .in_flight
        .store(family.in_flight(), Ordering::Relaxed);
    counters
        .tokens_generated
        .store(family.tokens_generated(), Ordering::Relaxed);
    if !stepped && busy(family, cx) {
        chan.wait(Some(IDLE_WAIT))?;
    }
    Ok(())
}

fn on_frame<F: Family>(family: &mut F, cx: &mut Context, counters: &Counters, frame: Received<'_>) {
    let id = frame.request_id();
    match frame.kind() {
        Kind::Request => {
            let arrived = Instant::now();
            counters.request_frame(id);
            let tag = request_tag(frame.payload());
            if !tag.is_empty() {
                tracing::debug!(request = id, request_id = %tag, "request");
                cx.names.insert(id, tag);
            }
            // Its regions first: a descriptor passed with it is claimed
            // even when the request is refused.
            let uses = crate::requests::region_uses(frame.payload()).unwrap_or_default();
            cx.frame_regions = Default::default();
            if !uses.is_empty() {
                let chan = cx.chan().clone();
                match cx.regions.resolve(&chan, uses) {
                    Ok(r) => cx.frame_regions = r,
                    Err(e) => {
                        drop(frame);
                        cx.fail(id, &e);
                        return;
                    }
                }
            }
            // This one is in flight while the family reads it.
            counters
                .in_flight
                .store(family.in_flight().saturating_add(1), Ordering::Relaxed);
            match family.read(cx, frame) {
                Ok(Read::Request(req)) => dispatch(family, cx, id, arrived, req),
                Ok(Read::Answered) => {}
                Err(e) => cx.fail(id, &e),
            }
            cx.frame_regions = Default::default();
        }
        Kind::Cancel => {
            drop(frame);
            if family.cancel(id) {
                cx.outbox.forget(id);
                cx.fail(id, &WorkerError::cancelled());
            }
        }
        _ => {}
    }
}

fn dispatch<F: Family>(
    family: &mut F,
    cx: &mut Context,
    id: u64,
    arrived: Instant,
    req: WorkerRequest,
) {
    let result = match req.body {
        Some(worker_request::Body::Load(load)) => family.load(&load).map(|mut loaded| {
            loaded.memory = Some(memory::report());
            loaded.load_us = arrived.elapsed().as_micros() as u64;
            cx.answer(id, worker_response::Body::Loaded(loaded));
        }),
        Some(worker_request::Body::RegionDetach(d)) => {
            let chan = cx.chan().clone();
            let n = cx.regions.detach(&chan, &d.ids);
            tracing::debug!(
                request = id,
                detached = n,
                open = cx.regions.len(),
                "regions detached"
            );
            cx.answer(id, worker_response::Body::RegionsDetached(n));
            Ok(())
        }
        Some(worker_request::Body::SandboxProbe(probe)) => crate::probe::answer(&probe)
            .map(|r| cx.answer(id, worker_response::Body::SandboxProbe(r))),
        Some(body) => {
            let call = Call {
                id,
                deadline_ms: req.deadline_unix_ms,
                arrived,
                partition: req.cache_partition,
                body,
                regions: std::mem::take(&mut cx.frame_regions),
            };
            family.request(cx, call)
        }
        None => Err(WorkerError::invalid("empty request")),
    };
    if let Err(e) = result {
        cx.fail(id, &e);
    }
}

#[cfg(test)]
mod tests;
