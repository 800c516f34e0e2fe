//! The async (tokio) front end, for the supervisor.
//!
//! A pump task owns the receiving ring: it drains it as soon as the doorbell
//! rings, copies each frame out once into its request's bounded buffer (or
//! the control queue for request id 0), flushes queued credit and cancel
//! frames, and wakes senders waiting for ring space. A slow reader of one
//! request never stops the pump: its buffer cannot outgrow the request's
//! credit window, because the worker may not send more than that before
//! this side grants credit, which happens as the reader takes frames.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::ends::{Ends, Side};
use crate::error::{Error, Result};
use crate::flow;
use crate::frame::{Flags, Kind};
use crate::ring::{Consumer, Producer};
use crate::sys::{self, SharedRegion};

/// Frames of request id 0 (hello, fatal errors) kept unread: one more is a
/// protocol violation. Heartbeats do not count: only the newest unread one
/// is kept, so a worker that heartbeats through a long load never fills it.
const CONTROL_QUEUE: usize = 256;

/// Largest control frame (hello, heartbeat, a fatal error): a few hundred
/// bytes in practice.
const CONTROL_MAX_PAYLOAD: usize = 64 << 10;

/// Frames the pump copies out of the ring before it yields to other tasks:
/// a worker that floods the ring cannot keep the pump's thread.
const DRAIN_BATCH: usize = 256;

mod pump;
mod route;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A frame received on an [`AsyncChannel`], copied out of shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request it belongs to (0: the channel itself).
    pub request_id: u64,
    /// Kind.
    pub kind: Kind,
    /// Flags.
    pub flags: Flags,
    /// Payload.
    pub payload: Bytes,
}

#[derive(Debug)]
struct Slot {
    queue: VecDeque<Frame>,
    notify: Arc<Notify>,
    /// Dropped by its reader: frames are discarded until the END.
    abandoned: bool,
    /// Answer frames the peer may send: the credit window, plus every
    /// credit this side granted, plus one window more once it sends a
    /// CANCEL (after which the peer may send what it needs to finish).
    granted: u64,
    /// Answer frames received. More than `granted` is a protocol
    /// violation, so the queue never holds more than a window.
    received: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
/// Counters of an [`AsyncChannel`].
pub struct Stats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent (credits and cancels included).
    pub frames_out: u64,
    /// Frames for request ids nobody waits for (finished or never opened).
    pub unrouted: u64,
    /// Older heartbeats replaced by a newer one before anybody read them.
    pub heartbeats_replaced: u64,
    /// Times the pump yielded in the middle of a full ring.
    pub drain_yields: u64,
}

#[derive(Debug)]
struct Inner {
    side: Side,
    region: Arc<SharedRegion>,
    region_bytes: usize,
    max_payload: usize,
    window: u32,
    tx: Mutex<Producer>,
    rx: Mutex<Consumer>,
    bell: AsyncFd<OwnedFd>,
    peer_bell: OwnedFd,
    sock: AsyncFd<OwnedFd>,
    streams: Mutex<HashMap<u64, Slot>>,
    control: Mutex<VecDeque<Frame>>,
    control_notify: Notify,
    outbox: Mutex<VecDeque<(u64, Kind, Vec<u8>)>>,
    kick: Notify,
    space: Notify,
    failed: Mutex<Option<Error>>,
    spin_ns: AtomicU64,
    next_id: AtomicU64,
    stats: Mutex<Stats>,
    pool: Arc<crate::pool::Pool>,
}

/// One side of a channel with an async API (normally side A, the
/// supervisor). Must be created inside a tokio runtime. Dropping it stops
/// its pump; the peer sees the channel closed once every stream is dropped
/// too.
#[derive(Debug)]
pub struct AsyncChannel {
    inner: Arc<Inner>,
    pump: tokio::task::JoinHandle<()>,
}

/// The answers to one request, in order. Dropping it before the END frame
/// cancels the request (a CANCEL frame is sent).
#[derive(Debug)]
pub struct ResponseStream {
    inner: Arc<Inner>,
    id: u64,
    notify: Arc<Notify>,
    finished: bool,
    consumed: u32,
}

