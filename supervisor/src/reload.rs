//! The config file read again without a restart (SIGHUP, `sidecarctl
//! reload`): the file the supervisor started with, with the same flags,
//! checked whole (`Config::load_whole`, then every model's files in the
//! store); an invalid file changes nothing and every error is reported.
//! A valid one's `[[models]]` are compared with the models the file loaded
//! before (runtime LoadModel models are not the file's and are left
//! alone): added ones load, removed ones drain and unload, changed ones
//! swap (`Registry::swap`), the others are untouched. Then `[aliases]`:
//! new and moved ones set, the ones the file set and no longer names
//! deleted (unless moved at run time since). Settings outside
//! `[[models]]` and `[aliases]` apply only at start: the ones that differ
//! are reported as not applied.
//!
//! One reload runs at a time; the last one's outcome is kept for
//! `GetStatus`, and counted in `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sidecar_proto::v1::ReloadOutcome;

use crate::clock::now_ms;
use crate::config::{Config, ModelSpec};
use crate::error::Error;
use crate::lifecycle::KillReason;
use crate::registry::{Registry, SwapOptions, Target};

/// How long a removed or swapped-out model's calls may run.
const DRAIN: Duration = Duration::from_secs(30);

/// Reloads the config; one per supervisor (built in `app::run`).
#[derive(Debug)]
pub struct Reloader {
    registry: Arc<Registry>,
    /// The config running (its settings are the ones in force).
    config: Arc<Config>,
    /// The models the file loaded, by id, as the file had them: only
    /// these are swapped or removed by a reload. Held for a whole reload,
    /// so reloads run one at a time.
    from_file: tokio::sync::Mutex<BTreeMap<String, ModelSpec>>,
    /// The aliases the file set (a run-time SetAlias of the same name
    /// takes it over until the file names it again).
    aliases_from_file: Mutex<BTreeMap<String, Target>>,
    last: Mutex<Option<ReloadOutcome>>,
}

/// `spec` and `other` are the same model, but for `preload` (a swapped-in
/// version is always preloaded).
fn same_model(spec: &ModelSpec, other: &ModelSpec) -> bool {
    ModelSpec {
        preload: other.preload,
        ..spec.clone()
    } == *other
}

impl Reloader {
    /// A reloader for the supervisor running `config`, whose file's models
    /// are already added to `registry`.
    pub fn new(config: Arc<Config>, registry: Arc<Registry>) -> Self {
        let from_file = config
            .models
            .iter()
            .map(|m| (m.id.clone(), m.clone()))
            .collect();
        let aliases_from_file = config
            .aliases
            .iter()
            .filter_map(|(a, t)| Some((a.clone(), Target::parse(t).ok()?)))
            .collect();
        Reloader {
            registry,
            aliases_from_file: Mutex::new(aliases_from_file),
            config,
            from_file: tokio::sync::Mutex::new(from_file),
            last: Mutex::new(None),
        }
    }

