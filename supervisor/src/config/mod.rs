//! Typed configuration: a TOML file, then `SIDECAR_*` environment
//! variables and command-line flags for the few settings an operator
//! overrides most.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sidecar_proto::v1::{Accelerator, LiteOptions, ModelFamily, TextOptions};

use crate::error::Error;

mod api_socket;
mod auth;
mod cache;
mod connections;
mod exposure;
mod openai;
mod shm;
pub mod small_file;
mod store;
mod tls;
mod traffic;
mod units;
mod vision;
mod whole;
mod workers;

pub use api_socket::{ApiSocket, Listen};
pub use auth::{AuthConfig, MAX_CLIENT_IDS};
pub use cache::{CacheConfig, MAX_CACHE_BYTES, MIN_CACHE_BYTES, ModelCacheConfig};
pub use connections::Connections;
pub use openai::{HttpAddress, OpenAiConfig};
pub use shm::{MAX_REGIONS_LIMIT, ShmConfig};
pub use store::StoreLimits;
pub use tls::{MAX_PEM_BYTES, Tls};
pub use traffic::{ClassSpec, MAX_IN_FLIGHT, TrafficConfig};
pub use units::bytes;
use units::{opt_secs, secs};
pub use vision::{PipelineSpec, VisionSpec, set_role};
pub use workers::{SeccompMode, WorkerPolicy};

/// Command-line flags (each also readable from the environment).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sidecar",
    version,
    about = "Inference sidecar: gRPC API over supervised model workers"
)]
pub struct Cli {
    /// TOML config file.
    #[arg(long, env = "SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC API address, HOST:PORT or unix:/PATH (overrides the file);
    /// repeatable, one of each at most. A unix: path alone turns the TCP
    /// listener off.
    #[arg(long, env = "SIDECAR_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Listen>,
    /// HTTP admin address for /livez, /readyz (overrides the file).
    #[arg(long, env = "SIDECAR_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Model store directory (overrides the file).
    #[arg(long, env = "SIDECAR_MODEL_STORE")]
    pub model_store: Option<PathBuf>,
    /// Control socket path (overrides the file).
    #[arg(long, env = "SIDECAR_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "SIDECAR_LOG_JSON")]
    pub log_json: bool,
    /// Accept an API address other hosts can reach, without TLS or tokens,
    /// without the warning (overrides the file).
    #[arg(long, env = "SIDECAR_INSECURE_PUBLIC")]
    pub insecure_public: bool,
}

/// The supervisor's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC API address (pod-local by default).
    pub listen: SocketAddr,
    /// The gRPC API on a Unix socket (`[api_socket]`, `config::api_socket`).
    pub api_socket: ApiSocket,
    /// HTTP admin address (`/livez`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// Control socket (Unix, mode 0600) serving AdminService; nothing that
    /// changes state is reachable on the network.
    pub control_socket: PathBuf,
    /// Model store: every model path is resolved inside it.
    pub model_store: PathBuf,
    /// Upload quotas of the model store.
    pub store: StoreLimits,
    /// The result cache of deterministic calls (`config::cache`).
    pub cache: CacheConfig,
    /// Directory holding the worker binaries; default: the directory of the
    /// running `sidecar` binary.
    pub worker_dir: Option<PathBuf>,
    /// The LiteRT runtime (`libLiteRt.so`) that LITE workers load; relative
    /// paths are from the working directory.
    pub lite_runtime: PathBuf,
    /// Largest gRPC message accepted or sent, bytes.
    pub max_message_bytes: usize,
    /// Deadlines applied when the caller sets none.
    pub deadlines: Deadlines,
    /// Worker supervision.
    pub workers: WorkerPolicy,
    /// The memory guard.
    pub memory: MemoryPolicy,
    /// Limits on the connections of every listener (API port, control
    /// socket): HTTP/2 streams, resets, keepalive, idle, stalled streams.
    pub connections: Connections,
    /// TLS on the API port (`[tls]`); absent: plaintext. The admin port
    /// and the control socket are never TLS.
    pub tls: Option<Tls>,
    /// Bearer tokens and client names on the API port (`[auth]`).
    pub auth: AuthConfig,
    /// Client classes: rate limits, weights, queue bounds (`[traffic]`).
    pub traffic: TrafficConfig,
    /// The OpenAI-compatible HTTP API (`[openai]`, `config::openai`).
    pub openai: OpenAiConfig,
    /// Shared-memory regions (`[shm]`, `config::shm`).
    pub shm: ShmConfig,
    /// The API may listen where other hosts reach it without TLS or
    /// tokens, and no warning is logged (see [`Config::exposure`]).
    pub insecure_public: bool,
    /// `/livez` answers 503 once the main runtime (API, workers' actors)
    /// has not run for this long.
    #[serde(with = "secs")]
    pub livez_stall: Duration,
    /// How long in-flight calls may finish after SIGTERM.
    #[serde(with = "secs")]
    pub shutdown_grace: Duration,
    /// The model catalog.
    pub models: Vec<ModelSpec>,
    /// `[aliases]`: alias = "model id" or "model id@version", set at start
    /// and by a reload (see `reload`); more may be set at run time
    /// (SetAlias).
    pub aliases: std::collections::BTreeMap<String, String>,
    /// The flags (and so the file) this config was read with: a reload
    /// (`reload`) reads the same file with the same flags. `None`: built
    /// in code.
    #[serde(skip)]
    pub origin: Option<std::sync::Arc<Cli>>,
}

