//! A model's execution slots and the queue in front of them: a call takes
//! a slot at once when one is free and nobody waits, else waits in the
//! [`Drr`] order until a slot is handed to it, its deadline passes or its
//! caller leaves (a dropped wait leaves the queue, and a slot handed to a
//! caller that just left is passed on).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use super::drr::{Drr, Full, Key};

/// Why a call got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A queue bound.
    Full(Full),
    /// The deadline passed while it waited.
    Deadline,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    running: usize,
    queue: Drr<oneshot::Sender<()>>,
}

impl Inner {
    /// Hands free slots to waiting calls, in order.
    fn dispatch(&mut self) {
        while self.running < self.capacity {
            let Some((_, tx)) = self.queue.pop() else {
                return;
            };
            // A waiter only drops its receiver under the lock, after
            // taking itself out of the queue: the send cannot fail, but
            // a failure would only mean the slot stays free.
            if tx.send(()).is_ok() {
                self.running += 1;
            }
        }
    }
}

/// One model's slots and queue.
#[derive(Debug)]
pub struct Gate {
    inner: Mutex<Inner>,
    /// Calls running plus waiting, for `idle`.
    busy: watch::Sender<usize>,
}

impl Gate {
    /// `capacity` slots; classes as (weight, bound); `total_bound` waiting
    /// calls over all classes.
    pub fn new(capacity: usize, classes: &[(u32, usize)], total_bound: usize) -> Gate {
        Gate {
            inner: Mutex::new(Inner {
                capacity: capacity.max(1),
                running: 0,
                queue: Drr::new(classes, total_bound),
            }),
            busy: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, inner: &Inner) {
        self.busy.send_replace(inner.running + inner.queue.len());
    }

    /// Waits for a slot, in the queue of `class` at `rank`, until
    /// `deadline`.
    pub async fn enter(
        self: &Arc<Self>,
        class: usize,
        rank: u8,
        deadline: Instant,
    ) -> Result<Permit, Refused> {
        let (key, rx) = {
            let mut inner = self.lock();
            if inner.running < inner.capacity && inner.queue.is_empty() {
                inner.running += 1;
                self.publish(&inner);
                return Ok(Permit { gate: self.clone() });
            }
            let (tx, rx) = oneshot::channel();
            let key = inner.queue.push(class, rank, tx).map_err(Refused::Full)?;
            self.publish(&inner);
            (key, rx)
        };
        let mut waiter = Waiter {
            gate: self.clone(),
            key,
            rx: Some(rx),
        };
        let rx = waiter.rx.as_mut().expect("set above");
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(())) => {
                waiter.rx = None;
                Ok(Permit { gate: self.clone() })
            }
            // The sender is only dropped by the queue being dropped,
            // which the gate never does while a waiter holds it.
            Ok(Err(_)) | Err(_) => Err(Refused::Deadline),
        }
    }

    /// Slots in use.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Calls waiting.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Calls of `class` waiting.
    pub fn class_queued(&self, class: usize) -> usize {
        self.lock().queue.class_len(class)
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Calls running or waiting.
    pub fn busy(&self) -> bool {
        *self.busy.borrow() > 0
    }

    /// Waits until no call runs or waits, at most until `deadline`; true
    /// when none does.
    pub async fn idle(&self, deadline: Instant) -> bool {
        let mut rx = self.busy.subscribe();
        tokio::time::timeout_at(deadline.into(), rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A call waiting for a slot; dropped, it leaves the queue (or passes on
/// the slot it was just handed).
#[derive(Debug)]
struct Waiter {
    gate: Arc<Gate>,
    key: Key,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut inner = self.gate.lock();
        if inner.queue.remove(self.key).is_none() && rx.try_recv().is_ok() {
            // Handed a slot it will not use.
            inner.running -= 1;
            inner.dispatch();
        }
        drop(rx);
        self.gate.publish(&inner);
    }
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut inner = self.gate.lock();
        inner.running -= 1;
        inner.dispatch();
        self.gate.publish(&inner);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn waiters_whose_deadline_passes_or_who_leave_free_their_place() {
        let gate = Arc::new(Gate::new(1, &[(1, 2), (1, 2)], 3));
        let held = gate.enter(0, 1, soon(1000)).await.expect("a free slot");
        // The deadline passes in the queue.
        let late = gate.enter(0, 1, soon(50)).await;
        assert_eq!(late.err(), Some(Refused::Deadline));
        assert_eq!((gate.queued(), gate.running()), (0, 1));
        // A caller that leaves (its future dropped) leaves the queue.
        let g = gate.clone();
        let task = tokio::spawn(async move { g.enter(1, 1, soon(60_000)).await });
        while gate.queued() == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        assert_eq!((gate.queued(), gate.running()), (0, 1));
        // The bounds: class 0 holds 2, the third is refused by name.
        let g1 = gate.clone();
        let g2 = gate.clone();
        let a = tokio::spawn(async move { g1.enter(0, 1, soon(60_000)).await.map(|_| ()) });
        let b = tokio::spawn(async move { g2.enter(0, 1, soon(60_000)).await.map(|_| ()) });
        while gate.queued() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            gate.enter(0, 1, soon(1000)).await.err(),
            Some(Refused::Full(Full::Class { class: 0, bound: 2 }))
        );
        let c = gate.clone();
        let g3 = tokio::spawn(async move { c.enter(1, 1, soon(60_000)).await.map(|_| ()) });
        while gate.queued() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            gate.enter(1, 1, soon(1000)).await.err(),
            Some(Refused::Full(Full::Total { bound: 3 }))
        );
        // Freeing the slot serves every waiter in turn, and nothing leaks.
        drop(held);
        for t in [a, b, g3] {
            t.await.expect("task").expect("served");
        }
        assert_eq!((gate.queued(), gate.running()), (0, 0));
        assert!(!gate.busy());
        assert!(gate.idle(soon(10)).await);
    }

    #[tokio::test]
    async fn a_slot_handed_to_a_caller_that_left_is_passed_on() {
        let gate = Arc::new(Gate::new(1, &[(1, 8)], 8));
        let held = gate.enter(0, 1, soon(1000)).await.expect("free");
        // A waiter handed the slot and dropped before it looked.
        let (key, rx) = {
            let mut inner = gate.lock();
            let (tx, rx) = oneshot::channel();
            (inner.queue.push(0, 1, tx).expect("room"), rx)
        };
        let g = gate.clone();
        let next = tokio::spawn(async move { g.enter(0, 1, soon(60_000)).await.map(|_| ()) });
        while gate.queued() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert_eq!(gate.running(), 1, "handed to the first waiter");
        drop(Waiter {
            gate: gate.clone(),
            key,
            rx: Some(rx),
        });
        next.await.expect("task").expect("the slot was passed on");
        assert_eq!((gate.queued(), gate.running()), (0, 0));
    }

    #[tokio::test]
    async fn idle_waits_for_calls_to_end() {
        let gate = Arc::new(Gate::new(2, &[(1, 8)], 8));
        let p = gate.enter(0, 1, soon(1000)).await.expect("free");
        assert!(gate.busy());
        assert!(!gate.idle(soon(20)).await);
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.idle(soon(5000)).await });
        drop(p);
        assert!(waiting.await.expect("task"));
    }
}
