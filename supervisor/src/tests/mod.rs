//! The actor's state machine and the guard's admission, end to end inside
//! the supervisor library (a module at the crate's root, above every other,
//! so that no module depends on it and it adds no edge to their graph): a real registry, guard, spawner, channel and
//! kill path, with a fake worker process (`fake`) instead of a model. Each
//! test runs in seconds and needs no model file.

mod fake;
mod hostile;
mod restarting;
mod retry;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar_proto::v1::TokenizeRequest;
use sidecar_proto::worker::{WorkerRequest, worker_request, worker_response};

use crate::config::{Config, ModelSpec};
use crate::error::Error;
use crate::lifecycle::{KillReason, State};
use crate::memory::Guard;
use crate::registry::{Models, Registry};
use crate::shared::Shared;
use crate::store::Store;
use crate::worker::{REFUSED_MEMORY, Spawner, Status, WorkerHandle};

const MIB: u64 = 1 << 20;
/// Within this, anything these tests wait for has long happened.
const PATIENCE: Duration = Duration::from_secs(20);
const MAX_RESTARTS: u32 = 2;

struct Rig {
    _dir: tempfile::TempDir,
    registry: Registry,
}

/// A registry whose workers are the fake, with `limit_mib` for models.
fn rig(limit_mib: u64) -> Rig {
    rig_with(limit_mib, |_| {})
}

/// [`rig`], with `tune` applied to the config. Heartbeats may be missed
/// for 30 s (a loaded machine can starve a worker for a while): only the
/// test of a silent worker shortens it.
fn rig_with(limit_mib: u64, tune: impl FnOnce(&mut Config)) -> Rig {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::fs::create_dir_all(&store).expect("store dir");
    std::fs::write(store.join("m.gguf"), b"not read by the fake").expect("model file");
    let exe = std::env::current_exe().expect("test binary");
    let script = bin.join("worker-text");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{}=1 exec '{}' --exact {} --ignored --nocapture --test-threads=1 -q\n",
            fake::ENV,
            exe.display(),
            fake::ENTRY
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut config = Config {
        worker_dir: Some(bin),
        model_store: store.clone(),
        ..Config::default()
    };
    config.workers.backoff_initial = Duration::from_millis(20);
    config.workers.backoff_max = Duration::from_millis(100);
    config.workers.max_restarts = MAX_RESTARTS;
    config.workers.heartbeat_timeout = Duration::from_secs(30);
    config.workers.kill_grace = Duration::from_millis(500);
    config.deadlines.load = Duration::from_secs(60);
    config.memory.limit = limit_mib * MIB;
    config.memory.host_reserve = 0;
    tune(&mut config);
    let shared = Shared::new(config);
    let models = Arc::new(Models::default());
    let guard = Guard::new(shared.config.clone(), models.clone());
    let registry = Registry::new(
        models,
        Store::open(&store).expect("store"),
        shared,
        Spawner::start().expect("spawner"),
        tonic_health::server::health_reporter().0,
        guard,
    );
    Rig {
        _dir: dir,
        registry,
    }
}

fn spec(id: &str, estimate_mib: u64, preload: bool) -> ModelSpec {
    toml::from_str(&format!(
        "id = {id:?}\nfamily = \"text\"\npath = \"m.gguf\"\npreload = {preload}\nmemory_estimate = {}",
        estimate_mib * MIB
    ))
    .expect("spec")
}