/// Default deadlines.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deadlines {
    /// Unary calls.
    #[serde(with = "secs")]
    pub unary: Duration,
    /// Token streams.
    #[serde(with = "secs")]
    pub stream: Duration,
    /// Loading a model (hello + load + warm-up).
    #[serde(with = "secs")]
    pub load: Duration,
    /// After a cancel, how long a worker may take to stop before it is
    /// killed (reason `timeout`).
    #[serde(with = "secs")]
    pub cancel_grace: Duration,
    /// The longest deadline a call may ask for (`grpc-timeout`); longer
    /// ones are cut to it, so no call holds a slot for days.
    #[serde(with = "secs")]
    pub max: Duration,
}

/// The memory guard: what it samples, keeps free and lets models use.
/// Sizes are bytes, or strings such as "512MiB", "2GiB", "100MB".
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryPolicy {
    /// How often worker memory, host memory and GPUs are sampled.
    #[serde(with = "secs")]
    pub sample_interval: Duration,
    /// Host memory kept free: loads that would eat into it are refused (or
    /// make room first), and a worker that pushes available memory below
    /// it is killed (`oom`).
    #[serde(with = "bytes")]
    pub host_reserve: u64,
    /// What all models together may use; 0 = the container's cgroup
    /// `memory.max` less `cgroup_margin` (the supervisor's own room), or
    /// the host's memory where there is no limit.
    #[serde(with = "bytes")]
    pub limit: u64,
    /// Room left to the supervisor under the container's limit.
    #[serde(with = "bytes")]
    pub cgroup_margin: u64,
    /// GPU memory kept free on every device.
    #[serde(with = "bytes")]
    pub gpu_reserve: u64,
    /// Idle time after which a model loaded on demand (`preload = false`)
    /// is unloaded; preloaded models stay unless their own `keep_alive`
    /// says otherwise.
    #[serde(with = "secs")]
    pub on_demand_keep_alive: Duration,
    /// The worker's `oom_score_adj` (the supervisor keeps its own), so a
    /// kernel OOM picks a worker first.
    pub worker_oom_score_adj: i32,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        MemoryPolicy {
            sample_interval: Duration::from_secs(1),
            host_reserve: 256 << 20,
            limit: 0,
            cgroup_margin: 128 << 20,
            gpu_reserve: 512 << 20,
            on_demand_keep_alive: Duration::from_secs(300),
            worker_oom_score_adj: 800,
        }
    }
}

