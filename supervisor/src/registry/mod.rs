//! The loaded models, by id, and their health names; a model swapped for
//! another version under its id (`swap`); the names calls use, resolved to
//! a loaded version (`names`: "id@2", aliases).

mod names;
mod swap;

pub use crate::ids::{MAX_ALIASES, Target};
pub use swap::{MAX_DRAIN, MAX_KEPT, SwapOptions};

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::clock::now_ms;
use crate::config::ModelSpec;
use crate::error::Error;
use crate::ids::check_model_id;
use crate::lifecycle::{KillReason, State};
use crate::memory::{Guard, Tenant, Tenants};
use crate::metrics::ModelGauges;
use crate::shared::Shared;
use crate::store::Store;
use crate::worker::{Spawner, WorkerHandle};

/// The models by id: the registry's map, which the memory guard reads too
/// (as its `Tenants`). Built first, so the guard and the registry can both
/// be built whole. Locks are taken in field order.
#[derive(Debug, Default)]
pub struct Models {
    /// Each id's current version: what a call naming the id reaches.
    current: RwLock<BTreeMap<String, WorkerHandle>>,
    /// The other versions loaded under an id.
    aside: RwLock<Vec<Aside>>,
    /// Alias → what it names.
    aliases: RwLock<BTreeMap<String, Target>>,
    /// The last version number given under each id: numbers are never
    /// given twice while the supervisor runs (an alias pinned to "m@2"
    /// never reaches another file after `m` is unloaded and loaded again).
    numbers: std::sync::Mutex<BTreeMap<String, u32>>,
}

/// Ids whose last version number is remembered; past it, the numbers of
/// ids with nothing loaded are forgotten.
const MAX_NUMBERED: usize = 4096;

/// A worker outside the map: a swap's incoming version while it loads, an
/// outgoing one while it drains, or one kept beside the current version.
/// The memory guard counts it; a call naming the bare id never finds it.
#[derive(Debug, Clone)]
struct Aside {
    id: String,
    role: Role,
    /// What it is doing ("loading version 3 beside version 2").
    note: String,
    handle: WorkerHandle,
}

/// What a version beside the current one is there for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A swap's new version, loading; calls cannot reach it yet.
    Loading,
    /// A swapped-out version finishing its calls; no new call reaches it.
    Draining,
    /// Kept after a swap (`keep_previous`): reached as "id@version".
    Kept,
}

impl Models {
    fn list(&self) -> Vec<WorkerHandle> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl Tenants for Models {
    fn tenants(&self) -> Vec<Arc<dyn Tenant>> {
        let aside: Vec<WorkerHandle> = self
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|a| a.handle.clone())
            .collect();
        self.list()
            .into_iter()
            .chain(aside)
            .map(|h| Arc::new(h) as Arc<dyn Tenant>)
            .collect()
    }
}

/// The loaded models.
#[derive(Debug)]
pub struct Registry {
    models: Arc<Models>,
    /// The model store.
    pub store: Store,
    shared: Shared,
    spawner: Spawner,
    health: HealthReporter,
    /// The memory guard.
    pub guard: Arc<Guard>,
}

impl Registry {
    /// A registry over `models` (empty; the guard watches the same map).
    pub fn new(
        models: Arc<Models>,
        store: Store,
        shared: Shared,
        spawner: Spawner,
        health: HealthReporter,
        guard: Arc<Guard>,
    ) -> Self {
        Registry {
            models,
            store,
            shared,
            spawner,
            health,
            guard,
        }
    }

    /// Adds a model and starts its actor (which loads it now if
    /// `spec.preload`, else on the first call). Adding the same model again
    /// returns it; a different model under a taken id is ALREADY_EXISTS.
    pub fn add(&self, spec: ModelSpec) -> Result<WorkerHandle, Error> {
        self.add_version(spec, None)
    }

