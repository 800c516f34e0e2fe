//! Calls that arrive while a model restarts wait for it within their
//! deadline, as a lazy load does: served by the next worker, or
//! DEADLINE_EXCEEDED naming the restart, or FAILED_PRECONDITION when the
//! model goes FAILED meanwhile. And SIGKILLs from outside that land on a
//! loading worker do not fail the model either.

use std::time::{Duration, Instant};

use super::{MAX_RESTARTS, PATIENCE, alive, rig_with, spec, tokenize, tokenize_within, wait_for};
use crate::error::Error;
use crate::lifecycle::{KillReason, State};

/// The backoff these tests wait in: long enough to call into it, short
/// enough to wait out.
const BACKOFF: Duration = Duration::from_millis(1500);

fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_a_restart_wait_for_the_next_worker_within_their_deadline() {
    let rig = rig_with(1000, |c| {
        c.workers.backoff_initial = BACKOFF;
        c.workers.backoff_max = BACKOFF;
    });
    let h = rig.registry.add(spec("ok-wait", 10, true)).expect("add");
    let first = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    let err = tokenize(&h, "abort").await.expect_err("the worker aborted");
    assert!(
        matches!(&err, Error::WorkerDied { error, .. } if matches!(**error, Error::Unavailable(_))),
        "{err:?}"
    );
    wait_for(&h, "RESTARTING", |s| s.state == State::Restarting).await;

    // Both calls are made during the backoff (at least 0.8 × 1.5 s).
    let (short, long) = tokio::join!(
        tokenize_within(&h, "late", Instant::now() + Duration::from_millis(200)),
        tokenize_within(&h, "x", Instant::now() + PATIENCE),
    );
    // The shorter deadline passes in the backoff: DEADLINE_EXCEEDED naming
    // the restart and the death behind it.
    let err = short.expect_err("its deadline is shorter than the backoff");
    assert!(
        matches!(&err, Error::DeadlineExceeded(m)
            if m.contains("\"ok-wait\"")
                && m.contains("while the model was restarting")
                && m.contains(&format!("worker (pid {first}) ended"))
                && m.contains("signal 6")),
        "{err:?}"
    );
    // The longer one is served by the next worker.
    assert_eq!(long.expect("served after the restart"), [120]);
    let s = h.status();
    assert_eq!(s.state, State::Ready);
    assert!(s.pid != first && alive(s.pid), "{s:?}");
    assert!(!alive(first));
    assert_eq!(s.restarts, 1);
    let text = rig.registry.shared().metrics.render(&[]);
    assert!(
        text.contains("sidecar_rejected_total{model=\"ok-wait\",reason=\"deadline\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_on_a_restart_get_failed_precondition_when_the_model_fails() {
    let rig = rig_with(1000, |c| {
        c.workers.backoff_initial = BACKOFF;
        c.workers.backoff_max = BACKOFF;
    });
    // Every start of this model fails: RESTARTING between them, then
    // FAILED once the budget is spent.
    let h = rig.registry.add(spec("crash-wait", 10, true)).expect("add");
    wait_for(&h, "RESTARTING", |s| s.state == State::Restarting).await;
    let started = h.status().restarts;
    assert!(started <= MAX_RESTARTS, "{:?}", h.status());
    let (a, b) = tokio::join!(tokenize(&h, "a"), tokenize(&h, "b"));
    for err in [a, b] {
        let err = err.expect_err("the model went FAILED");
        assert!(
            matches!(&err, Error::FailedPrecondition(m)
                if m.contains("\"crash-wait\" is FAILED") && m.contains("restarts within")),
            "{err:?}"
        );
    }
    let s = h.status();
    assert_eq!(s.state, State::Failed);
    assert_eq!(s.restarts, MAX_RESTARTS + 1);
}

/// A loading worker killed from outside is a restart that says nothing
/// about the model, as for a READY worker: more such kills than the
/// restart budget leave it loading again, not FAILED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_from_outside_during_loads_do_not_fail_a_model() {
    let rig = rig_with(1000, |c| {
        c.workers.backoff_initial = Duration::from_millis(20);
        c.workers.backoff_max = Duration::from_millis(20);
    });
    // The fake never answers this model's load: its workers stay LOADING.
    let h = rig.registry.add(spec("slow-kill", 10, true)).expect("add");
    let loading = |s: &crate::worker::Status| s.state == State::Loading && s.pid != 0;
    let mut pid = wait_for(&h, "a worker loading", loading).await.pid;
    let kills = MAX_RESTARTS + 2;
    for n in 1..=kills {
        kill9(pid);
        let s = wait_for(&h, "another worker loading", |s| {
            (loading(s) && s.pid != pid) || s.state == State::Failed
        })
        .await;
        assert_ne!(s.state, State::Failed, "after {n} kills: {s:?}");
        assert_eq!(s.restarts, n);
        assert_eq!(s.last_kill_reason, Some(KillReason::Crash));
        assert!(
            s.last_error.contains("from outside") && s.last_error.contains("signal 9"),
            "{}",
            s.last_error
        );
        assert!(!alive(pid));
        pid = s.pid;
    }
    rig.registry
        .remove("slow-kill", KillReason::Requested)
        .await
        .expect("remove");
}
