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
//! key of its context: model id, file digest and load options), looks its
//! items up ([`methods`]: per text for Embed, per image for ProcessBatch,
//! per call otherwise), sends only what is missing through [`run`]
//! (dedup, then [`execute`]: `api::call_worker`, and one re-send after a
//! worker death), keeps the answers and merges them in order.
//! `cache-control: no-cache` skips the lookup and the dedup (a fresh
//! execution, whose answer is kept).

pub mod methods;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sidecar_proto::v1::SamplingParams;
use sidecar_proto::worker::worker_request;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request};

use crate::cache::{Answer, DigestNow, Join, Key, KeyBuilder, ModelCache, Outcome, Waited};
use crate::config::Family;
use crate::error::Error;
use crate::registry::Registry;
use crate::worker::WorkerHandle;

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
    no_cache: bool,
    deadline: Instant,
    started: Instant,
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
        let no_cache = req
            .metadata()
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',').any(|d| {
                    matches!(
                        d.trim().to_ascii_lowercase().as_str(),
                        "no-cache" | "no-store"
                    )
                })
            });
        let (metadata, extensions, body) = req.into_parts();
        // A wrong id or family is `call_worker`'s to report, uncached.
        let handle = registry
            .get(model_id)
            .ok()
            .filter(|h| h.spec.family == family);
        let mut ctx = Ctx {
            registry: registry.clone(),
            family,
            default,
            metadata,
            extensions,
            model_id: model_id.to_owned(),
            model: None,
            base: None,
            no_cache,
            deadline,
            started,
            handle: None,
        };
        if let Some(h) = handle {
            crate::metrics::note_model(model_id);
            let model = registry.shared().cache.model(model_id);
            ctx.base = ctx.base_key(&h, &model);
            ctx.model = Some(model);
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
                tokio::spawn(async move {
                    let digest = tokio::task::spawn_blocking(move || {
                        let file = store.resolve(&path)?;
                        store.digests.sha256(&file)
                    })
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
        self.base.is_some() && !self.no_cache
    }

    /// The key of one item (or whole call) of `method`: `fields` are every
    /// option that changes the answer, then the input.
    pub fn key(&self, method: &str, fields: &[&[u8]]) -> Option<Key> {
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

    /// Keeps answers, then applies the byte bound.
    pub async fn keep(&self, answers: Vec<(Option<Key>, Vec<u8>)>) {
        let (Some(model), true) = (&self.model, self.base.is_some()) else {
            return;
        };
        let cache = &self.registry.shared().cache;
        for (key, value) in answers {
            if let Some(k) = key {
                cache.insert(model, k, value.into()).await;
            }
        }
        cache.settle().await;
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
        let exec = Exec {
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
        };
        let flight = flight.filter(|_| !self.no_cache);
        let Some(key) = flight else {
            return execute(exec).await.map(Arc::new);
        };
        let cache = &self.registry.shared().cache;
        let rx = match cache.flights.join(key) {
            Join::Full => return execute(exec).await.map(Arc::new),
            Join::Follow(rx) => {
                if let Some(m) = &self.model {
                    m.shared_flight();
                }
                rx
            }
            Join::Lead(publisher) => {
                let rx = publisher.subscribe();
                // In a task of its own: the first caller leaving does not
                // cancel it for the others; it stops once nobody waits.
                tokio::spawn(async move {
                    tokio::select! {
                        answer = execute(exec) => publisher.publish(answer.map(Arc::new)),
                        () = publisher.closed() => {}
                    }
                });
                rx
            }
        };
        match crate::cache::flight::wait(rx, self.deadline).await {
            Ok(shared) => shared,
            Err(Waited::Deadline) => Err(Error::DeadlineExceeded(format!(
                "model {:?}: deadline passed while waiting for an identical call in flight",
                self.model_id
            ))),
            Err(Waited::Abandoned) => Err(Error::Internal(format!(
                "model {:?}: the identical call this one waited for ended without an answer",
                self.model_id
            ))),
        }
    }
}

/// One execution: what `api::call_worker` needs, and a copy of the body
/// for a re-send.
#[derive(Debug)]
struct Exec {
    registry: Arc<Registry>,
    family: Family,
    default: Duration,
    metadata: MetadataMap,
    extensions: Extensions,
    model_id: String,
    handle: Option<WorkerHandle>,
    deadline: Instant,
    body: worker_request::Body,
    collect: bool,
}

/// Runs `exec`; a worker death mid-call re-sends it once, within the
/// deadline, to the new worker: after a self-raised crash through the
/// model's gate (one re-sent call at a time), and a request the
/// quarantine refuses after its second crash is INVALID_ARGUMENT.
async fn execute(mut exec: Exec) -> Result<Outcome, Error> {
    let (pid, first) = match once(&exec).await {
        Err(Error::WorkerDied { pid, error }) => (pid, Error::WorkerDied { pid, error }),
        other => return other,
    };
    let Some(handle) = exec.handle.clone() else {
        return Err(first);
    };
    let Some(self_raised) = handle.death_seen(pid, exec.deadline).await else {
        return Err(first);
    };
    let _gate = if self_raised {
        Some(handle.retry_gate(exec.deadline).await?)
    } else {
        None
    };
    handle.wait_replaced(pid, exec.deadline).await?;
    handle.note_retry();
    // The class paid for this call once: the re-send is not charged again.
    exec.extensions.insert(crate::traffic::Charged);
    tracing::info!(model = %exec.model_id, pid, self_raised, "re-sending a deterministic call after its worker died");
    match once(&exec).await {
        Ok(mut outcome) => {
            outcome.retried = true;
            Ok(outcome)
        }
        Err(Error::WorkerDied { pid, error }) => {
            // Crashed twice: the quarantine may refuse it now.
            if handle.death_seen(pid, exec.deadline).await.is_some()
                && let Some(why) = handle.refusal(&exec.body)
            {
                return Err(Error::InvalidArgument(format!(
                    "model {:?}: {why}",
                    exec.model_id
                )));
            }
            Err(Error::WorkerDied { pid, error })
        }
        Err(e) => Err(e),
    }
}

/// One attempt: the call through `api::call_worker` (the queue, the
/// limits) with the time left of the caller's deadline.
async fn once(exec: &Exec) -> Result<Outcome, Error> {
    let mut metadata = exec.metadata.clone();
    let left = exec.deadline.saturating_duration_since(Instant::now());
    if let Ok(v) = format!("{}m", left.as_millis().clamp(1, 99_999_999)).parse() {
        metadata.insert("grpc-timeout", v);
    }
    let req = Request::from_parts(metadata, exec.extensions.clone(), exec.body.clone());
    let model_id = exec.model_id.clone();
    let mut call = super::call_worker(&exec.registry, exec.family, exec.default, req, |b| {
        (model_id, b)
    })
    .await?;
    let queued = call.queued;
    let answer = if exec.collect {
        Answer::Generated(super::text::collect(call).await?)
    } else {
        Answer::Body(super::one_answer(&mut call).await?)
    };
    Ok(Outcome {
        answer,
        queued,
        retried: false,
    })
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
}
