//! Traffic: who a caller is for the scheduler (its client class, from
//! `[traffic]`), what a call costs (`cost`), the classes' rate limits
//! (token buckets, `governor`) and each model's slots and fair queue
//! (`gate`, in the order of `drr`). `worker::call` admits every call
//! through a model's [`ModelTraffic`].

mod cost;
pub mod drr;
pub mod gate;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};

pub use cost::{DEFAULT_MAX_TOKENS, chat_cost, cost, generate_cost, prompt_tokens};
pub use gate::{Gate, Permit, Refused};

use crate::auth::Identity;
use crate::config::{Config, Family, ModelSpec, TrafficConfig};
use crate::error::Error;

/// The metadata key of a call's priority.
pub const PRIORITY: &str = "x-priority";

/// A call's priority within its class: served first to last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Priority {
    /// `x-priority: high`.
    High,
    /// No `x-priority`, or `normal`.
    #[default]
    Normal,
    /// `x-priority: low`.
    Low,
}

impl Priority {
    /// The rank in the queue (0 first).
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// Reads `x-priority`: `high`, `normal` or `low` (ASCII case ignored);
    /// absent is `normal`; anything else is INVALID_ARGUMENT naming the
    /// value (escaped, cut at 40 characters).
    pub fn of(metadata: &tonic::metadata::MetadataMap) -> Result<Priority, Error> {
        let Some(v) = metadata.get(PRIORITY) else {
            return Ok(Priority::Normal);
        };
        let bytes = v.as_bytes();
        for (name, p) in [
            ("high", Priority::High),
            ("normal", Priority::Normal),
            ("low", Priority::Low),
        ] {
            if bytes.eq_ignore_ascii_case(name.as_bytes()) {
                return Ok(p);
            }
        }
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
        Err(Error::InvalidArgument(format!(
            "{PRIORITY} {}{} is not a priority: high, normal or low",
            format_args!("{shown:?}"),
            if bytes.len() > 40 {
                format!("... ({} bytes)", bytes.len())
            } else {
                String::new()
            }
        )))
    }
}

/// What the scheduler knows of a call: who (its class comes from it),
/// how urgent, how costly.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The caller.
    pub identity: Identity,
    /// Its priority within its class.
    pub priority: Priority,
    /// Its cost against the class's rate limit (0: not limited).
    pub cost: u32,
}

/// Marks a request (in its extensions) whose class was already charged
/// for it: a unary call is charged once where it enters the API
/// (`api::charge`), before the result cache, so a call the cache answers
/// counts against the caller's rate as any other; its execution, and a
/// transparent re-send after a worker death, then cost nothing more
/// (they still queue for a slot like any call).
#[derive(Debug, Clone, Copy)]
pub struct Charged;

/// The classes of `[traffic]`: the configured ones by name, then
/// `default`.
#[derive(Debug)]
pub struct Classes {
    names: Vec<String>,
    rules: HashMap<String, usize>,
}

impl Classes {
    /// From the config (already validated).
    pub fn new(config: &TrafficConfig) -> Classes {
        let mut names = Vec::new();
        let mut rules = HashMap::new();
        for (i, (name, class)) in config.classes.iter().enumerate() {
            names.push(name.clone());
            for r in &class.rules {
                rules.insert(r.clone(), i);
            }
        }
        names.push("default".into());
        Classes { names, rules }
    }

    /// The class of a caller: the one whose `match` names it, else
    /// `default`.
    pub fn of(&self, who: &Identity) -> usize {
        let rule = match who {
            Identity::Token(name) => format!("token:{name}"),
            Identity::Uid(uid) => format!("uid:{uid}"),
            Identity::Client(name) => format!("client:{name}"),
            Identity::Anonymous => "anonymous".into(),
        };
        self.rules
            .get(&rule)
            .copied()
            .unwrap_or(self.names.len() - 1)
    }

