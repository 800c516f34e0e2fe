//! Deterministic unary calls: the same input gives the same answer, so
//! their answers are cached (`crate::cache`), identical calls in flight
//! are answered once, and a call whose worker dies mid-call is re-sent
//! once to the new worker.
//!
//! Which calls: Embed, Tokenize, LITE Infer and InferBatch, VISION
//! ProcessBatch, and unary Generate and Chat that are greedy (temperature
//! 0, or top_k 1) or carry a seed ([`greedy_or_seeded`]). Never streams.
//!
//! A call goes through [`Ctx::new`] (the model, its cache share and the
//! key of its context: model id, file digest (with its companion models'
//! digests) and load options), looks its
//! items up ([`methods`]: per text for Embed, per image for ProcessBatch,
//! per call otherwise), sends only what is missing through [`run`]
//! (dedup, then [`execute`]: `api::call_worker`, and one re-send after a
//! worker death), keeps the answers and merges them in order.
//! `cache-control: no-cache` skips the lookup and the dedup (a fresh
//! execution, whose answer is kept); `no-store` skips the lookup, the
//! dedup and the keeping.
//!
//! Dedup is within one client class and priority (the flight key holds
//! both): a follower is never queued under another class's limits. A
//! follower takes the leader's answer, or its error when that error is the
//! same for every caller ([`same_for_all`]: the worker's own refusal, a
//! worker death after the re-send, the quarantine); on an error of the
//! leader's own (its deadline, its class's rate limit or queue bound, a
//! drain) it runs the call itself (`cache::flight::through`). Errors never
//! name another caller: each caller's error carries its own request line.

mod digest;
pub mod methods;
mod resend;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sidecar_proto::v1::SamplingParams;
use sidecar_proto::worker::worker_request;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request};

use crate::cache::{DigestNow, Key, KeyBuilder, ModelCache, Outcome, Waited};
use crate::config::Family;
use crate::error::Error;
use crate::registry::Registry;
use crate::worker::WorkerHandle;
use digest::model_digest;
use resend::{Exec, execute};

/// Response metadata of a call re-sent after its worker died.
pub const RETRIED: &str = "x-sidecar-retried";
/// Response metadata: answers (texts, images, calls) served from the cache.
pub const CACHE_HITS: &str = "x-sidecar-cache-hits";

/// Whether a generation's sampling makes it deterministic: greedy
/// (temperature 0, which the text worker samples with argmax, or top_k 1,
/// which leaves one candidate) or an explicit seed.
pub fn greedy_or_seeded(sampling: Option<&SamplingParams>) -> bool {
    sampling.is_some_and(|s| s.temperature == Some(0.0) || s.top_k == Some(1) || s.seed.is_some())
}

/// One deterministic call's context.
#[derive(Debug)]
pub struct Ctx {
    registry: Arc<Registry>,
    family: Family,
    default: Duration,
    metadata: MetadataMap,
    extensions: Extensions,
    model_id: String,
    handle: Option<WorkerHandle>,
    /// The model's cache share.
    model: Option<Arc<ModelCache>>,
    /// The key of the model's context; `None`: no cache and no dedup
    /// for this call (its digest not known yet, or no such model).
    base: Option<Key>,
    control: CacheControl,
    deadline: Instant,
    started: Instant,
    /// This call's request id and client, for its errors.
    request_id: String,
    client: String,
    /// The caller's client class on this model.
    class: usize,
}

/// What a call's `cache-control` metadata asks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-cache`: no lookup, no dedup; the answer is kept.
    pub no_cache: bool,
    /// `no-store`: no lookup, no dedup, nothing kept.
    pub no_store: bool,
}

/// Bytes of `cache-control` read, every value together: a longer header
/// costs no more (the directives past it are ignored).
pub const CACHE_CONTROL_SCAN: usize = 1024;

impl CacheControl {
    /// Reads every `cache-control` value as comma-separated directives
    /// (ASCII case ignored, unknown ones ignored, at most
    /// [`CACHE_CONTROL_SCAN`] bytes read).
    pub fn of(metadata: &MetadataMap) -> CacheControl {
        let mut c = CacheControl::default();
        let mut budget = CACHE_CONTROL_SCAN;
        for v in metadata.get_all("cache-control") {
            if budget == 0 {
                break;
            }
            let bytes = v.as_bytes();
            let bytes = &bytes[..bytes.len().min(budget)];
            budget -= bytes.len();
            for d in bytes.split(|b| *b == b',') {
                let d = d.trim_ascii();
                // `no-cache="field"` names fields: still no-cache.
                let name = d.split(|b| *b == b'=').next().unwrap_or_default();
                if name.eq_ignore_ascii_case(b"no-cache") {
                    c.no_cache = true;
                } else if name.eq_ignore_ascii_case(b"no-store") {
                    c.no_store = true;
                }
            }
        }
        c
    }
}

