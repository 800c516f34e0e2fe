//! Model versions, swaps and aliases: `sidecar_model_version`,
//! `sidecar_model_versions_loaded`, `sidecar_model_swap_in_progress`,
//! `sidecar_model_swaps_total` and `sidecar_model_alias_info`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{ModelGauges, ModelLabel, ModelReason};

/// How a swap ended (the `reason` label of `model_swaps_total`).
pub const SWAP_OUTCOMES: [&str; 3] = ["ok", "error", "cold"];

/// An alias and the model id it names now.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AliasLabel {
    /// The alias (an operator's name, checked like a model id).
    pub alias: String,
    /// The model id.
    pub model: String,
    /// The version it names ("current": it follows swaps).
    pub version: String,
}

/// The families, registered in the process's registry.
#[derive(Debug, Default)]
pub struct Versions {
    version: Family<ModelLabel, Gauge>,
    loaded: Family<ModelLabel, Gauge>,
    swapping: Family<ModelLabel, Gauge>,
    swaps: Family<ModelReason, Counter>,
    aliases: Family<AliasLabel, Gauge>,
}

impl Versions {
    /// Registers every family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "model_version",
            "The version a call naming the model id reaches (1, then one more per swap)",
            self.version.clone(),
        );
        registry.register(
            "model_versions_loaded",
            "Versions of the model id calls may reach (the current one and those kept beside it)",
            self.loaded.clone(),
        );
        registry.register(
            "model_swap_in_progress",
            "1 while a swap of the model id loads its new version or drains its old one",
            self.swapping.clone(),
        );
        registry.register(
            "model_swaps",
            "Swaps by outcome (reason: ok, error: the old version kept serving, cold: unloaded first)",
            self.swaps.clone(),
        );
        registry.register(
            "model_alias_info",
            "1 for each alias and the loaded model it names",
            self.aliases.clone(),
        );
    }

    /// Creates `model`'s swap series at 0.
    pub fn enroll(&self, model: &str) {
        for reason in SWAP_OUTCOMES {
            drop(self.swaps.get_or_create(&ModelReason {
                model: model.into(),
                reason: reason.into(),
            }));
        }
    }

    /// A swap of `model` ended (`outcome`: one of [`SWAP_OUTCOMES`]).
    pub fn swap(&self, model: &str, outcome: &str) {
        debug_assert!(SWAP_OUTCOMES.contains(&outcome), "{outcome}");
        self.swaps
            .get_or_create(&ModelReason {
                model: model.into(),
                reason: outcome.into(),
            })
            .inc();
    }

    /// The gauges of the models present now.
    pub fn set(&self, models: &[ModelGauges]) {
        for f in [&self.version, &self.loaded, &self.swapping] {
            f.clear();
        }
        self.aliases.clear();
        for g in models {
            let label = ModelLabel {
                model: g.model.clone(),
            };
            self.version.get_or_create(&label).set(i64::from(g.version));
            self.loaded.get_or_create(&label).set(i64::from(g.versions));
            self.swapping
                .get_or_create(&label)
                .set(i64::from(g.swapping));
            for (alias, version) in &g.aliases {
                self.aliases
                    .get_or_create(&AliasLabel {
                        alias: alias.clone(),
                        model: g.model.clone(),
                        version: version.map_or_else(|| "current".into(), |v| v.to_string()),
                    })
                    .set(1);
            }
        }
    }
}
