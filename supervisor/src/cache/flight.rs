//! Identical calls in flight answered once (Go's `singleflight`): the
//! first call with a key leads (its execution runs in a task of its own,
//! so it outlives the caller that started it while others wait), later
//! ones follow and wait for its answer, each within its own deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::watch;

use super::Key;

/// The calls in flight others may wait for, by key; at most `max`.
#[derive(Debug)]
pub struct Flights<T> {
    map: Mutex<HashMap<Key, Arc<watch::Sender<Option<T>>>>>,
    max: usize,
}

/// What a call with a key does.
#[derive(Debug)]
pub enum Join<T> {
    /// It runs the execution, and publishes its answer.
    Lead(Publisher<T>),
    /// It waits for the identical call in flight.
    Follow(watch::Receiver<Option<T>>),
    /// Too many flights: it runs on its own.
    Full,
}

/// The leader's end: publishes the answer to every follower.
#[derive(Debug)]
pub struct Publisher<T> {
    flights: Arc<Flights<T>>,
    key: Key,
    tx: Arc<watch::Sender<Option<T>>>,
}

/// Why a wait ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The waiter's deadline passed.
    Deadline,
    /// The execution ended without an answer (its task was dropped).
    Abandoned,
}

impl<T: Clone> Flights<T> {
    /// At most `max` flights at once.
    pub fn new(max: usize) -> Flights<T> {
        Flights {
            map: Mutex::default(),
            max,
        }
    }

    /// Flights now.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Leads the flight of `key`, or follows the one in flight (at most
    /// `max_followers` wait for one flight; past it, and past `max`
    /// flights, a call runs on its own). A flight that is ending (its
    /// answer given, or nobody waiting any more: its execution stops) is
    /// no flight: the call leads a new one.
    pub fn join(self: &Arc<Self>, key: Key, max_followers: usize) -> Join<T> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(&key) {
            let ending = tx.receiver_count() == 0 || tx.borrow().is_some();
            if !ending {
                // The leader's own caller holds one receiver.
                if tx.receiver_count() > max_followers {
                    return Join::Full;
                }
                return Join::Follow(tx.subscribe());
            }
            map.remove(&key);
        }
        if map.len() >= self.max {
            return Join::Full;
        }
        // The map holds the sender, not a receiver: once every waiter has
        // left, `closed` tells the execution nobody wants its answer.
        let tx = Arc::new(watch::Sender::new(None));
        map.insert(key, tx.clone());
        Join::Lead(Publisher {
            flights: self.clone(),
            key,
            tx,
        })
    }
}

impl<T: Clone> Publisher<T> {
    /// A receiver for the leader's own caller.
    pub fn subscribe(&self) -> watch::Receiver<Option<T>> {
        self.tx.subscribe()
    }

    /// Resolves once nobody waits for the answer any more.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Gives the answer to every waiter; the key is free again.
    pub fn publish(self, answer: T) {
        self.tx.send_replace(Some(answer));
        // Drop removes the key.
    }
}

impl<T> Drop for Publisher<T> {
    fn drop(&mut self) {
        let mut map = self
            .flights
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.key)
            .is_some_and(|tx| Arc::ptr_eq(tx, &self.tx))
        {
            map.remove(&self.key);
        }
    }
}

/// Waits for the answer until `deadline`.
pub async fn wait<T: Clone>(
    mut rx: watch::Receiver<Option<T>>,
    deadline: Instant,
) -> Result<T, Waited> {
    let answer = tokio::time::timeout_at(deadline.into(), rx.wait_for(Option::is_some)).await;
    match answer {
        Err(_) => Err(Waited::Deadline),
        Ok(Err(_)) => Err(Waited::Abandoned),
        Ok(Ok(v)) => v.clone().ok_or(Waited::Abandoned),
    }
}

/// How many times a follower whose flight ended with an answer that was
/// the leader's own (its deadline, its class's refusal) leads or follows
/// a new flight before it runs on its own.
pub const TAKEOVERS: usize = 2;

