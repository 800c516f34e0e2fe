//! Requests that crash their worker, refused before they crash another.
//!
//! A request is known by a hash of its body (the method and every field
//! the worker reads; not its request id or deadline), keyed at random per
//! process so that no client can aim a collision at another's request. The
//! calls in flight on each worker are recorded; when a worker dies of a
//! self-raised crash (`DESIGN.md`: a crash it raised itself, `unhealthy`,
//! `oom`, `vram`, `protocol`), the hashes then in flight are noted, and a
//! hash noted in two such crashes within `quarantine_ttl` is refused with
//! INVALID_ARGUMENT naming the crashes for `quarantine_ttl`, instead of
//! crashing a third worker. One model's quarantine is its own.
//!
//! Not quarantined ([`applies`]): a vision stream's opening (every camera
//! with the same settings shares it; the poison is in the frames), and
//! any request naming shared-memory regions: its body holds region names,
//! offsets and sizes, not the bytes the worker reads, so its hash would
//! blame every caller using the same name and window for one caller's
//! poison, and the culprit would escape by shifting its offset.

use std::collections::{HashMap, VecDeque};

use sidecar_proto::worker::{WorkerRequest, worker_request::Body};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A crash a request was in flight for.
#[derive(Debug, Clone, Copy)]
struct Crash {
    pid: u32,
    at: Instant,
}

#[derive(Debug, Default)]
struct Book {
    /// Per worker pid: the hashes in flight and how many calls each.
    in_flight: HashMap<u32, HashMap<u64, u32>>,
    /// Self-raised crashes each hash was in flight for, within the TTL.
    crashes: HashMap<u64, Vec<Crash>>,
    /// Refused hashes: until when, and why.
    refused: HashMap<u64, (Instant, String)>,
    /// Workers whose death was seen, newest last: a call that reaches
    /// `enter` after its worker's death is not recorded against a pid the
    /// system may reuse.
    dead: VecDeque<u32>,
}

/// Whether the quarantine knows `req` by its hash (module docs): not a
/// vision stream's opening, and not a request naming regions (its bytes
/// are not in the request).
pub(crate) fn applies(req: &WorkerRequest) -> bool {
    req.regions.is_empty()
        && match &req.body {
            Some(Body::VisionOpen(_)) => false,
            Some(body) => !crate::shm::resolve::uses_regions(body),
            None => true,
        }
}

/// Dead workers remembered (a worker dies at most every backoff).
const DEAD: usize = 64;

/// See the module.
#[derive(Debug)]
pub(crate) struct Quarantine {
    book: Mutex<Book>,
    keys: foldhash::quality::RandomState,
    ttl: Duration,
}

impl Quarantine {
    /// A quarantine whose refusals (and remembered crashes) last `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Quarantine {
            book: Mutex::default(),
            keys: foldhash::quality::RandomState::default(),
            ttl,
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hash of a request's encoded body.
    pub(crate) fn hash(&self, body: &[u8]) -> u64 {
        self.keys.hash_one(body)
    }

    /// Whether any request is refused now (when none is, a call needs no
    /// hash before it is sent).
    pub(crate) fn any_refused(&self) -> bool {
        let mut book = self.book();
        let now = Instant::now();
        book.refused.retain(|_, (until, _)| *until > now);
        !book.refused.is_empty()
    }