/// Whether an execution's error is the same for every caller (shared with
/// the followers of a flight), rather than the leader's own: its deadline
/// or cancel, its class's rate limit or queue bound (RESOURCE_EXHAUSTED),
/// a drain or restart (UNAVAILABLE).
pub fn same_for_all(e: &Error) -> bool {
    match e {
        // After the re-send: its death, or the quarantine's refusal.
        Error::WorkerDied { .. }
        | Error::InvalidArgument(_)
        | Error::NotFound(_)
        | Error::FailedPrecondition(_)
        | Error::Unimplemented(_)
        | Error::Internal(_) => true,
        Error::AlreadyExists(_)
        | Error::Unavailable(_)
        | Error::ResourceExhausted(_)
        | Error::RateLimited { .. }
        | Error::DeadlineExceeded(_)
        | Error::Cancelled(_)
        | Error::Unauthenticated(_)
        | Error::PermissionDenied(_)
        | Error::Config(_) => false,
    }
}

impl Ctx {
    /// The context of a call to `model_id` with `req`'s metadata.
    pub fn new<T>(
        registry: &Arc<Registry>,
        family: Family,
        default: Duration,
        req: Request<T>,
        model_id: &str,
    ) -> (Ctx, T) {
        let started = Instant::now();
        let deadline = super::deadline(&req, default, registry.shared().config.deadlines.max);
        let control = CacheControl::of(req.metadata());
        let request_id = super::request_id(&req, &registry.shared().request_ids);
        let client = crate::auth::Identity::of_call(&req);
        let (mut metadata, mut extensions, body) = req.into_parts();
        // Every attempt of this call, and its errors, carry one id.
        if let Ok(v) = request_id.parse() {
            metadata.insert("x-request-id", v);
        }
        // A wrong id or family is `call_worker`'s to report, uncached.
        let handle = match extensions.get::<crate::api::Resolved>() {
            Some(r) => Some(r.0.clone()),
            None => registry.get(model_id).ok(),
        }
        .filter(|h| h.spec.family == family);
        // Its key and its execution (and a re-send) on this one version.
        if let Some(h) = &handle {
            extensions.insert(crate::api::Resolved(h.clone()));
        }
        let mut ctx = Ctx {
            registry: registry.clone(),
            family,
            default,
            metadata,
            extensions,
            model_id: model_id.to_owned(),
            model: None,
            base: None,
            control,
            deadline,
            started,
            handle: None,
            request_id,
            client: client.to_string(),
            class: 0,
        };
        if let Some(h) = handle {
            crate::metrics::note_model(&h.spec.id);
            crate::metrics::note_version(h.version());
            ctx.class = h.class_of(&client);
            // None once the model is unloaded: the call goes uncached.
            if let Some(model) = registry.shared().cache.model(&h.spec.id) {
                ctx.base = ctx.base_key(&h, &model);
                ctx.model = Some(model);
            }
            ctx.handle = Some(h);
        }
        (ctx, body)
    }

    /// The model context's key, once the file's digest is known for the
    /// current worker (computed once on a blocking thread; until then the
    /// calls go uncached).
    fn base_key(&self, h: &WorkerHandle, model: &Arc<ModelCache>) -> Option<Key> {
        let pid = h.status().pid;
        let digest = match model.digest_for(pid) {
            DigestNow::Ready(d) => d,
            DigestNow::Pending => return None,
            DigestNow::Start => {
                let store = self.registry.store.clone();
                let (path, model, id) = (h.spec.path.clone(), model.clone(), h.spec.id.clone());
                // A pipeline's companion models are part of what it answers.
                let pipeline = match h.spec.family {
                    Family::Vision => h.spec.vision.pipeline.clone(),
                    _ => Default::default(),
                };
                tokio::spawn(async move {
                    let digest =
                        tokio::task::spawn_blocking(move || model_digest(&store, &path, &pipeline))
                            .await;
                    let digest = match digest {
                        Ok(Ok(d)) => Some(d),
                        Ok(Err(e)) => {
                            tracing::warn!(model = %id, "cache: cannot hash the model file: {e}");
                            None
                        }
                        Err(e) => {
                            tracing::warn!(model = %id, "cache: the digest task failed: {e}");
                            None
                        }
                    };
                    model.set_digest(pid, digest);
                });
                return None;
            }
        };
        let options = match h.spec.family {
            Family::Text => h.spec.text.to_proto().encode_to_vec(),
            Family::Lite => h.spec.lite.to_proto().encode_to_vec(),
            Family::Vision => h.spec.vision.to_proto().encode_to_vec(),
        };
        Some(
            KeyBuilder::new("model")
                .field(h.spec.id.as_bytes())
                .field(h.spec.path.as_bytes())
                .field(digest.as_bytes())
                .field(&options)
                .finish(),
        )
    }

