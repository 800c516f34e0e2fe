//! One actor per loaded model, owning its worker process; a handle that
//! API calls use to reach the worker.
//!
//! Calls do not pass through the actor: the actor publishes the current
//! worker connection (`Conn`) once the worker is READY, and a call sends
//! its request straight into that worker's channel. The actor owns the
//! lifecycle: spawn, hello, load, heartbeats, death, backoff, restart.

mod actor;
mod call;
pub mod companions;
pub mod model_file;
pub mod process;
pub(crate) mod quarantine;
mod retry;
mod tenant;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use sidecar_proto::v1::{ModelInfo, ModelState, TextModelDetails};
use sidecar_proto::worker::MemoryReport;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

pub use actor::REFUSED_MEMORY;
pub use call::CallStream;
pub use process::{Exit, Spawner};

use crate::config::{Family, ModelSpec};
use crate::error::Error;
use crate::lifecycle::{KillReason, State};
use crate::memory::{Guard, ModelMemory, SharedMemory};
use crate::shared::Shared;

/// A READY worker's connection.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The channel to it.
    pub chan: Arc<ipc::AsyncChannel>,
    /// Its pid.
    pub pid: u32,
    /// How it ended, once it has.
    pub exit: watch::Receiver<Option<Exit>>,
    /// The shared-memory regions this process holds (a respawned worker
    /// is a new `Conn`, holding none).
    pub regions: Arc<crate::shm::Attached>,
}

/// What the actor publishes about its model.
#[derive(Debug, Clone)]
pub struct Status {
    /// State.
    pub state: State,
    /// Current worker pid (0: none).
    pub pid: u32,
    /// Restarts since load.
    pub restarts: u32,
    /// Last load failure or death.
    pub last_error: String,
    /// Reason of the last kill.
    pub last_kill_reason: Option<KillReason>,
    /// What the worker read from the model file.
    pub details: Option<TextModelDetails>,
    /// LITE models: tensors and accelerator, from the load.
    pub lite: Option<sidecar_proto::v1::LiteModelInfo>,
    /// The worker's status code when it refused the last load (0: none).
    pub last_error_code: u32,
    /// Memory from the last heartbeat.
    pub memory: Option<MemoryReport>,
    /// When it first became READY (Unix ms).
    pub loaded_unix_ms: i64,
    /// When the current worker process started (Unix ms).
    pub started_unix_ms: i64,
    /// When its last heartbeat arrived (Unix ms).
    pub heartbeat_unix_ms: i64,
    /// How the previous worker process ended.
    pub last_exit: String,
    /// The worker binary's version, from its hello.
    pub worker_version: String,
    /// The worker's sandbox, from its hello: what holds, what is missing.
    pub sandbox: Option<sidecar_proto::worker::Sandbox>,
    /// Tokens the current worker generated, from its last heartbeat.
    pub tokens_generated: u64,
    /// The guard's kill in progress: (pid, reason, why), so callers of
    /// that worker learn why it went.
    pub kill_note: Option<(u32, KillReason, String)>,
    /// The container's OOM-kill count when the current worker started.
    pub oom_kills_at_start: u64,
    /// REQUEST frames that opened a request in the current worker, from
    /// its last heartbeat.
    pub worker_requests: u64,
    /// The last worker death the actor has dealt with (the quarantine
    /// told, the restart counted): its pid, and whether it was
    /// self-raised (`DESIGN.md`'s restart table: not a timeout, an asked
    /// for kill or a SIGKILL from outside).
    pub last_death: Option<(u32, bool)>,
}

/// Commands to the actor.
#[derive(Debug)]
pub(crate) enum Command {
    /// A call wants the model loaded (lazy models).
    EnsureLoaded,
    /// Kill this worker (if still current) for this reason; `note` says
    /// why (empty: the reason says it all).
    Kill {
        pid: u32,
        reason: KillReason,
        note: String,
    },
    /// Stop the worker to free its memory; the model goes back to IDLE
    /// and loads again on its next call. Not a restart.
    Evict {
        note: String,
        done: oneshot::Sender<()>,
    },
    /// Restart with a fresh restart budget.
    Restart,
    /// Stop the worker and end the actor.
    Unload {
        reason: KillReason,
        done: oneshot::Sender<()>,
    },
}