impl AsyncChannel {
    /// Attaches one side of a channel and starts its pump task.
    pub fn new(ends: Ends) -> Result<Self> {
        let a = ends.attach()?;
        let region = a.rx.region_arc();
        let inner = Arc::new(Inner {
            side: a.side,
            region,
            region_bytes: a.region_bytes,
            max_payload: a.tx.max_payload(),
            window: a.credit_window,
            tx: Mutex::new(a.tx),
            rx: Mutex::new(a.rx),
            bell: sys::async_fd(a.my_bell)?,
            peer_bell: a.peer_bell,
            sock: sys::async_fd_with(
                a.sock,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )?,
            streams: Mutex::new(HashMap::new()),
            control: Mutex::new(VecDeque::new()),
            control_notify: Notify::new(),
            outbox: Mutex::new(VecDeque::new()),
            kick: Notify::new(),
            space: Notify::new(),
            failed: Mutex::new(None),
            spin_ns: AtomicU64::new(crate::DEFAULT_SPIN.as_nanos() as u64),
            next_id: AtomicU64::new(1),
            stats: Mutex::new(Stats::default()),
            pool: Arc::default(),
        });
        let pump = tokio::spawn(pump::run(inner.clone()));
        Ok(AsyncChannel { inner, pump })
    }

    /// How long the pump watches the ring before it sleeps on the doorbell
    /// (default [`crate::DEFAULT_SPIN`]; zero: sleep at once). It yields to
    /// other tasks between looks.
    pub fn set_spin(&self, spin: std::time::Duration) {
        self.inner
            .spin_ns
            .store(spin.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.inner.side
    }

    /// Size of the shared region in bytes.
    pub fn region_bytes(&self) -> usize {
        self.inner.region_bytes
    }

    /// Largest payload a frame sent from this side can carry.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        *lock(&self.inner.stats)
    }

    /// Frames received for `request_id` and not yet read.
    pub fn buffered(&self, request_id: u64) -> usize {
        lock(&self.inner.streams)
            .get(&request_id)
            .map_or(0, |s| s.queue.len())
    }