    /// Whether answers are looked up.
    pub fn lookup(&self) -> bool {
        self.base.is_some() && !self.control.no_cache && !self.control.no_store
    }

    /// No cache and no dedup for this call: its bytes are in shared
    /// memory, whose content changes under the same request bytes.
    pub fn uncached(&mut self) {
        self.base = None;
    }

    /// The dedup key of what is sent (`keys`: its items' keys in order);
    /// `None`: no dedup (nothing to send, an item without a key, or no
    /// model context).
    pub fn flight(&self, method: &str, keys: &[Option<Key>]) -> Option<Key> {
        flight_key(self.base, method, keys)
    }

    /// The key of one item (or whole call) of `method`: `fields` are every
    /// option that changes the answer, then the input.
    /// `None` under `no-store`: such a call neither looks up, keeps nor
    /// shares an answer, so its input is not hashed (a 196 KB tensor costs
    /// about 0.1 ms of SHA-256).
    pub fn key(&self, method: &str, fields: &[&[u8]]) -> Option<Key> {
        if self.control.no_store {
            return None;
        }
        let base = self.base?;
        let mut b = KeyBuilder::new(method);
        b.field(&base.0);
        for f in fields {
            b.field(f);
        }
        Some(b.finish())
    }

    /// The answer held under `key`.
    pub async fn get(&self, key: Option<Key>) -> Option<bytes::Bytes> {
        match key {
            Some(k) if self.lookup() => self.registry.shared().cache.get(&k).await,
            _ => None,
        }
    }

    /// Keeps answers (not under `no-store`).
    pub async fn keep(&self, answers: Vec<(Option<Key>, Vec<u8>)>) {
        let (Some(model), true) = (&self.model, self.base.is_some()) else {
            return;
        };
        if self.control.no_store || !model.enabled {
            return;
        }
        let answers = answers
            .into_iter()
            .filter_map(|(k, v)| Some((k?, bytes::Bytes::from(v))))
            .collect();
        self.registry.shared().cache.keep(model, answers).await;
    }

    /// Counts hits and misses.
    pub fn count(&self, hits: usize, misses: usize) {
        if let Some(m) = &self.model
            && self.base.is_some()
        {
            m.hit(hits as u64);
            m.miss(misses as u64);
        }
    }

    /// Time since the call arrived, µs.
    pub fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Runs `body` once for every identical call in flight (`flight`: the
    /// key of what is sent; `None`: no dedup), with one re-send after a
    /// worker death. `collect`: a token stream collected into one answer.
    pub async fn run(
        &self,
        flight: Option<Key>,
        body: worker_request::Body,
        collect: bool,
    ) -> Result<Arc<Outcome>, Error> {
        let mine = |e: Error| e.with_request_id(&self.request_id, &self.client);
        // A bad priority is this caller's alone: refused before any flight.
        let priority = crate::traffic::Priority::of(&self.metadata).map_err(mine)?;
        let exec = Arc::new(Exec {
            registry: self.registry.clone(),
            family: self.family,
            default: self.default,
            metadata: self.metadata.clone(),
            extensions: self.extensions.clone(),
            model_id: self.model_id.clone(),
            handle: self.handle.clone(),
            deadline: self.deadline,
            body,
            collect,
        });
        let flight = flight.filter(|_| !self.control.no_cache && !self.control.no_store);
        let Some(key) = flight else {
            return execute(&exec).await.map(Arc::new).map_err(mine);
        };
        // Within one class and priority.
        let key = KeyBuilder::new("flight")
            .field(&key.0)
            .field(&(self.class as u64).to_le_bytes())
            .field(&[priority.rank()])
            .finish();
        let shared = self.registry.shared();
        let (id, client) = (self.request_id.clone(), self.client.clone());
        // This caller's execution; its error names nobody (others may see it).
        let run = || {
            let (exec, id, client) = (exec.clone(), id.clone(), client.clone());
            async move {
                execute(&exec)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.without_request_id(&id, &client))
            }
        };
        let followed = || {
            if let Some(m) = &self.model {
                m.shared_flight();
            }
        };
        let answer = crate::cache::flight::through(
            &shared.cache.flights,
            key,
            self.deadline,
            shared.config.workers.queue_size,
            run,
            same_for_all,
            followed,
        )
        .await;
        match answer {
            Ok(shared) => shared.map_err(mine),
            Err(Waited::Deadline) => Err(mine(Error::DeadlineExceeded(format!(
                "model {:?}: deadline passed while waiting for an identical call in flight",
                self.model_id
            )))),
            Err(Waited::Abandoned) => Err(mine(Error::Internal(format!(
                "model {:?}: the identical call this one waited for ended without an answer",
                self.model_id
            )))),
        }
    }
}