/// What a call with a flight `key` got: the answer of the execution it led
/// or followed, or of its own. `run` starts this caller's own execution
/// (its deadline, its metadata; an error it gives must not name this
/// caller: the others may see it). `shared` tells whether an error is the
/// same for every caller (a follower takes it); any other (the leader's
/// deadline, its refusal by the queue) makes a follower whose deadline has
/// not passed try again: it leads a new flight or follows one, at most
/// [`TAKEOVERS`] times, then runs on its own. `followed`: called each time
/// the caller waits for another's execution.
pub async fn through<V, E, F, Fut>(
    flights: &Arc<Flights<Result<V, E>>>,
    key: Key,
    deadline: Instant,
    max_followers: usize,
    run: F,
    shared: impl Fn(&E) -> bool,
    followed: impl Fn(),
) -> Result<Result<V, E>, Waited>
where
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<V, E>> + Send + 'static,
{
    for _ in 0..=TAKEOVERS {
        let rx = match flights.join(key, max_followers) {
            Join::Full => break,
            Join::Lead(publisher) => {
                let rx = publisher.subscribe();
                let execution = run();
                // In a task of its own: the leader's caller leaving does
                // not cancel it for the others; it stops once nobody waits.
                // It keeps the leader's call scope, so that its metrics
                // (the queue's wait) name the method.
                let scope = crate::metrics::call_scope();
                tokio::spawn(crate::metrics::within(scope, async move {
                    tokio::select! {
                        answer = execution => publisher.publish(answer),
                        () = publisher.closed() => {}
                    }
                }));
                // The leader's answer is its own, whatever it is.
                match wait(rx, deadline).await {
                    Err(Waited::Abandoned) => continue,
                    other => return other,
                }
            }
            Join::Follow(rx) => {
                followed();
                rx
            }
        };
        match wait(rx, deadline).await {
            Ok(Ok(v)) => return Ok(Ok(v)),
            Ok(Err(e)) if shared(&e) => return Ok(Err(e)),
            Err(Waited::Deadline) => return Err(Waited::Deadline),
            // The leader's own fate, or a flight that ended unanswered.
            Ok(Err(_)) | Err(Waited::Abandoned) => {}
        }
        if Instant::now() >= deadline {
            return Err(Waited::Deadline);
        }
    }
    Ok(run().await)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    /// Runs `run` once for `n` concurrent callers of one key, as the
    /// pipeline does: the leader's execution in a task of its own.
    async fn call(
        flights: &Arc<Flights<Result<u32, String>>>,
        runs: &Arc<AtomicUsize>,
        deadline: Instant,
        answer: Result<u32, String>,
        took: Duration,
    ) -> Result<Result<u32, String>, Waited> {
        let rx = match flights.join(key(1), 64) {
            Join::Follow(rx) => rx,
            Join::Full => panic!("room for one"),
            Join::Lead(p) => {
                let rx = p.subscribe();
                let runs = runs.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(took) => {
                            runs.fetch_add(1, Ordering::SeqCst);
                            p.publish(answer);
                        }
                        () = p.closed() => {}
                    }
                });
                rx
            }
        };
        wait(rx, deadline).await
    }

    #[tokio::test]
    async fn one_execution_answers_all_and_a_late_waiter_leaves_alone() {
        let flights = Arc::new(Flights::new(8));
        let runs = Arc::new(AtomicUsize::new(0));
        let far = Instant::now() + Duration::from_secs(10);
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (f, r) = (flights.clone(), runs.clone());
            // Caller 3's deadline passes before the answer.
            let deadline = if i == 3 {
                Instant::now() + Duration::from_millis(50)
            } else {
                far
            };
            tasks.push(tokio::spawn(async move {
                call(&f, &r, deadline, Ok(7), Duration::from_millis(300)).await
            }));
            tokio::task::yield_now().await;
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("joined"));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one execution");
        assert_eq!(answers[3], Err(Waited::Deadline));
        let ok = answers.iter().filter(|a| **a == Ok(Ok(7))).count();
        assert_eq!(ok, 15, "{answers:?}");
        assert!(flights.is_empty(), "the key is free again");
    }

    #[tokio::test]
    async fn a_failure_goes_to_all_and_the_leader_leaving_cancels_nothing() {
        let flights = Arc::new(Flights::new(8));
        let runs = Arc::new(AtomicUsize::new(0));
        let far = Instant::now() + Duration::from_secs(10);
        let (f, r) = (flights.clone(), runs.clone());
        // The leader's caller leaves after 50 ms; the execution takes 300.
        let leader = tokio::spawn(async move {
            let soon = Instant::now() + Duration::from_millis(50);
            call(
                &f,
                &r,
                soon,
                Err("refused".into()),
                Duration::from_millis(300),
            )
            .await
        });
        tokio::task::yield_now().await;
        while flights.is_empty() {
            tokio::task::yield_now().await;
        }
        let mut followers = Vec::new();
        for _ in 0..2 {
            let (f, r) = (flights.clone(), runs.clone());
            followers.push(tokio::spawn(async move {
                call(&f, &r, far, Ok(1), Duration::from_millis(1)).await
            }));
        }
        assert_eq!(leader.await.expect("joined"), Err(Waited::Deadline));
        for f in followers {
            assert_eq!(f.await.expect("joined"), Ok(Err("refused".to_owned())));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_execution_nobody_waits_for_stops_and_the_map_is_bounded() {
        let flights: Arc<Flights<Result<u32, String>>> = Arc::new(Flights::new(2));
        let runs = Arc::new(AtomicUsize::new(0));
        let gone = call(
            &flights,
            &runs,
            Instant::now(),
            Ok(1),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(gone, Err(Waited::Deadline));
        // Its task sees nobody waits and ends without running.
        let start = Instant::now();
        while !flights.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "the flight ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        let a = flights.join(key(1), 2);
        let _b = flights.join(key(2), 2);
        assert!(matches!(flights.join(key(3), 2), Join::Full));
        let Join::Lead(a) = a else { panic!("leads") };
        let _leader = a.subscribe();
        // Two followers, then the third runs on its own.
        let f1 = flights.join(key(1), 2);
        let f2 = flights.join(key(1), 2);
        assert!(matches!(f1, Join::Follow(_)) && matches!(f2, Join::Follow(_)));
        assert!(matches!(flights.join(key(1), 2), Join::Full), "bounded");
    }

    #[tokio::test]
    async fn a_flight_nobody_waits_for_any_more_is_not_joined() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::new(8));
        let Join::Lead(old) = flights.join(key(1), 8) else {
            panic!("leads")
        };
        // Its caller left: `closed` has resolved, the task has not yet
        // dropped its publisher.
        drop(old.subscribe());
        old.closed().await;
        let Join::Lead(new) = flights.join(key(1), 8) else {
            panic!("an ending flight is no flight: the call leads a new one")
        };
        let rx = new.subscribe();
        drop(old);
        assert_eq!(flights.len(), 1, "the old publisher leaves the new flight");
        new.publish(5);
        assert_eq!(
            wait(rx, Instant::now() + Duration::from_secs(1)).await,
            Ok(5)
        );
        assert!(flights.is_empty());
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Fate {
        /// The same for every caller.
        Bad,
        /// The leader's own (its deadline).
        Late,
    }

    /// One caller through [`through`]: its execution takes `took`, then
    /// answers `answer`.
    async fn caller(
        flights: Arc<Flights<Result<u32, Fate>>>,
        runs: Arc<AtomicUsize>,
        deadline: Instant,
        took: Duration,
        answer: Result<u32, Fate>,
    ) -> Result<Result<u32, Fate>, Waited> {
        let run = || {
            let (runs, answer) = (runs.clone(), answer.clone());
            async move {
                tokio::time::sleep(took).await;
                runs.fetch_add(1, Ordering::SeqCst);
                answer
            }
        };
        through(
            &flights,
            key(1),
            deadline,
            8,
            run,
            |e| *e == Fate::Bad,
            || {},
        )
        .await
    }

    #[tokio::test]
    async fn a_follower_runs_the_call_itself_when_the_leaders_fate_is_its_own() {
        let flights = Arc::new(Flights::new(8));
        let runs = Arc::new(AtomicUsize::new(0));
        let far = Instant::now() + Duration::from_secs(10);
        // The leader's execution ends in its own deadline after 100 ms.
        let leader = tokio::spawn(caller(
            flights.clone(),
            runs.clone(),
            far,
            Duration::from_millis(100),
            Err(Fate::Late),
        ));
        while flights.is_empty() {
            tokio::task::yield_now().await;
        }
        let follower = tokio::spawn(caller(
            flights.clone(),
            runs.clone(),
            far,
            Duration::from_millis(10),
            Ok(3),
        ));
        assert_eq!(leader.await.expect("joined"), Ok(Err(Fate::Late)));
        assert_eq!(follower.await.expect("joined"), Ok(Ok(3)), "its own answer");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // A failure the same for all is shared: one execution.
        let leader = tokio::spawn(caller(
            flights.clone(),
            runs.clone(),
            far,
            Duration::from_millis(100),
            Err(Fate::Bad),
        ));
        while flights.is_empty() {
            tokio::task::yield_now().await;
        }
        let follower = tokio::spawn(caller(
            flights.clone(),
            runs.clone(),
            far,
            Duration::from_millis(10),
            Ok(3),
        ));
        assert_eq!(leader.await.expect("joined"), Ok(Err(Fate::Bad)));
        assert_eq!(follower.await.expect("joined"), Ok(Err(Fate::Bad)));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
