//! `[traffic]`: client classes, their rate limits, weights and queue
//! bounds (see `supervisor::traffic`).
//!
//! ```toml
//! [traffic.default]            # every caller no class matches
//! weight = 1
//! [traffic.classes.batch]
//! match = ["token:etl", "uid:1000", "client:web", "anonymous"]
//! weight = 1                   # share of the model's queue per round
//! rate = 50.0                  # cost units per second, per model
//! burst = 100                  # the bucket's size, cost units
//! queue = 32                   # calls of this class waiting per model
//! ```
//!
//! The defaults never limit a single local client: no rate limit unless
//! `rate` is set, weight 1, a class queue of its share of the model's
//! (`workers.queue_size` × weight / the weights of every class; all of it
//! when no class is configured).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::error::Error;

/// Most configured classes (besides `default`): they are metric labels.
pub(super) const MAX_CLASSES: usize = 64;
/// Longest class name.
pub(super) const MAX_CLASS_NAME: usize = 32;
/// Most `match` rules of one class.
pub(super) const MAX_RULES: usize = 1024;
/// Largest weight.
pub(super) const MAX_WEIGHT: u32 = 1000;
/// Largest rate, cost units per second.
pub(super) const MAX_RATE: f64 = 1e6;
/// Smallest rate, cost units per second (one unit every 1000 s).
pub(super) const MIN_RATE: f64 = 1e-3;
/// Largest burst and class queue.
pub(super) const MAX_BURST: u32 = 10_000_000;
/// Largest class queue.
pub(super) const MAX_QUEUE: usize = 1_000_000;

/// `[traffic]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficConfig {
    /// The class of every caller no configured class matches (`match` is
    /// not allowed here).
    pub default: ClassSpec,
    /// Classes by name.
    pub classes: BTreeMap<String, ClassSpec>,
}

/// One client class.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClassSpec {
    /// Who belongs to it: `token:NAME` (a bearer token's name),
    /// `uid:N` (a peer uid on a Unix socket), `client:NAME` (an allowed
    /// `x-client-id`), `anonymous`.
    #[serde(rename = "match")]
    pub rules: Vec<String>,
    /// Calls served per round of the model's queue (deficit round robin),
    /// 1..=1000.
    pub weight: u32,
    /// Cost units per second each model allows this class; absent: no
    /// limit.
    pub rate: Option<f64>,
    /// Cost units the bucket holds (what a burst may spend at once);
    /// default: `rate` rounded up. A call costing more is never admitted.
    pub burst: Option<u32>,
    /// Calls of this class waiting per model; default: its share of
    /// `workers.queue_size` by weight (all of it when it is the only
    /// class), so that no class left at its default fills the model's
    /// whole queue.
    pub queue: Option<usize>,
}

impl Default for ClassSpec {
    fn default() -> Self {
        ClassSpec {
            rules: Vec::new(),
            weight: 1,
            rate: None,
            burst: None,
            queue: None,
        }
    }
}

impl ClassSpec {
    /// The bucket's size when rate limited.
    pub fn burst_size(&self) -> Option<u32> {
        let rate = self.rate?;
        Some(
            self.burst
                .unwrap_or_else(|| rate.ceil().clamp(1.0, MAX_BURST as f64) as u32),
        )
    }
}

/// A name or rule as an error message may quote it: escaped, and cut.
pub(super) fn quote(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("{cut:?}... ({} bytes)", s.len())
    } else {
        format!("{cut:?}")
    }
}

/// Whether `name` may name a class: 1..=32 of `[a-z0-9_-]`, not `default`.
fn is_class_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLASS_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
        && name != "default"
}

/// Whether `rule` is one of the forms `ClassSpec::rules` lists.
fn is_rule(rule: &str) -> bool {
    if rule == "anonymous" {
        return true;
    }
    match rule.split_once(':') {
        Some(("uid", n)) => {
            !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && n.parse::<u32>().is_ok()
        }
        Some(("token" | "client", name)) => crate::ids::is_client_name(name),
        _ => false,
    }
}

