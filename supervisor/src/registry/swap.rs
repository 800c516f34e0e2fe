//! A model swapped for another version under its id without a failed call:
//! the new version loads beside the old one (through the memory
//! admission), the id switches to it in one step once it is READY, and the
//! old one finishes the calls and streams it holds, then unloads.
//!
//! Calls find a model by id in the registry's map at admission. After the
//! switch no new call can find the old version; a call that found it just
//! before is admitted by it (the old version is marked draining only after
//! `SETTLE`, far longer than the few statements between the lookup and the
//! admission), and the drain waits for every call it admitted.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::{Aside, Registry, Role};
use crate::config::ModelSpec;
use crate::error::Error;
use crate::lifecycle::{KillReason, State};
use crate::worker::{REFUSED_MEMORY, Status, WorkerHandle};

/// How long the old version keeps admitting calls after the switch (calls
/// that looked it up just before).
const SETTLE: Duration = Duration::from_millis(200);

/// Most versions kept beside an id's current one (`keep_previous`).
pub const MAX_KEPT: usize = 3;

/// Most a swap's drain may last.
pub const MAX_DRAIN: Duration = Duration::from_secs(3600);

/// How a swap goes.
#[derive(Debug, Clone, Copy)]
pub struct SwapOptions {
    /// Unload the old version first when both do not fit.
    pub allow_cold: bool,
    /// How long the old version's calls may run after the switch.
    pub drain: Duration,
    /// When the new version must be READY.
    pub deadline: Instant,
    /// Keep the old version loaded (reached as "id@version") instead of
    /// draining and unloading it.
    pub keep_previous: bool,
}

