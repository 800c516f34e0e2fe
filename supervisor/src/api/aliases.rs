//! ModelService's names: aliases (SetAlias, DeleteAlias), versions kept
//! beside a model's current one, and what UnloadModel does with each name.

use std::time::Duration;

use sidecar_proto::v1::{
    DeleteAliasRequest, ModelAlias, ModelInfo, SetAliasRequest, SetAliasResponse,
    UnloadModelRequest,
};

use crate::error::Error;
use crate::lifecycle::KillReason;
use crate::registry::{Registry, Target};
use crate::worker::WorkerHandle;

/// The wire form of an alias.
pub fn alias(name: String, t: Target) -> ModelAlias {
    ModelAlias {
        alias: name,
        model_id: t.id,
        version: t.version.unwrap_or(0),
    }
}

/// SetAlias.
pub fn set(registry: &Registry, req: SetAliasRequest) -> Result<SetAliasResponse, Error> {
    let mut target = Target::parse(&req.model_id).map_err(|e| {
        e.map_message(&|m: String| format!("SetAlias {:?}: {m}", short(&req.alias)))
    })?;
    if req.version != 0 {
        if target.version.is_some() {
            return Err(Error::InvalidArgument(format!(
                "SetAlias {:?}: a version both in model_id {:?} and in version {}; give one",
                short(&req.alias),
                short(&req.model_id),
                req.version
            )));
        }
        target.version = Some(req.version);
    }
    let previous = registry.set_alias(&req.alias, target.clone())?;
    tracing::info!(alias = %req.alias, target = %target.name(), previous = ?previous.as_ref().map(Target::name), "SetAlias");
    Ok(SetAliasResponse {
        previous: previous.map(|p| alias(req.alias.clone(), p)),
        alias: Some(alias(req.alias, target)),
    })
}

/// DeleteAlias.
pub fn delete(registry: &Registry, req: DeleteAliasRequest) -> Result<(), Error> {
    let was = registry.delete_alias(&req.alias)?;
    tracing::info!(alias = %req.alias, target = %was.name(), "DeleteAlias");
    Ok(())
}

/// UnloadModel: a model id unloads every version of it; "id@version" one
/// version kept beside the current one; an alias is refused.
pub async fn unload(registry: &Registry, req: UnloadModelRequest) -> Result<(), Error> {
    if registry.is_alias(&req.model_id) {
        return Err(Error::InvalidArgument(format!(
            "model_id {:?} is an alias: delete it (DeleteAlias), or unload the model it names",
            req.model_id
        )));
    }
    let wait = (!req.force).then(|| match req.drain_timeout_ms {
        0 => Duration::from_secs(10),
        ms => Duration::from_millis(u64::from(ms)),
    });
    let target = Target::parse(&req.model_id)?;
    if target.version.is_some() {
        return registry.remove_kept(&target, wait).await;
    }
    let kept = registry.kept_of(&target.id);
    let Some(handle) = registry.by_id(&target.id) else {
        if kept == 0 {
            return Err(Error::NotFound(format!(
                "model {:?} is not loaded",
                target.id
            )));
        }
        // Versions kept after their id's current one went.
        registry.remove_all_kept(&target.id, wait).await;
        return Ok(());
    };
    if let Some(wait) = wait
        && !handle.drain(wait).await
    {
        tracing::warn!(model = %target.id, "calls still running after {wait:?}; unloading anyway");
    }
    let removed = registry.remove(&target.id, KillReason::Requested).await;
    registry.remove_all_kept(&target.id, wait).await;
    removed
}

/// A version's info with the registry's view of it: a swap in progress,
/// its aliases, whether it is current, the id's loaded versions.
pub fn info(registry: &Registry, h: &WorkerHandle) -> ModelInfo {
    ModelInfo {
        swap: registry.swap_note(&h.spec.id),
        aliases: registry.aliases_of(h),
        current: registry.is_current(h),
        versions: registry.versions(&h.spec.id),
        ..h.info()
    }
}

/// Every loaded version: each id's current one, followed by those kept
/// beside it, oldest first.
pub fn every_version(registry: &Registry) -> Vec<WorkerHandle> {
    let kept = registry.kept();
    let mut all = Vec::new();
    for h in registry.list() {
        let id = h.spec.id.clone();
        all.push(h);
        all.extend(kept.iter().filter(|k| k.spec.id == id).cloned());
    }
    // Kept versions whose id's current one went (a failed cold swap):
    // listed, so they can be seen and unloaded.
    let orphans: Vec<WorkerHandle> = kept
        .into_iter()
        .filter(|k| !all.iter().any(|h| h.same(k)))
        .collect();
    all.extend(orphans);
    all.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
    all
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}