    /// `Err` with the reason when `hash` is refused now.
    pub(crate) fn check(&self, hash: u64) -> Result<(), String> {
        match self.book().refused.get(&hash) {
            Some((until, why)) if *until > Instant::now() => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// A call with `hash` was sent to worker `pid`.
    pub(crate) fn enter(&self, pid: u32, hash: u64) {
        let mut book = self.book();
        if book.dead.contains(&pid) {
            return;
        }
        *book
            .in_flight
            .entry(pid)
            .or_default()
            .entry(hash)
            .or_insert(0) += 1;
    }

    /// That call is over (answered, or abandoned while its worker lives).
    pub(crate) fn leave(&self, pid: u32, hash: u64) {
        let mut book = self.book();
        if let Some(calls) = book.in_flight.get_mut(&pid)
            && let Some(n) = calls.get_mut(&hash)
        {
            *n -= 1;
            if *n == 0 {
                calls.remove(&hash);
            }
        }
    }

    /// Worker `pid` died; `self_raised`: of a crash the table counts as its
    /// own. Returns the hashes refused from now on (each with its reason).
    pub(crate) fn died(&self, pid: u32, self_raised: bool) -> Vec<(u64, String)> {
        let mut book = self.book();
        let in_flight = book.in_flight.remove(&pid).unwrap_or_default();
        if pid != 0 && !book.dead.contains(&pid) {
            if book.dead.len() == DEAD {
                book.dead.pop_front();
            }
            book.dead.push_back(pid);
        }
        if !self_raised {
            return Vec::new();
        }
        let now = Instant::now();
        let ttl = self.ttl;
        let mut refused = Vec::new();
        for hash in in_flight.into_keys() {
            let crashes = book.crashes.entry(hash).or_default();
            crashes.retain(|c| now.duration_since(c.at) < ttl);
            crashes.push(Crash { pid, at: now });
            if crashes.len() >= 2 {
                let pids: Vec<String> = crashes.iter().map(|c| c.pid.to_string()).collect();
                let why = format!(
                    "this request was in flight in {} worker crashes (pids {}) within {ttl:?}; it is refused for {ttl:?} (workers.quarantine_ttl)",
                    crashes.len(),
                    pids.join(", ")
                );
                book.crashes.remove(&hash);
                book.refused.insert(hash, (now + ttl, why.clone()));
                refused.push((hash, why));
            }
        }
        // Crashes older than the TTL are forgotten.
        book.crashes
            .retain(|_, c| c.iter().any(|c| now.duration_since(c.at) < ttl));
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_two_self_raised_crashes_is_refused_and_others_are_not() {
        let q = Quarantine::new(Duration::from_secs(600));
        let bad = q.hash(b"the request that crashes");
        let good = q.hash(b"an innocent bystander");
        assert_ne!(bad, good);
        assert_eq!(bad, q.hash(b"the request that crashes"), "stable");
        q.enter(10, bad);
        q.enter(10, good);
        assert!(q.died(10, true).is_empty(), "one crash is not enough");
        // The innocent one was not in flight the second time.
        q.enter(11, bad);
        let refused = q.died(11, true);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, bad);
        assert!(refused[0].1.contains("pids 10, 11"), "{}", refused[0].1);
        assert!(q.any_refused());
        assert!(q.check(bad).is_err());
        assert!(q.check(good).is_ok());
    }

    #[test]
    fn answered_calls_and_other_deaths_do_not_count() {
        let q = Quarantine::new(Duration::from_secs(600));
        let h = q.hash(b"x");
        for pid in [1, 2, 3] {
            q.enter(pid, h);
            q.leave(pid, h);
            assert!(q.died(pid, true).is_empty(), "answered before the crash");
        }
        for pid in [4, 5, 6] {
            q.enter(pid, h);
            assert!(q.died(pid, false).is_empty(), "a timeout or an unload");
        }
        assert!(!q.any_refused());
        // A call that reaches its worker's record after the death is not
        // held against a reused pid.
        q.enter(4, h);
        q.enter(7, h);
        assert!(q.died(7, true).is_empty());
        q.enter(7, h);
        assert!(q.died(7, true).is_empty(), "pid 7's death was already seen");
    }

    #[test]
    fn a_request_with_region_refs_is_never_quarantined() {
        use prost::Message;
        use sidecar_proto::v1::{InferRequest, SharedMemoryRef, Tensor};
        use sidecar_proto::worker::RegionUse;
        let tensor = |shm: Option<SharedMemoryRef>| Tensor {
            name: "input0".into(),
            shm,
            ..Default::default()
        };
        let with_ref = WorkerRequest {
            regions: vec![RegionUse {
                id: 1,
                name: "input0".into(),
                ..Default::default()
            }],
            body: Some(Body::Infer(InferRequest {
                inputs: vec![tensor(Some(SharedMemoryRef {
                    region: "input0".into(),
                    offset: 0,
                    byte_size: 16,
                }))],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(!applies(&with_ref), "refs name bytes the hash never sees");
        let mut body_only = with_ref.clone();
        body_only.regions.clear();
        assert!(!applies(&body_only), "a ref in the body alone");
        let inline = WorkerRequest {
            body: Some(Body::Infer(InferRequest {
                inputs: vec![tensor(None)],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(applies(&inline), "inline bytes are hashed");
        let open = WorkerRequest {
            body: Some(Body::VisionOpen(Default::default())),
            ..Default::default()
        };
        assert!(!applies(&open));
        // Even if the same bytes crashed two workers, a call with refs is
        // not the one refused: only a request that `applies` is entered.
        let q = Quarantine::new(Duration::from_secs(600));
        let h = q.hash(&body_only.encode_to_vec());
        for pid in [1, 2] {
            if applies(&body_only) {
                q.enter(pid, h);
            }
            q.died(pid, true);
        }
        assert!(!q.any_refused());
        assert!(q.check(h).is_ok());
    }

    #[test]
    fn refusals_and_crashes_expire_after_the_ttl() {
        let q = Quarantine::new(Duration::from_millis(50));
        let h = q.hash(b"x");
        q.enter(1, h);
        q.died(1, true);
        std::thread::sleep(Duration::from_millis(80));
        q.enter(2, h);
        assert!(q.died(2, true).is_empty(), "the first crash is forgotten");
        q.enter(3, h);
        assert_eq!(q.died(3, true).len(), 1);
        assert!(q.check(h).is_err());
        std::thread::sleep(Duration::from_millis(80));
        assert!(q.check(h).is_ok());
        assert!(!q.any_refused());
    }
}