    /// Passes `fd` to the peer with `tag` (`SCM_RIGHTS` over the channel's
    /// socketpair); the peer claims it with
    /// [`crate::BlockingChannel::take_fd`]. Send it before the frame that
    /// names the tag. The peer gets its own descriptor of the same open
    /// file: closing ours afterwards does not close it.
    pub async fn send_fd(&self, tag: u64, fd: BorrowedFd<'_>) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        loop {
            let mut guard = self
                .inner
                .sock
                .writable()
                .await
                .map_err(|e| Error::io("wait death-watch socket", e))?;
            if sys::send_fd(self.inner.sock.get_ref().as_fd(), tag, fd)? {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// The channel's final error, if it has failed.
    pub fn failure(&self) -> Option<Error> {
        lock(&self.inner.failed).as_ref().map(Error::duplicate)
    }

    /// Sends a REQUEST frame under a new request id and returns the stream
    /// of its answers.
    pub async fn request(&self, payload: &[u8]) -> Result<ResponseStream> {
        self.request_with(payload.len(), |b| b.copy_from_slice(payload))
            .await
    }

    /// As [`AsyncChannel::request`], with the payload written in place.
    pub async fn request_with(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<ResponseStream> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        lock(&self.inner.streams).insert(
            id,
            Slot {
                queue: VecDeque::new(),
                notify: notify.clone(),
                abandoned: false,
                granted: u64::from(self.inner.window),
                received: 0,
            },
        );
        let stream = ResponseStream {
            inner: self.inner.clone(),
            id,
            notify,
            finished: false,
            consumed: 0,
        };
        match self
            .inner
            .send_with(id, Kind::Request, Flags::NONE, len, fill)
            .await
        {
            Ok(()) => Ok(stream),
            Err(e) => {
                let mut stream = stream;
                stream.finish();
                Err(e)
            }
        }
    }

    /// Sends a frame outside any stream (e.g. a CANCEL by id).
    pub async fn send(
        &self,
        request_id: u64,
        kind: Kind,
        flags: Flags,
        payload: &[u8],
    ) -> Result<()> {
        self.inner
            .send_with(request_id, kind, flags, payload.len(), |b| {
                b.copy_from_slice(payload)
            })
            .await
    }

    /// The next frame of request id 0 (hello, heartbeats, fatal errors).
    pub async fn recv_control(&self) -> Result<Frame> {
        loop {
            let notified = self.inner.control_notify.notified();
            if let Some(f) = lock(&self.inner.control).pop_front() {
                return Ok(f);
            }
            if let Some(e) = self.failure() {
                return Err(e);
            }
            notified.await;
        }
    }
}

impl Drop for AsyncChannel {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl ResponseStream {
    /// The request id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next answer frame; `None` after the frame with END. A dead
    /// channel gives its error once every frame received before is read.
    pub async fn next(&mut self) -> Option<Result<Frame>> {
        if self.finished {
            return None;
        }
        let notify = self.notify.clone();
        loop {
            let notified = notify.notified();
            let popped = {
                let mut streams = lock(&self.inner.streams);
                let slot = streams.get_mut(&self.id);
                slot.and_then(|s| {
                    let frame = s.queue.pop_front()?;
                    if !frame.flags.is_end() {
                        self.consumed += 1;
                        if self.consumed >= (self.inner.window / 2).max(1) {
                            // Counted as granted before the peer can see
                            // it: never a false violation.
                            s.granted = s.granted.saturating_add(u64::from(self.consumed));
                        }
                    }
                    Some(frame)
                })
            };
            if let Some(frame) = popped {
                if frame.flags.is_end() {
                    self.finish();
                } else if self.consumed >= (self.inner.window / 2).max(1) {
                    self.inner.queue_control(
                        self.id,
                        Kind::Credit,
                        flow::encode_credit(self.consumed).to_vec(),
                    );
                    self.consumed = 0;
                }
                return Some(Ok(frame));
            }
            let failed = lock(&self.inner.failed).as_ref().map(Error::duplicate);
            if let Some(e) = failed {
                self.finish();
                return Some(Err(e));
            }
            notified.await;
        }
    }

    /// Sends another frame on this request (more input, a CANCEL).
    pub async fn send(&self, kind: Kind, flags: Flags, payload: &[u8]) -> Result<()> {
        self.send_with(kind, flags, payload.len(), |b| b.copy_from_slice(payload))
            .await
    }

    /// Sends another frame of `len` payload bytes that `fill` writes in
    /// place.
    pub async fn send_with(
        &self,
        kind: Kind,
        flags: Flags,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<()> {
        self.inner.send_with(self.id, kind, flags, len, fill).await
    }

    fn finish(&mut self) {
        self.finished = true;
        lock(&self.inner.streams).remove(&self.id);
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        {
            let mut streams = lock(&self.inner.streams);
            if let Some(slot) = streams.get_mut(&self.id) {
                // The answer is complete, only unread: nothing to cancel,
                // and no END will come to end an abandoned slot.
                if slot.queue.iter().any(|f| f.flags.is_end()) {
                    streams.remove(&self.id);
                    return;
                }
                slot.abandoned = true;
                slot.queue.clear();
            }
        }
        self.inner.queue_control(self.id, Kind::Cancel, Vec::new());
    }
}

impl Inner {
    async fn send_with(
        &self,
        id: u64,
        kind: Kind,
        flags: Flags,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<()> {
        flow::check_sendable(kind)?;
        if kind == Kind::Cancel
            && let Some(slot) = lock(&self.streams).get_mut(&id)
        {
            // The peer may now send what it needs to finish: allow one
            // more window's worth, still a bound.
            slot.granted = slot
                .granted
                .saturating_add(u64::from(self.window))
                .saturating_add(1);
        }
        let mut fill = Some(fill);
        loop {
            let mut notified = pin!(self.space.notified());
            notified.as_mut().enable();
            if let Some(e) = lock(&self.failed).as_ref() {
                return Err(e.duplicate());
            }
            let offer = lock(&self.tx).offer(kind, flags, id, len, &mut fill)?;
            if offer.wake {
                sys::ring(self.peer_bell.as_fd())?;
            }
            if offer.sent {
                lock(&self.stats).frames_out += 1;
                return Ok(());
            }
            notified.await;
        }
    }

    /// Queues a credit or cancel for the pump to send (callable from Drop).
    fn queue_control(&self, id: u64, kind: Kind, payload: Vec<u8>) {
        lock(&self.outbox).push_back((id, kind, payload));
        self.kick.notify_one();
    }

    fn flush_outbox(&self) -> Result<()> {
        let mut outbox = lock(&self.outbox);
        let mut tx = lock(&self.tx);
        let mut rang = false;
        while let Some((id, kind, payload)) = outbox.front() {
            let mut fill = Some(|b: &mut [u8]| b.copy_from_slice(payload));
            let offer = tx.offer(*kind, Flags::NONE, *id, payload.len(), &mut fill)?;
            rang |= offer.wake;
            if !offer.sent {
                break;
            }
            outbox.pop_front();
            lock(&self.stats).frames_out += 1;
        }
        if rang {
            sys::ring(self.peer_bell.as_fd())?;
        }
        Ok(())
    }

    /// Copies every waiting frame to its destination.
    fn fail(&self, e: Error) {
        lock(&self.failed).get_or_insert(e);
        self.control_notify.notify_one();
        self.space.notify_waiters();
        for slot in lock(&self.streams).values() {
            slot.notify.notify_one();
        }
    }
}