/// One model of the catalog.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model id.
    pub id: String,
    /// "text", "lite" or "vision".
    pub family: Family,
    /// File relative to the model store.
    pub path: String,
    /// Start at boot (true) or on the first call.
    #[serde(default = "yes")]
    pub preload: bool,
    /// Readiness requires this model; default: preloaded models are.
    pub required: Option<bool>,
    /// Never unloaded to make room.
    #[serde(default)]
    pub pinned: bool,
    /// Private host memory the worker may use; over it, it is killed
    /// (`oom`). 0 = no per-model budget (the host reserve still applies).
    #[serde(default, with = "bytes")]
    pub memory_budget: u64,
    /// What admission assumes the model needs before it has run; 0 = the
    /// guard's estimate from the file (and, for text models, the KV cache).
    #[serde(default, with = "bytes")]
    pub memory_estimate: u64,
    /// Unload after this long without calls (seconds); absent = never for
    /// preloaded models, `memory.on_demand_keep_alive` for the others.
    #[serde(default, with = "opt_secs")]
    pub keep_alive: Option<Duration>,
    /// Calls executing at once, 1..=1024; absent: `traffic::capacity`.
    pub max_in_flight: Option<u32>,
    /// TEXT options.
    #[serde(default)]
    pub text: TextSpec,
    /// LITE options.
    #[serde(default)]
    pub lite: LiteSpec,
    /// VISION options.
    #[serde(default)]
    pub vision: VisionSpec,
}

/// LITE options in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LiteSpec {
    /// XNNPACK threads; 0 = 1.
    pub threads: u32,
    /// "cpu" (default) or "gpu".
    pub accelerator: LiteAccelerator,
    /// Run on the CPU when the GPU is missing instead of failing.
    pub allow_fallback: bool,
}

/// Accelerator of a LITE model.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LiteAccelerator {
    /// XNNPACK on the CPU.
    #[default]
    Cpu,
    /// LiteRT's GPU accelerator.
    Gpu,
}

impl LiteSpec {
    /// The wire form.
    pub fn to_proto(&self) -> LiteOptions {
        LiteOptions {
            threads: self.threads.max(1),
            accelerator: match self.accelerator {
                LiteAccelerator::Cpu => Accelerator::Cpu,
                LiteAccelerator::Gpu => Accelerator::Gpu,
            } as i32,
            allow_fallback: self.allow_fallback,
        }
    }
}

/// TEXT options in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TextSpec {
    /// Context per sequence, tokens; 0 = the model's, capped at 4096.
    pub context_size: u32,
    /// Parallel sequences.
    pub parallel: u32,
    /// Threads; 0 = the cores this process may use.
    pub threads: u32,
    /// GPU layers; absent = none on a host without a GPU.
    pub gpu_layers: Option<i32>,
    /// Prompt batch size, tokens; 0 = 512.
    pub batch_size: u32,
    /// Chat template used when a Chat request names none; empty = the
    /// model's own.
    pub chat_template: String,
    /// Serve Embed instead of generation; absent = decided by the model
    /// file (encoder models such as BERT are embedding models).
    pub embeddings: Option<bool>,
    /// Prompt-prefix reuse: slots keep their KV cache after a call and a
    /// call sharing a prefix decodes only the rest; absent = on for
    /// generation models. `prompt_cache = true` with `embeddings = true`
    /// is a config error.
    pub prompt_cache: Option<bool>,
}

impl TextSpec {
    /// The wire form.
    pub fn to_proto(&self) -> TextOptions {
        TextOptions {
            context_size: self.context_size,
            parallel: self.parallel,
            threads: self.threads,
            gpu_layers: self.gpu_layers,
            batch_size: self.batch_size,
            chat_template: self.chat_template.clone(),
            embeddings: self.embeddings,
            prompt_cache: self.prompt_cache,
        }
    }

    /// Options that contradict each other, named with the model.
    fn validate(&self, model: &str) -> Result<(), Error> {
        if self.prompt_cache == Some(true) && self.embeddings == Some(true) {
            return Err(Error::Config(format!(
                "model {model:?}: text.prompt_cache = true needs a generation model, but text.embeddings = true (embedding models keep no prompt cache)"
            )));
        }
        Ok(())
    }
}

/// Model families the config knows.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// llama.cpp models.
    Text,
    /// LiteRT `.tflite` models.
    Lite,
    /// Detectors (SSD `.tflite` or OpenCV cascades) with OpenCV.
    Vision,
}

impl Family {
    /// The wire enum.
    pub fn to_proto(self) -> ModelFamily {
        match self {
            Family::Text => ModelFamily::Text,
            Family::Lite => ModelFamily::Lite,
            Family::Vision => ModelFamily::Vision,
        }
    }
    /// The worker binary's name.
    pub fn worker_binary(self) -> &'static str {
        match self {
            Family::Text => "worker-text",
            Family::Lite => "worker-lite",
            Family::Vision => "worker-vision",
        }
    }
}

fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ([127, 0, 0, 1], 50051).into(),
            api_socket: ApiSocket::default(),
            admin_listen: ([0, 0, 0, 0], 9090).into(),
            control_socket: PathBuf::from("/run/sidecar/control.sock"),
            model_store: PathBuf::from("models"),
            store: StoreLimits::default(),
            cache: CacheConfig::default(),
            worker_dir: None,
            lite_runtime: PathBuf::from("runtime/litert/libLiteRt.so"),
            max_message_bytes: 64 << 20,
            deadlines: Deadlines::default(),
            workers: WorkerPolicy::default(),
            memory: MemoryPolicy::default(),
            connections: Connections::default(),
            tls: None,
            auth: AuthConfig::default(),
            traffic: TrafficConfig::default(),
            openai: OpenAiConfig::default(),
            shm: ShmConfig::default(),
            insecure_public: false,
            livez_stall: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            models: Vec::new(),
            aliases: std::collections::BTreeMap::new(),
            origin: None,
        }
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            unary: Duration::from_secs(30),
            stream: Duration::from_secs(300),
            load: Duration::from_secs(120),
            cancel_grace: Duration::from_secs(2),
            max: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// The file (if any), then the flags.
    pub fn load(cli: &Cli) -> Result<Config, Error> {
        let mut config = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        config.apply_flags(cli)?;
        config.validate()?;
        Ok(config)
    }

    /// The flags over what the file says; remembers them (`origin`).
    fn apply_flags(&mut self, cli: &Cli) -> Result<(), Error> {
        api_socket::apply(&cli.listen, &mut self.listen, &mut self.api_socket)?;
        if let Some(a) = cli.admin_listen {
            self.admin_listen = a;
        }
        if let Some(p) = &cli.model_store {
            self.model_store = p.clone();
        }
        if let Some(p) = &cli.control_socket {
            self.control_socket = p.clone();
        }
        self.insecure_public |= cli.insecure_public;
        self.origin = Some(std::sync::Arc::new(cli.clone()));
        Ok(())
    }

    /// Parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    fn validate(&self) -> Result<(), Error> {
        if let Some(e) = self.model_errors().into_iter().next() {
            return Err(e);
        }
        self.auth.validate()?;
        self.cache.validate()?;
        self.openai.validate()?;
        self.shm.validate()?;
        self.api_socket.validate(&self.control_socket)?;
        self.traffic.validate_with(&self.workers, &self.models)?;
        self.workers.check_pair()?;
        self.check_runtime_dir()?;
        let c = &self.connections;
        for (name, value) in [
            ("connections.max_connections", c.max_connections),
            ("connections.max_streams", c.max_streams as usize),
            ("connections.max_pending_resets", c.max_pending_resets),
            ("connections.max_error_resets", c.max_error_resets),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        for (name, value) in [
            ("connections.keepalive_interval", c.keepalive_interval),
            ("connections.keepalive_timeout", c.keepalive_timeout),
            ("connections.idle_timeout", c.idle_timeout),
            ("connections.stream_stall", c.stream_stall),
            ("deadlines.max", self.deadlines.max),
            ("livez_stall", self.livez_stall),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{name} must be more than 0 s")));
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// The channel of a `family` worker. Frames and tensors are written once
    /// into a ring and read in place, so the rings that carry them hold a
    /// message of `max_message_bytes` (with room for the request around
    /// it); the others, tokens and results, keep `workers.channel_bytes`.
    /// Shared memory is only used as a ring wraps over it.
    pub fn channel(&self, family: Family) -> ipc::ChannelConfig {
        /// The worker request around a client's message, and a frame header.
        const ENVELOPE: usize = 64 << 10;
        let small = self.workers.channel_bytes;
        let large = small.max(self.max_message_bytes.saturating_add(ENVELOPE));
        let (request, response) = match family {
            Family::Text => (small, small),
            Family::Vision => (large, small),
            Family::Lite => (large, large),
        };
        ipc::ChannelConfig {
            request_ring_bytes: request,
            response_ring_bytes: response,
            ..ipc::ChannelConfig::with_ring_bytes(small)
        }
    }

    /// Where the worker binaries are.
    pub fn worker_dir(&self) -> PathBuf {
        self.worker_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("."))
        })
    }
}

#[cfg(test)]
mod tests;
