//! Bringing one worker up: spawn with its channel, hello, load (the
//! family's options; a text model's GPU layers cut to what fits). The
//! actor reads its commands while the worker loads: an unload, an
//! eviction, a restart or a kill of that worker stops it at once instead
//! of waiting out the load.

use std::sync::Arc;
use std::time::Instant;

use ipc::Kind;
use prost::Message;
use sidecar_proto::worker::{
    Hello, Load, Loaded, WorkerError, WorkerRequest, WorkerResponse, load, worker_request,
    worker_response,
};

use tokio::sync::{mpsc, watch};

use super::super::model_file::ModelFile;
use super::super::process;
use super::super::{Command, Conn, Status};
use super::{Actor, Why};
use crate::clock::now_ms;
use crate::config::{Family, ModelSpec};
use crate::lifecycle::{KillReason, State};
use crate::memory::gguf::TextShape;
use crate::memory::{Guard, SharedMemory, host};

/// How one start ended.
pub(super) enum Started {
    /// Loaded and warmed up.
    Ready(Conn),
    /// It failed: why, and the worker's status code when it refused the
    /// load (0 otherwise). The worker is gone.
    Failed(String, u32),
    /// A command came first; the worker is gone.
    Interrupted(Command),
    /// A SIGKILL from outside the supervisor (not the guard's, not the
    /// kernel OOM killer's) ended it before it was READY: why. Like an
    /// outside kill of a READY worker, it says nothing about the model.
    KilledOutside(String),
}

/// What the hello and the load read of the actor: borrowed field by field,
/// so the actor's command queue stays free to read meanwhile.
struct Handshake<'a> {
    spec: &'a ModelSpec,
    /// The model's path in the store (for the worker's messages).
    file: &'a std::path::Path,
    /// Where the worker opens it: `/proc/self/fd/N`.
    worker_path: String,
    /// Its size, from the open file.
    size: u64,
    /// A VISION model's companion models: `/proc/self/fd/N` per role.
    pipeline: Option<sidecar_proto::v1::PipelineModels>,
    shape: Option<&'a TextShape>,
    status: &'a watch::Sender<Status>,
    guard: &'a Guard,
    memory: &'a SharedMemory,
}

impl Actor {
    /// Spawn → hello → load. On failure or a command the worker is killed
    /// and reaped.
    pub(super) async fn start_once(&mut self) -> Started {
        match self.spawn_and_load().await {
            Ok(started) => started,
            Err((message, code)) => Started::Failed(message, code),
        }
    }

