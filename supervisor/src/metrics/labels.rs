//! The label sets of the metrics' families, and the per-model gauges a
//! scrape is given.

use prometheus_client::encoding::EncodeLabelSet;

use crate::lifecycle::State;

/// One model's gauges at a scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelGauges {
    /// Model id.
    pub model: String,
    /// Its state.
    pub state: State,
    /// Calls executing.
    pub in_flight: u32,
    /// Calls waiting.
    pub queue_depth: u32,
    /// Seconds since the current worker started (`None`: no worker).
    pub uptime_s: Option<i64>,
    /// Host private, host file-backed and GPU bytes (`None`: not sampled).
    pub memory: Option<[u64; 3]>,
    /// The current version's number.
    pub version: u32,
    /// Versions calls may reach (the current one and those kept).
    pub versions: u32,
    /// A swap in progress.
    pub swapping: bool,
    /// The aliases naming a loaded version of the id, and that version
    /// (`None`: the current one, following swaps).
    pub aliases: Vec<(String, Option<u32>)>,
}

/// `method`, `model` and the gRPC `code` name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// gRPC method ("TextService/Generate").
    pub method: String,
    /// Model id ("" when the call failed before naming one).
    pub model: String,
    /// gRPC status code name ("OK", "RESOURCE_EXHAUSTED", ...).
    pub code: String,
    /// The caller (`auth::Identity`): at most [`MAX_CLIENTS`] distinct
    /// values, then [`OTHER_CLIENT`].
    pub client: String,
    /// The API the call came in by: `grpc` or `http` (the OpenAI API).
    pub protocol: String,
}

/// Most distinct `client` label values; later callers are counted as
/// [`OTHER_CLIENT`].
pub const MAX_CLIENTS: usize = 256;
/// The `client` label past [`MAX_CLIENTS`].
pub const OTHER_CLIENT: &str = "other";

/// `method`, `model` and `protocol`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodModel {
    /// gRPC method, or the HTTP API's route name ("openai/chat.completions").
    pub method: String,
    /// Model id.
    pub model: String,
    /// `grpc` or `http`.
    pub protocol: String,
}

/// `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Model id.
    pub model: String,
}

/// A config reload's `outcome`: `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `error`.
    pub outcome: String,
}

/// `model` and a `reason` (of a rejection or a kill).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelReason {
    /// Model id.
    pub model: String,
    /// Why.
    pub reason: String,
}

/// `model` and a `kind` (of frames or memory).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelKind {
    /// Model id.
    pub model: String,
    /// What.
    pub kind: String,
}

/// `model` and its `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelStateLabel {
    /// Model id.
    pub model: String,
    /// "ready", "loading", ...
    pub state: String,
}