impl Registry {
    /// Replaces the model under `spec.id` with `spec` (see the module
    /// doc); loads it as a new model when the id is free. The same spec:
    /// nothing to do. Returns the version now serving once the switch is
    /// made (the old version drains in the background).
    pub async fn swap(&self, spec: ModelSpec, opts: SwapOptions) -> Result<WorkerHandle, Error> {
        let Some(old) = self.by_id(&spec.id) else {
            return self.add(spec);
        };
        if *old.spec == spec {
            return Ok(old);
        }
        if old.spec.family != spec.family {
            return Err(Error::FailedPrecondition(format!(
                "model {:?} is a {:?} model; a swap keeps the family (unload it first to load a {:?} model under this id)",
                spec.id, old.spec.family, spec.family
            )));
        }
        let id = spec.id.clone();
        let pinned: Vec<String> = self
            .aliases()
            .into_iter()
            .filter(|(_, t)| t.id == id && t.version == Some(old.version()))
            .map(|(a, _)| a)
            .collect();
        if !pinned.is_empty() && !opts.keep_previous {
            return Err(Error::FailedPrecondition(format!(
                "model {id:?}: aliases {pinned:?} are pinned to version {}, which this swap would unload: swap with keep_previous, or move the aliases first",
                old.version()
            )));
        }
        if opts.keep_previous && self.kept_of(&id) >= MAX_KEPT {
            return Err(Error::FailedPrecondition(format!(
                "model {id:?} keeps {MAX_KEPT} versions beside its current one already (the limit): unload one (UnloadModel \"{id}@N\") first"
            )));
        }
        let (file, companions) = self.resolve_files(&spec)?;
        // A number given to a swap refused below is not given again.
        let version = {
            let current = self
                .models
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            self.next_version(&current, &id)
        };
        let new = {
            let mut aside = self
                .models
                .aside
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if aside.iter().any(|a| a.id == id && a.role == Role::Loading) {
                return Err(Error::FailedPrecondition(format!(
                    "model {id:?}: a swap is already in progress; wait for it (GetModel shows it)"
                )));
            }
            let new = crate::worker::WorkerHandle::start(
                ModelSpec {
                    preload: true,
                    ..spec
                },
                file,
                companions,
                self.shared.clone(),
                self.spawner.clone(),
                self.guard.clone(),
            )
            .with_version(version);
            new.set_aside(true);
            aside.push(Aside {
                id: id.clone(),
                role: Role::Loading,
                note: format!("loading version {version} beside version {}", old.version()),
                handle: new.clone(),
            });
            new
        };
        tracing::info!(model = %id, version, "swap: loading the new version beside the old one");
        let settled = settle(&new, opts.deadline).await;
        if settled.state != State::Ready {
            self.set_aside(&new, None);
            new.unload(KillReason::Requested).await;
            let why = if settled.state == State::Idle || settled.state == State::Loading {
                settled.last_error.clone()
            } else {
                format!("{:?}: {}", settled.state, settled.last_error)
            };
            if settled.last_error_code == REFUSED_MEMORY && opts.allow_cold {
                tracing::warn!(model = %id, "swap: both versions do not fit; unloading the old one first (allow_cold_swap)");
                self.shared.metrics.swap(&id, "cold");
                self.remove(&id, KillReason::Requested).await?;
                let spec = ModelSpec {
                    preload: true,
                    ..(*new.spec).clone()
                };
                return self.add_version(spec, Some(version));
            }
            self.shared.metrics.swap(&id, "error");
            return Err(refusal(&id, version, old.version(), &settled, why));
        }
        // The switch, in one step under the map's lock, only if the id
        // still serves the version this swap replaces (an unload or another
        // swap may have come first).
        let switched = {
            let mut map = self
                .models
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let still = map.get(&id).is_some_and(|h| h.same(&old));
            if still {
                map.insert(id.clone(), new.clone());
                new.set_aside(false);
                old.set_aside(true);
            }
            still
        };
        if !switched {
            self.shared.metrics.swap(&id, "error");
            self.set_aside(&new, None);
            new.unload(KillReason::Requested).await;
            return Err(Error::FailedPrecondition(format!(
                "model {id:?}: version {} was unloaded or replaced while version {version} loaded; version {version} is unloaded",
                old.version()
            )));
        }
        self.shared.metrics.swap(&id, "ok");
        if opts.keep_previous {
            self.set_aside(
                &new,
                Some(Aside {
                    id: id.clone(),
                    role: Role::Kept,
                    note: String::new(),
                    handle: old.clone(),
                }),
            );
            self.watch_health(new.clone());
            tracing::info!(model = %id, version, kept = old.version(), "swap: the id now serves the new version; the old one stays loaded");
            return Ok(new);
        }
        self.set_aside(
            &new,
            Some(Aside {
                id: id.clone(),
                role: Role::Draining,
                note: format!("version {} draining", old.version()),
                handle: old.clone(),
            }),
        );
        self.watch_health(new.clone());
        tracing::info!(model = %id, version, "swap: the id now serves the new version; the old one drains");
        let registry_models = self.models.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE).await;
            if !old.drain(opts.drain).await {
                tracing::warn!(model = %old.spec.id, "swap: calls still running on the old version after {:?}; unloading it anyway", opts.drain);
            }
            old.unload(KillReason::Requested).await;
            registry_models
                .aside
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|a| !a.handle.same(&old));
            tracing::info!(model = %old.spec.id, version = old.version(), "swap: the old version is unloaded");
        });
        Ok(new)
    }

    /// Replaces `handle`'s entry among the workers aside by `with` (none:
    /// removes it).
    fn set_aside(&self, handle: &WorkerHandle, with: Option<Aside>) {
        let mut aside = self
            .models
            .aside
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        aside.retain(|a| !a.handle.same(handle));
        aside.extend(with);
    }

    /// The workers of swaps beside the serving ones (loading or draining).
    pub fn aside(&self) -> Vec<WorkerHandle> {
        self.models
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|a| a.handle.clone())
            .collect()
    }

    /// What a swap of `id` is doing, for ModelInfo.swap (empty: none).
    pub fn swap_note(&self, id: &str) -> String {
        self.models
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|a| a.id == id && a.role != Role::Kept)
            .map(|a| a.note.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Waits until `new` is READY, FAILED or STOPPED, refused for memory,
/// failed its first start (a swap does not retry: the old version serves
/// meanwhile, and the caller hears why at once), or `deadline`.
async fn settle(new: &WorkerHandle, deadline: Instant) -> Status {
    let mut rx = new.clone();
    loop {
        let s = rx.status();
        let refused = s.state == State::Idle && s.last_error_code == REFUSED_MEMORY;
        let retrying = s.state == State::Restarting || s.restarts > 0;
        if matches!(s.state, State::Ready | State::Failed | State::Stopped) || refused || retrying {
            return s;
        }
        match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
            Ok(true) => {}
            _ => return rx.status(),
        }
    }
}

/// The error of a swap whose new version did not become READY; the old
/// version still serves.
fn refusal(id: &str, version: u32, serving: u32, s: &Status, why: String) -> Error {
    let message = format!(
        "model {id:?}: version {version} did not load ({why}); version {serving} keeps serving"
    );
    match (s.state, s.last_error_code) {
        (_, REFUSED_MEMORY) => Error::ResourceExhausted(format!(
            "{message}. Both versions do not fit in memory at once: set allow_cold_swap to unload the old one first"
        )),
        (State::Failed, 3) => Error::InvalidArgument(message),
        (State::Failed, 9) => Error::FailedPrecondition(message),
        (State::Loading | State::Idle, _) => Error::DeadlineExceeded(message),
        _ => Error::Unavailable(message),
    }
}
