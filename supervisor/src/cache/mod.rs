//! The result cache of deterministic calls and the calls in flight others
//! wait for. The pipeline that decides what is deterministic, builds the
//! keys and re-sends a call after a worker death is `api::deterministic`;
//! this module only holds answers, bounded by bytes.
//!
//! Answers are kept encoded (protobuf bytes), each weighed as its key, its
//! bytes and [`ENTRY_OVERHEAD`] (moka's node, its timer and the entry's
//! own header), under one byte bound for every model (`cache.max_bytes`);
//! each entry lives its model's TTL. A model's entries are dropped when it
//! is unloaded; a changed model file changes the keys (its digest is in
//! them), so the old entries are never read again and age out.

pub mod flight;
mod key;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::notification::RemovalCause;
use sidecar_proto::v1::{GenerateResponse, ModelCacheStats};
use sidecar_proto::worker::worker_response;

pub use flight::{Flights, Join, Publisher, Waited};
pub use key::{KEY_BYTES, Key, KeyBuilder};

use crate::config::CacheConfig;
use crate::error::Error;
use crate::metrics::{Metrics, ModelLabel};

/// Bytes counted per entry beyond its key and value: moka's entry node,
/// its access-order and timer-wheel links, the `Arc`ed [`Entry`] and its
/// `Bytes` header (measured sizes are below this).
pub const ENTRY_OVERHEAD: usize = 192;

/// One answer held.
#[derive(Debug)]
struct Entry {
    model: Arc<ModelCache>,
    value: Bytes,
    ttl: Duration,
}

impl Entry {
    fn weight(&self) -> u64 {
        (KEY_BYTES + self.value.len() + ENTRY_OVERHEAD) as u64
    }
}

/// What a deterministic execution answered.
// One per execution, shared behind an `Arc<Outcome>`: boxing the larger
// variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Answer {
    /// A unary method's answer.
    Body(worker_response::Body),
    /// A generation collected from its token stream.
    Generated(GenerateResponse),
}

/// An execution's answer, shared by every caller that waited for it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The answer.
    pub answer: Answer,
    /// Time spent in the supervisor before the worker (last attempt).
    pub queued: Duration,
    /// It was re-sent once after its worker died.
    pub retried: bool,
}

/// What a flight hands its waiters.
pub type Shared = Result<Arc<Outcome>, Error>;

/// The model file's digest, per worker (a restart may load a changed
/// file): `pid`'s digest, or one being computed.
#[derive(Debug, Default)]
struct DigestState {
    pid: u32,
    digest: Option<String>,
    computing: bool,
}

/// What a call finds of its model's digest.
#[derive(Debug, PartialEq, Eq)]
pub enum DigestNow {
    /// Known for this worker.
    Ready(String),
    /// The caller is to compute it (then [`ModelCache::set_digest`]).
    Start,
    /// Being computed: the call goes uncached.
    Pending,
}

/// One model's share: its settings, counters and file digest.
#[derive(Debug)]
pub struct ModelCache {
    /// Model id.
    pub id: String,
    /// Answers are kept.
    pub enabled: bool,
    /// How long.
    pub ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    bytes: AtomicU64,
    entries: AtomicU64,
    shared: AtomicU64,
    /// Loaded: cleared by its unload ([`ResultCache::forget`]), after
    /// which none of its entries is served or kept, whatever moka's
    /// housekeeping still holds.
    live: std::sync::atomic::AtomicBool,
    digest: Mutex<DigestState>,
    metrics: Arc<Metrics>,
    /// Bytes held, every model's entries together (as added and removed,
    /// before moka's housekeeping applies the bound).
    total: Arc<AtomicU64>,
}

impl ModelCache {
    fn label(&self) -> ModelLabel {
        ModelLabel {
            model: self.id.clone(),
        }
    }

    /// `n` answers came from the cache.
    pub fn hit(&self, n: u64) {
        if n > 0 {
            self.hits.fetch_add(n, Ordering::Relaxed);
            self.metrics
                .cache_hits
                .get_or_create(&self.label())
                .inc_by(n);
        }
    }

    /// `n` answers were not in it.
    pub fn miss(&self, n: u64) {
        if n > 0 {
            self.misses.fetch_add(n, Ordering::Relaxed);
            self.metrics
                .cache_misses
                .get_or_create(&self.label())
                .inc_by(n);
        }
    }

    /// A call waited for an identical one in flight.
    pub fn shared_flight(&self) {
        self.shared.fetch_add(1, Ordering::Relaxed);
    }

