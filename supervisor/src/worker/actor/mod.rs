//! The actor that owns one model's worker process.
//!
//! Every state change goes through `Actor::set`, which publishes the status
//! and logs one event. The loop: bring the worker up (spawn → hello → load
//! → READY), supervise it (exit, heartbeats, commands), and on its death
//! restart it with backoff until the restart budget is spent (FAILED).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar_proto::v1::LogSource;
use tokio::sync::{mpsc, oneshot, watch};

use super::process::{Exit, Spawner};
use super::{Command, Conn, Status};
use crate::clock::now_ms;
use crate::config::{Config, ModelSpec};
use crate::lifecycle::{KillReason, State};
use crate::memory::{Guard, SharedMemory, host};
use crate::shared::Shared;

mod start;
mod supervise;

use start::Started;

/// The status code of an admission refusal (RESOURCE_EXHAUSTED).
pub const REFUSED_MEMORY: u32 = 8;

/// Worker status codes that refuse a load for good (INVALID_ARGUMENT,
/// FAILED_PRECONDITION): the model goes FAILED without restarts.
const REFUSED_INVALID: u32 = 3;
const REFUSED_PRECONDITION: u32 = 9;

/// Why `supervise` returned.
enum Ended {
    /// The worker is gone; `ours`: the supervisor's kill path ended it (a
    /// SIGKILL in its exit is not from outside).
    Died {
        exit: Exit,
        reason: KillReason,
        ours: bool,
    },
    /// Unload: the worker is stopped; end the actor.
    Unloaded(oneshot::Sender<()>),
    /// Evicted to free memory: the worker is stopped; back to IDLE.
    Evicted {
        note: String,
        done: oneshot::Sender<()>,
    },
}

/// Why the actor brings a worker up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Preloaded, or loaded through LoadModel.
    Load,
    /// A call needs a lazily loaded model.
    OnDemand,
    /// Its previous worker died.
    Restart,
}

/// What the actor is made of.
pub(super) struct Parts {
    pub(super) spec: Arc<ModelSpec>,
    pub(super) file: PathBuf,
    pub(super) companions: super::companions::Companions,
    pub(super) shared: Shared,
    pub(super) spawner: Spawner,
    pub(super) cmds: mpsc::Receiver<Command>,
    pub(super) guard: Arc<Guard>,
    pub(super) memory: SharedMemory,
    pub(super) quarantine: Arc<super::quarantine::Quarantine>,
}

struct Actor {
    spec: Arc<ModelSpec>,
    file: PathBuf,
    /// A VISION model's companion models, opened with the model file.
    companions: super::companions::Companions,
    shared: Shared,
    spawner: Spawner,
    cmds: mpsc::Receiver<Command>,
    status: watch::Sender<Status>,
    conn: watch::Sender<Option<Conn>>,
    /// When each counted restart happened, within the window.
    recent: VecDeque<Instant>,
    backoff: Duration,
    guard: Arc<Guard>,
    memory: SharedMemory,
    /// What the guard read of the model's file, once, before its first load.
    prepared: Option<crate::memory::Prepared>,
    /// Which file `prepared` was read from: a start that opens another
    /// (replaced in the store) reads its header again.
    prepared_from: Option<super::model_file::Identity>,
    /// Requests that crashed its workers.
    quarantine: Arc<super::quarantine::Quarantine>,
    /// The last worker died of a SIGKILL from outside: it counts towards
    /// FAILED only if the next start fails.
    killed_outside: bool,
}