    /// The last reload's outcome (`None`: none yet).
    pub fn last(&self) -> Option<ReloadOutcome> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reloads (see the module doc). An invalid file: INVALID_ARGUMENT
    /// with every error, one a line, and nothing changed; a valid one: the
    /// outcome (`ok` false when a change could not be made).
    pub async fn reload(&self, trigger: &str) -> Result<ReloadOutcome, Error> {
        let mut from_file = self.from_file.lock().await;
        let file = self
            .config
            .origin
            .as_ref()
            .and_then(|c| c.config.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut out = ReloadOutcome {
            trigger: trigger.to_owned(),
            file,
            ..ReloadOutcome::default()
        };
        let new = match self.read() {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    tracing::error!(trigger, "config reload refused, nothing changed: {e}");
                }
                out.errors = errors;
                out.unix_ms = now_ms();
                let message = format!(
                    "the config file {} is invalid; nothing was changed:\n{}",
                    out.file,
                    out.errors.join("\n")
                );
                self.record(out);
                return Err(if self.config.origin.is_none() {
                    Error::FailedPrecondition(message)
                } else {
                    Error::InvalidArgument(message)
                });
            }
        };
        out.not_applied = self.config.settings_changed(&new);
        for n in &out.not_applied {
            tracing::warn!(trigger, "config reload: {n}");
        }
        self.apply(&new, &mut from_file, &mut out).await;
        self.apply_aliases(&new, &mut out);
        for list in [
            &mut out.added,
            &mut out.removed,
            &mut out.swapped,
            &mut out.unchanged,
        ] {
            list.sort();
        }
        out.ok = out.refused.is_empty();
        out.unix_ms = now_ms();
        tracing::info!(
            trigger,
            ok = out.ok,
            added = ?out.added,
            removed = ?out.removed,
            swapped = ?out.swapped,
            refused = ?out.refused,
            "config reloaded"
        );
        self.record(out.clone());
        Ok(out)
    }

    /// The file read and checked whole, its models' files included.
    fn read(&self) -> Result<Config, Vec<String>> {
        let Some(cli) = &self.config.origin else {
            return Err(vec![
                "the supervisor's config was not read from flags and a file: there is nothing to reload".into(),
            ]);
        };
        Config::load_whole(cli, &|m| {
            self.registry
                .check_files(m)
                .map_err(|e| format!("model {:?}: {e}", m.id))
        })
    }

    /// Makes the registry hold what `new`'s `[[models]]` say, for the
    /// models the file owns; notes each step in `out`.
    async fn apply(
        &self,
        new: &Config,
        from_file: &mut BTreeMap<String, ModelSpec>,
        out: &mut ReloadOutcome,
    ) {
        let wanted: BTreeMap<&str, &ModelSpec> =
            new.models.iter().map(|m| (m.id.as_str(), m)).collect();
        // Removed first: their memory is free for what loads next.
        let gone: Vec<String> = from_file
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        let mut removals = tokio::task::JoinSet::new();
        for id in gone {
            let Some(was) = from_file.remove(&id) else {
                continue;
            };
            match self.registry.by_id(&id) {
                None => out.removed.push(format!("{id} (already unloaded)")),
                Some(h) if !same_model(&was, &h.spec) => out.refused.push(format!(
                    "{id}: left alone: it was replaced at run time (LoadModel) by another file or options"
                )),
                Some(h) => {
                    let registry = self.registry.clone();
                    removals.spawn(async move {
                        if !h.drain(DRAIN).await {
                            tracing::warn!(model = %id, "config reload: calls still running after {DRAIN:?}; unloading anyway");
                        }
                        let r = registry.remove(&id, KillReason::Requested).await;
                        registry.remove_all_kept(&id, Some(DRAIN)).await;
                        (id, r)
                    });
                }
            }
        }
        while let Some(done) = removals.join_next().await {
            match done {
                Ok((id, Ok(()))) => out.removed.push(id),
                Ok((id, Err(e))) => out.refused.push(format!("{id}: not removed: {e}")),
                Err(e) => out.refused.push(format!("a removal failed: {e}")),
            }
        }
        let mut swaps = tokio::task::JoinSet::new();
        for (id, spec) in wanted {
            let loaded = self.registry.by_id(id);
            match (from_file.get(id), loaded) {
                (Some(was), _) if was == spec => out.unchanged.push(id.to_owned()),
                (Some(was), Some(h)) if same_model(was, &h.spec) => {
                    let registry = self.registry.clone();
                    let opts = SwapOptions {
                        allow_cold: false,
                        keep_previous: false,
                        drain: DRAIN,
                        deadline: Instant::now() + self.config.deadlines.load,
                    };
                    let spec = spec.clone();
                    swaps.spawn(async move {
                        let r = registry.swap(spec.clone(), opts).await;
                        (spec, r)
                    });
                }
                (Some(_), Some(_)) => out.refused.push(format!(
                    "{id}: not swapped: it was replaced at run time (LoadModel) by another file or options; unload it, then reload"
                )),
                (None, Some(h)) if same_model(spec, &h.spec) => {
                    // Loaded at run time just as the file now says: the
                    // file owns it from now on.
                    from_file.insert(id.to_owned(), spec.clone());
                    out.unchanged.push(id.to_owned());
                }
                (None, Some(_)) => out.refused.push(format!(
                    "{id}: not added: a model loaded at run time (LoadModel) holds this id with another file or options; unload it, then reload"
                )),
                (_, None) => match self.registry.add(spec.clone()) {
                    Ok(_) => {
                        from_file.insert(id.to_owned(), spec.clone());
                        out.added.push(id.to_owned());
                    }
                    Err(e) => out.refused.push(format!("{id}: not added: {e}")),
                },
            }
        }
        while let Some(done) = swaps.join_next().await {
            match done {
                Ok((spec, Ok(h))) => {
                    out.swapped
                        .push(format!("{}: version {}", spec.id, h.version()));
                    from_file.insert(spec.id.clone(), spec);
                }
                Ok((spec, Err(e))) => out.refused.push(format!("{}: not swapped: {e}", spec.id)),
                Err(e) => out.refused.push(format!("a swap failed: {e}")),
            }
        }
        for list in [
            &mut out.added,
            &mut out.removed,
            &mut out.swapped,
            &mut out.unchanged,
            &mut out.refused,
        ] {
            list.sort();
        }
    }

    /// Makes the aliases what `new`'s `[aliases]` say, after its models:
    /// new and moved ones set (`added`, `swapped`: "alias chat -> smollm2"),
    /// ones the file no longer names deleted unless moved at run time
    /// since (`refused`: left alone).
    fn apply_aliases(&self, new: &Config, out: &mut ReloadOutcome) {
        let mut owned = self
            .aliases_from_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now: BTreeMap<String, Target> = self.registry.aliases().into_iter().collect();
        for (alias, was) in owned.clone() {
            if new.aliases.contains_key(&alias) {
                continue;
            }
            owned.remove(&alias);
            match now.get(&alias) {
                Some(t) if *t == was => match self.registry.delete_alias(&alias) {
                    Ok(_) => out.removed.push(format!("alias {alias}")),
                    Err(e) => out.refused.push(format!("alias {alias}: not deleted: {e}")),
                },
                Some(t) => out.refused.push(format!(
                    "alias {alias}: left alone: it was moved at run time (SetAlias) to {}",
                    t.name()
                )),
                None => out.removed.push(format!("alias {alias} (already deleted)")),
            }
        }
        for (alias, target) in &new.aliases {
            // Checked with the file (`Config::load_whole`).
            let Ok(t) = Target::parse(target) else {
                continue;
            };
            let line = format!("alias {alias} -> {}", t.name());
            if now.get(alias) == Some(&t) {
                owned.insert(alias.clone(), t);
                out.unchanged.push(format!("alias {alias}"));
                continue;
            }
            match self.registry.set_alias(alias, t.clone()) {
                Ok(Some(_)) => out.swapped.push(line),
                Ok(None) => out.added.push(line),
                Err(e) => {
                    out.refused.push(format!("alias {alias}: not set: {e}"));
                    continue;
                }
            }
            owned.insert(alias.clone(), t);
        }
    }

    /// Keeps `out` as the last outcome and counts it.
    fn record(&self, out: ReloadOutcome) {
        let metrics = &self.registry.shared().metrics;
        let outcome = if out.ok { "ok" } else { "error" };
        metrics
            .config_reloads
            .get_or_create(&crate::metrics::OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
        if out.ok {
            metrics.config_reload_success.set(out.unix_ms / 1000);
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(out);
    }
}

/// Reloads on every SIGHUP until the process ends; registered at once (a
/// SIGHUP before this would end the process).
pub fn on_sighup(reloader: Arc<Reloader>) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| Error::Internal(format!("cannot listen for SIGHUP: {e}")))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config file");
            // The outcome is logged and kept by `reload` itself.
            let _ = reloader.reload("SIGHUP").await;
        }
    });
    Ok(())
}