    /// The digest for worker `pid`.
    pub fn digest_for(&self, pid: u32) -> DigestNow {
        let mut d = self.digest.lock().unwrap_or_else(PoisonError::into_inner);
        match (&d.digest, d.computing) {
            (Some(digest), _) if d.pid == pid => DigestNow::Ready(digest.clone()),
            (_, true) => DigestNow::Pending,
            _ => {
                d.computing = true;
                DigestNow::Start
            }
        }
    }

    /// The digest computed for `pid` (`None`: it could not be read; the
    /// next call tries again).
    pub fn set_digest(&self, pid: u32, digest: Option<String>) {
        let mut d = self.digest.lock().unwrap_or_else(PoisonError::into_inner);
        d.computing = false;
        if let Some(digest) = digest {
            d.pid = pid;
            d.digest = Some(digest);
        }
    }

    fn stats(&self) -> ModelCacheStats {
        ModelCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            shared: self.shared.load(Ordering::Relaxed),
        }
    }

    fn added(&self, weight: u64) {
        self.total.fetch_add(weight, Ordering::Relaxed);
        self.bytes.fetch_add(weight, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .cache_bytes
            .get_or_create(&self.label())
            .inc_by(weight as i64);
    }

    fn removed(&self, weight: u64, evicted: bool) {
        self.total.fetch_sub(weight, Ordering::Relaxed);
        self.bytes.fetch_sub(weight, Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .cache_bytes
            .get_or_create(&self.label())
            .dec_by(weight as i64);
        if evicted {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .cache_evictions
                .get_or_create(&self.label())
                .inc();
        }
    }
}

/// Per-entry TTL: the model's.
struct ModelTtl;

impl moka::Expiry<Key, Arc<Entry>> for ModelTtl {
    fn expire_after_create(&self, _: &Key, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// The cache, one per process (`Shared::cache`).
pub struct ResultCache {
    entries: moka::future::Cache<Key, Arc<Entry>>,
    models: Mutex<HashMap<String, Arc<ModelCache>>>,
    config: CacheConfig,
    metrics: Arc<Metrics>,
    /// Calls in flight others may wait for.
    pub flights: Arc<Flights<Shared>>,
    total: Arc<AtomicU64>,
    /// A caller is applying the bound (the others do not wait for it).
    settling: std::sync::atomic::AtomicBool,
    settles: AtomicU64,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("bytes", &self.entries.weighted_size())
            .field("max_bytes", &self.config.max_bytes)
            .finish_non_exhaustive()
    }
}

impl ResultCache {
    /// An empty cache under `config`'s bound.
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> ResultCache {
        let entries = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_: &Key, v: &Arc<Entry>| u32::try_from(v.weight()).unwrap_or(u32::MAX))
            .expire_after(ModelTtl)
            .support_invalidation_closures()
            .eviction_listener(|_, v: Arc<Entry>, cause: RemovalCause| {
                v.model.removed(v.weight(), cause.was_evicted());
            })
            .build();
        ResultCache {
            entries,
            models: Mutex::default(),
            config: config.clone(),
            metrics,
            flights: Arc::new(Flights::new(config.max_flights)),
            total: Arc::default(),
            settling: std::sync::atomic::AtomicBool::new(false),
            settles: AtomicU64::new(0),
        }
    }

    /// `id`'s share, while `id` is loaded ([`ResultCache::open`] at its
    /// load, [`ResultCache::forget`] at its unload): a call that finds
    /// none goes uncached, and never creates figures for a model gone.
    pub fn model(&self, id: &str) -> Option<Arc<ModelCache>> {
        self.models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Opens `id`'s share (its load; the registry's).
    pub fn open(&self, id: &str) -> Arc<ModelCache> {
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        models
            .entry(id.to_owned())
            .or_insert_with(|| {
                let (enabled, ttl) = self.config.for_model(id);
                Arc::new(ModelCache {
                    id: id.to_owned(),
                    enabled,
                    ttl,
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                    evictions: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                    entries: AtomicU64::new(0),
                    shared: AtomicU64::new(0),
                    live: std::sync::atomic::AtomicBool::new(true),
                    digest: Mutex::default(),
                    metrics: self.metrics.clone(),
                    total: self.total.clone(),
                })
            })
            .clone()
    }

    /// The answer held under `key`.
    pub async fn get(&self, key: &Key) -> Option<Bytes> {
        self.entries
            .get(key)
            .await
            .filter(|e| e.model.live.load(Ordering::Acquire))
            .map(|e| e.value.clone())
    }

    /// Keeps `value` under `key` for `model` (nothing when its caching is
    /// off, or when the model was unloaded since the call began, even
    /// while this insert ran).
    pub async fn insert(&self, model: &Arc<ModelCache>, key: Key, value: Bytes) {
        if !model.enabled || !self.is_current(model) {
            return;
        }
        let entry = Arc::new(Entry {
            model: model.clone(),
            value,
            ttl: model.ttl,
        });
        model.added(entry.weight());
        self.entries.insert(key, entry).await;
        // An unload between the check and the insert: its `forget` may
        // have missed this entry.
        if !self.is_current(model)
            && let Some(e) = self.entries.get(&key).await
            && Arc::ptr_eq(&e.model, model)
        {
            self.entries.invalidate(&key).await;
        }
    }

    /// Keeps a call's answers, then applies the byte bound only when the
    /// bytes held are past it, by one caller at a time (the others go on:
    /// moka's housekeeping is not on every call's path).
    pub async fn keep(&self, model: &Arc<ModelCache>, answers: Vec<(Key, Bytes)>) {
        if !model.enabled {
            return;
        }
        for (key, value) in answers {
            self.insert(model, key, value).await;
        }
        if self.total.load(Ordering::Relaxed) > self.config.max_bytes
            && !self.settling.swap(true, Ordering::Acquire)
        {
            self.settle().await;
            self.settling.store(false, Ordering::Release);
        }
    }

    /// Applies the bound now (evictions happen in moka's housekeeping;
    /// after this the bytes held are within it). `GetModel` runs it before
    /// it reads the figures.
    pub async fn settle(&self) {
        self.settles.fetch_add(1, Ordering::Relaxed);
        self.entries.run_pending_tasks().await;
    }

    /// Times the bound was applied.
    pub fn settles(&self) -> u64 {
        self.settles.load(Ordering::Relaxed)
    }

    fn is_current(&self, model: &Arc<ModelCache>) -> bool {
        model.live.load(Ordering::Acquire)
    }

    /// Drops `id`'s entries and counters (its unload).
    pub async fn forget(&self, id: &str) {
        let gone = self
            .models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if let Some(model) = gone {
            model.live.store(false, Ordering::Release);
            let _ = self
                .entries
                .invalidate_entries_if(move |_, e| Arc::ptr_eq(&e.model, &model));
            self.settle().await;
        }
    }

    /// `id`'s figures (zeros before its first deterministic call).
    pub fn stats(&self, id: &str) -> ModelCacheStats {
        self.models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .map(|m| m.stats())
            .unwrap_or_default()
    }

    /// Bytes held, every model's entries together.
    pub fn bytes(&self) -> u64 {
        self.entries.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max: u64) -> ResultCache {
        let config = CacheConfig {
            max_bytes: max,
            ..CacheConfig::default()
        };
        ResultCache::new(&config, Arc::new(Metrics::new()))
    }

    fn key(i: u64) -> Key {
        KeyBuilder::new("test").field(&i.to_le_bytes()).finish()
    }

    #[tokio::test]
    async fn the_byte_bound_holds_under_ten_times_its_size() {
        let max = 256 << 10;
        let c = cache(max);
        let m = c.open("emb");
        let value = Bytes::from(vec![7u8; 1536]);
        let mut pushed = 0u64;
        let mut i = 0;
        while pushed < 10 * max {
            c.insert(&m, key(i), value.clone()).await;
            pushed += value.len() as u64;
            i += 1;
            c.settle().await;
            let s = c.stats("emb");
            assert!(s.bytes <= max, "{} bytes held, bound {max}", s.bytes);
            assert_eq!(s.bytes, c.bytes(), "the model's bytes are the cache's");
        }
        let s = c.stats("emb");
        assert!(s.evictions > 0, "{s:?}");
        let weight = (KEY_BYTES + 1536 + ENTRY_OVERHEAD) as u64;
        assert_eq!(s.bytes, s.entries * weight, "{s:?}");
        assert!(s.bytes > max / 2, "the cache fills up to its bound: {s:?}");
    }

    #[tokio::test]
    async fn forget_drops_a_models_entries_only() {
        let c = cache(1 << 20);
        let (a, b) = (c.open("a"), c.open("b"));
        c.insert(&a, key(1), Bytes::from_static(b"one")).await;
        c.insert(&b, key(2), Bytes::from_static(b"two")).await;
        c.settle().await;
        assert_eq!(c.get(&key(1)).await.as_deref(), Some(&b"one"[..]));
        c.forget("a").await;
        assert_eq!(c.get(&key(1)).await, None);
        assert_eq!(c.get(&key(2)).await.as_deref(), Some(&b"two"[..]));
        assert_eq!(c.stats("a"), ModelCacheStats::default());
        assert_eq!(c.stats("b").entries, 1);
        assert_eq!(a.stats().entries, 0, "the old share saw its entry go");
        // A call that began before the unload keeps nothing.
        c.insert(&a, key(3), Bytes::from_static(b"late")).await;
        assert_eq!(c.get(&key(3)).await, None);
        assert_eq!(c.stats("a").evictions, 0, "an unload is not an eviction");
        assert!(
            c.model("a").is_none(),
            "a call after the unload opens nothing"
        );
        assert_eq!(c.stats("a"), ModelCacheStats::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_insert_racing_the_unload_leaves_nothing() {
        let c = Arc::new(cache(64 << 20));
        for i in 0..300 {
            let m = c.open("a");
            let (c1, c2) = (c.clone(), c.clone());
            let insert = tokio::spawn(async move {
                c1.insert(&m, key(i), Bytes::from_static(b"late")).await;
            });
            let forget = tokio::spawn(async move { c2.forget("a").await });
            insert.await.expect("joined");
            forget.await.expect("joined");
            assert_eq!(c.get(&key(i)).await, None, "round {i}");
        }
        // Not asserted: that `bytes()` returns to 0 at once. moka applies
        // an unload's removal in its housekeeping, and an entry inserted in
        // the same clock tick as the unload may outlive it there until its
        // TTL; it is never served (its model is no longer live), which is
        // what the unload promises (asserted each round above).
    }

    #[tokio::test]
    async fn the_bound_is_applied_only_past_it() {
        let max = 64 << 10;
        let c = cache(max);
        let m = c.open("emb");
        let value = Bytes::from(vec![1u8; 1024]);
        // Under the bound: no housekeeping on the call's path.
        for i in 0..8 {
            c.keep(&m, vec![(key(i), value.clone())]).await;
        }
        assert_eq!(c.settles(), 0);
        let mut off = CacheConfig::default();
        off.models.insert(
            "off".into(),
            crate::config::ModelCacheConfig {
                enabled: Some(false),
                ttl: None,
            },
        );
        let c2 = ResultCache::new(&off, Arc::new(Metrics::new()));
        let o = c2.open("off");
        c2.keep(&o, vec![(key(1), value.clone())]).await;
        assert_eq!((c2.settles(), c2.bytes()), (0, 0), "caching off");
        // Past it: each keep leaves the figures within it.
        for i in 8..1000 {
            c.keep(&m, vec![(key(i), value.clone())]).await;
            let s = c.stats("emb");
            assert!(s.bytes <= max, "{} bytes held, bound {max}", s.bytes);
        }
        assert!(c.settles() > 0);
        assert!(c.stats("emb").evictions > 0);
    }

    #[tokio::test]
    async fn entries_expire_after_their_models_ttl() {
        let mut config = CacheConfig::default();
        config.models.insert(
            "short".into(),
            crate::config::ModelCacheConfig {
                enabled: None,
                ttl: Some(Duration::from_millis(100)),
            },
        );
        let c = ResultCache::new(&config, Arc::new(Metrics::new()));
        let (short, long) = (c.open("short"), c.open("long"));
        c.insert(&short, key(1), Bytes::from_static(b"s")).await;
        c.insert(&long, key(2), Bytes::from_static(b"l")).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(c.get(&key(1)).await, None, "expired");
        assert!(c.get(&key(2)).await.is_some(), "10 min");
        // moka's timer wheel removes expired entries at its next tick
        // (about a second).
        let start = Instant::now();
        while c.stats("short").evictions == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.settle().await;
        }
        assert_eq!(c.stats("short").evictions, 1);
        assert_eq!(c.stats("short").bytes, 0);
        assert_eq!(c.stats("long").entries, 1);
    }

    #[test]
    fn the_digest_is_computed_once_per_worker() {
        let c = cache(1 << 20);
        let m = c.open("m");
        assert_eq!(m.digest_for(10), DigestNow::Start);
        assert_eq!(m.digest_for(10), DigestNow::Pending);
        m.set_digest(10, Some("abc".into()));
        assert_eq!(m.digest_for(10), DigestNow::Ready("abc".into()));
        assert_eq!(m.digest_for(11), DigestNow::Start, "a new worker");
        m.set_digest(11, None);
        assert_eq!(m.digest_for(11), DigestNow::Start, "tried again");
    }
}
