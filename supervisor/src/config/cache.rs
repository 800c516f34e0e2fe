//! The result cache of deterministic calls: `[cache]` in the config file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::units::{bytes, opt_secs, secs};
use crate::error::Error;

/// Smallest byte bound: a few entries of any kind fit.
pub const MIN_CACHE_BYTES: u64 = 64 << 10;
/// Largest byte bound (the cache lives in the supervisor's memory).
pub const MAX_CACHE_BYTES: u64 = 64 << 30;

/// `[cache]`: answers of deterministic calls kept in the supervisor
/// (Embed per text, Tokenize, LITE Infer and InferBatch, VISION
/// ProcessBatch per image, greedy or seeded unary Generate and Chat), and
/// identical calls in flight answered once.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep answers (identical calls in flight are still answered once
    /// when off).
    pub enabled: bool,
    /// Bytes every model's entries hold together at most: key, answer and
    /// the cache's own overhead per entry.
    #[serde(with = "bytes")]
    pub max_bytes: u64,
    /// How long an answer is kept.
    #[serde(with = "secs")]
    pub ttl: Duration,
    /// Distinct calls that may be in flight at once with others waiting
    /// for them; past it, an identical call runs again instead of waiting.
    pub max_flights: usize,
    /// Per model id: its own switch and TTL.
    pub models: BTreeMap<String, ModelCacheConfig>,
}

/// `[cache.models.<id>]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelCacheConfig {
    /// Keep this model's answers (absent: `cache.enabled`).
    pub enabled: Option<bool>,
    /// This model's TTL (absent: `cache.ttl`).
    #[serde(with = "opt_secs")]
    pub ttl: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(600),
            max_flights: 4096,
            models: BTreeMap::new(),
        }
    }
}

impl CacheConfig {
    /// Whether `model`'s answers are kept, and for how long.
    pub fn for_model(&self, model: &str) -> (bool, Duration) {
        let own = self.models.get(model);
        (
            own.and_then(|m| m.enabled).unwrap_or(self.enabled),
            own.and_then(|m| m.ttl).unwrap_or(self.ttl),
        )
    }

    /// Errors name the key, the value and the limit.
    pub fn validate(&self) -> Result<(), Error> {
        if !(MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&self.max_bytes) {
            return Err(Error::Config(format!(
                "cache.max_bytes {} is out of range {MIN_CACHE_BYTES}..={MAX_CACHE_BYTES}",
                self.max_bytes
            )));
        }
        if self.max_flights == 0 || self.max_flights > 1 << 20 {
            return Err(Error::Config(format!(
                "cache.max_flights {} is out of range 1..={}",
                self.max_flights,
                1 << 20
            )));
        }
        let ttls = std::iter::once(("cache.ttl".to_owned(), self.ttl)).chain(
            self.models
                .iter()
                .filter_map(|(id, m)| m.ttl.map(|t| (format!("cache.models.{id}.ttl"), t))),
        );
        for (name, ttl) in ttls {
            if ttl.is_zero() || ttl > Duration::from_secs(7 * 24 * 3600) {
                return Err(Error::Config(format!(
                    "{name} {ttl:?} is out of range (0 s, 7 days]"
                )));
            }
        }
        for id in self.models.keys() {
            crate::ids::check_model_id(id)
                .map_err(|e| Error::Config(format!("cache.models: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c: CacheConfig = toml::from_str(
            "max_bytes = \"256KiB\"\nttl = 5\n[models.emb]\nttl = 1.5\n[models.off]\nenabled = false\n",
        )
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.max_bytes, 256 << 10);
        assert_eq!(c.for_model("emb"), (true, Duration::from_millis(1500)));
        assert_eq!(c.for_model("off"), (false, Duration::from_secs(5)));
        assert_eq!(c.for_model("other"), (true, Duration::from_secs(5)));
        let d = CacheConfig::default();
        d.validate().expect("the defaults are valid");
        assert_eq!((d.enabled, d.max_bytes), (true, 64 << 20));
    }

    #[test]
    fn bad_values_are_named() {
        let e = toml::from_str::<CacheConfig>("max_bytes = 10\n")
            .expect("parses")
            .validate()
            .expect_err("too small");
        assert!(e.to_string().contains("cache.max_bytes 10"), "{e}");
        let e = toml::from_str::<CacheConfig>("[models.x]\nttl = 0\n")
            .expect("parses")
            .validate()
            .expect_err("zero");
        assert!(e.to_string().contains("cache.models.x.ttl"), "{e}");
        assert!(
            toml::from_str::<CacheConfig>("size = 1\n").is_err(),
            "unknown key"
        );
    }
}
