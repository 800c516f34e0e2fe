//! `Guard::admit` over fake tenants: no processes and no models, just the
//! decisions and the order in which they are carried out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Done, Guard, ModelMemory, SharedMemory, Tenant, Tenants, View, lock};
use crate::config::{Config, ModelSpec};
use crate::error::Error;
use crate::lifecycle::{KillReason, State};

const MIB: u64 = 1 << 20;

/// What a fake model does when it is told to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnEvict {
    /// Goes at once.
    Go,
    /// Waits until the test says so.
    WaitForTest,
    /// Its actor is itself in the middle of an admission (as an actor that
    /// died and is being respawned is): it reads the eviction only after
    /// that admission is over.
    AdmitFirst,
}

#[derive(Debug)]
struct Fake {
    spec: ModelSpec,
    state: Mutex<State>,
    memory: SharedMemory,
    busy: bool,
    last_used: i64,
    on_evict: OnEvict,
    evictions: AtomicUsize,
    release: Notify,
    guard: OnceLock<Arc<Guard>>,
}

impl Fake {
    fn new(id: &str, footprint_mib: u64, state: State) -> Fake {
        let spec: ModelSpec = toml::from_str(&format!(
            "id = {id:?}\nfamily = \"text\"\npath = \"{id}.gguf\""
        ))
        .expect("spec");
        Fake {
            spec,
            state: Mutex::new(state),
            memory: Arc::new(Mutex::new(ModelMemory {
                estimate: footprint_mib * MIB,
                admitted: state == State::Ready,
                ..Default::default()
            })),
            busy: false,
            last_used: 0,
            on_evict: OnEvict::Go,
            evictions: AtomicUsize::new(0),
            release: Notify::new(),
            guard: OnceLock::new(),
        }
    }

    fn admitted(&self) -> bool {
        lock(&self.memory).admitted
    }
}

impl Tenant for Fake {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn view(&self) -> View {
        View {
            state: *self.state.lock().expect("state"),
            pid: 0,
            loaded_unix_ms: 0,
            reported_gpu: Vec::new(),
        }
    }

    fn figures(&self) -> &SharedMemory {
        &self.memory
    }

    fn busy(&self) -> bool {
        self.busy
    }

    fn last_used_ms(&self) -> i64 {
        self.last_used
    }

    fn kill(&self, _pid: u32, _reason: KillReason, _note: String) -> Done<'_> {
        Box::pin(async {})
    }

    fn evict(&self, _note: String) -> Done<'_> {
        Box::pin(async move {
            match self.on_evict {
                OnEvict::Go => {}
                OnEvict::WaitForTest => self.release.notified().await,
                OnEvict::AdmitFirst => {
                    let guard = self.guard.get().expect("guard").clone();
                    // Whatever the answer, only then is the command read.
                    let _ = guard.admit("unrelated", &Arc::default()).await;
                }
            }
            *self.state.lock().expect("state") = State::Idle;
            lock(&self.memory).admitted = false;
            self.evictions.fetch_add(1, Ordering::SeqCst);
        })
    }
}

#[derive(Debug, Default)]
struct Fakes {
    fakes: Vec<Arc<Fake>>,
    /// Listing takes a while: two admissions deciding at once would
    /// overlap inside it.
    slow: bool,
}