    async fn spawn_and_load(&mut self) -> Result<Started, (String, u32)> {
        let grace = self.config().workers.kill_grace;
        let model = self.open_model().await?;
        let (worker_path, size) = (model.worker_path(), model.size());
        let companions = self.companions.open().map_err(|e| (e, 0))?;
        let pipeline = companions.worker_paths;
        let mut files = vec![model.into_fd()];
        files.extend(companions.files.into_iter().map(|f| f.into_fd()));
        let (mine, theirs) = ipc::create(self.config().channel(self.spec.family))
            .map_err(|e| (format!("ipc channel: {e}"), 0))?;
        let program = self
            .config()
            .worker_dir()
            .join(self.spec.family.worker_binary());
        let mut child = self
            .spawner
            .spawn(
                &program,
                &self.worker_env(),
                theirs,
                files,
                self.config().workers.identity(),
            )
            .await
            .map_err(|e| (format!("{}: {e}", program.display()), 0))?;
        let pid = child.id();
        // A kernel OOM in the container picks a worker before the supervisor.
        if let Err(e) = host::set_oom_score_adj(pid, self.config().memory.worker_oom_score_adj) {
            tracing::warn!(model = %self.spec.id, pid, "cannot set oom_score_adj: {e}");
        }
        let oom_kills = host::sample().cgroup_oom_kills;
        self.status.send_modify(|s| {
            s.pid = pid;
            s.started_unix_ms = now_ms();
            s.heartbeat_unix_ms = now_ms();
            s.tokens_generated = 0;
            s.worker_requests = 0;
            s.kill_note = None;
            s.oom_kills_at_start = oom_kills;
        });
        if let Ok(mut m) = self.memory.lock() {
            m.latest = None;
            m.gpu.clear();
        }
        crate::logs::forward(
            &self.shared.logs,
            &mut child,
            &self.spec.id,
            self.spec.family,
            pid,
        );
        let mut exit = process::watch_exit(child);
        let chan = match ipc::AsyncChannel::new(mine) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                process::kill_worker(pid, &mut exit, KillReason::Crash, grace).await;
                return Err((format!("ipc attach: {e}"), 0));
            }
        };
        let load_deadline = self.config().deadlines.load;
        let deadline = Instant::now() + load_deadline;
        let hs = Handshake {
            spec: &self.spec,
            file: &self.file,
            worker_path,
            size,
            pipeline,
            shape: self.prepared.as_ref().and_then(|p| p.shape.as_ref()),
            status: &self.status,
            guard: &self.guard,
            memory: &self.memory,
        };
        let outcome = tokio::select! {
            done = tokio::time::timeout_at(deadline.into(), hs.run(&chan)) => done,
            cmd = interrupting(&mut self.cmds, pid) => {
                let reason = match &cmd {
                    Command::Unload { reason, .. } | Command::Kill { reason, .. } => *reason,
                    _ => KillReason::Requested,
                };
                tracing::info!(model = %self.spec.id, pid, "stopping the loading worker: {cmd:?}");
                let ended = process::kill_worker(pid, &mut exit, reason, grace).await;
                self.status.send_modify(|s| s.last_exit = ended.to_string());
                return Ok(Started::Interrupted(cmd));
            }
        };
        match outcome {
            Ok(Ok(loaded)) => {
                self.status.send_modify(|s| {
                    s.details = loaded.text;
                    s.lite = loaded.lite;
                    s.last_error_code = 0;
                });
                let regions = Arc::new(crate::shm::Attached::new(chan.clone(), pid));
                self.shared.shm.holders.add(&regions);
                Ok(Started::Ready(Conn {
                    chan,
                    pid,
                    exit,
                    regions,
                }))
            }
            Ok(Err((e, code))) => {
                let (ended, ours) =
                    process::stop_worker(pid, &mut exit, KillReason::Crash, grace).await;
                let message = format!("{e} (worker pid {pid}: {ended})");
                let outside = code == 0
                    && !ours
                    && ended.signal == Some(libc::SIGKILL)
                    && host::sample().cgroup_oom_kills <= oom_kills;
                if outside {
                    self.status.send_modify(|s| s.last_exit = ended.to_string());
                    return Ok(Started::KilledOutside(message));
                }
                Err((message, code))
            }
            Err(_) => {
                process::kill_worker(pid, &mut exit, KillReason::Timeout, grace).await;
                Err((
                    format!("worker pid {pid} did not load the model within {load_deadline:?}"),
                    0,
                ))
            }
        }
    }

    /// Reads the model file's header once, on a blocking thread (never on
    /// the async threads, never under the registry's lock): the estimate
    /// admission uses and a text model's shape. A header that is hostile or
    /// impossible fails the model at once (INVALID_ARGUMENT, no restarts);
    /// false then.
    pub(super) async fn prepare(&mut self) -> bool {
        if self.prepared.is_some() {
            return true;
        }
        let (spec, file) = (self.spec.clone(), self.file.clone());
        let read = tokio::task::spawn_blocking(move || match ModelFile::open(&file) {
            Ok(m) => {
                crate::memory::prepare(&spec, m.file(), m.size()).map(|p| (p, Some(m.identity())))
            }
            // Not readable now: the start that opens it says why.
            Err(_) => crate::memory::prepare_unread(&spec).map(|p| (p, None)),
        })
        .await;
        let refused = match read {
            Ok(Ok((p, from))) => {
                if let Ok(mut m) = self.memory.lock() {
                    m.estimate = p.estimate;
                }
                self.prepared = Some(p);
                self.prepared_from = from;
                return true;
            }
            Ok(Err(why)) => format!("{}: {why}", self.spec.path),
            Err(e) => format!("{}: reading its header failed: {e}", self.spec.path),
        };
        tracing::warn!(model = %self.spec.id, "model refused: {refused}");
        self.set(State::Failed, |s| {
            s.last_error = refused;
            s.last_error_code = super::REFUSED_INVALID;
        });
        false
    }

    /// Opens the model file for one start (every start opens it afresh).
    /// A file other than the one whose header was read (replaced in the
    /// store since) has its header read again, from this open file: what
    /// is checked is what the worker loads. Refused: the worker's
    /// INVALID_ARGUMENT code, so the model fails at once.
    async fn open_model(&mut self) -> Result<ModelFile, (String, u32)> {
        let (spec, file, from) = (self.spec.clone(), self.file.clone(), self.prepared_from);
        let opened = tokio::task::spawn_blocking(move || {
            let model = ModelFile::open(&file).map_err(|e| (e, 0))?;
            if from == Some(model.identity()) {
                return Ok((model, None));
            }
            let p = crate::memory::prepare(&spec, model.file(), model.size())
                .map_err(|why| (format!("{}: {why}", spec.path), super::REFUSED_INVALID))?;
            Ok((model, Some(p)))
        })
        .await
        .map_err(|e| (format!("opening the model file failed: {e}"), 0))??;
        let (model, reread) = opened;
        if let Some(p) = reread {
            if let Ok(mut m) = self.memory.lock() {
                m.estimate = p.estimate;
            }
            self.prepared = Some(p);
            self.prepared_from = Some(model.identity());
        }
        Ok(model)
    }

    /// Carries out a command that stopped a loading worker: `Some` to start
    /// another (a restart, or a kill within the restart budget), `None`
    /// when the model is unloaded, back to IDLE, or FAILED.
    pub(super) async fn after_interrupt(&mut self, cmd: Command) -> Option<Why> {
        self.release_memory();
        match cmd {
            Command::Unload { done, .. } => {
                self.set(State::Stopped, |s| s.pid = 0);
                let _ = done.send(());
                None
            }
            Command::Evict { note, done } => {
                self.set(State::Idle, |s| {
                    s.pid = 0;
                    s.last_error = note;
                    s.last_error_code = 0;
                });
                let _ = done.send(());
                None
            }
            Command::Restart => {
                self.recent.clear();
                self.backoff = self.config().workers.backoff_initial;
                Some(Why::Load)
            }
            Command::Kill { reason, note, .. } => {
                self.status.send_modify(|s| {
                    s.last_error = format!("killed while loading ({}): {note}", reason.as_str());
                });
                (self.count_restart(reason) && self.wait_backoff().await).then_some(Why::Restart)
            }
            Command::EnsureLoaded => Some(Why::Load),
        }
    }

    /// What the family's worker needs in its environment.
    fn worker_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let seccomp = self.config().workers.seccomp.as_str().into();
        let mut env = vec![("SIDECAR_WORKER_SECCOMP", seccomp)];
        match self.spec.family {
            Family::Text => {}
            // VISION workers run `.tflite` detectors through LiteRT too.
            Family::Lite | Family::Vision => {
                let lib = &self.config().lite_runtime;
                let lib = std::path::absolute(lib).unwrap_or_else(|_| lib.clone());
                env.push(("SIDECAR_LITERT_LIB", lib.into_os_string()));
            }
        };
        // The worker's Landlock rules open the GPU's device nodes only for
        // a model that asks for a GPU.
        let gpu = match self.spec.family {
            Family::Text => self.spec.text.gpu_layers.is_some_and(|n| n != 0),
            Family::Lite => self.spec.lite.accelerator == crate::config::LiteAccelerator::Gpu,
            Family::Vision => false,
        };
        if gpu {
            env.push(("SIDECAR_SANDBOX_GPU", "1".into()));
        }
        env
    }
}