    /// A class's name.
    pub fn name(&self, class: usize) -> &str {
        self.names.get(class).map_or("default", String::as_str)
    }

    /// The number of classes, `default` included.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Never: `default` is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The config key of a class.
    fn key(&self, class: usize) -> String {
        match self.name(class) {
            "default" => "traffic.default".into(),
            name => format!("traffic.classes.{name}"),
        }
    }
}

/// The calls a model executes at once: its `max_in_flight` when set; a
/// text model's `parallel` sequences; otherwise (LITE, VISION, a text
/// model on the worker's default) `workers.max_in_flight`.
pub fn capacity(spec: &ModelSpec, config: &Config) -> usize {
    match (spec.max_in_flight, spec.family) {
        (Some(n), _) => n as usize,
        (None, Family::Text) if spec.text.parallel > 0 => spec.text.parallel as usize,
        _ => config.workers.max_in_flight,
    }
}

/// One class's token bucket on one model.
#[derive(Debug)]
pub struct Limit {
    bucket: DefaultDirectRateLimiter,
    rate: f64,
    burst: u32,
    key: String,
}

impl Limit {
    fn new(rate: f64, burst: u32, key: String) -> Limit {
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst_nz);
        Limit {
            bucket: RateLimiter::direct(quota),
            rate,
            burst,
            key,
        }
    }

    /// Spends `cost` now, or says how long until it could.
    fn take(&self, cost: u32) -> Result<(), Taken> {
        let Some(n) = NonZeroU32::new(cost) else {
            return Ok(());
        };
        match self.bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Taken::Later(
                not_until.wait_time_from(self.bucket.clock().now()),
            )),
            Err(_) => Err(Taken::Never),
        }
    }
}

enum Taken {
    Later(Duration),
    Never,
}

/// A rate-limited class's frames on one vision stream (1 each).
#[derive(Debug, Clone)]
pub struct FrameLimit(Arc<Limit>);

impl FrameLimit {
    /// Whether a frame may go now (spending 1 if so).
    pub fn try_take(&self) -> bool {
        self.0.take(1).is_ok()
    }

    /// Waits until a frame may go, and spends 1.
    pub async fn take(&self) {
        let _ = self.0.bucket.until_n_ready(NonZeroU32::MIN).await;
    }
}

/// Each class's (weight, queue bound): its `queue` when set, else its
/// share of the model's queue by weight (at least 1), so that no class
/// left at its default can fill the whole queue and refuse every other
/// class; alone (no classes configured), the default class's share is the
/// whole queue.
fn class_bounds(specs: &[&crate::config::ClassSpec], total: usize) -> Vec<(u32, usize)> {
    let weights: u64 = specs
        .iter()
        .map(|c| u64::from(c.weight))
        .sum::<u64>()
        .max(1);
    specs
        .iter()
        .map(|c| {
            let share = (total as u64).saturating_mul(u64::from(c.weight)) / weights;
            (c.weight, c.queue.unwrap_or(share.max(1) as usize))
        })
        .collect()
}

/// One model's traffic: classes, their buckets, its gate.
#[derive(Debug)]
pub struct ModelTraffic {
    /// The classes.
    pub classes: Classes,
    limits: Vec<Option<Arc<Limit>>>,
    /// Slots and queue.
    pub gate: Arc<Gate>,
    model: String,
}

