//! Prometheus metrics, served as text on the admin port's `/metrics`.
//!
//! Calls are counted by a tower layer around the API server ([`CallLayer`]):
//! it knows the method from the path and the status code from the
//! response's headers (errors) or trailers (the end of a stream, which it
//! waits for), and a task-local [`CallInfo`] that `api::call_worker` fills
//! with the model and the request id. The rest is recorded where it
//! happens (queue wait, rejections, tokens, frames, restarts), and the
//! per-model gauges (state, memory, uptime, in flight, queue depth) are
//! handed to [`Metrics::render`] at each scrape by whoever owns the
//! models (the admin port reads them from the registry), so this module
//! knows nothing of the registry or the workers.
//!
//! One `Metrics` per process, built at start and passed down as a handle
//! (`Shared::metrics`); tests build their own.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::lifecycle::KillReason;

/// The model label of a call whose model id is not loaded.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Why a call is refused before its worker (the `reason` of `rejected`).
pub const REJECTIONS: [&str; 9] = [
    "queue_full",
    "rate_limited",
    "over_burst",
    "draining",
    "memory",
    "deadline",
    "failed",
    "unavailable",
    "quarantined",
];

mod labels;
mod layer;
pub mod versions;

pub use labels::*;

pub use layer::{
    CallInfo, CallLayer, CallService, MODEL_VERSION_HEADER, Record, Recorded, call_protocol,
    call_scope, note_client, note_model, note_version, within,
};

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