impl Tenants for Fakes {
    fn tenants(&self) -> Vec<Arc<dyn Tenant>> {
        if self.slow {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.fakes
            .iter()
            .map(|f| f.clone() as Arc<dyn Tenant>)
            .collect()
    }
}

/// A guard with room for `limit_mib` over `fakes`, no reserve: the room is
/// the smaller of the limit and the host's free memory, so the host must
/// have well over the limit free for the limit to decide.
fn guard(limit_mib: u64, fakes: &[Arc<Fake>]) -> Arc<Guard> {
    guard_over(limit_mib, fakes, false)
}

fn guard_over(limit_mib: u64, fakes: &[Arc<Fake>], slow: bool) -> Arc<Guard> {
    let free = super::host::sample().free();
    assert!(
        free > 4 * limit_mib * MIB,
        "these tests need over {} MiB of free host memory; {} is free",
        4 * limit_mib,
        free / MIB
    );
    let mut config = Config::default();
    config.memory.limit = limit_mib * MIB;
    config.memory.host_reserve = 0;
    let tenants = Fakes {
        fakes: fakes.to_vec(),
        slow,
    };
    let g = Guard::with_gpus(Arc::new(config), Arc::new(tenants), None);
    for f in fakes {
        let _ = f.guard.set(g.clone());
    }
    g
}

/// Within this, an admission that is not stuck has long finished.
const PATIENCE: Duration = Duration::from_secs(10);

async fn admit(g: &Guard, f: &Fake) -> Result<(), Error> {
    tokio::time::timeout(PATIENCE, g.admit(&f.spec.id, &f.memory))
        .await
        .expect("admission stuck")
}

#[tokio::test]
async fn a_model_that_fits_is_admitted_without_unloading_anything() {
    let a = Arc::new(Fake::new("a", 300, State::Ready));
    let b = Arc::new(Fake::new("b", 300, State::Loading));
    let g = guard(1000, &[a.clone(), b.clone()]);
    admit(&g, &b).await.expect("fits");
    assert!(b.admitted());
    assert_eq!(a.evictions.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn idle_unpinned_models_go_least_recently_used_first_and_only_as_many_as_needed() {
    let mut old = Fake::new("old", 400, State::Ready);
    old.last_used = 10;
    let mut newer = Fake::new("newer", 400, State::Ready);
    newer.last_used = 20;
    let mut pinned = Fake::new("pinned", 100, State::Ready);
    pinned.spec.pinned = true;
    let (old, newer, pinned) = (Arc::new(old), Arc::new(newer), Arc::new(pinned));
    let b = Arc::new(Fake::new("b", 400, State::Loading));
    let g = guard(
        1000,
        &[old.clone(), newer.clone(), pinned.clone(), b.clone()],
    );
    // 900 held, 100 free: unloading the least recently used makes 500.
    admit(&g, &b).await.expect("admitted after one unload");
    assert_eq!(old.evictions.load(Ordering::SeqCst), 1);
    assert_eq!(newer.evictions.load(Ordering::SeqCst), 0);
    assert_eq!(pinned.evictions.load(Ordering::SeqCst), 0);
    assert!(b.admitted() && !old.admitted());
    assert!(
        !lock(&old.memory).evicting,
        "the mark is cleared once it is gone"
    );
}

#[tokio::test]
async fn nothing_that_may_go_is_a_refusal_with_the_numbers() {
    let mut busy = Fake::new("busy", 500, State::Ready);
    busy.busy = true;
    let mut pinned = Fake::new("pinned", 400, State::Ready);
    pinned.spec.pinned = true;
    let (busy, pinned) = (Arc::new(busy), Arc::new(pinned));
    let b = Arc::new(Fake::new("b", 300, State::Loading));
    let g = guard(1000, &[busy.clone(), pinned.clone(), b.clone()]);
    let err = admit(&g, &b).await.expect_err("no room");
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("needs 300.0 MiB") && msg.contains("900.0 MiB held by other models"),
        "{msg}"
    );
    assert!(!b.admitted());
    assert_eq!(busy.evictions.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admissions_never_count_the_same_room_twice() {
    for _ in 0..10 {
        let b = Arc::new(Fake::new("b", 600, State::Loading));
        let c = Arc::new(Fake::new("c", 600, State::Loading));
        let g = guard_over(1000, &[b.clone(), c.clone()], true);
        let one = tokio::spawn({
            let (g, b) = (g.clone(), b.clone());
            async move { admit(&g, &b).await }
        });
        let other = tokio::spawn({
            let (g, c) = (g.clone(), c.clone());
            async move { admit(&g, &c).await }
        });
        let (rb, rc) = (one.await.expect("join"), other.await.expect("join"));
        assert!(
            rb.is_ok() != rc.is_ok(),
            "exactly one of two 600 MiB loads fits in 1000 MiB: {rb:?} {rc:?}"
        );
        assert_eq!(b.admitted(), rb.is_ok());
        assert_eq!(c.admitted(), rc.is_ok());
    }
}

/// b's admission unloads a 600 MiB victim that takes its time to go;
/// meanwhile c (of `c_mib`) asks for room. Returns c's answer.
async fn while_a_victim_goes(c_mib: u64) -> (Result<(), Error>, Arc<Fake>, Arc<Fake>) {
    let mut victim = Fake::new("victim", 600, State::Ready);
    victim.on_evict = OnEvict::WaitForTest;
    let victim = Arc::new(victim);
    let b = Arc::new(Fake::new("b", 500, State::Loading));
    let c = Arc::new(Fake::new("c", c_mib, State::Loading));
    let g = guard(1000, &[victim.clone(), b.clone(), c.clone()]);
    let first = tokio::spawn({
        let (g, b) = (g.clone(), b.clone());
        async move { admit(&g, &b).await }
    });
    tokio::time::timeout(PATIENCE, async {
        while !lock(&victim.memory).evicting {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("b's admission picks the victim");
    let second = tokio::spawn({
        let (g, c) = (g.clone(), c.clone());
        async move { admit(&g, &c).await }
    });
    // c's admission cannot be answered while the victim still holds the
    // room: it is neither admitted nor refused, and picks no other victim.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!second.is_finished() && !c.admitted());
    victim.release.notify_one();
    first.await.expect("join").expect("b admitted");
    let answer = second.await.expect("join");
    assert_eq!(victim.evictions.load(Ordering::SeqCst), 1, "unloaded once");
    assert!(b.admitted());
    (answer, c, victim)
}

#[tokio::test]
async fn a_load_waits_for_a_model_being_unloaded_and_fits_once_it_is_gone() {
    let (answer, c, _) = while_a_victim_goes(500).await;
    answer.expect("500 + 500 fit in 1000 once the victim is gone");
    assert!(c.admitted());
}

#[tokio::test]
async fn a_load_that_does_not_fit_even_after_an_unload_in_progress_is_refused_then() {
    let (answer, c, victim) = while_a_victim_goes(600).await;
    let err = answer.expect_err("500 + 600 do not fit in 1000");
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    assert!(!c.admitted() && !victim.admitted());
}

#[tokio::test]
async fn an_admission_waiting_for_an_eviction_blocks_no_other_admission() {
    // The victim's actor reads the eviction only after an admission of
    // its own: with the decision lock held across the eviction, this
    // deadlocks (and `admit` below times out).
    let mut victim = Fake::new("victim", 600, State::Ready);
    victim.on_evict = OnEvict::AdmitFirst;
    let victim = Arc::new(victim);
    let b = Arc::new(Fake::new("b", 500, State::Loading));
    let small = Arc::new(Fake::new("small", 100, State::Loading));
    let g = guard(1000, &[victim.clone(), b.clone(), small.clone()]);
    admit(&g, &b)
        .await
        .expect("b admitted after the victim went");
    assert_eq!(victim.evictions.load(Ordering::SeqCst), 1);
    admit(&g, &small).await.expect("small fits beside b");
}

/// A swap's new version is admitted under the id of the version still
/// serving: the serving one's footprint counts, and it is never evicted to
/// make room for its successor (the swap is refused instead).
#[tokio::test]
async fn a_second_version_under_the_same_id_counts_the_first_and_does_not_evict_it() {
    let old = Arc::new(Fake::new("m", 600, State::Ready));
    let new = Arc::new(Fake::new("m", 600, State::Loading));
    let g = guard(1000, &[old.clone(), new.clone()]);
    let r = admit(&g, &new).await;
    assert!(
        matches!(r, Err(Error::ResourceExhausted(_))),
        "600 + 600 MiB admitted in 1000 MiB: {r:?}"
    );
    assert_eq!(
        old.evictions.load(Ordering::SeqCst),
        0,
        "the serving version stays"
    );
}
