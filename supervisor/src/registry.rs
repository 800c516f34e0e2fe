//! The loaded models, by id, and their health names.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{Config, ModelSpec};
use crate::error::Error;
use crate::memory::Guard;
use crate::store::Store;
use crate::worker::{KillReason, Spawner, State, WorkerHandle};

/// Checks a model id: 1..64 of [a-z0-9._-], starting with a letter or
/// digit.
pub fn check_model_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "model_id {id:?} must be 1..64 characters of [a-z0-9._-] starting with a letter or digit"
        )))
    }
}

/// The loaded models.
#[derive(Debug)]
pub struct Registry {
    models: RwLock<BTreeMap<String, WorkerHandle>>,
    /// The model store.
    pub store: Store,
    config: Arc<Config>,
    spawner: Spawner,
    health: HealthReporter,
    /// The memory guard.
    pub guard: Arc<Guard>,
}

impl Registry {
    /// An empty registry.
    pub fn new(
        store: Store,
        config: Arc<Config>,
        spawner: Spawner,
        health: HealthReporter,
        guard: Arc<Guard>,
    ) -> Self {
        Registry {
            models: RwLock::default(),
            store,
            config,
            spawner,
            health,
            guard,
        }
    }

    /// Adds a model and starts its actor (which loads it now if
    /// `spec.preload`, else on the first call). Adding the same model again
    /// returns it; a different model under a taken id is ALREADY_EXISTS.
    pub fn add(&self, spec: ModelSpec) -> Result<WorkerHandle, Error> {
        check_model_id(&spec.id)?;
        let file = self.store.resolve(&spec.path)?;
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = models.get(&spec.id) {
            if *existing.spec == spec {
                return Ok(existing.clone());
            }
            return Err(Error::AlreadyExists(format!(
                "model_id {:?} is already loaded with a different path, family or options; unload it first",
                spec.id
            )));
        }
        let handle = WorkerHandle::start(
            spec,
            file,
            self.config.clone(),
            self.spawner.clone(),
            self.guard.clone(),
        );
        models.insert(handle.spec.id.clone(), handle.clone());
        self.watch_health(handle.clone());
        Ok(handle)
    }

    /// A model by id.
    pub fn get(&self, id: &str) -> Result<WorkerHandle, Error> {
        self.models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("model {id:?} is not loaded")))
    }

    /// Every model, by id.
    pub fn list(&self) -> Vec<WorkerHandle> {
        self.models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Stops a model's worker and forgets it.
    pub async fn remove(&self, id: &str, reason: KillReason) -> Result<(), Error> {
        let handle = self.get(id)?;
        handle.unload(reason).await;
        self.models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
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
        tokio::spawn(async move {
            let name = format!("model/{}", handle.spec.id);
            loop {
                let state = handle.status().state;
                let serving = if state == State::Ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                health.set_service_status(&name, serving).await;
                if state == State::Stopped || !handle.changed().await {
                    health.clear_service_status(&name).await;
                    return;
                }
            }
        });
    }
}
