//! The config read again for a reload, checked whole: every error it has
//! (each `[[models]]` entry on its own, then the rest), not just the first,
//! so an operator fixes the file in one go. At start the first error stops
//! the supervisor (`Config::load`); here nothing is applied while any is
//! left.

use super::{Cli, Config, ModelSpec};
use crate::error::Error;

impl Config {
    /// `Config::load` with the flags `cli` holds, but every error found:
    /// a TOML syntax error (nothing else can be read then); each
    /// `[[models]]` entry that does not parse (named by index and id); the
    /// rest of the file; each model that parses given to `check` (its
    /// files in the store: an error names the model); then each model's
    /// own checks and the whole file's.
    pub fn load_whole(
        cli: &Cli,
        check: &dyn Fn(&ModelSpec) -> Result<(), String>,
    ) -> Result<Config, Vec<String>> {
        let Some(path) = &cli.config else {
            return Err(vec![
                "the supervisor was started without a config file (--config / SIDECAR_CONFIG): there is nothing to reload".into(),
            ]);
        };
        let shown = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {shown}: {e}")])?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| vec![format!("{shown}: {e}")])?;
        let mut errors = Vec::new();
        let mut models = Vec::new();
        match table.remove("models") {
            None => {}
            Some(toml::Value::Array(entries)) => {
                for (i, entry) in entries.into_iter().enumerate() {
                    let id = entry
                        .get("id")
                        .and_then(toml::Value::as_str)
                        .map_or_else(|| "no id".to_owned(), |s| format!("id {s:?}"));
                    match entry.try_into::<ModelSpec>() {
                        Ok(m) => {
                            if let Err(e) = check(&m) {
                                errors.push(e);
                            }
                            models.push(m);
                        }
                        Err(e) => errors.push(format!(
                            "{shown}: models[{i}] ({id}): {}",
                            e.to_string().trim()
                        )),
                    }
                }
            }
            Some(other) => errors.push(format!(
                "{shown}: models must be an array of tables ([[models]]), not a {}",
                other.type_str()
            )),
        }
        let mut config = match toml::Value::Table(table).try_into::<Config>() {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{shown}: {}", e.to_string().trim()));
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        config.models = models;
        if let Err(e) = config.apply_flags(cli) {
            return Err(vec![e.to_string()]);
        }
        let mut errors: Vec<String> = config
            .model_errors()
            .iter()
            .map(ToString::to_string)
            .collect();
        if let Err(e) = config.validate() {
            let e = e.to_string();
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Every model's own errors: its id, an id twice, contradicting
    /// options.
    pub(super) fn model_errors(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for m in &self.models {
            if let Err(e) = crate::ids::check_model_id(&m.id) {
                errors.push(e);
                continue;
            }
            if !seen.insert(&m.id) {
                errors.push(Error::Config(format!("model id {:?} appears twice", m.id)));
            }
            if let Err(e) = m.text.validate(&m.id) {
                errors.push(e);
            }
        }
        errors.extend(self.alias_errors());
        errors
    }

    /// `[aliases]`' errors: a bad name or target, an alias that is a
    /// model's id, a target that is not one of the file's models, too many.
    fn alias_errors(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        if self.aliases.len() > crate::ids::MAX_ALIASES {
            errors.push(Error::Config(format!(
                "[aliases] has {} entries; at most {}",
                self.aliases.len(),
                crate::ids::MAX_ALIASES
            )));
        }
        let ids: std::collections::HashSet<&str> =
            self.models.iter().map(|m| m.id.as_str()).collect();
        for (alias, target) in &self.aliases {
            let what = format!("[aliases] {:?}", alias.chars().take(80).collect::<String>());
            if crate::ids::check_model_id(alias).is_err() {
                errors.push(Error::Config(format!(
                    "{what}: an alias is 1..64 characters of [a-z0-9._-] starting with a letter or digit"
                )));
                continue;
            }
            if ids.contains(alias.as_str()) {
                errors.push(Error::Config(format!(
                    "{what}: a model of the file has this id"
                )));
            }
            match crate::ids::Target::parse(target) {
                Err(e) => errors.push(Error::Config(format!("{what}: {e}"))),
                Ok(t) if !ids.contains(t.id.as_str()) => errors.push(Error::Config(format!(
                    "{what}: {:?} is not a model of the file's [[models]]",
                    t.id
                ))),
                Ok(_) => {}
            }
        }
        errors
    }

    /// The settings outside `[[models]]` that differ between `self` (the
    /// config running) and `new`, each named with both values when they
    /// are short: none of them changes without a restart.
    pub fn settings_changed(&self, new: &Config) -> Vec<String> {
        // Every field named: a field added to `Config` fails to compile
        // here until it is compared (or made live).
        let Config {
            listen,
            api_socket,
            admin_listen,
            control_socket,
            model_store,
            store,
            cache,
            worker_dir,
            lite_runtime,
            max_message_bytes,
            deadlines,
            workers,
            memory,
            connections,
            tls,
            auth,
            traffic,
            openai,
            shm,
            insecure_public,
            livez_stall,
            shutdown_grace,
            models: _,
            aliases: _,
            origin: _,
        } = new;
        let pairs: [(&str, String, String); 22] = [
            ("listen", show(&self.listen), show(listen)),
            ("api_socket", show(&self.api_socket), show(api_socket)),
            ("admin_listen", show(&self.admin_listen), show(admin_listen)),
            (
                "control_socket",
                show(&self.control_socket),
                show(control_socket),
            ),
            ("model_store", show(&self.model_store), show(model_store)),
            ("store", show(&self.store), show(store)),
            ("cache", show(&self.cache), show(cache)),
            ("worker_dir", show(&self.worker_dir), show(worker_dir)),
            ("lite_runtime", show(&self.lite_runtime), show(lite_runtime)),
            (
                "max_message_bytes",
                show(&self.max_message_bytes),
                show(max_message_bytes),
            ),
            ("deadlines", show(&self.deadlines), show(deadlines)),
            ("workers", show(&self.workers), show(workers)),
            ("memory", show(&self.memory), show(memory)),
            ("connections", show(&self.connections), show(connections)),
            ("tls", show(&self.tls), show(tls)),
            ("auth", show(&self.auth), show(auth)),
            ("traffic", show(&self.traffic), show(traffic)),
            ("openai", show(&self.openai), show(openai)),
            ("shm", show(&self.shm), show(shm)),
            (
                "insecure_public",
                show(&self.insecure_public),
                show(insecure_public),
            ),
            ("livez_stall", show(&self.livez_stall), show(livez_stall)),
            (
                "shutdown_grace",
                show(&self.shutdown_grace),
                show(shutdown_grace),
            ),
        ];
        pairs
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(name, old, new)| {
                if old.len() + new.len() <= 160 {
                    format!("{name}: {old} -> {new} (not applied: restart needed)")
                } else {
                    format!("{name} (not applied: restart needed)")
                }
            })
            .collect()
    }
}

fn show(v: &impl std::fmt::Debug) -> String {
    format!("{v:?}")
}

#[cfg(test)]
#[path = "whole_tests.rs"]
mod tests;
