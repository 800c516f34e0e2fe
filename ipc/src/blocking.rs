//! The blocking front end, for workers: plain threads, no runtime.
//!
//! Thread-safe: any thread may send (the heartbeat thread, stream threads)
//! and receive. Waiting is leader/follower: one waiting thread blocks in
//! `poll` on the doorbell and the death-watch socket, the others on a
//! condition variable, and every wake-up lets all of them re-check. Nothing
//! spins on an idle channel.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::death_watch::DeathWatch;
use crate::ends::{Ends, Side};
use crate::error::{Blocked, Error, Result};
use crate::flow::{self, Credits};
use crate::frame::{Flags, Kind, Meta};
use crate::passed::Passed;
use crate::ring::{Consumer, Found, Producer};
use crate::sys::{self, SharedRegion};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

mod received;

use received::Payload;
pub use received::Received;

#[derive(Debug)]
struct RxState {
    consumer: Consumer,
    pending: VecDeque<(Meta, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct WaitState {
    leader: bool,
    followers: usize,
    generation: u64,
}

/// One side of a channel with a blocking, thread-safe API.
#[derive(Debug)]
pub struct BlockingChannel {
    side: Side,
    region: Arc<SharedRegion>,
    region_bytes: usize,
    max_payload: usize,
    rx: Mutex<RxState>,
    tx: Mutex<Producer>,
    credits: Mutex<Credits>,
    wait: Mutex<WaitState>,
    woken: Condvar,
    /// Blocking eventfd this side sleeps on (one `read` sleeps and resets).
    my_bell: Arc<OwnedFd>,
    peer_bell: OwnedFd,
    sock: Arc<OwnedFd>,
    peer_gone: Arc<AtomicBool>,
    /// Descriptors the peer passed, until [`BlockingChannel::take_fd`].
    passed: Arc<Passed>,
    /// Held for its `Drop`, which stops and joins the thread.
    _watch: DeathWatch,
    corrupt: Mutex<Option<String>>,
    spin: std::sync::atomic::AtomicU64,
}

impl BlockingChannel {
    /// Attaches one side of a channel.
    pub fn new(ends: Ends) -> Result<Self> {
        let a = ends.attach()?;
        sys::set_blocking(a.my_bell.as_fd())?;
        let my_bell = Arc::new(a.my_bell);
        let sock = Arc::new(a.sock);
        let peer_gone = Arc::new(AtomicBool::new(false));
        let passed = Arc::new(Passed::default());
        let watch = DeathWatch::start(
            sock.clone(),
            my_bell.clone(),
            peer_gone.clone(),
            passed.clone(),
        )?;
        Ok(BlockingChannel {
            side: a.side,
            region: a.rx.region_arc(),
            region_bytes: a.region_bytes,
            max_payload: a.tx.max_payload(),
            rx: Mutex::new(RxState {
                consumer: a.rx,
                pending: VecDeque::new(),
            }),
            tx: Mutex::new(a.tx),
            credits: Mutex::new(Credits::new(a.credit_window)),
            wait: Mutex::new(WaitState::default()),
            woken: Condvar::new(),
            my_bell,
            peer_bell: a.peer_bell,
            sock,
            peer_gone,
            passed,
            _watch: watch,
            corrupt: Mutex::new(None),
            spin: std::sync::atomic::AtomicU64::new(crate::DEFAULT_SPIN.as_nanos() as u64),
        })
    }

    /// Attaches the side this process inherited (see [`Ends::from_env`]).
    pub fn from_env() -> Result<Self> {
        Self::new(Ends::from_env()?)
    }

    /// How long a waiting thread watches the ring before it sleeps on the
    /// doorbell (default [`crate::DEFAULT_SPIN`]; zero: sleep at once).
    /// A short watch saves a wake-up when the answer is already coming; it
    /// is bounded, so an idle channel costs no CPU.
    pub fn set_spin(&self, spin: Duration) {
        self.spin.store(spin.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Claims the descriptor the peer passed with `tag`
    /// ([`crate::AsyncChannel::send_fd`]), waiting up to `wait` for it to
    /// arrive. The peer sends a descriptor before the frame that names its
    /// tag, so the wait is only for the socket to be read. Errors:
    /// [`Error::Timeout`] (nothing came with that tag), [`Error::PeerGone`].
    /// Descriptors nobody claims stay held, at most [`crate::MAX_PASSED`].
    pub fn take_fd(&self, tag: u64, wait: Duration) -> Result<OwnedFd> {
        // The death watch normally reads the socket; reading it here too
        // spares the wait its wake-up.
        let _ = self.check_peer();
        self.passed.take(tag, wait, &self.peer_gone)
    }

    /// Closes the descriptors passed with `tags` that nobody claimed (a
    /// region detached before the request that would claim it arrived);
    /// how many were held. Without it they would stay held, counting
    /// towards [`crate::MAX_PASSED`], until the channel closes.
    pub fn forget_fd(&self, tags: &[u64]) -> usize {
        let _ = self.check_peer();
        self.passed.forget(tags)
    }

    /// Descriptors passed by the peer and not claimed yet.
    pub fn passed_fds(&self) -> usize {
        self.passed.len()
    }

    /// Size of the shared region in bytes.
    pub fn region_bytes(&self) -> usize {
        self.region_bytes
    }

    /// Largest payload a frame sent from this side can carry.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Waits for the next frame. CREDIT frames are handled inside.
    pub fn recv(&self) -> Result<Received<'_>> {
        self.recv_until(None)
    }

    /// Waits at most `timeout` for the next frame ([`Error::Timeout`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Received<'_>> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// The next frame if one is waiting.
    pub fn try_recv(&self) -> Result<Option<Received<'_>>> {
        if let Some(r) = self.poll_rx()? {
            return Ok(Some(r));
        }
        self.check_peer()?;
        // A frame published just before the peer died is still delivered.
        self.poll_rx()
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<Received<'_>> {
        self.wait_until(deadline, || {
            if let Some(r) = self.poll_rx()? {
                return Ok(Some(r));
            }
            lock(&self.rx).consumer.want_data();
            if let Some(r) = self.poll_rx()? {
                return Ok(Some(r));
            }
            if self.peer_gone.load(Ordering::SeqCst) {
                return Err(Error::PeerGone);
            }
            Ok(None)
        })
    }

    /// Sends a frame, waiting for ring space and, for answer frames, for
    /// the request's credit.
    pub fn send(&self, request_id: u64, kind: Kind, flags: Flags, payload: &[u8]) -> Result<()> {
        self.send_with(request_id, kind, flags, payload.len(), |b| {
            b.copy_from_slice(payload)
        })
    }

    /// Sends a frame of `len` payload bytes that `fill` writes in place.
    pub fn send_with(
        &self,
        request_id: u64,
        kind: Kind,
        flags: Flags,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<()> {
        let mut fill = Some(fill);
        self.wait_until(None, || {
            match self.try_send_inner(request_id, kind, flags, len, &mut fill) {
                Ok(()) => Ok(Some(())),
                Err(Error::WouldBlock(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Sends a frame if that is possible now: otherwise
    /// [`Error::WouldBlock`] says whether the ring is full or the request is
    /// paused for lack of credit.
    pub fn try_send(
        &self,
        request_id: u64,
        kind: Kind,
        flags: Flags,
        payload: &[u8],
    ) -> Result<()> {
        let mut fill = Some(|b: &mut [u8]| b.copy_from_slice(payload));
        self.try_send_inner(request_id, kind, flags, payload.len(), &mut fill)
    }

    /// Blocks until something may have changed for this side (a frame or a
    /// credit arrived, ring space was freed, the peer died) or `timeout`
    /// passes; returns at once if a frame is already waiting. For a worker
    /// whose requests are all paused, between `try_send`/`try_recv` rounds.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let generation = lock(&self.wait).generation;
        self.pump()?;
        if !lock(&self.rx).pending.is_empty() {
            return Ok(());
        }
        lock(&self.rx).consumer.want_data();
        lock(&self.tx).want_space();
        self.pump()?;
        if !lock(&self.rx).pending.is_empty() {
            return Ok(());
        }
        self.check_corrupt()?;
        if self.peer_gone.load(Ordering::SeqCst) {
            return Err(Error::PeerGone);
        }
        match self.block(generation, deadline) {
            Err(Error::Timeout) => Ok(()),
            other => other,
        }
    }

    /// Answer frames `request_id` may send before it must wait; `None` when
    /// not limited (unknown id, or cancelled).
    pub fn credit(&self, request_id: u64) -> Option<u32> {
        let _ = self.pump();
        lock(&self.credits).available(request_id)
    }

    fn try_send_inner<F: FnOnce(&mut [u8])>(
        &self,
        id: u64,
        kind: Kind,
        flags: Flags,
        len: usize,
        fill: &mut Option<F>,
    ) -> Result<()> {
        flow::check_sendable(kind)?;
        self.check_corrupt()?;
        if self.peer_gone.load(Ordering::SeqCst) {
            return Err(Error::PeerGone);
        }
        if !lock(&self.credits).may_send(id, kind) {
            self.pump()?;
            if !lock(&self.credits).may_send(id, kind) {
                // Ask to be woken by the next frame (a credit), then look again.
                lock(&self.rx).consumer.want_data();
                self.pump()?;
            }
        }
        // Lock order everywhere: rx, then credits, then tx.
        let mut credits = lock(&self.credits);
        if !credits.may_send(id, kind) {
            return Err(Error::WouldBlock(Blocked::NoCredit));
        }
        let offer = lock(&self.tx)
            .offer(kind, flags, id, len, fill)
            .map_err(|e| self.poison(e))?;
        if offer.wake {
            sys::ring(self.peer_bell.as_fd())?;
        }
        if !offer.sent {
            return Err(Error::WouldBlock(Blocked::RingFull));
        }
        credits.on_sent(id, kind, flags.is_end());
        Ok(())
    }

    /// Reads what is waiting: credits are applied, the first other frame is
    /// returned (in place when none is held).
    fn poll_rx(&self) -> Result<Option<Received<'_>>> {
        self.check_corrupt()?;
        let mut rx = lock(&self.rx);
        if let Some((meta, data)) = rx.pending.pop_front() {
            return Ok(Some(Received {
                chan: self,
                meta,
                payload: Payload::Owned(data),
            }));
        }
        let mut credited = false;
        let found = loop {
            let Some(found) = rx.consumer.next().map_err(|e| self.poison(e))? else {
                break None;
            };
            if self.on_frame(&found, &mut credited)? {
                break Some(found);
            }
        };
        let received = found.map(|f| {
            let payload = if rx.consumer.is_holding() {
                Payload::Owned(self.region.bytes(f.payload_at, f.meta.len).to_vec())
            } else {
                rx.consumer.hold(&f);
                Payload::InPlace {
                    at: f.payload_at,
                    bytes: self.region.bytes(f.payload_at, f.meta.len),
                }
            };
            Received {
                chan: self,
                meta: f.meta,
                payload,
            }
        });
        self.release(&mut rx)?;
        drop(rx);
        if credited {
            self.kick();
        }
        Ok(received)
    }

    /// Reads everything waiting: credits are applied, other frames queued
    /// (copied) for `recv`. Lets a sender waiting for credit make progress
    /// while no thread receives.
    fn pump(&self) -> Result<()> {
        let mut rx = lock(&self.rx);
        let mut credited = false;
        while let Some(found) = rx.consumer.next().map_err(|e| self.poison(e))? {
            if self.on_frame(&found, &mut credited)? {
                let data = self.region.bytes(found.payload_at, found.meta.len).to_vec();
                rx.pending.push_back((found.meta, data));
            }
        }
        self.release(&mut rx)?;
        drop(rx);
        if credited {
            self.kick();
        }
        Ok(())
    }

    /// Applies a frame's effect on flow control; true when the application
    /// gets it.
    fn on_frame(&self, found: &Found, credited: &mut bool) -> Result<bool> {
        let id = found.meta.request_id;
        match found.meta.kind {
            Kind::Credit => {
                let n = flow::decode_credit(self.region.bytes(found.payload_at, found.meta.len))
                    .map_err(|e| self.poison(e))?;
                lock(&self.credits).on_credit(id, n);
                *credited = true;
                return Ok(false);
            }
            Kind::Request => lock(&self.credits).on_request(id),
            Kind::Cancel => {
                lock(&self.credits).on_cancel(id);
                *credited = true;
            }
            _ => {}
        }
        Ok(true)
    }

    fn release(&self, rx: &mut RxState) -> Result<()> {
        if rx.consumer.release() {
            sys::ring(self.peer_bell.as_fd())?;
        }
        Ok(())
    }

    fn release_held(&self) {
        let mut rx = lock(&self.rx);
        rx.consumer.unhold();
        // A failure to ring means the peer is gone; the next call says so.
        let _ = self.release(&mut rx);
    }

    fn poison(&self, e: Error) -> Error {
        if let Error::Corrupt(msg) = &e {
            lock(&self.corrupt).get_or_insert_with(|| msg.clone());
        }
        e
    }

    fn check_corrupt(&self) -> Result<()> {
        match &*lock(&self.corrupt) {
            Some(msg) => Err(Error::Corrupt(msg.clone())),
            None => Ok(()),
        }
    }

    fn check_peer(&self) -> Result<()> {
        let mut keep = |tag, fd| self.passed.put(tag, fd);
        if self.peer_gone.load(Ordering::SeqCst)
            || sys::receive(self.sock.as_ref().as_fd(), &mut keep)?
        {
            self.peer_gone.store(true, Ordering::SeqCst);
            return Err(Error::PeerGone);
        }
        Ok(())
    }

    /// Lets every waiting thread re-check its condition.
    fn kick(&self) {
        let mut st = lock(&self.wait);
        st.generation += 1;
        if st.followers > 0 {
            self.woken.notify_all();
        }
    }

    fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        loop {
            let generation = lock(&self.wait).generation;
            if let Some(v) = attempt()? {
                return Ok(v);
            }
            self.block(generation, deadline)?;
        }
    }

    /// Sleeps until something may have changed since `generation`: the
    /// leader on the doorbell, the others on the condition variable.
    fn block(&self, generation: u64, deadline: Option<Instant>) -> Result<()> {
        let mut st = lock(&self.wait);
        loop {
            if st.generation != generation {
                return Ok(());
            }
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if timeout == Some(Duration::ZERO) {
                return Err(Error::Timeout);
            }
            if self.peer_gone.load(Ordering::SeqCst) {
                // Nothing will ring any more; let the caller see it.
                return Ok(());
            }
            if !st.leader {
                st.leader = true;
                drop(st);
                let slept = if self.spin_for_data() {
                    Ok(())
                } else {
                    sys::sleep_on(self.my_bell.as_fd(), timeout)
                };
                let mut st = lock(&self.wait);
                st.leader = false;
                st.generation += 1;
                if st.followers > 0 {
                    self.woken.notify_all();
                }
                return slept;
            }
            st.followers += 1;
            st = self
                .woken
                .wait_timeout(st, timeout.unwrap_or(Duration::from_secs(1)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.followers -= 1;
        }
    }

    /// Watches the receiving ring for up to the spin time; true when data
    /// arrived.
    /// The peer does not ring while this side watches (no system call on
    /// either side when the answer comes quickly); the wake-up request is
    /// put back, and the ring checked once more, before sleeping.
    fn spin_for_data(&self) -> bool {
        let spin = Duration::from_nanos(self.spin.load(Ordering::Relaxed));
        let has_data = || lock(&self.rx).consumer.has_data().unwrap_or(true);
        if !spin.is_zero() {
            lock(&self.rx).consumer.clear_want_data();
            let start = Instant::now();
            loop {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                if has_data() {
                    return true;
                }
                if start.elapsed() >= spin {
                    break;
                }
            }
        }
        lock(&self.rx).consumer.want_data();
        has_data()
    }

    /// Sends a frame whatever the request's credit says, waiting only for
    /// ring space: what a broken or hostile peer does. For tests of the
    /// receiving side's window enforcement; a real sender never needs it.
    #[doc(hidden)]
    pub fn send_past_credit_for_test(
        &self,
        request_id: u64,
        kind: Kind,
        flags: Flags,
        payload: &[u8],
    ) -> Result<()> {
        let mut fill = Some(|b: &mut [u8]| b.copy_from_slice(payload));
        self.wait_until(None, || {
            self.check_corrupt()?;
            if self.peer_gone.load(Ordering::SeqCst) {
                return Err(Error::PeerGone);
            }
            self.pump()?;
            let offer = lock(&self.tx).offer(kind, flags, request_id, payload.len(), &mut fill)?;
            if offer.wake {
                sys::ring(self.peer_bell.as_fd())?;
            }
            Ok(offer.sent.then_some(()))
        })
    }

    /// Writes part of a frame of `len` payload bytes (the first `written`
    /// set to `byte`) without publishing it, as a process killed in the
    /// middle of a write leaves it. For fault tests of this protocol; a
    /// real sender never needs it.
    #[doc(hidden)]
    pub fn write_partial_frame_for_test(&self, len: usize, written: usize, byte: u8) -> Result<()> {
        let mut tx = lock(&self.tx);
        let slot = tx
            .try_reserve(len)?
            .ok_or(Error::WouldBlock(Blocked::RingFull))?;
        tx.write_unpublished(&slot, len, written, byte);
        Ok(())
    }
}
