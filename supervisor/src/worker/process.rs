//! Worker processes: spawning from one long-lived thread, watching for
//! exit, and the one kill path.

use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use crate::error::Error;
use crate::lifecycle::KillReason;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its pid.
    pub pid: u32,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when one killed it.
    pub signal: Option<i32>,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => {
                let name = Signal::try_from(s).map_or("?", |s| s.as_str());
                write!(f, "signal {s} ({name})")
            }
            (None, None) => f.write_str("unknown exit"),
        }
    }
}

struct Job {
    cmd: Command,
    ends: ipc::Ends,
    /// Open files the worker inherits (its model), closed here once it is
    /// spawned.
    files: Vec<std::os::fd::OwnedFd>,
    reply: oneshot::Sender<Result<Child, Error>>,
}

/// Spawns workers from one thread that lives as long as the supervisor:
/// `PR_SET_PDEATHSIG` fires when the spawning *thread* exits, so spawning
/// from a short-lived thread would kill the worker with it.
#[derive(Debug, Clone)]
pub struct Spawner {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the spawning thread.
    pub fn start() -> Result<Spawner, Error> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("worker-spawner".into())
            .spawn(move || {
                for mut job in rx {
                    let files: Vec<_> = job.files.iter().map(|f| f.as_fd()).collect();
                    let child = job
                        .ends
                        .spawn_with_files(&mut job.cmd, Some(libc::SIGKILL), &files)
                        .map_err(|e| Error::Internal(format!("spawn worker: {e}")));
                    let _ = job.reply.send(child);
                }
            })
            .map_err(|e| Error::Internal(format!("spawner thread: {e}")))?;
        Ok(Spawner { jobs: tx })
    }

    /// Spawns `program` in its own process group with a cleared
    /// environment (an allow-list passes through, plus `env`), holding
    /// `ends` and the open `files` (`ipc::inherited_files` in the worker),
    /// as `identity` (uid, gid) when given, with no supplementary groups.
    pub async fn spawn(
        &self,
        program: &std::path::Path,
        env: &[(&str, std::ffi::OsString)],
        ends: ipc::Ends,
        files: Vec<std::os::fd::OwnedFd>,
        identity: Option<(u32, u32)>,
    ) -> Result<Child, Error> {
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = identity {
            // std drops the supplementary groups when root sets a uid.
            cmd.uid(uid).gid(gid);
        }
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for key in [
            "SIDECAR_WORKER_LOG",
            "RUST_BACKTRACE",
            "LANG",
            "TZ",
            "OMP_NUM_THREADS",
            // glibc's allocator, for an operator who overrides
            // `ipc::malloc::keep_freed_memory`'s defaults.
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_MMAP_THRESHOLD_",
            "GLIBC_TUNABLES",
        ] {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                cmd,
                ends,
                files,
                reply,
            })
            .map_err(|_| Error::Internal("the spawner thread is gone".into()))?;
        rx.await
            .map_err(|_| Error::Internal("the spawner thread is gone".into()))?
    }
}

/// Reaps `child` on a thread of its own and publishes how it ended.
pub fn watch_exit(mut child: Child) -> watch::Receiver<Option<Exit>> {
    let pid = child.id();
    let (tx, rx) = watch::channel(None);
    let spawned = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let exit = match child.wait() {
                Ok(status) => Exit {
                    pid,
                    code: status.code(),
                    signal: status.signal(),
                },
                Err(_) => Exit {
                    pid,
                    code: None,
                    signal: None,
                },
            };
            let _ = tx.send(Some(exit));
        });
    if let Err(e) = spawned {
        tracing::error!(pid, "cannot start the reaper thread: {e}");
    }
    rx
}

/// The one kill path: SIGTERM to the worker's process group (and SIGCONT,
/// so a stopped worker sees it), up to `grace` to exit, then SIGKILL;
/// returns once the process is reaped.
pub async fn kill_worker(
    pid: u32,
    exit: &mut watch::Receiver<Option<Exit>>,
    reason: KillReason,
    grace: Duration,
) -> Exit {
    stop_worker(pid, exit, reason, grace).await.0
}

/// [`kill_worker`], also telling whether this kill path sent the SIGKILL
/// (the worker ignored SIGTERM): a SIGKILL in the exit is then ours, not
/// from outside.
pub async fn stop_worker(
    pid: u32,
    exit: &mut watch::Receiver<Option<Exit>>,
    reason: KillReason,
    grace: Duration,
) -> (Exit, bool) {
    if let Some(e) = *exit.borrow() {
        return (e, false);
    }
    tracing::info!(pid, reason = reason.as_str(), "killing worker");
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let _ = kill(group, Signal::SIGCONT);
    let reaped = |e: &Option<Exit>| e.is_some();
    if let Ok(Ok(e)) = tokio::time::timeout(grace, exit.wait_for(reaped)).await
        && let Some(e) = *e
    {
        return (e, false);
    }
    tracing::warn!(pid, "worker ignored SIGTERM for {grace:?}; SIGKILL");
    let _ = killpg(group, Signal::SIGKILL);
    let killed = Exit {
        pid,
        code: None,
        signal: Some(libc::SIGKILL),
    };
    match exit.wait_for(reaped).await {
        Ok(e) => (e.unwrap_or(killed), true),
        Err(_) => (killed, true),
    }
}