impl ModelTraffic {
    /// For model `id` with `capacity` slots.
    pub fn new(id: &str, config: &Config, capacity: usize) -> ModelTraffic {
        let t = &config.traffic;
        let classes = Classes::new(t);
        let specs: Vec<_> = t.classes.values().chain([&t.default]).collect();
        let limits = specs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (rate, burst) = (c.rate?, c.burst_size()?);
                Some(Arc::new(Limit::new(rate, burst, classes.key(i))))
            })
            .collect();
        let total = config.workers.queue_size;
        let bounds = class_bounds(&specs, total);
        ModelTraffic {
            gate: Arc::new(Gate::new(capacity, &bounds, total)),
            classes,
            limits,
            model: id.to_owned(),
        }
    }

    /// Spends `cost` from `class`'s bucket, or refuses: over the rate,
    /// RESOURCE_EXHAUSTED with the wait (`Error::RateLimited`); more than
    /// the bucket holds, INVALID_ARGUMENT naming both (it could never
    /// pass).
    pub fn spend(&self, class: usize, cost: u32) -> Result<(), Error> {
        let Some(limit) = self.limits.get(class).and_then(Option::as_ref) else {
            return Ok(());
        };
        let id = &self.model;
        let name = self.classes.name(class);
        match limit.take(cost) {
            Ok(()) => Ok(()),
            Err(Taken::Later(wait)) => Err(Error::RateLimited {
                message: format!(
                    "model {id:?}: client class {name:?} is over its rate limit ({}.rate = {} per second, burst {}); this call costs {cost}; retry after {} ms",
                    limit.key,
                    limit.rate,
                    limit.burst,
                    wait.as_millis().max(1)
                ),
                retry_after: wait,
            }),
            Err(Taken::Never) => Err(Error::InvalidArgument(format!(
                "model {id:?}: this call costs {cost}, more than client class {name:?} may ever spend at once ({}.burst = {}); split it",
                limit.key, limit.burst
            ))),
        }
    }

    /// The frame limit of `class`'s vision streams; `None`: not limited.
    pub fn frames(&self, class: usize) -> Option<FrameLimit> {
        self.limits
            .get(class)
            .and_then(Option::as_ref)
            .map(|l| FrameLimit(l.clone()))
    }

    /// Takes a slot for a call of `class` at `priority` within
    /// `deadline`; the refusals name the bound or the deadline.
    pub async fn enter(
        &self,
        class: usize,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Permit, (Error, &'static str)> {
        let id = &self.model;
        self.gate
            .enter(class, priority.rank(), deadline)
            .await
            .map_err(|r| match r {
                Refused::Full(drr::Full::Class { class, bound }) => (
                    Error::ResourceExhausted(format!(
                        "model {id:?}: client class {:?} has {bound} calls waiting, its limit ({}.queue, else workers.queue_size)",
                        self.classes.name(class),
                        self.classes.key(class)
                    )),
                    "queue_full",
                ),
                Refused::Full(drr::Full::Total { bound }) => (
                    Error::ResourceExhausted(format!(
                        "model {id:?}: queue full ({bound} calls waiting, the limit is workers.queue_size = {bound})"
                    )),
                    "queue_full",
                ),
                Refused::Deadline => (
                    Error::DeadlineExceeded(format!("model {id:?}: deadline passed while queued")),
                    "deadline",
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let c: Config = toml::from_str(text).expect("config");
        c.traffic.validate().expect("valid");
        c
    }

    #[test]
    fn callers_map_to_their_class_and_the_rest_to_default() {
        let c = config(
            "[traffic.classes.batch]\nmatch = [\"token:etl\", \"uid:1000\"]\n[traffic.classes.web]\nmatch = [\"client:web\", \"anonymous\"]\n",
        );
        let classes = Classes::new(&c.traffic);
        let of = |i: &Identity| classes.name(classes.of(i)).to_owned();
        assert_eq!(of(&Identity::Token("etl".into())), "batch");
        assert_eq!(of(&Identity::Uid(1000)), "batch");
        assert_eq!(of(&Identity::Client("web".into())), "web");
        assert_eq!(of(&Identity::Anonymous), "web");
        assert_eq!(of(&Identity::Token("web".into())), "default");
        assert_eq!(of(&Identity::Uid(1001)), "default");
        assert_eq!(classes.len(), 3);
    }

    #[test]
    fn priorities_parse_or_are_named() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(Priority::of(&m).expect("absent"), Priority::Normal);
        for (v, p) in [
            ("high", Priority::High),
            ("LOW", Priority::Low),
            ("normal", Priority::Normal),
        ] {
            m.insert(PRIORITY, v.parse().expect("value"));
            assert_eq!(Priority::of(&m).expect(v), p);
        }
        m.insert(PRIORITY, "urgent".parse().expect("value"));
        let e = Priority::of(&m).expect_err("urgent").to_string();
        assert_eq!(
            e,
            "x-priority \"urgent\" is not a priority: high, normal or low"
        );
        m.insert(PRIORITY, "9".repeat(500).parse().expect("value"));
        let e = Priority::of(&m).expect_err("long").to_string();
        assert!(e.contains("... (500 bytes) is not a priority"), "{e}");
        assert!(e.len() < 120, "{e}");
    }

    #[test]
    fn a_bucket_refuses_with_the_wait_and_never_passes_over_its_burst() {
        let c = config("[traffic.default]\nrate = 10.0\nburst = 5\n");
        let t = ModelTraffic::new("m", &c, 1);
        let class = t.classes.of(&Identity::Anonymous);
        t.spend(class, 5).expect("the burst");
        match t.spend(class, 1) {
            Err(Error::RateLimited {
                message,
                retry_after,
            }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100));
                assert!(
                    message.contains("client class \"default\" is over its rate limit (traffic.default.rate = 10 per second, burst 5); this call costs 1"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let e = t.spend(class, 6).expect_err("over the burst").to_string();
        assert!(
            e.contains("this call costs 6, more than client class \"default\" may ever spend at once (traffic.default.burst = 5)"),
            "{e}"
        );
        // Without a rate, nothing is limited.
        let free = ModelTraffic::new("m", &config(""), 1);
        for _ in 0..10_000 {
            free.spend(0, u32::MAX).expect("no limit");
        }
        assert!(free.frames(0).is_none());
    }

    #[test]
    fn capacity_follows_the_model() {
        let c = config("[workers]\nmax_in_flight = 3\n");
        let spec = |extra: &str| -> ModelSpec {
            toml::from_str(&format!(
                "id = \"m\"\nfamily = \"text\"\npath = \"m.gguf\"\n{extra}"
            ))
            .expect("spec")
        };
        assert_eq!(capacity(&spec(""), &c), 3);
        assert_eq!(capacity(&spec("text = { parallel = 8 }"), &c), 8);
        assert_eq!(
            capacity(&spec("max_in_flight = 2\ntext = { parallel = 8 }"), &c),
            2
        );
        let lite: ModelSpec =
            toml::from_str("id = \"l\"\nfamily = \"lite\"\npath = \"l.tflite\"").expect("spec");
        assert_eq!(capacity(&lite, &c), 3);
    }

    #[test]
    fn a_class_without_its_own_queue_gets_its_share_by_weight() {
        use crate::config::ClassSpec;
        let class = |weight, queue| ClassSpec {
            weight,
            queue,
            ..ClassSpec::default()
        };
        // Alone (no class configured): the whole queue.
        assert_eq!(class_bounds(&[&class(1, None)], 64), vec![(1, 64)]);
        // Two classes at their defaults: half each, so one that floods
        // leaves room for the other.
        let (a, d) = (class(1, None), class(1, None));
        assert_eq!(class_bounds(&[&a, &d], 64), vec![(1, 32), (1, 32)]);
        // By weight; an explicit bound is kept; never below 1.
        let (a, b, d) = (class(3, None), class(1, Some(50)), class(1, None));
        assert_eq!(
            class_bounds(&[&a, &b, &d], 10),
            vec![(3, 6), (1, 50), (1, 2)]
        );
        let tiny: Vec<ClassSpec> = (0..8).map(|_| class(1, None)).collect();
        let refs: Vec<&ClassSpec> = tiny.iter().collect();
        assert!(class_bounds(&refs, 4).iter().all(|&(_, q)| q == 1));
    }
}