/// The dedup key of `keys` (the items sent, in order) in the model context
/// `base`: none without a context, without items, or when one item has no
/// key.
pub fn flight_key(base: Option<Key>, method: &str, keys: &[Option<Key>]) -> Option<Key> {
    let base = base?;
    if keys.is_empty() {
        return None;
    }
    let mut b = KeyBuilder::new(method);
    b.field(&base.0);
    for k in keys {
        b.field(&(*k)?.0);
    }
    Some(b.finish())
}

/// Adds the response metadata of `outcome` and the cache's hits.
pub fn tag<T>(mut resp: tonic::Response<T>, retried: bool, hits: usize) -> tonic::Response<T> {
    let md = resp.metadata_mut();
    if retried {
        md.insert(RETRIED, tonic::metadata::MetadataValue::from_static("1"));
    }
    if let Ok(v) = hits.to_string().parse() {
        md.insert(CACHE_HITS, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_generations_are_deterministic() {
        let s = |t: Option<f32>, k: Option<u32>, seed: Option<u64>| SamplingParams {
            temperature: t,
            top_k: k,
            seed,
            ..Default::default()
        };
        assert!(greedy_or_seeded(Some(&s(Some(0.0), None, None))));
        assert!(greedy_or_seeded(Some(&s(Some(0.7), Some(1), None))));
        assert!(greedy_or_seeded(Some(&s(None, None, Some(42)))));
        assert!(!greedy_or_seeded(Some(&s(Some(0.7), Some(40), None))));
        assert!(
            !greedy_or_seeded(Some(&s(None, None, None))),
            "0.8 by default"
        );
        assert!(!greedy_or_seeded(None));
    }

    fn control(values: &[&str]) -> CacheControl {
        let mut md = MetadataMap::new();
        for v in values {
            md.append("cache-control", v.parse().expect("value"));
        }
        CacheControl::of(&md)
    }

    #[test]
    fn cache_control_is_a_bounded_list_of_directives() {
        let none = CacheControl::default();
        let no_cache = CacheControl {
            no_cache: true,
            no_store: false,
        };
        let no_store = CacheControl {
            no_cache: false,
            no_store: true,
        };
        assert_eq!(control(&[]), none);
        assert_eq!(control(&["No-Store"]), no_store, "not no-cache");
        assert_eq!(control(&["max-age=0, NO-CACHE"]), no_cache);
        assert_eq!(control(&["private", "no-store , x"]), no_store);
        assert_eq!(control(&["no-cache=\"x\""]), no_cache);
        assert_eq!(control(&["no-storex, nocache"]), none, "unknown: ignored");
        // 64 KiB of junk: the directive past the scan is not read.
        let junk = format!("{},no-store", "a,".repeat(32 << 10));
        assert_eq!(control(&[&junk]), none);
        assert_eq!(control(&["no-store", &junk]), no_store);
    }

    #[test]
    fn only_outcomes_the_same_for_every_caller_are_shared() {
        assert!(same_for_all(&Error::InvalidArgument("inputs[0]".into())));
        assert!(same_for_all(&Error::WorkerDied {
            pid: 1,
            error: Box::new(Error::Unavailable("died".into())),
        }));
        for mine in [
            Error::DeadlineExceeded("queued".into()),
            Error::Cancelled("gone".into()),
            Error::ResourceExhausted("class queue".into()),
            Error::RateLimited {
                message: "over".into(),
                retry_after: Duration::from_millis(5),
            },
            Error::Unavailable("draining".into()),
        ] {
            assert!(!same_for_all(&mine), "{mine:?}");
        }
    }

    #[test]
    fn empty_calls_have_no_flight_and_every_flight_names_its_model() {
        let a = Some(KeyBuilder::new("model").field(b"a").finish());
        let b = Some(KeyBuilder::new("model").field(b"b").finish());
        assert_eq!(flight_key(a, "embed-call", &[]), None);
        assert_eq!(
            flight_key(None, "embed-call", &[a]),
            None,
            "no model context"
        );
        let item = Some(KeyBuilder::new("embed").field(b"x").finish());
        assert_ne!(
            flight_key(a, "embed-call", &[item]),
            flight_key(b, "embed-call", &[item])
        );
        assert_eq!(flight_key(a, "embed-call", &[item, None]), None);
    }
}