pub(super) fn spawn(parts: Parts) -> (watch::Receiver<Status>, watch::Receiver<Option<Conn>>) {
    let Parts {
        spec,
        file,
        companions,
        shared,
        spawner,
        cmds,
        guard,
        memory,
        quarantine,
    } = parts;
    let initial = Status {
        state: if spec.preload {
            State::Loading
        } else {
            State::Idle
        },
        pid: 0,
        restarts: 0,
        last_error: String::new(),
        last_kill_reason: None,
        details: None,
        lite: None,
        last_error_code: 0,
        memory: None,
        loaded_unix_ms: 0,
        started_unix_ms: 0,
        heartbeat_unix_ms: 0,
        tokens_generated: 0,
        last_exit: String::new(),
        worker_version: String::new(),
        sandbox: None,
        kill_note: None,
        oom_kills_at_start: 0,
        worker_requests: 0,
        last_death: None,
    };
    let (status, status_rx) = watch::channel(initial);
    let (conn, conn_rx) = watch::channel(None);
    let backoff = shared.config.workers.backoff_initial;
    let actor = Actor {
        spec,
        file,
        companions,
        shared,
        spawner,
        cmds,
        status,
        conn,
        recent: VecDeque::new(),
        backoff,
        guard,
        memory,
        prepared: None,
        prepared_from: None,
        quarantine,
        killed_outside: false,
    };
    tokio::spawn(actor.run());
    (status_rx, conn_rx)
}

impl Actor {
    fn config(&self) -> &Config {
        &self.shared.config
    }