/// Waits until the model's status satisfies `f`.
async fn wait_for(h: &WorkerHandle, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    let mut h = h.clone();
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            let s = h.status();
            if f(&s) || !h.changed().await {
                return s;
            }
        }
    })
    .await;
    match waited {
        Ok(s) if f(&s) => s,
        _ => panic!("{what}: not within {PATIENCE:?}; status {:?}", h.status()),
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn tokenize(h: &WorkerHandle, text: &str) -> Result<Vec<i32>, Error> {
    tokenize_within(h, text, Instant::now() + PATIENCE).await
}

/// [`tokenize`] with the call's deadline.
async fn tokenize_within(
    h: &WorkerHandle,
    text: &str,
    deadline: Instant,
) -> Result<Vec<i32>, Error> {
    let req = WorkerRequest {
        regions: Default::default(),
        request_tag: "test".into(),
        cache_partition: String::new(),
        deadline_unix_ms: 0,
        body: Some(worker_request::Body::Tokenize(TokenizeRequest {
            model_id: h.spec.id.clone(),
            text: text.into(),
            ..Default::default()
        })),
    };
    let mut call = h.call(req, deadline).await?;
    match call.next().await {
        Some(Ok(r)) => match r.body {
            Some(worker_response::Body::Tokenize(t)) => Ok(t.tokens),
            other => panic!("unexpected answer {other:?}"),
        },
        Some(Err(e)) => Err(e),
        None => panic!("no answer"),
    }
}

/// The state changes the actor logged for `model`, in order.
fn transitions(rig: &Rig, model: &str) -> Vec<String> {
    let (lines, _) = rig.registry.shared().logs.tail(Some(model), 500);
    lines
        .into_iter()
        .filter_map(|l| {
            let t = l.text.strip_prefix("state ")?;
            Some(t.split(',').next()?.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_loads_answers_and_unloads_with_its_worker_gone() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("ok-a", 10, true)).expect("add");
    let s = wait_for(&h, "READY", |s| s.state == State::Ready).await;
    assert!(s.pid != 0 && alive(s.pid));
    assert_eq!(s.worker_version, "fake");
    assert_eq!(tokenize(&h, "hi").await.expect("answer"), [104, 105]);
    rig.registry
        .remove("ok-a", KillReason::Requested)
        .await
        .expect("remove");
    assert_eq!(h.status().state, State::Stopped);
    assert!(!alive(s.pid), "the worker is reaped before unload returns");
    assert_eq!(
        transitions(&rig, "ok-a"),
        [
            "Loading -> Loading",
            "Loading -> Ready",
            "Ready -> Unloading",
            "Unloading -> Stopped"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_crashes_is_respawned_after_its_backoff() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("ok-b", 10, true)).expect("add");
    let first = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    let err = tokenize(&h, "abort").await.expect_err("the worker aborted");
    assert!(
        matches!(&err, Error::WorkerDied { error, .. } if matches!(**error, Error::Unavailable(_))),
        "{err:?}"
    );
    let s = wait_for(&h, "READY again", |s| {
        s.state == State::Ready && s.pid != first
    })
    .await;
    assert_eq!(s.restarts, 1);
    assert_eq!(s.last_kill_reason, Some(KillReason::Crash));
    assert!(s.last_exit.contains("signal 6"), "{}", s.last_exit);
    assert!(!alive(first));
    assert!(transitions(&rig, "ok-b").contains(&"Ready -> Restarting".to_owned()));
    assert_eq!(
        tokenize(&h, "x").await.expect("the new worker answers"),
        [120]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_starts_end_in_failed_once_the_budget_is_spent() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("crash-c", 10, true)).expect("add");
    let s = wait_for(&h, "FAILED", |s| s.state == State::Failed).await;
    assert_eq!(s.restarts, MAX_RESTARTS + 1);
    assert!(s.last_error.contains("restarts within"), "{}", s.last_error);
    let err = tokenize(&h, "x").await.expect_err("FAILED");
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    // Each failed start waited its backoff in RESTARTING.
    let restarting = transitions(&rig, "crash-c")
        .iter()
        .filter(|t| t.ends_with("-> Restarting"))
        .count();
    assert_eq!(restarting, MAX_RESTARTS as usize);
    // A restart gives a fresh budget and tries again.
    h.restart().await.expect("restart");
    wait_for(&h, "LOADING after the restart", |s| {
        s.state != State::Failed
    })
    .await;
    let s = wait_for(&h, "FAILED again", |s| s.state == State::Failed).await;
    assert_eq!(s.restarts, 2 * (MAX_RESTARTS + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_the_worker_refuses_fails_at_once_without_restarts() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("refuse-d", 10, true)).expect("add");
    let s = wait_for(&h, "FAILED", |s| s.state == State::Failed).await;
    assert_eq!(s.restarts, 0);
    assert_eq!(s.last_error_code, 3);
    assert!(
        s.last_error.contains("the fake refuses"),
        "{}",
        s.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_heartbeats_is_killed_as_unhealthy_and_respawned() {
    let rig = rig_with(1000, |c| {
        c.workers.heartbeat_timeout = Duration::from_secs(1)
    });
    let h = rig.registry.add(spec("silent-e", 10, true)).expect("add");
    let first = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    let s = wait_for(&h, "killed as unhealthy", |s| {
        s.last_kill_reason == Some(KillReason::Unhealthy)
    })
    .await;
    assert!(s.restarts >= 1);
    assert!(!alive(first), "the silent worker was killed and reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_during_a_load_stops_the_loading_worker_at_once() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("slow-f", 10, true)).expect("add");
    // The fake never answers the load; the load deadline is a minute.
    let s = wait_for(&h, "a worker loading", |s| {
        s.state == State::Loading && s.pid != 0
    })
    .await;
    tokio::time::timeout(
        PATIENCE,
        rig.registry.remove("slow-f", KillReason::Requested),
    )
    .await
    .expect("the unload does not wait for the load")
    .expect("remove");
    assert_eq!(h.status().state, State::Stopped);
    assert!(!alive(s.pid), "the loading worker is gone");
    assert!(matches!(
        rig.registry.get("slow-f"),
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_evicts_an_idle_model_and_a_call_brings_it_back() {
    // Room for one of two 60 MiB models.
    let rig = rig(100);
    let g = rig.registry.add(spec("ok-g", 60, true)).expect("add g");
    let g_pid = wait_for(&g, "g READY", |s| s.state == State::Ready)
        .await
        .pid;
    let h = rig.registry.add(spec("ok-h", 60, true)).expect("add h");
    wait_for(&h, "h READY", |s| s.state == State::Ready).await;
    let gs = wait_for(&g, "g evicted", |s| s.state == State::Idle).await;
    assert!(
        gs.last_error
            .contains("unloaded to make room for model \"ok-h\""),
        "{}",
        gs.last_error
    );
    assert!(!alive(g_pid), "the evicted worker is gone");
    assert_eq!(gs.restarts, 0, "an eviction is not a restart");
    // A call to the evicted model loads it again, which in turn evicts h.
    assert_eq!(tokenize(&g, "g").await.expect("answer"), [103]);
    wait_for(&h, "h evicted", |s| s.state == State::Idle).await;
    assert_eq!(g.status().state, State::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_loads_that_do_not_both_fit_never_both_run() {
    let rig = rig(100);
    let i = rig.registry.add(spec("ok-i", 60, true)).expect("add i");
    let j = rig.registry.add(spec("ok-j", 60, true)).expect("add j");
    let settled = |s: &Status| matches!(s.state, State::Ready | State::Failed | State::Idle);
    wait_for(&i, "i settled", settled).await;
    wait_for(&j, "j settled", settled).await;
    // Whichever order they were admitted in: one is READY, the other was
    // refused (FAILED, with the numbers) or unloaded for it (IDLE).
    let (si, sj) = (i.status(), j.status());
    let ready = [&si, &sj]
        .iter()
        .filter(|s| s.state == State::Ready)
        .count();
    assert_eq!(ready, 1, "{si:?}\n{sj:?}");
    for s in [&si, &sj].into_iter().filter(|s| s.state == State::Failed) {
        assert_eq!(s.last_error_code, REFUSED_MEMORY, "{}", s.last_error);
        assert!(s.last_error.contains("needs 60.0 MiB"), "{}", s.last_error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_during_a_load_stop_it_as_each_says() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("slow-k", 10, true)).expect("add");
    let loading = |s: &Status| s.state == State::Loading && s.pid != 0;
    let first = wait_for(&h, "a worker loading", loading).await.pid;
    // A kill for another worker (one already gone) leaves this load alone.
    h.kill(first + 1_000_000, KillReason::Oom, "not this one".into())
        .await;
    // A kill of the loading worker (the guard's, for memory) counts a
    // restart and starts another after the backoff.
    h.kill(first, KillReason::Oom, "over its budget".into())
        .await;
    let s = wait_for(&h, "a second worker loading", |s| {
        loading(s) && s.pid != first
    })
    .await;
    assert!(!alive(first), "the first loading worker is gone");
    assert_eq!(s.restarts, 1, "one kill, one restart: {s:?}");
    assert_eq!(s.last_kill_reason, Some(KillReason::Oom));
    assert!(
        s.last_error
            .contains("killed while loading (oom): over its budget"),
        "{}",
        s.last_error
    );
    assert!(s.last_exit.contains("signal"), "{}", s.last_exit);
    // A restart starts a third with a fresh budget.
    let second = s.pid;
    h.restart().await.expect("restart");
    wait_for(&h, "a third worker loading", |s| {
        loading(s) && s.pid != second
    })
    .await;
    assert!(!alive(second));
    // An eviction stops the load and leaves the model IDLE.
    h.evict("make room".into()).await;
    let s = h.status();
    assert_eq!(s.state, State::Idle, "{s:?}");
    assert_eq!((s.pid, s.last_error.as_str()), (0, "make room"));
    assert_eq!(s.restarts, 1, "neither a restart nor an eviction counts");
    assert!(!h.memory().admitted, "its room is given back");
    rig.registry
        .remove("slow-k", KillReason::Requested)
        .await
        .expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_models_estimate_is_known_before_its_first_call() {
    let rig = rig(1000);
    // No configured estimate: the guard's, from the file (not a GGUF
    // header the reader knows: its size plus the runtime's overhead).
    let h = rig.registry.add(spec("ok-lazy", 0, false)).expect("add");
    let deadline = Instant::now() + PATIENCE;
    while h.memory().estimate == 0 {
        assert!(Instant::now() < deadline, "no estimate: {:?}", h.memory());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = h.status();
    assert_eq!((s.state, s.pid), (State::Idle, 0), "not loaded by it");
    assert!(h.memory().estimate > 20, "{:?}", h.memory());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_header_fails_the_model_before_any_worker_starts() {
    let rig = rig(1000);
    // Arrays nested 100 000 deep.
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(1u64.to_le_bytes());
    f.extend(4u64.to_le_bytes());
    f.extend(b"evil");
    f.extend(9u32.to_le_bytes());
    for _ in 0..100_000 {
        f.extend(9u32.to_le_bytes());
        f.extend(1u64.to_le_bytes());
    }
    let store = rig.registry.store.root().to_path_buf();
    std::fs::write(store.join("evil.gguf"), f).expect("write");
    let mut s = spec("ok-evil", 0, true);
    s.path = "evil.gguf".into();
    let h = rig.registry.add(s).expect("add");
    let s = wait_for(&h, "FAILED", |s| s.state == State::Failed).await;
    assert_eq!(s.last_error_code, 3, "INVALID_ARGUMENT's code");
    assert_eq!(s.restarts, 0);
    assert!(
        s.last_error == "evil.gguf: GGUF header: arrays nested deeper than 8",
        "{}",
        s.last_error
    );
    assert_eq!(s.started_unix_ms, 0, "no worker was started");
    assert!(
        !transitions(&rig, "ok-evil")
            .iter()
            .any(|t| t.ends_with("-> Ready") || t.ends_with("-> Restarting"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_for_request_deadlines_never_make_a_model_failed() {
    let rig = rig_with(1000, |c| {
        c.deadlines.cancel_grace = Duration::from_millis(100);
    });
    let h = rig.registry.add(spec("ok-t", 10, true)).expect("add");
    let mut pid = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    // More deadline kills than the budget allows crashes: the fake never
    // answers "hang" and ignores the cancel, so each call's worker is
    // killed (reason timeout) once the cancel's grace is over.
    for round in 1..=MAX_RESTARTS + 2 {
        let req = WorkerRequest {
            regions: Default::default(),
            request_tag: format!("hang-{round}"),
            cache_partition: String::new(),
            deadline_unix_ms: 0,
            body: Some(worker_request::Body::Tokenize(TokenizeRequest {
                model_id: h.spec.id.clone(),
                text: "hang".into(),
                ..Default::default()
            })),
        };
        let mut call = h
            .call(req, Instant::now() + Duration::from_millis(100))
            .await
            .expect("sent");
        let err = call.next().await.expect("an answer").expect_err("late");
        assert!(matches!(err, Error::DeadlineExceeded(_)), "{err:?}");
        let s = wait_for(&h, "respawned after the deadline kill", |s| {
            s.state == State::Ready && s.pid != pid
        })
        .await;
        assert_eq!(s.restarts, round);
        assert_eq!(s.last_kill_reason, Some(KillReason::Timeout));
        assert!(!alive(pid), "the worker that ignored its cancel is gone");
        pid = s.pid;
    }
    assert_eq!(h.status().state, State::Ready, "never FAILED");
    assert_eq!(tokenize(&h, "ok").await.expect("serves"), [111, 107]);
}