/// The handle API calls use.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    /// The model as configured or loaded.
    pub spec: Arc<ModelSpec>,
    pub(crate) cmds: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    conn: watch::Receiver<Option<Conn>>,
    /// Client classes, rate limits, slots and the fair queue.
    traffic: Arc<crate::traffic::ModelTraffic>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    last_used: Arc<std::sync::Mutex<Option<i64>>>,
    shared: Shared,
    file_size: u64,
    memory: SharedMemory,
    quarantine: Arc<quarantine::Quarantine>,
    /// Re-sent calls after a self-raised crash go one at a time.
    retry_gate: Arc<Semaphore>,
    retries: Arc<std::sync::atomic::AtomicU64>,
    /// Its version under its id (1, then one more per swap).
    version: u32,
    /// A swap's version loading beside the serving one, or draining after
    /// it: calls do not find it by id.
    aside: Arc<std::sync::atomic::AtomicBool>,
}

impl WorkerHandle {
    /// This handle with `version` (a swap's new version).
    pub fn with_version(mut self, version: u32) -> WorkerHandle {
        self.version = version;
        self
    }

    /// Its version under its id.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Marks it as a swap's version beside the serving one (or not).
    pub fn set_aside(&self, aside: bool) {
        self.aside.store(aside, Ordering::SeqCst);
    }

    /// Whether it is a swap's version beside the serving one.
    pub fn is_aside(&self) -> bool {
        self.aside.load(Ordering::SeqCst)
    }

    /// Whether `other` is a handle of the same loaded model (not another
    /// version under the same id).
    pub fn same(&self, other: &WorkerHandle) -> bool {
        Arc::ptr_eq(&self.spec, &other.spec)
    }

    /// Starts the actor for `spec` (the model file already resolved).
    pub fn start(
        spec: ModelSpec,
        file: std::path::PathBuf,
        companions: companions::Companions,
        shared: Shared,
        spawner: Spawner,
        guard: Arc<Guard>,
    ) -> WorkerHandle {
        let spec = Arc::new(spec);
        let traffic = Arc::new(crate::traffic::ModelTraffic::new(
            &spec.id,
            &shared.config,
            crate::traffic::capacity(&spec, &shared.config),
        ));
        let file_size = std::fs::metadata(&file).map_or(0, |m| m.len()) + companions.size();
        let memory = Arc::new(std::sync::Mutex::new(ModelMemory {
            // The actor reads the file's header before the first load.
            estimate: spec.memory_estimate,
            ..Default::default()
        }));
        let (cmds, rx) = mpsc::channel(16);
        let quarantine = Arc::new(quarantine::Quarantine::new(
            shared.config.workers.quarantine_ttl,
        ));
        let (status, conn) = actor::spawn(actor::Parts {
            spec: spec.clone(),
            file,
            companions,
            shared: shared.clone(),
            spawner,
            cmds: rx,
            guard,
            memory: memory.clone(),
            quarantine: quarantine.clone(),
        });
        WorkerHandle {
            spec,
            cmds,
            status,
            conn,
            traffic,
            draining: Arc::default(),
            last_used: Arc::default(),
            shared,
            file_size,
            memory,
            quarantine,
            retry_gate: Arc::new(Semaphore::new(1)),
            retries: Arc::default(),
            version: 1,
            aside: Arc::default(),
        }
    }

