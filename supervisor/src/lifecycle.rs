//! The words of a model's lifecycle, shared by the actor, the memory guard,
//! metrics, logs and the API: its states and the reasons a worker is
//! killed. A leaf: it depends on nothing else in the crate.

use sidecar_proto::v1::ModelState;

/// Lifecycle states: the model states of `DESIGN.md`, plus the actor's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Lazily loaded and not loaded yet.
    Idle,
    /// Spawning, loading, warming up.
    Loading,
    /// Serving.
    Ready,
    /// Admitting no new calls.
    Draining,
    /// Waiting out the backoff before a new worker.
    Restarting,
    /// Restart limit reached or the load failed for good.
    Failed,
    /// Being unloaded.
    Unloading,
    /// Unloaded; the actor has ended.
    Stopped,
}

impl State {
    /// The wire enum (Idle reads as LOADING-to-be: not yet loaded).
    pub fn to_proto(self) -> ModelState {
        match self {
            State::Idle | State::Loading => ModelState::Loading,
            State::Ready => ModelState::Ready,
            State::Draining => ModelState::Draining,
            State::Restarting => ModelState::Restarting,
            State::Failed => ModelState::Failed,
            State::Unloading | State::Stopped => ModelState::Unloading,
        }
    }
}

impl State {
    /// Every state, in order.
    pub const ALL: [State; 8] = [
        State::Idle,
        State::Loading,
        State::Ready,
        State::Draining,
        State::Restarting,
        State::Failed,
        State::Unloading,
        State::Stopped,
    ];

    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Loading => "loading",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Restarting => "restarting",
            State::Failed => "failed",
            State::Unloading => "unloading",
            State::Stopped => "stopped",
        }
    }
}

/// Why the supervisor ended a worker: the one list of `DESIGN.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// It died on its own.
    Crash,
    /// Host memory.
    Oom,
    /// GPU memory.
    Vram,
    /// Did not stop after a deadline's cancel.
    Timeout,
    /// Missed heartbeats.
    Unhealthy,
    /// Asked for.
    Requested,
    /// Supervisor shutdown.
    Shutdown,
    /// It broke the channel's rules (frames past its credit window or the
    /// control queue's bound, malformed frames).
    Protocol,
}

impl KillReason {
    /// Every reason, in `DESIGN.md`'s order.
    pub const ALL: [KillReason; 8] = [
        KillReason::Crash,
        KillReason::Oom,
        KillReason::Vram,
        KillReason::Timeout,
        KillReason::Unhealthy,
        KillReason::Requested,
        KillReason::Shutdown,
        KillReason::Protocol,
    ];

    /// Whether a restart for this reason counts towards FAILED
    /// (`DESIGN.md`'s restart table): a kill for a request's deadline
    /// (`timeout`), an asked-for restart and a shutdown never do, so no
    /// client can take a model offline with expensive calls and short
    /// deadlines; a crash, a failed start, `oom`, `vram`, `unhealthy` and
    /// `protocol` do.
    pub fn counts_towards_failed(self) -> bool {
        !matches!(
            self,
            KillReason::Timeout | KillReason::Requested | KillReason::Shutdown
        )
    }

    /// Why a channel failed, as a kill reason: a worker that broke the
    /// channel's rules (`protocol`), or one that went away (`crash`).
    pub fn of_channel(e: &ipc::Error) -> KillReason {
        match e {
            ipc::Error::Protocol(_) | ipc::Error::Corrupt(_) => KillReason::Protocol,
            _ => KillReason::Crash,
        }
    }

    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Crash => "crash",
            KillReason::Oom => "oom",
            KillReason::Vram => "vram",
            KillReason::Timeout => "timeout",
            KillReason::Unhealthy => "unhealthy",
            KillReason::Requested => "requested",
            KillReason::Shutdown => "shutdown",
            KillReason::Protocol => "protocol",
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> sidecar_proto::v1::KillReason {
        use sidecar_proto::v1::KillReason as K;
        match self {
            KillReason::Crash => K::Crash,
            KillReason::Oom => K::Oom,
            KillReason::Vram => K::Vram,
            KillReason::Timeout => K::Timeout,
            KillReason::Unhealthy => K::Unhealthy,
            KillReason::Requested => K::Requested,
            KillReason::Shutdown => K::Shutdown,
            KillReason::Protocol => K::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        let states: std::collections::BTreeSet<_> = State::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(states.len(), State::ALL.len());
        let reasons: std::collections::BTreeSet<_> =
            KillReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons.len(), KillReason::ALL.len());
    }
}