    /// The next version number of `id` (1 for an id never loaded).
    /// `current`: the map, held by the caller.
    fn next_version(&self, current: &BTreeMap<String, WorkerHandle>, id: &str) -> u32 {
        let loaded: std::collections::BTreeSet<String> = self
            .models
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|a| a.id.clone())
            .chain(current.keys().cloned())
            .collect();
        let mut numbers = self
            .models
            .numbers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if numbers.len() >= MAX_NUMBERED && !numbers.contains_key(id) {
            numbers.retain(|k, _| loaded.contains(k));
        }
        let n = numbers.entry(id.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// The model file and companion files of `spec`, resolved in the store.
    fn resolve_files(
        &self,
        spec: &ModelSpec,
    ) -> Result<(std::path::PathBuf, crate::worker::companions::Companions), Error> {
        check_model_id(&spec.id)?;
        let file = self.store.resolve(&spec.path)?;
        let companions = match spec.family {
            crate::config::Family::Vision => {
                crate::worker::companions::Companions::resolve(&self.store, &spec.vision.pipeline)?
            }
            _ => crate::worker::companions::Companions::default(),
        };
        Ok((file, companions))
    }

    /// Whether `spec`'s files resolve in the store (a path escaping it, a
    /// missing file, a vision pipeline's companions), without loading it.
    pub fn check_files(&self, spec: &ModelSpec) -> Result<(), Error> {
        self.resolve_files(spec).map(drop)
    }

    /// `add`, as `version` of its id (`None`: the next number).
    fn add_version(&self, spec: ModelSpec, version: Option<u32>) -> Result<WorkerHandle, Error> {
        let (file, companions) = self.resolve_files(&spec)?;
        let mut models = self
            .models
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_alias(&spec.id) {
            return Err(Error::AlreadyExists(format!(
                "model_id {:?} is an alias; delete the alias first (DeleteAlias) or choose another id",
                spec.id
            )));
        }
        if let Some(existing) = models.get(&spec.id) {
            if *existing.spec == spec {
                return Ok(existing.clone());
            }
            return Err(Error::AlreadyExists(format!(
                "model_id {:?} is already loaded with a different path, family or options; unload it first",
                spec.id
            )));
        }
        let version = version.unwrap_or_else(|| self.next_version(&models, &spec.id));
        let handle = WorkerHandle::start(
            spec,
            file,
            companions,
            self.shared.clone(),
            self.spawner.clone(),
            self.guard.clone(),
        )
        .with_version(version);
        self.shared.metrics.enroll(&handle.spec.id);
        // Its cache share lives from here to `remove`: a call that raced
        // the unload finds none and creates no figures.
        self.shared.cache.open(&handle.spec.id);
        models.insert(handle.spec.id.clone(), handle.clone());
        self.watch_health(handle.clone());
        Ok(handle)
    }

    /// The model id's current version (`get` resolves every name a call
    /// may give).
    pub fn by_id(&self, id: &str) -> Option<WorkerHandle> {
        self.models
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Every model's current version, by id.
    pub fn list(&self) -> Vec<WorkerHandle> {
        self.models.list()
    }

    /// The handles the supervisor's parts share.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Every model's gauges now, for a metrics scrape.
    pub fn gauges(&self) -> Vec<ModelGauges> {
        let now = now_ms();
        let aliases = self.aliases();
        self.list()
            .iter()
            .map(|h| {
                let info = h.info();
                let s = h.status();
                let versions = self.versions(&h.spec.id);
                ModelGauges {
                    version: h.version(),
                    versions: versions.len() as u32,
                    swapping: !self.swap_note(&h.spec.id).is_empty(),
                    aliases: aliases
                        .iter()
                        .filter(|(_, t)| {
                            t.id == h.spec.id && t.version.is_none_or(|v| versions.contains(&v))
                        })
                        .map(|(a, t)| (a.clone(), t.version))
                        .collect(),
                    model: info.model_id,
                    state: s.state,
                    in_flight: info.in_flight,
                    queue_depth: info.queue_depth,
                    uptime_s: (s.pid != 0).then(|| (now - s.started_unix_ms).max(0) / 1000),
                    memory: info.memory.map(|m| {
                        let gpu = m.gpu.iter().map(|g| g.used_bytes).sum();
                        [m.host_private_bytes, m.host_file_bytes, gpu]
                    }),
                }
            })
            .collect()
    }

    /// Stops a model's current worker and forgets it (its versions kept
    /// beside it: `remove_kept`).
    pub async fn remove(&self, id: &str, reason: KillReason) -> Result<(), Error> {
        let handle = self
            .by_id(id)
            .ok_or_else(|| Error::NotFound(format!("model {id:?} is not loaded")))?;
        handle.unload(reason).await;
        // Its answers go with it: a model loaded again under this id
        // computes them afresh.
        self.shared.cache.forget(id).await;
        // Only the version unloaded: a swap may have switched the id since.
        let mut map = self
            .models
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if map.get(id).is_some_and(|h| h.same(&handle)) {
            map.remove(id);
        }
        Ok(())
    }

    /// Required models that are not READY (empty: ready).
    pub fn not_ready(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|h| h.required() && h.status().state != State::Ready)
            .map(|h| format!("{} ({:?})", h.spec.id, h.status().state))
            .collect()
    }

    /// Keeps `model/<id>` in grpc.health.v1 in step with the model's state.
    fn watch_health(&self, mut handle: WorkerHandle) {
        let mut health = self.health.clone();
        let models = self.models.clone();
        tokio::spawn(async move {
            let name = format!("model/{}", handle.spec.id);
            loop {
                let state = handle.status().state;
                let serving = if state == State::Ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                // A version swapped out speaks no more for the id.
                let current = models
                    .current
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&handle.spec.id)
                    .is_some_and(|h| h.same(&handle));
                if !current {
                    return;
                }
                health.set_service_status(&name, serving).await;
                if state == State::Stopped || !handle.changed().await {
                    health.clear_service_status(&name).await;
                    return;
                }
            }
        });
    }
}
