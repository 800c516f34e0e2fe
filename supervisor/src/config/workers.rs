//! `[workers]`: heartbeats, restarts, queues, and how workers are
//! sandboxed (seccomp mode, uid/gid).

use std::time::Duration;

use serde::Deserialize;

use super::units::secs;
use crate::error::Error;

/// Heartbeats, restarts, queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerPolicy {
    /// A worker without a heartbeat this long is killed (`unhealthy`).
    #[serde(with = "secs")]
    pub heartbeat_timeout: Duration,
    /// More than this many restarts within `restart_window` marks the model
    /// FAILED.
    pub max_restarts: u32,
    /// See `max_restarts`.
    #[serde(with = "secs")]
    pub restart_window: Duration,
    /// First restart delay; doubles each time, with ±20 % jitter.
    #[serde(with = "secs")]
    pub backoff_initial: Duration,
    /// Largest restart delay.
    #[serde(with = "secs")]
    pub backoff_max: Duration,
    /// A request in flight in two self-raised worker crashes within this
    /// long is refused (INVALID_ARGUMENT) for this long.
    #[serde(with = "secs")]
    pub quarantine_ttl: Duration,
    /// SIGTERM → SIGKILL grace of the kill path.
    #[serde(with = "secs")]
    pub kill_grace: Duration,
    /// Calls waiting per model beyond those executing; more get
    /// RESOURCE_EXHAUSTED at once.
    pub queue_size: usize,
    /// Calls executing per model at once.
    pub max_in_flight: usize,
    /// Ring size of each worker's channel, bytes each way. Rings that
    /// carry frames or tensors (VISION requests, LITE both ways) are grown
    /// so that every message the API accepts (`max_message_bytes`) fits;
    /// see [`Config::channel`].
    pub channel_bytes: usize,
    /// The workers' seccomp filter: `enforce` (a call off the family's
    /// allow-list kills the worker with SIGSYS), `log` (it is let through
    /// and the kernel logs it: the switch for a runtime path that needs a
    /// call the lists missed), `off` (no filter).
    pub seccomp: SeccompMode,
    /// Every worker runs as this uid (with `gid`: both or neither), without
    /// supplementary groups, so that a worker a model file took over
    /// cannot signal, trace or read the supervisor. Needs the supervisor to
    /// start as root. Unset: the supervisor's own uid and gid.
    pub uid: Option<u32>,
    /// See `uid`.
    pub gid: Option<u32>,
}

impl WorkerPolicy {
    /// Refuses `workers.uid` without `workers.gid` and the reverse, and
    /// uid 0 (root is what a separate uid is there to avoid).
    pub fn check_pair(&self) -> Result<(), Error> {
        if self.uid.is_some() != self.gid.is_some() {
            return Err(Error::Config(
                "workers.uid and workers.gid go together: set both or neither".into(),
            ));
        }
        if self.uid == Some(0) {
            return Err(Error::Config(
                "workers.uid = 0 runs workers as root; name an unprivileged uid (e.g. 65534), \
                 or leave workers.uid and workers.gid out"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The (uid, gid) workers run as, when configured.
    pub fn identity(&self) -> Option<(u32, u32)> {
        self.uid.zip(self.gid)
    }

    /// Refuses `workers.uid`/`gid` that cannot be honoured: one without
    /// the other, or a supervisor that is not root (`euid`).
    pub fn check_identity(&self, euid: u32) -> Result<(), Error> {
        self.check_pair()?;
        match (self.uid, self.gid) {
            (Some(uid), Some(gid)) if euid != 0 => Err(Error::Config(format!(
                "workers.uid = {uid}, workers.gid = {gid}: running workers as another user needs the supervisor to start as root (it runs as uid {euid}); remove them or start as root"
            ))),
            _ => Ok(()),
        }
    }
}

/// `[workers] seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Calls off the allow-list kill the worker.
    #[default]
    Enforce,
    /// Calls off the allow-list are logged by the kernel and let through.
    Log,
    /// No filter.
    Off,
}

impl SeccompMode {
    /// The value the worker reads from `SIDECAR_WORKER_SECCOMP`.
    pub fn as_str(self) -> &'static str {
        match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        }
    }
}

impl Default for WorkerPolicy {
    fn default() -> Self {
        WorkerPolicy {
            heartbeat_timeout: Duration::from_secs(5),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
            queue_size: 64,
            max_in_flight: 4,
            channel_bytes: 4 << 20,
            quarantine_ttl: Duration::from_secs(600),
            seccomp: SeccompMode::Enforce,
            uid: None,
            gid: None,
        }
    }
}