fn rates() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Calls by method, model and status code.
    pub requests: Family<CallLabels, Counter>,
    /// Call duration, to the last message.
    pub latency: Hist<MethodModel>,
    /// Time a call waited in the supervisor before reaching its worker.
    pub queue_wait: Hist<MethodModel>,
    /// Calls refused before reaching a worker, by reason.
    pub rejected: Family<ModelReason, Counter>,
    /// Text: time to the first token.
    pub ttft: Hist<ModelLabel>,
    /// Text: tokens generated.
    pub tokens_generated: Family<ModelLabel, Counter>,
    /// Text: prompt tokens.
    pub tokens_prompted: Family<ModelLabel, Counter>,
    /// Text: generation speed of each call.
    pub tokens_per_second: Hist<ModelLabel>,
    /// Vision: frames by `in`, `processed`, `dropped`.
    pub frames: Family<ModelKind, Counter>,
    /// Vision: each finished stream's frames per second.
    pub stream_fps: Hist<ModelLabel>,
    /// Worker restarts by kill reason.
    pub restarts: Family<ModelReason, Counter>,
    /// Result cache: answers served from it.
    pub cache_hits: Family<ModelLabel, Counter>,
    /// Result cache: answers not in it.
    pub cache_misses: Family<ModelLabel, Counter>,
    /// Result cache: entries dropped for room or age.
    pub cache_evictions: Family<ModelLabel, Counter>,
    /// Result cache: bytes held per model.
    pub cache_bytes: Family<ModelLabel, Gauge>,
    /// Shared-memory regions registered, every client together (no
    /// per-name or per-client label: bounded series).
    pub shm_regions: Gauge,
    /// Bytes of the registered shared-memory regions, together.
    pub shm_region_bytes: Gauge,
    /// Deterministic calls re-sent after their worker died.
    pub retries: Family<ModelLabel, Counter>,
    /// Config reloads by outcome (`reload`).
    pub config_reloads: Family<OutcomeLabel, Counter>,
    /// When the last reload applied whole, Unix seconds (0: none yet).
    pub config_reload_success: Gauge,
    /// Versions, swaps and aliases.
    pub versions: versions::Versions,
    in_flight: Family<ModelLabel, Gauge>,
    queue_depth: Family<ModelLabel, Gauge>,
    state: Family<ModelStateLabel, Gauge>,
    memory: Family<ModelKind, Gauge>,
    uptime: Family<ModelLabel, Gauge>,
    clients: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The `client` label of `client`: itself while fewer than
    /// [`MAX_CLIENTS`] values were seen, [`OTHER_CLIENT`] after, so
    /// callers cannot grow the series without bound.
    pub fn client_label(&self, client: &str) -> String {
        let mut seen = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(client) {
            return client.to_owned();
        }
        if seen.len() < MAX_CLIENTS {
            seen.insert(client.to_owned());
            return client.to_owned();
        }
        OTHER_CLIENT.to_owned()
    }

    /// Every family, registered and empty.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("sidecar"),
            requests: Family::default(),
            latency: Family::new_with_constructor(seconds),
            queue_wait: Family::new_with_constructor(seconds),
            rejected: Family::default(),
            ttft: Family::new_with_constructor(seconds),
            tokens_generated: Family::default(),
            tokens_prompted: Family::default(),
            tokens_per_second: Family::new_with_constructor(rates),
            frames: Family::default(),
            stream_fps: Family::new_with_constructor(rates),
            restarts: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_evictions: Family::default(),
            cache_bytes: Family::default(),
            shm_regions: Gauge::default(),
            shm_region_bytes: Gauge::default(),
            retries: Family::default(),
            config_reloads: Family::default(),
            config_reload_success: Gauge::default(),
            versions: versions::Versions::default(),
            in_flight: Family::default(),
            queue_depth: Family::default(),
            state: Family::default(),
            memory: Family::default(),
            uptime: Family::default(),
            clients: std::sync::Mutex::default(),
        };
        m.registry.register(
            "requests",
            "Calls by method, model, gRPC status code and client",
            m.requests.clone(),
        );
        m.registry.register(
            "request_duration_seconds",
            "Call duration to its last message",
            m.latency.clone(),
        );
        m.registry.register(
            "queue_wait_seconds",
            "Time a call waited in the supervisor before reaching its worker",
            m.queue_wait.clone(),
        );
        m.registry.register(
            "rejected",
            "Calls refused before reaching a worker, by reason (queue_full, rate_limited, over_burst, draining, memory, deadline, failed, unavailable, quarantined)",
            m.rejected.clone(),
        );
        m.registry.register(
            "time_to_first_token_seconds",
            "Text: time to the first token, queueing included",
            m.ttft.clone(),
        );
        m.registry.register(
            "tokens_generated",
            "Text: tokens generated",
            m.tokens_generated.clone(),
        );
        m.registry.register(
            "tokens_prompted",
            "Text: prompt tokens evaluated",
            m.tokens_prompted.clone(),
        );
        m.registry.register(
            "tokens_per_second",
            "Text: generation speed of each call",
            m.tokens_per_second.clone(),
        );
        m.registry.register(
            "vision_frames",
            "Vision: frames received (in), answered (processed) and dropped",
            m.frames.clone(),
        );
        m.registry.register(
            "vision_stream_fps",
            "Vision: each finished stream's processed frames per second",
            m.stream_fps.clone(),
        );
        m.registry.register(
            "worker_restarts",
            "Worker restarts by kill reason (crash, oom, vram, timeout, unhealthy, requested)",
            m.restarts.clone(),
        );
        m.registry.register(
            "cache_hits",
            "Result cache: answers served from it (an Embed text, a ProcessBatch image, a whole call for the other methods)",
            m.cache_hits.clone(),
        );
        m.registry.register(
            "cache_misses",
            "Result cache: answers not in it",
            m.cache_misses.clone(),
        );
        m.registry.register(
            "cache_evictions",
            "Result cache: entries dropped for room (cache.max_bytes) or age (the TTL)",
            m.cache_evictions.clone(),
        );
        m.registry.register(
            "shm_regions",
            "Shared-memory regions registered, all clients together",
            m.shm_regions.clone(),
        );
        m.registry.register(
            "shm_region_bytes",
            "Bytes of the registered shared-memory regions, all clients together",
            m.shm_region_bytes.clone(),
        );
        m.registry.register(
            "cache_bytes",
            "Result cache: bytes the model's entries hold (keys, answers, overhead)",
            m.cache_bytes.clone(),
        );
        m.registry.register(
            "retries",
            "Deterministic calls re-sent once to a new worker after theirs died mid-call",
            m.retries.clone(),
        );
        m.registry.register(
            "in_flight",
            "Calls executing per model",
            m.in_flight.clone(),
        );
        m.registry.register(
            "queue_depth",
            "Calls waiting per model",
            m.queue_depth.clone(),
        );
        m.registry.register(
            "model_state",
            "1 for the model's current state",
            m.state.clone(),
        );
        m.registry.register(
            "worker_memory_bytes",
            "Worker memory by kind (host_private, host_file, gpu)",
            m.memory.clone(),
        );
        m.registry.register(
            "worker_uptime_seconds",
            "Seconds since the model's current worker started",
            m.uptime.clone(),
        );
        for outcome in ["ok", "error"] {
            drop(m.config_reloads.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            }));
        }
        m.registry.register(
            "config_reloads",
            "Config reloads (SIGHUP, sidecarctl reload) by outcome",
            m.config_reloads.clone(),
        );
        m.registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the config was last reloaded and applied whole, Unix seconds (0: never)",
            m.config_reload_success.clone(),
        );
        m.versions.register(&mut m.registry);
        m
    }

    /// Creates `model`'s restart and rejection series at 0, so `rate()`
    /// and `absent()` work before the first event.
    pub fn enroll(&self, model: &str) {
        for reason in KillReason::ALL {
            drop(self.restarts.get_or_create(&ModelReason {
                model: model.into(),
                reason: reason.as_str().into(),
            }));
        }
        let label = ModelLabel {
            model: model.into(),
        };
        for f in [
            &self.cache_hits,
            &self.cache_misses,
            &self.cache_evictions,
            &self.retries,
        ] {
            drop(f.get_or_create(&label));
        }
        drop(self.cache_bytes.get_or_create(&label));
        self.versions.enroll(model);
        for reason in REJECTIONS {
            drop(self.rejected.get_or_create(&ModelReason {
                model: model.into(),
                reason: reason.into(),
            }));
        }
    }

    /// A call refused before its worker (`reason`: one of [`REJECTIONS`]).
    pub fn reject(&self, model: &str, reason: &str) {
        debug_assert!(REJECTIONS.contains(&reason), "{reason}");
        self.rejected
            .get_or_create(&ModelReason {
                model: model.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A worker restart.
    pub fn restart(&self, model: &str, reason: KillReason) {
        self.restarts
            .get_or_create(&ModelReason {
                model: model.into(),
                reason: reason.as_str().into(),
            })
            .inc();
    }

    /// A swap of `model` ended (`outcome`: ok, error or cold).
    pub fn swap(&self, model: &str, outcome: &str) {
        self.versions.swap(model, outcome);
    }

    /// Vision frames of one kind.
    pub fn frame(&self, model: &str, kind: &str, n: u64) {
        self.frames
            .get_or_create(&ModelKind {
                model: model.into(),
                kind: kind.into(),
            })
            .inc_by(n);
    }

    /// The Prometheus text exposition, with the per-model gauges as
    /// given (the models present now).
    pub fn render(&self, models: &[ModelGauges]) -> String {
        for f in [&self.in_flight, &self.queue_depth, &self.uptime] {
            f.clear();
        }
        self.state.clear();
        self.memory.clear();
        self.versions.set(models);
        for g in models {
            let model = ModelLabel {
                model: g.model.clone(),
            };
            self.in_flight
                .get_or_create(&model)
                .set(i64::from(g.in_flight));
            self.queue_depth
                .get_or_create(&model)
                .set(i64::from(g.queue_depth));
            self.state
                .get_or_create(&ModelStateLabel {
                    model: g.model.clone(),
                    state: g.state.as_str().into(),
                })
                .set(1);
            if let Some(up) = g.uptime_s {
                self.uptime.get_or_create(&model).set(up);
            }
            if let Some(bytes) = g.memory {
                for (name, v) in ["host_private", "host_file", "gpu"].into_iter().zip(bytes) {
                    self.memory
                        .get_or_create(&ModelKind {
                            model: g.model.clone(),
                            kind: name.into(),
                        })
                        .set(v as i64);
                }
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("metrics encoding: {e}");
        }
        out
    }
}

/// The gRPC status code's name, as Prometheus labels show it.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enrolled_model_has_its_alert_series_at_zero() {
        let m = Metrics::new();
        m.enroll("m");
        let text = m.render(&[]);
        for reason in KillReason::ALL {
            let line = format!(
                "sidecar_worker_restarts_total{{model=\"m\",reason=\"{}\"}} 0",
                reason.as_str()
            );
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        for reason in REJECTIONS {
            let line = format!("sidecar_rejected_total{{model=\"m\",reason=\"{reason}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
