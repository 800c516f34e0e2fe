//! What the supervisor's parts share: the config, the metrics, the log
//! book, the request-id counter, the result cache and the shared-memory regions. Built once at start (`app::run`) and
//! passed down, so nothing in the crate is a process global and a test can
//! build its own.

use std::sync::Arc;

use crate::cache::ResultCache;
use crate::config::Config;
use crate::ids::RequestIds;
use crate::logs::LogBook;
use crate::metrics::Metrics;
use crate::shm::Regions;

/// The handles every part of the supervisor may use.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The workers' and the actors' log lines.
    pub logs: Arc<LogBook>,
    /// Ids for calls that bring none.
    pub request_ids: Arc<RequestIds>,
    /// Answers of deterministic calls, and the calls in flight.
    pub cache: Arc<ResultCache>,
    /// The clients' shared-memory regions.
    pub shm: Arc<Regions>,
}

impl Shared {
    /// Fresh handles around `config`.
    pub fn new(config: Config) -> Shared {
        let metrics = Arc::new(Metrics::new());
        Shared {
            cache: Arc::new(ResultCache::new(&config.cache, metrics.clone())),
            shm: Arc::new(Regions::new(config.shm.clone(), metrics.clone())),
            config: Arc::new(config),
            metrics,
            logs: Arc::new(LogBook::default()),
            request_ids: Arc::new(RequestIds::default()),
        }
    }
}
