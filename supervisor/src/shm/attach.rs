//! Descriptors to workers, once per worker process: the first request a
//! worker process gets that names a region carries `attach = true`, and
//! its descriptor goes just before it over the channel's socketpair
//! (`AsyncChannel::send_fd`, tagged with the region's id); later requests
//! carry `attach = false`. A respawned worker is a new [`Attached`], so a
//! re-sent call attaches again.
//!
//! A worker holds at most [`ipc::MAX_PASSED`] regions: past it the least
//! recently used ones the request does not name are detached first
//! (`RegionDetach`, written before the request). A request naming more
//! regions than that is RESOURCE_EXHAUSTED. An unregistered region is
//! detached from every live worker holding it, in the background (the
//! caller's Unregister never waits on a worker).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prost::Message;
use sidecar_proto::worker::{RegionDetach, RegionUse, WorkerRequest, worker_request};

use super::Held;
use crate::error::Error;

/// How long a detach waits for the worker's answer before it stops
/// listening (the worker closes the descriptors either way).
const DETACH_ANSWER: Duration = Duration::from_secs(10);

/// Which region ids one worker process holds, least recently used first
/// out.
#[derive(Debug)]
pub struct Book {
    held: HashMap<u64, u64>,
    tick: u64,
    cap: usize,
}

impl Book {
    /// An empty book holding at most `cap` ids.
    pub fn new(cap: usize) -> Book {
        Book {
            held: HashMap::new(),
            tick: 0,
            cap,
        }
    }

    /// Sets `attach` on the uses this worker does not hold yet and records
    /// them; returns the ids to detach first to stay within the cap.
    pub fn mark(&mut self, uses: &mut [RegionUse]) -> Result<Vec<u64>, Error> {
        if uses.len() > self.cap {
            return Err(Error::ResourceExhausted(format!(
                "the request names {} shared-memory regions; a worker holds at most {}",
                uses.len(),
                self.cap
            )));
        }
        self.tick += 1;
        let fresh = uses
            .iter()
            .filter(|u| !self.held.contains_key(&u.id))
            .count();
        let over = (self.held.len() + fresh).saturating_sub(self.cap);
        let mut evicted = Vec::new();
        if over > 0 {
            let mut old: Vec<(u64, u64)> = self
                .held
                .iter()
                .filter(|(id, _)| !uses.iter().any(|u| u.id == **id))
                .map(|(id, t)| (*t, *id))
                .collect();
            old.sort_unstable();
            for (_, id) in old.into_iter().take(over) {
                self.held.remove(&id);
                evicted.push(id);
            }
        }
        for u in uses.iter_mut() {
            u.attach = self.held.insert(u.id, self.tick).is_none();
        }
        Ok(evicted)
    }

    /// Forgets `ids`; returns those it held.
    pub fn forget(&mut self, ids: &[u64]) -> Vec<u64> {
        ids.iter()
            .copied()
            .filter(|id| self.held.remove(id).is_some())
            .collect()
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// One worker process's regions: its channel and its book. Calls that
/// name regions on it are written one at a time (descriptor, then
/// request), so a request never overtakes the descriptor it attaches.
#[derive(Debug)]
pub struct Attached {
    chan: Arc<ipc::AsyncChannel>,
    pid: u32,
    book: Mutex<Book>,
    order: tokio::sync::Mutex<()>,
}

/// Held while a call's descriptors and its request are written. The
/// regions this call attaches are recorded as held by the worker only
/// once [`Order::commit`] says the REQUEST frame carrying `attach = true`
/// was written: dropped uncommitted (the call was cancelled or timed out
/// waiting for ring space, or the write failed), the marks are forgotten
/// and the next call attaches them again.
#[derive(Debug)]
#[must_use = "commit once the request is written, or the attach marks are forgotten"]
pub struct Order<'a> {
    book: &'a Mutex<Book>,
    attached: Vec<u64>,
    _order: tokio::sync::MutexGuard<'a, ()>,
}

impl Order<'_> {
    /// The request naming the regions was written: keep the marks.
    pub fn commit(mut self) {
        self.attached.clear();
    }
}

impl Drop for Order<'_> {
    fn drop(&mut self) {
        if !self.attached.is_empty() {
            lock_book(self.book).forget(&self.attached);
        }
    }
}

fn lock_book(m: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Attached {
    /// The regions of the worker `pid` behind `chan`, none held yet.
    pub fn new(chan: Arc<ipc::AsyncChannel>, pid: u32) -> Attached {
        Attached {
            chan,
            pid,
            book: Mutex::new(Book::new(ipc::MAX_PASSED)),
            order: tokio::sync::Mutex::new(()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        lock_book(&self.book)
    }

    /// Ids this worker holds.
    pub fn held(&self) -> usize {
        self.book().len()
    }

    /// Marks `uses` (the request's `regions`), detaches what the cap
    /// pushes out and sends the descriptors to attach; the request must
    /// be written while the returned guard is held, and the guard
    /// committed once it is ([`Order`]).
    pub async fn prepare(&self, held: &Held, uses: &mut [RegionUse]) -> Result<Order<'_>, Error> {
        let order = self.order.lock().await;
        let evicted = self.book().mark(uses)?;
        let order = Order {
            book: &self.book,
            attached: uses.iter().filter(|u| u.attach).map(|u| u.id).collect(),
            _order: order,
        };
        if !evicted.is_empty() {
            tracing::debug!(
                pid = self.pid,
                ?evicted,
                "detaching the least recently used regions"
            );
            detach_now(&self.chan, self.pid, evicted).await;
        }
        for u in uses.iter().filter(|u| u.attach) {
            let Some(h) = held.regions.iter().find(|h| h.0.id == u.id) else {
                continue;
            };
            if let Err(e) = self.chan.send_fd(u.id, h.0.fd()).await {
                // Dropping `order` forgets this call's marks.
                return Err(Error::Unavailable(format!(
                    "passing shared-memory region {} to the worker (pid {}): {e}",
                    super::names::shown(&u.name),
                    self.pid
                )));
            }
        }
        Ok(order)
    }

    /// Forgets `ids` and, for those it held, tells the worker to close
    /// them (in the background, in order with this worker's requests).
    fn detach(self: Arc<Self>, ids: &[u64]) {
        let gone = self.book().forget(ids);
        if gone.is_empty() || self.chan.failure().is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _order = self.order.lock().await;
            detach_now(&self.chan, self.pid, gone).await;
        });
    }
}

