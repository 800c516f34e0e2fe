//! What the guard sees of the models it watches and what it may do to
//! them: a narrow view that the worker layer implements (`WorkerHandle`)
//! and the registry's model map lists, so the guard needs neither the
//! registry nor the actor, and tests can hand it fakes.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sidecar_proto::v1::GpuMemory;

use super::SharedMemory;
use crate::config::ModelSpec;
use crate::lifecycle::{KillReason, State};

/// A future the guard awaits: an eviction carried out, or a kill handed to
/// the actor.
pub type Done<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One model's lifecycle, read at once.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Its state.
    pub state: State,
    /// Its worker's pid (0: none).
    pub pid: u32,
    /// When it first became READY (Unix ms; 0: never).
    pub loaded_unix_ms: i64,
    /// GPU memory its worker reported about itself.
    pub reported_gpu: Vec<GpuMemory>,
}

/// One model, as the guard sees it.
pub trait Tenant: Send + Sync + Debug {
    /// Its configuration.
    fn spec(&self) -> &ModelSpec;
    /// Its lifecycle now.
    fn view(&self) -> View;
    /// The guard's figures for it (shared with its actor).
    fn figures(&self) -> &SharedMemory;
    /// Calls running or waiting.
    fn busy(&self) -> bool;
    /// Its last call (Unix ms; 0: none).
    fn last_used_ms(&self) -> i64;
    /// Has the actor kill worker `pid` (if still current) through its one
    /// kill path, `note` saying why; done once the actor has the command.
    fn kill(&self, pid: u32, reason: KillReason, note: String) -> Done<'_>;
    /// Stops its worker to free memory (the model goes back to IDLE);
    /// done once the process is gone.
    fn evict(&self, note: String) -> Done<'_>;
    /// Whether calls find it by its id; false for a swap's version loading
    /// beside the serving one or draining after it (`registry::swap`):
    /// counted, never evicted to make room, never speaking for the id's
    /// health.
    fn current(&self) -> bool {
        true
    }
}

/// The models the guard watches.
pub trait Tenants: Send + Sync + Debug {
    /// Every model now.
    fn tenants(&self) -> Vec<Arc<dyn Tenant>>;
}