    fn set(&self, state: State, change: impl FnOnce(&mut Status)) {
        self.status.send_modify(|s| {
            let from = s.state;
            s.state = state;
            change(s);
            tracing::info!(
                model = %self.spec.id,
                pid = s.pid,
                from = ?from,
                to = ?state,
                restarts = s.restarts,
                error = %s.last_error,
                "model state"
            );
            let error = if s.last_error.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.last_error)
            };
            self.shared.logs.push(
                &self.spec.id,
                s.pid,
                LogSource::Supervisor,
                &format!(
                    "state {from:?} -> {state:?}, restarts {}{error}",
                    s.restarts
                ),
            );
        });
    }

    async fn run(mut self) {
        // The file's header is read at once, lazy models included: their
        // estimate shows before the first call, and a hostile file is
        // refused when it is added.
        let prepared = self.prepare().await;
        let mut want = (prepared && self.spec.preload).then_some(Why::Load);
        loop {
            if let Some(why) = want.take() {
                match self.bring_up(why).await {
                    Some(conn) => match self.supervise_admitted(conn).await {
                        Ended::Died { exit, reason, ours } => {
                            if self.after_death(exit, reason, ours).await {
                                want = Some(Why::Restart);
                            }
                            continue;
                        }
                        Ended::Unloaded(done) => {
                            self.quarantine.died(self.status.borrow().pid, false);
                            self.set(State::Stopped, |_| {});
                            let _ = done.send(());
                            return;
                        }
                        Ended::Evicted { note, done } => {
                            self.quarantine.died(self.status.borrow().pid, false);
                            self.conn.send_replace(None);
                            self.set(State::Idle, |s| {
                                s.pid = 0;
                                s.last_error = note;
                                s.last_error_code = 0;
                            });
                            let _ = done.send(());
                        }
                    },
                    None if self.state() == State::Stopped => return,
                    None => {}
                }
            }
            // Idle or FAILED: wait for a command.
            match self.cmds.recv().await {
                None => return,
                Some(Command::EnsureLoaded) => {
                    if self.state() == State::Idle {
                        want = Some(Why::OnDemand);
                    }
                }
                Some(Command::Restart) => {
                    self.recent.clear();
                    self.backoff = self.config().workers.backoff_initial;
                    want = Some(Why::Load);
                }
                Some(Command::Kill { .. }) => {}
                Some(Command::Evict { done, .. }) => {
                    let _ = done.send(());
                }
                Some(Command::Unload { done, .. }) => {
                    self.set(State::Stopped, |_| {});
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn state(&self) -> State {
        self.status.borrow().state
    }

    /// Starts workers until one is READY (`Some`), or the model is FAILED,
    /// back to IDLE (memory refused an on-demand load) or unloaded (`None`).
    async fn bring_up(&mut self, mut why: Why) -> Option<Conn> {
        if !self.prepare().await {
            return None;
        }
        loop {
            self.set(State::Loading, |s| s.pid = 0);
            if let Err(e) = self.guard.admit(&self.spec.id, &self.memory).await {
                let message = e.to_string();
                tracing::warn!(model = %self.spec.id, "load refused: {message}");
                match why {
                    Why::OnDemand => {
                        self.set(State::Idle, |s| {
                            s.last_error = message;
                            s.last_error_code = REFUSED_MEMORY;
                        });
                        return None;
                    }
                    Why::Load => {
                        self.set(State::Failed, |s| {
                            s.last_error = message;
                            s.last_error_code = REFUSED_MEMORY;
                        });
                        return None;
                    }
                    // Respawned when memory allows, within the restart budget.
                    Why::Restart => {
                        self.status.send_modify(|s| {
                            s.last_error = message;
                            s.last_error_code = REFUSED_MEMORY;
                        });
                        if !self.count_restart(KillReason::Oom) || !self.wait_backoff().await {
                            return None;
                        }
                        continue;
                    }
                }
            }
            match self.start_once().await {
                Started::Interrupted(cmd) => match self.after_interrupt(cmd).await {
                    Some(next) => why = next,
                    None => return None,
                },
                Started::Ready(conn) => {
                    self.killed_outside = false;
                    self.backoff = self.config().workers.backoff_initial;
                    let pid = conn.pid;
                    self.conn.send_replace(Some(conn.clone()));
                    self.set(State::Ready, |s| {
                        s.pid = pid;
                        if s.loaded_unix_ms == 0 {
                            s.loaded_unix_ms = now_ms();
                        }
                    });
                    return Some(conn);
                }
                Started::KilledOutside(message) => {
                    self.release_memory();
                    tracing::warn!(model = %self.spec.id, "loading worker killed from outside: {message}");
                    self.status.send_modify(|s| {
                        s.last_error = format!("{message} (a SIGKILL from outside the supervisor)");
                        s.last_error_code = 0;
                    });
                    // Counted as a restart; towards FAILED only if a start
                    // after it fails on its own.
                    self.killed_outside = true;
                    self.note_restart(KillReason::Crash);
                    if !self.wait_backoff().await {
                        return None;
                    }
                    why = Why::Restart;
                }
                Started::Failed(message, code) => {
                    self.release_memory();
                    tracing::warn!(model = %self.spec.id, "worker failed to start: {message}");
                    self.status.send_modify(|s| {
                        s.last_error = message;
                        s.last_error_code = code;
                    });
                    // The worker ran and refused the load for a reason a
                    // restart cannot change (bad options, no GPU).
                    if matches!(code, REFUSED_INVALID | REFUSED_PRECONDITION) {
                        self.set(State::Failed, |s| s.pid = 0);
                        return None;
                    }
                    // An outside SIGKILL before counts now that the start
                    // after it failed too.
                    if std::mem::take(&mut self.killed_outside) && !self.count_window() {
                        return None;
                    }
                    if !self.count_restart(KillReason::Crash) {
                        return None;
                    }
                    if !self.wait_backoff().await {
                        return None;
                    }
                    why = Why::Restart;
                }
            }
        }
    }

    /// Counts a restart; false (and FAILED) when the budget is spent.
    /// Every restart is counted (status, metrics); only those whose reason
    /// counts towards FAILED enter the window of the budget.
    fn count_restart(&mut self, reason: KillReason) -> bool {
        self.note_restart(reason);
        if !reason.counts_towards_failed() {
            return true;
        }
        self.count_window()
    }

    /// Counts a restart in the status and metrics only.
    fn note_restart(&self, reason: KillReason) {
        self.shared.metrics.restart(&self.spec.id, reason);
        self.status.send_modify(|s| {
            s.restarts += 1;
            s.last_kill_reason = Some(reason);
        });
    }

    /// Enters one restart into the budget's window; false (and FAILED)
    /// when the budget is spent.
    fn count_window(&mut self) -> bool {
        let now = Instant::now();
        let window = self.config().workers.restart_window;
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > self.config().workers.max_restarts as usize {
            let n = self.recent.len();
            self.set(State::Failed, |s| {
                s.pid = 0;
                s.last_error = format!(
                    "{} ({n} restarts within {:?}; reload the model to try again)",
                    s.last_error, window
                );
            });
            return false;
        }
        true
    }

    /// Sleeps out the backoff (RESTARTING); false when unloaded meanwhile.
    async fn wait_backoff(&mut self) -> bool {
        let jitter = 0.8 + 0.4 * (now_ms() % 1000) as f64 / 1000.0;
        let delay = self.backoff.mul_f64(jitter);
        self.backoff = (self.backoff * 2).min(self.config().workers.backoff_max);
        self.set(State::Restarting, |s| s.pid = 0);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                cmd = self.cmds.recv() => match cmd {
                    None => return false,
                    Some(Command::Unload { done, .. }) => {
                        self.set(State::Stopped, |_| {});
                        let _ = done.send(());
                        return false;
                    }
                    Some(Command::Evict { done, .. }) => {
                        let _ = done.send(());
                    }
                    Some(_) => {}
                },
            }
        }
    }

    async fn after_death(&mut self, exit: Exit, mut reason: KillReason, ours: bool) -> bool {
        self.conn.send_replace(None);
        let mut why = String::new();
        if let Some((pid, r, note)) = self.status.borrow().kill_note.clone()
            && pid == exit.pid
        {
            why = format!(": {note}");
            reason = r;
        }
        // A SIGKILL nobody here sent, while the container's OOM-kill count
        // rose: the kernel's OOM killer.
        let before = self.status.borrow().oom_kills_at_start;
        let now = host::sample().cgroup_oom_kills;
        if reason == KillReason::Crash && exit.signal == Some(libc::SIGKILL) && now > before {
            reason = KillReason::Oom;
            why = format!(
                ": killed by the kernel's OOM killer (the container's oom_kill count went from {before} to {now})"
            );
        }
        // A SIGKILL from outside (an operator, another tool): the worker
        // did nothing wrong that we know of; it counts towards FAILED only
        // if the next start fails.
        let outside = reason == KillReason::Crash && exit.signal == Some(libc::SIGKILL) && !ours;
        if outside {
            why = format!("{why} (a SIGKILL from outside the supervisor)");
        }
        for (hash, note) in self
            .quarantine
            .died(exit.pid, reason.counts_towards_failed() && !outside)
        {
            tracing::warn!(model = %self.spec.id, pid = exit.pid, request_hash = format!("{hash:016x}"), "request quarantined: {note}");
        }
        let message = format!(
            "worker (pid {}) ended: {exit}, reason {}{why}",
            exit.pid,
            reason.as_str()
        );
        let last_words = self.shared.logs.last_words(&self.spec.id, exit.pid);
        tracing::warn!(model = %self.spec.id, pid = exit.pid, last_lines = %last_words, "{message}");
        let self_raised = reason.counts_towards_failed() && !outside;
        self.status.send_modify(|s| {
            s.last_error = message;
            s.last_exit = exit.to_string();
            s.last_death = Some((exit.pid, self_raised));
        });
        if outside {
            self.killed_outside = true;
            self.note_restart(reason);
            return self.wait_backoff().await;
        }
        self.count_restart(reason) && self.wait_backoff().await
    }

    /// Its worker is gone: its memory no longer counts against others.
    fn release_memory(&self) {
        if let Ok(mut m) = self.memory.lock() {
            m.admitted = false;
            m.latest = None;
            m.gpu.clear();
        }
    }
}