/// Writes a `RegionDetach` request for `ids`; its answer is awaited in
/// the background.
async fn detach_now(chan: &Arc<ipc::AsyncChannel>, pid: u32, ids: Vec<u64>) {
    let req = WorkerRequest {
        request_tag: "region-detach".into(),
        body: Some(worker_request::Body::RegionDetach(RegionDetach { ids })),
        ..Default::default()
    };
    match chan.request(&req.encode_to_vec()).await {
        Ok(mut answers) => {
            tokio::spawn(async move {
                match tokio::time::timeout(DETACH_ANSWER, answers.next()).await {
                    Ok(Some(Ok(_))) => tracing::debug!(pid, "regions detached"),
                    other => tracing::debug!(pid, ?other, "no answer to a region detach"),
                }
            });
        }
        Err(e) => tracing::debug!(pid, "region detach not sent: {e}"),
    }
}

/// Every live worker process that may hold descriptors.
#[derive(Debug, Default)]
pub struct Holders(Mutex<Vec<Weak<Attached>>>);

impl Holders {
    /// Records a new worker process's regions.
    pub fn add(&self, a: &Arc<Attached>) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(a));
    }

    /// Detaches `ids` from every live worker that holds one of them.
    pub fn detach(&self, ids: &[u64]) {
        let live: Vec<Arc<Attached>> = {
            let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|w| w.strong_count() > 0);
            all.iter().filter_map(Weak::upgrade).collect()
        };
        for a in live {
            a.detach(ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(ids: &[u64]) -> Vec<RegionUse> {
        ids.iter()
            .map(|&id| RegionUse {
                id,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_worker_attaches_each_region_once() {
        let mut b = Book::new(4);
        let mut u = uses(&[1, 2]);
        assert!(b.mark(&mut u).expect("room").is_empty());
        assert!(u.iter().all(|u| u.attach));
        let mut u = uses(&[2, 3]);
        b.mark(&mut u).expect("room");
        assert_eq!(
            u.iter().map(|u| u.attach).collect::<Vec<_>>(),
            [false, true]
        );
        // A new worker process is a new book: everything attaches again.
        let mut fresh = Book::new(4);
        let mut u = uses(&[2, 3]);
        fresh.mark(&mut u).expect("room");
        assert!(u.iter().all(|u| u.attach));
    }

    #[test]
    fn past_the_cap_the_least_recently_used_go_first() {
        let mut b = Book::new(3);
        for id in [1, 2, 3] {
            b.mark(&mut uses(&[id])).expect("room");
        }
        b.mark(&mut uses(&[1])).expect("room"); // 1 is recent again
        let evicted = b.mark(&mut uses(&[4, 5])).expect("room");
        assert_eq!(evicted, [2, 3]);
        assert_eq!(b.len(), 3);
        let mut again = uses(&[2]);
        assert_eq!(b.mark(&mut again).expect("room"), [1]);
        assert!(again[0].attach, "an evicted region attaches again");
        let Err(Error::ResourceExhausted(m)) = b.mark(&mut uses(&[7, 8, 9, 10])) else {
            panic!("more regions than a worker holds accepted");
        };
        assert!(m.contains("names 4") && m.contains("at most 3"), "{m}");
    }

    #[test]
    fn an_uncommitted_attach_is_rolled_back() {
        let book = Mutex::new(Book::new(8));
        let lock = tokio::sync::Mutex::new(());
        let order = |attached: Vec<u64>| {
            let g = lock.try_lock().expect("free");
            Order {
                book: &book,
                attached,
                _order: g,
            }
        };
        // Region 1 held already; the call attaches 2 and 3, then its
        // request is never written (cancelled waiting for ring space).
        lock_book(&book).mark(&mut uses(&[1])).expect("room");
        let mut u = uses(&[1, 2, 3]);
        lock_book(&book).mark(&mut u).expect("room");
        assert_eq!(
            u.iter().map(|u| u.attach).collect::<Vec<_>>(),
            [false, true, true]
        );
        drop(order(vec![2, 3]));
        assert_eq!(lock_book(&book).len(), 1, "only region 1 stays held");
        let mut again = uses(&[1, 2, 3]);
        lock_book(&book).mark(&mut again).expect("room");
        assert_eq!(
            again.iter().map(|u| u.attach).collect::<Vec<_>>(),
            [false, true, true],
            "the next call attaches 2 and 3 again"
        );
        // Committed: the request was written, the marks stay.
        order(vec![2, 3]).commit();
        assert_eq!(lock_book(&book).len(), 3);
        let mut later = uses(&[2, 3]);
        lock_book(&book).mark(&mut later).expect("room");
        assert!(later.iter().all(|u| !u.attach), "held: no attach");
    }

    #[test]
    fn forgetting_returns_only_what_was_held() {
        let mut b = Book::new(8);
        b.mark(&mut uses(&[1, 2])).expect("room");
        assert_eq!(b.forget(&[2, 9]), [2]);
        assert_eq!(b.forget(&[2]), Vec::<u64>::new());
        assert_eq!(b.len(), 1);
    }
}
