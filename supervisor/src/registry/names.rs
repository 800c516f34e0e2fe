//! The names a call may give for a model, resolved to one loaded version
//! when the call is admitted: a model id (its current version),
//! "id@version" (one loaded version), or an alias naming either.
//!
//! An alias is one map entry, replaced in one step: a call or stream
//! admitted before a change holds the version it found, and those admitted
//! after find the new target. Aliases and model ids share one namespace
//! (neither may take the other's name), and an alias never names an alias.

use std::sync::PoisonError;

use super::{Registry, Role};
use crate::error::Error;
use crate::ids::{MAX_ALIASES, Target, check_model_id};
use crate::lifecycle::KillReason;
use crate::worker::WorkerHandle;

impl Registry {
    /// The loaded version a call naming `name` reaches now: an id's current
    /// version, "id@version", or what an alias names.
    pub fn get(&self, name: &str) -> Result<WorkerHandle, Error> {
        if let Some(h) = self.by_id(name) {
            return Ok(h);
        }
        let alias = self
            .models
            .aliases
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        match alias {
            Some(target) => self.version_of(&target).map_err(|e| {
                e.map_message(&|m: String| format!("alias {name:?} names {:?}: {m}", target.name()))
            }),
            None if name.contains('@') => self.version_of(&Target::parse(name)?),
            None => Err(Error::NotFound(format!(
                "model {:?} is not loaded",
                name.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// The loaded version `target` names.
    fn version_of(&self, target: &Target) -> Result<WorkerHandle, Error> {
        let current = self.by_id(&target.id);
        let Some(version) = target.version else {
            return current
                .ok_or_else(|| Error::NotFound(format!("model {:?} is not loaded", target.id)));
        };
        if let Some(h) = current.as_ref().filter(|h| h.version() == version) {
            return Ok(h.clone());
        }
        let aside = self
            .models
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|a| a.id == target.id && a.handle.version() == version)
            .map(|a| (a.role, a.handle.clone()));
        let serving = current.map(|h| h.version());
        match (aside, serving) {
            (Some((Role::Kept, h)), _) => Ok(h),
            (Some((Role::Loading, _)), _) => Err(Error::Unavailable(format!(
                "model {:?} version {version} is still loading beside the current version; call {:?}",
                target.id, target.id
            ))),
            (Some((Role::Draining, _)), Some(now)) => Err(Error::FailedPrecondition(format!(
                "model {:?} version {version} is draining after a swap to version {now}; call {:?}",
                target.id, target.id
            ))),
            (_, None) => Err(Error::NotFound(format!(
                "model {:?} is not loaded",
                target.id
            ))),
            (_, Some(_)) => Err(Error::NotFound(format!(
                "model {:?} has no version {version} loaded (loaded: {:?})",
                target.id,
                self.versions(&target.id)
            ))),
        }
    }

    /// Every version of `id` calls may reach, ascending.
    pub fn versions(&self, id: &str) -> Vec<u32> {
        // The current map before the aside list (the lock order).
        let current = self.by_id(id).map(|h| h.version());
        let mut v: Vec<u32> = self
            .models
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|a| a.id == id && a.role == Role::Kept)
            .map(|a| a.handle.version())
            .chain(current)
            .collect();
        v.sort_unstable();
        v
    }

    /// The versions kept beside the current ones, by id then version.
    pub fn kept(&self) -> Vec<WorkerHandle> {
        let mut kept: Vec<WorkerHandle> = self
            .models
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|a| a.role == Role::Kept)
            .map(|a| a.handle.clone())
            .collect();
        kept.sort_by(|a, b| (&a.spec.id, a.version()).cmp(&(&b.spec.id, b.version())));
        kept
    }

    /// How many versions are kept beside `id`'s current one.
    pub fn kept_of(&self, id: &str) -> usize {
        self.models
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|a| a.id == id && a.role == Role::Kept)
            .count()
    }

    /// Whether `handle` is its id's current version.
    pub fn is_current(&self, handle: &WorkerHandle) -> bool {
        self.by_id(&handle.spec.id).is_some_and(|h| h.same(handle))
    }

    /// Unloads one version kept beside `target.id`'s current one (after
    /// `drain`, its calls' time to finish); refused while an alias is
    /// pinned to it.
    pub async fn remove_kept(
        &self,
        target: &Target,
        drain: Option<std::time::Duration>,
    ) -> Result<(), Error> {
        self.unload_kept(target, drain, true).await
    }

    async fn unload_kept(
        &self,
        target: &Target,
        drain: Option<std::time::Duration>,
        check_aliases: bool,
    ) -> Result<(), Error> {
        let handle = self.version_of(target)?;
        let pinned: Vec<String> = self
            .aliases()
            .into_iter()
            .filter(|(_, t)| t == target)
            .map(|(a, _)| a)
            .collect();
        if check_aliases && !pinned.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{:?} is named by aliases {pinned:?}: move or delete them first",
                target.name()
            )));
        }
        if self.is_current(&handle) {
            return Err(Error::FailedPrecondition(format!(
                "{:?} is model {:?}'s current version: unload {:?} (every version) or swap it first",
                target.name(),
                target.id,
                target.id
            )));
        }
        // No new call reaches it from here.
        self.set_role(
            &handle,
            Role::Draining,
            format!("version {} draining", handle.version()),
        );
        if let Some(wait) = drain
            && !handle.drain(wait).await
        {
            tracing::warn!(model = %target.name(), "calls still running after {wait:?}; unloading anyway");
        }
        handle.unload(KillReason::Requested).await;
        self.models
            .aside
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|a| !a.handle.same(&handle));
        Ok(())
    }

    /// Unloads every version kept beside `id`'s current one (the id is
    /// going: aliases pinned to them are left naming nothing).
    pub async fn remove_all_kept(&self, id: &str, drain: Option<std::time::Duration>) {
        for h in self.kept().into_iter().filter(|h| h.spec.id == id) {
            let target = Target {
                id: id.to_owned(),
                version: Some(h.version()),
            };
            if let Err(e) = self.unload_kept(&target, drain, false).await {
                tracing::warn!(model = %target.name(), "unloading a kept version: {e}");
            }
        }
    }

    fn set_role(&self, handle: &WorkerHandle, role: Role, note: String) {
        for a in self
            .models
            .aside
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .filter(|a| a.handle.same(handle))
        {
            a.role = role;
            a.note.clone_from(&note);
        }
    }

    /// Whether `name` is an alias.
    pub fn is_alias(&self, name: &str) -> bool {
        self.models
            .aliases
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }

    /// Points `alias` at `target` (which must be loaded now); returns what
    /// it named before. Checked and set under the locks, in their order:
    /// no load, unload or swap comes between.
    pub fn set_alias(&self, alias: &str, target: Target) -> Result<Option<Target>, Error> {
        check_model_id(alias).map_err(|_| {
            Error::InvalidArgument(format!(
                "alias {:?} must be 1..64 characters of [a-z0-9._-] starting with a letter or digit",
                alias.chars().take(80).collect::<String>()
            ))
        })?;
        let current = self
            .models
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let aside = self
            .models
            .aside
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut aliases = self
            .models
            .aliases
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if current.contains_key(alias) {
            return Err(Error::AlreadyExists(format!(
                "alias {alias:?} is a loaded model's id; an alias needs a name of its own"
            )));
        }
        if aliases.contains_key(&target.id) {
            return Err(Error::InvalidArgument(format!(
                "alias {alias:?}: {:?} is an alias itself; name a model id",
                target.id
            )));
        }
        let Some(serving) = current.get(&target.id) else {
            return Err(Error::NotFound(format!(
                "alias {alias:?}: model {:?} is not loaded",
                target.id
            )));
        };
        if let Some(v) = target.version {
            let kept = aside
                .iter()
                .any(|a| a.id == target.id && a.role == Role::Kept && a.handle.version() == v);
            if serving.version() != v && !kept {
                return Err(Error::NotFound(format!(
                    "alias {alias:?}: model {:?} has no version {v} that calls may reach",
                    target.id
                )));
            }
        }
        if !aliases.contains_key(alias) && aliases.len() >= MAX_ALIASES {
            return Err(Error::ResourceExhausted(format!(
                "alias {alias:?}: {MAX_ALIASES} aliases exist already (the limit); delete one first"
            )));
        }
        Ok(aliases.insert(alias.to_owned(), target))
    }

    /// Removes `alias`; returns what it named.
    pub fn delete_alias(&self, alias: &str) -> Result<Target, Error> {
        self.models
            .aliases
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(alias)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "alias {:?} does not exist",
                    alias.chars().take(80).collect::<String>()
                ))
            })
    }

    /// Every alias, by name.
    pub fn aliases(&self) -> Vec<(String, Target)> {
        self.models
            .aliases
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(a, t)| (a.clone(), t.clone()))
            .collect()
    }

    /// The aliases naming `handle` now (its id while current, or its
    /// version), by name.
    pub fn aliases_of(&self, handle: &WorkerHandle) -> Vec<String> {
        let current = self.is_current(handle);
        self.aliases()
            .into_iter()
            .filter(|(_, t)| {
                t.id == handle.spec.id
                    && match t.version {
                        Some(v) => v == handle.version(),
                        None => current,
                    }
            })
            .map(|(a, _)| a)
            .collect()
    }
}