impl TrafficConfig {
    /// Checks the section; the message names the key, the value and the
    /// limit.
    pub fn validate(&self) -> Result<(), Error> {
        if self.classes.len() > MAX_CLASSES {
            return Err(Error::Config(format!(
                "traffic.classes has {} classes, more than {MAX_CLASSES}",
                self.classes.len()
            )));
        }
        if !self.default.rules.is_empty() {
            return Err(Error::Config(
                "traffic.default.match: the default class takes every caller no class matches; \
                 name its callers in a class of [traffic.classes] instead"
                    .into(),
            ));
        }
        check_class("traffic.default", &self.default)?;
        let mut owner: HashMap<&str, &str> = HashMap::new();
        for (name, class) in &self.classes {
            if !is_class_name(name) {
                return Err(Error::Config(format!(
                    "traffic.classes: the class name {} must be 1..{MAX_CLASS_NAME} characters of [a-z0-9_-] and not \"default\"",
                    quote(name)
                )));
            }
            let key = format!("traffic.classes.{name}");
            check_class(&key, class)?;
            if class.rules.len() > MAX_RULES {
                return Err(Error::Config(format!(
                    "{key}.match has {} rules, more than {MAX_RULES}",
                    class.rules.len()
                )));
            }
            for rule in &class.rules {
                if !is_rule(rule) {
                    return Err(Error::Config(format!(
                        "{key}.match: the rule {} is not \"token:NAME\", \"uid:N\", \"client:NAME\" or \"anonymous\" (NAME: 1..{} characters of [A-Za-z0-9._-])",
                        quote(rule),
                        crate::ids::MAX_CLIENT_NAME
                    )));
                }
                if let Some(other) = owner.insert(rule, name) {
                    return Err(Error::Config(format!(
                        "{key}.match: the rule {rule:?} is also in traffic.classes.{other}: a caller belongs to one class"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Most calls a model may execute at once (`max_in_flight`).
pub const MAX_IN_FLIGHT: u32 = 1024;

impl TrafficConfig {
    /// [`TrafficConfig::validate`], and the slots: `workers.max_in_flight`
    /// at least 1, each model's `max_in_flight` within 1..=1024.
    pub(super) fn validate_with(
        &self,
        workers: &super::WorkerPolicy,
        models: &[super::ModelSpec],
    ) -> Result<(), Error> {
        self.validate()?;
        if workers.max_in_flight == 0 {
            return Err(Error::Config(
                "workers.max_in_flight must be at least 1".into(),
            ));
        }
        for m in models {
            if let Some(n) = m.max_in_flight
                && (n == 0 || n > MAX_IN_FLIGHT)
            {
                return Err(Error::Config(format!(
                    "model {:?}: max_in_flight = {n} is outside 1..={MAX_IN_FLIGHT}",
                    m.id
                )));
            }
        }
        Ok(())
    }
}

fn check_class(key: &str, c: &ClassSpec) -> Result<(), Error> {
    if c.weight == 0 || c.weight > MAX_WEIGHT {
        return Err(Error::Config(format!(
            "{key}.weight = {} is outside 1..={MAX_WEIGHT}",
            c.weight
        )));
    }
    if let Some(rate) = c.rate
        && !(rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate))
    {
        return Err(Error::Config(format!(
            "{key}.rate = {rate:?} is outside {MIN_RATE}..={MAX_RATE} cost units per second (leave it out for no limit)"
        )));
    }
    if let Some(burst) = c.burst {
        if c.rate.is_none() {
            return Err(Error::Config(format!(
                "{key}.burst = {burst} without {key}.rate: a burst sizes a rate limit; set both"
            )));
        }
        if burst == 0 || burst > MAX_BURST {
            return Err(Error::Config(format!(
                "{key}.burst = {burst} is outside 1..={MAX_BURST}"
            )));
        }
    }
    if let Some(q) = c.queue
        && (q == 0 || q > MAX_QUEUE)
    {
        return Err(Error::Config(format!(
            "{key}.queue = {q} is outside 1..={MAX_QUEUE}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrafficConfig, String> {
        let t: TrafficConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        t.validate().map_err(|e| e.to_string())?;
        Ok(t)
    }

    #[test]
    fn the_defaults_limit_nothing() {
        let t = parse("").expect("empty section");
        assert_eq!(t.default.weight, 1);
        assert_eq!(t.default.rate, None);
        assert_eq!(t.default.burst_size(), None);
        assert!(t.classes.is_empty());
        let t = parse(
            "[classes.batch]\nmatch = [\"token:etl\", \"uid:1000\", \"client:web\", \"anonymous\"]\nweight = 2\nrate = 50.5\nqueue = 32\n",
        )
        .expect("a class");
        assert_eq!(t.classes["batch"].burst_size(), Some(51));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for (text, want) in [
            (
                "[default]\nrate = -1.0",
                "traffic.default.rate = -1.0 is outside",
            ),
            (
                "[default]\nrate = 1e300",
                "traffic.default.rate = 1e300 is outside",
            ),
            (
                "[default]\nrate = nan",
                "traffic.default.rate = NaN is outside",
            ),
            (
                "[default]\nrate = inf",
                "traffic.default.rate = inf is outside",
            ),
            (
                "[default]\nweight = 0",
                "traffic.default.weight = 0 is outside 1..=1000",
            ),
            ("[default]\nburst = 5", "without traffic.default.rate"),
            (
                "[default]\nrate = 1.0\nburst = 0",
                "traffic.default.burst = 0 is outside",
            ),
            (
                "[default]\nmatch = [\"anonymous\"]",
                "traffic.default.match",
            ),
            (
                "[classes.a]\nqueue = 0",
                "traffic.classes.a.queue = 0 is outside",
            ),
            (
                "[classes.a]\nmatch = [\"uid:1\"]\n[classes.b]\nmatch = [\"uid:1\"]",
                "the rule \"uid:1\" is also in traffic.classes.a",
            ),
            (
                "[classes.a]\nmatch = [\"uid:-1\"]",
                "the rule \"uid:-1\" is not",
            ),
            ("[classes.a]\nmatch = [\"uid:99999999999\"]", "is not"),
            (
                "[classes.a]\nmatch = [\"token:\"]",
                "the rule \"token:\" is not",
            ),
            (
                "[classes.a]\nmatch = [\"client:a\\u0007b\"]",
                "\"client:a\\u{7}b\" is not",
            ),
            (
                "[classes.default]\nweight = 1",
                "the class name \"default\"",
            ),
            (
                "[classes.\"a\\nb\"]\nweight = 1",
                "the class name \"a\\nb\" must be",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let long = format!("[classes.{}]\nweight = 1", "x".repeat(5000));
        let err = parse(&long).expect_err("long name");
        assert!(err.contains("... (5000 bytes) must be"), "{err}");
        assert!(err.len() < 300, "the message quotes a bounded part: {err}");
        let rule = format!("[classes.a]\nmatch = [\"token:{}\"]", "y".repeat(100_000));
        let err = parse(&rule).expect_err("long rule");
        assert!(err.contains("(100006 bytes) is not"), "{err}");
        assert!(err.len() < 400, "{err}");
        let many: String = (0..65).map(|i| format!("[classes.c{i}]\n")).collect();
        let err = parse(&many).expect_err("too many classes");
        assert!(err.contains("65 classes, more than 64"), "{err}");
        let err = parse("[classes.a]\nrte = 1.0").expect_err("unknown key");
        assert!(err.contains("unknown field `rte`"), "{err}");
    }
}