/// The first command that stops a loading worker (`pid`): an unload, an
/// eviction, a restart, or a kill of that worker. A closed queue (the
/// supervisor is going) reads as an unload for shutdown.
async fn interrupting(cmds: &mut mpsc::Receiver<Command>, pid: u32) -> Command {
    loop {
        match cmds.recv().await {
            None => {
                let (done, _) = tokio::sync::oneshot::channel();
                return Command::Unload {
                    reason: KillReason::Shutdown,
                    done,
                };
            }
            Some(Command::EnsureLoaded) => {}
            Some(Command::Kill { pid: p, .. }) if p != pid => {}
            Some(cmd) => return cmd,
        }
    }
}

impl Handshake<'_> {
    /// The text options, with GPU layers cut to what fits in the free
    /// memory of the roomiest GPU (NVML) when layers are asked for.
    fn text_options(&self) -> sidecar_proto::v1::TextOptions {
        let mut t = self.spec.text.to_proto();
        let Some(wanted) = t.gpu_layers.filter(|n| *n != 0) else {
            return t;
        };
        if !self.guard.gpu_monitoring() {
            return t;
        }
        let Some(shape) = self.shape else {
            return t;
        };
        let size = self.size;
        let per_layer = size / shape.layers.max(1);
        let beside = self
            .memory
            .lock()
            .map_or(0, |m| m.estimate.saturating_sub(size));
        let fit = self
            .guard
            .gpu_layers(wanted, shape.layers, per_layer, beside);
        if fit != wanted {
            tracing::info!(
                model = %self.spec.id,
                "offloading {fit} layers to the GPU instead of {wanted}: that is what fits above the reserve"
            );
        }
        t.gpu_layers = Some(fit);
        t
    }

    /// Hello, then load: an error carries the worker's status code when
    /// the worker answered the load with an error, 0 otherwise.
    async fn run(&self, chan: &ipc::AsyncChannel) -> Result<Loaded, (String, u32)> {
        match self.hello_and_load(chan).await {
            Ok(answer) => answer,
            Err(message) => Err((message, 0)),
        }
    }

    /// Outer error: the handshake broke; inner: the worker's answer.
    async fn hello_and_load(
        &self,
        chan: &ipc::AsyncChannel,
    ) -> Result<Result<Loaded, (String, u32)>, String> {
        let hello = chan
            .recv_control()
            .await
            .map_err(|e| format!("no hello from the worker: {e}"))?;
        if hello.kind != Kind::Hello {
            return Err(format!("expected a hello, got {:?}", hello.kind));
        }
        let hello = Hello::decode(hello.payload).map_err(|e| format!("bad hello: {e}"))?;
        let sandbox = hello.sandbox.clone().unwrap_or_default();
        self.status.send_modify(|s| {
            s.worker_version = hello.worker_version.clone();
            // What a worker's sandbox lacks is logged once per model, and
            // again only when it changes.
            let before = s.sandbox.as_ref().map(|b| &b.missing);
            if !sandbox.missing.is_empty() && before != Some(&sandbox.missing) {
                tracing::warn!(
                    model = %self.spec.id,
                    pid = hello.pid,
                    "worker sandbox incomplete: {}",
                    sandbox.missing.join("; ")
                );
            }
            s.sandbox = Some(sandbox);
        });
        if hello.protocol_version != sidecar_proto::WORKER_PROTOCOL_VERSION {
            return Err(format!(
                "worker speaks protocol {}, this supervisor {}",
                hello.protocol_version,
                sidecar_proto::WORKER_PROTOCOL_VERSION
            ));
        }
        if hello.family != self.spec.family.to_proto() as i32 {
            return Err(format!(
                "worker serves family {}, expected {:?}",
                hello.family, self.spec.family
            ));
        }
        let req = WorkerRequest {
            request_tag: format!("load-{}", self.spec.id),
            cache_partition: String::new(),
            regions: Vec::new(),
            deadline_unix_ms: 0,
            body: Some(worker_request::Body::Load(Load {
                path: self.worker_path.clone(),
                name: self.file.display().to_string(),
                family: hello.family,
                model_id: self.spec.id.clone(),
                options: Some(match self.spec.family {
                    Family::Text => load::Options::Text(self.text_options()),
                    Family::Lite => load::Options::Lite(self.spec.lite.to_proto()),
                    Family::Vision => load::Options::Vision(sidecar_proto::v1::VisionOptions {
                        pipeline: self.pipeline.clone(),
                        ..self.spec.vision.to_proto()
                    }),
                }),
            })),
        };
        let mut answers = chan
            .request(&req.encode_to_vec())
            .await
            .map_err(|e| format!("send load: {e}"))?;
        let frame = answers
            .next()
            .await
            .ok_or("the worker closed the load request")?
            .map_err(|e| format!("worker died while loading: {e}"))?;
        match frame.kind {
            Kind::Response => {
                let r = WorkerResponse::decode(frame.payload)
                    .map_err(|e| format!("bad load answer: {e}"))?;
                match r.body {
                    Some(worker_response::Body::Loaded(l)) => Ok(Ok(l)),
                    other => Err(format!("unexpected load answer {other:?}")),
                }
            }
            Kind::Error => {
                let e = WorkerError::decode(frame.payload)
                    .map_err(|e| format!("bad load error: {e}"))?;
                Ok(Err((format!("load failed: {}", e.message), e.code)))
            }
            other => Err(format!("unexpected {other:?} frame during load")),
        }
    }
}