    /// The guard's figures for this model.
    pub fn memory(&self) -> ModelMemory {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Calls running or waiting.
    pub fn busy(&self) -> bool {
        self.traffic.gate.busy()
    }

    /// The last call's time (Unix ms; 0: none yet).
    pub fn last_used_ms(&self) -> i64 {
        self.last_used.lock().map_or(0, |g| g.unwrap_or_default())
    }

    /// Stops the worker to free its memory (the model goes back to IDLE);
    /// returns once the process is gone.
    pub async fn evict(&self, note: String) {
        let (done, rx) = oneshot::channel();
        if self.cmds.send(Command::Evict { note, done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Kills worker `pid` (if still current) through the actor's kill path.
    pub async fn kill(&self, pid: u32, reason: KillReason, note: String) {
        let _ = self.cmds.send(Command::Kill { pid, reason, note }).await;
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits for a status change.
    pub async fn changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
    }

    /// Waits until the model is READY or FAILED, or `deadline`.
    pub async fn wait_settled(&self, deadline: Instant) -> Status {
        let mut rx = self.status.clone();
        let settled = |s: &Status| matches!(s.state, State::Ready | State::Failed | State::Stopped);
        let _ = tokio::time::timeout_at(deadline.into(), rx.wait_for(settled)).await;
        rx.borrow().clone()
    }

    /// Admits no new calls (they get UNAVAILABLE) and waits until the
    /// calls in flight are done or `timeout` passes; true when they are.
    pub async fn drain(&self, timeout: std::time::Duration) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        self.traffic.gate.idle(Instant::now() + timeout).await
    }

    /// Stops admitting new calls without waiting.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Admits calls again after a drain.
    pub fn resume(&self) {
        self.draining.store(false, Ordering::SeqCst);
    }

    /// Sends `req` straight into the current worker's channel: no queue,
    /// no in-flight slot, no wait for READY (`sidecarctl call`).
    pub async fn call_direct(
        &self,
        req: &sidecar_proto::worker::WorkerRequest,
    ) -> Result<ipc::ResponseStream, Error> {
        use prost::Message;
        let Some(conn) = self.conn.borrow().clone() else {
            return Err(Error::Unavailable(format!(
                "model {:?} has no worker running ({:?})",
                self.spec.id,
                self.status().state
            )));
        };
        conn.chan
            .request(&req.encode_to_vec())
            .await
            .map_err(|e| self.channel_error(&conn, e))
    }

    /// Whether the model admits no new calls.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops the worker and ends the actor.
    pub async fn unload(&self, reason: KillReason) {
        let (done, rx) = oneshot::channel();
        if self
            .cmds
            .send(Command::Unload { reason, done })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Restarts the worker with a fresh restart budget.
    pub async fn restart(&self) -> Result<(), Error> {
        self.cmds
            .send(Command::Restart)
            .await
            .map_err(|_| Error::Unavailable(format!("model {:?} is being unloaded", self.spec.id)))
    }

    /// The API view of this model.
    pub fn info(&self) -> ModelInfo {
        let s = self.status();
        let guard = self.memory();
        // The guard's own sample of the process; before its first one, the
        // worker's report from its heartbeat.
        let (private, file, shared) = match (&guard.latest, &s.memory) {
            (Some(p), _) if s.pid != 0 => (p.private_bytes, p.file_bytes, p.shared_bytes),
            (_, Some(r)) if s.pid != 0 => (r.private_bytes, r.file_bytes, 0),
            _ => (0, 0, 0),
        };
        let memory = Some(sidecar_proto::v1::MemoryUsage {
            host_private_bytes: private,
            host_file_bytes: file,
            channel_bytes: shared,
            host_budget_bytes: self.spec.memory_budget,
            gpu: if s.pid != 0 {
                guard.gpu_proto()
            } else {
                Vec::new()
            },
            sampled_unix_ms: guard.sampled_ms,
            estimate_bytes: guard.estimate,
            peak_private_bytes: guard.peak_private,
            peak_resident_bytes: guard.peak_resident,
        });
        let gate = &self.traffic.gate;
        ModelInfo {
            model_id: self.spec.id.clone(),
            family: self.spec.family.to_proto() as i32,
            path: self.spec.path.clone(),
            state: if self.is_draining() && s.state == State::Ready {
                ModelState::Draining as i32
            } else {
                s.state.to_proto() as i32
            },
            pinned: self.spec.pinned,
            required: self.required(),
            worker_pid: s.pid,
            restarts: s.restarts,
            last_error: s.last_error,
            last_kill_reason: s.last_kill_reason.map_or(0, |r| r.to_proto() as i32),
            memory,
            loaded_unix_ms: s.loaded_unix_ms,
            last_used_unix_ms: self.last_used_ms(),
            in_flight: gate.running() as u32,
            queue_depth: gate.queued() as u32,
            max_in_flight: gate.capacity() as u32,
            traffic: (0..self.traffic.classes.len())
                .map(|c| sidecar_proto::v1::ClassQueue {
                    class: self.traffic.classes.name(c).to_owned(),
                    queue_depth: gate.class_queued(c) as u32,
                })
                .collect(),
            file_size_bytes: self.file_size,
            tokens_generated: s.tokens_generated,
            options: Some(match self.spec.family {
                Family::Vision => {
                    sidecar_proto::v1::model_info::Options::Vision(self.spec.vision.to_proto())
                }
                Family::Text => {
                    sidecar_proto::v1::model_info::Options::Text(self.spec.text.to_proto())
                }
                Family::Lite => {
                    // The accelerator in use, once the worker has loaded.
                    let mut o = self.spec.lite.to_proto();
                    if let Some(l) = &s.lite {
                        o.accelerator = match l.accelerator.as_str() {
                            "gpu" => sidecar_proto::v1::Accelerator::Gpu,
                            _ => sidecar_proto::v1::Accelerator::Cpu,
                        } as i32;
                    }
                    sidecar_proto::v1::model_info::Options::Lite(o)
                }
            }),
            text_details: s.details,
            cache: Some(self.shared.cache.stats(&self.spec.id)),
            worker_requests: s.worker_requests,
            retries: self.retries.load(Ordering::Relaxed),
            version: self.version,
            // The registry's view (`api::aliases::info`).
            swap: String::new(),
            aliases: Vec::new(),
            current: !self.is_aside(),
            versions: vec![self.version],
        }
    }

    /// Whether readiness waits for this model.
    pub fn required(&self) -> bool {
        self.spec.required.unwrap_or(self.spec.preload)
    }
}
