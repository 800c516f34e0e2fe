//! Each deterministic method: its keys, what it sends on a miss, and how
//! the cached and computed answers merge.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sidecar_proto::v1::{
    ChatRequest, EmbedRequest, EmbedResponse, Embedding, GenerateRequest, GenerateResponse,
    InferBatchRequest, InferBatchResponse, InferRequest, InferResponse, ProcessBatchRequest,
    ProcessBatchResponse, ProcessResponse, TextTimings, TokenizeRequest, TokenizeResponse, Usage,
};
use sidecar_proto::worker::{worker_request, worker_response};
use tonic::{Request, Response, Status};

use super::{Ctx, tag};
use crate::cache::{Answer, Key};
use crate::config::Family;
use crate::error::Error;
use crate::registry::Registry;

/// Most texts of one Embed (the text worker's limit, checked here too:
/// a call of cached texts never reaches it).
pub const MAX_EMBED_INPUTS: usize = 1024;

fn unexpected(other: &Answer) -> Error {
    Error::Internal(format!("unexpected worker answer {other:?}"))
}

/// A worker's refusal of item `j` of what was sent names it as item
/// `missing[j]` of what the client sent.
fn reindex(e: Error, field: &str, missing: &[usize]) -> Error {
    let Error::InvalidArgument(m) = e else {
        return e;
    };
    if let Some(rest) = m.strip_prefix(field).and_then(|r| r.strip_prefix('['))
        && let Some((n, tail)) = rest.split_once(']')
        && let Some(i) = n.parse::<usize>().ok().and_then(|j| missing.get(j))
    {
        return Error::InvalidArgument(format!("{field}[{i}]{tail}"));
    }
    Error::InvalidArgument(m)
}

/// Each item's cached answer (`None`: not cached) and the indices of
/// those to compute, counted as hits and misses.
async fn lookup<T: Message + Default>(
    ctx: &Ctx,
    keys: &[Option<Key>],
) -> (Vec<Option<T>>, Vec<usize>) {
    let mut found = Vec::with_capacity(keys.len());
    for k in keys {
        found.push(ctx.get(*k).await.and_then(|b| T::decode(b).ok()));
    }
    let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
    ctx.count(keys.len() - missing.len(), missing.len());
    (found, missing)
}

/// Sends `body`, the `missing` items of a call (`field` of the client's
/// request) under `method`'s dedup key; a refusal names the item by its
/// index in the client's call.
async fn compute(
    ctx: &Ctx,
    method: &str,
    keys: &[Option<Key>],
    missing: &[usize],
    field: &str,
    body: worker_request::Body,
) -> Result<Arc<crate::cache::Outcome>, Error> {
    let sent_keys: Vec<Option<Key>> = missing.iter().map(|&i| keys[i]).collect();
    ctx.run(ctx.flight(method, &sent_keys), body, false)
        .await
        .map_err(|e| reindex(e, field, missing))
}

/// A worker that answered `got` items for `sent` is broken.
fn check_count(got: usize, sent: usize, what: &str) -> Result<(), Error> {
    if got == sent {
        return Ok(());
    }
    Err(Error::Internal(format!(
        "the worker answered {got} {what} for {sent} items"
    )))
}

/// The options of an Embed that change its answer or make the worker
/// refuse it, raw: `normalize` (absent is true, the worker's default) and
/// `truncation` as sent (an out-of-range value is its own key: the worker
/// refuses it, nothing is cached).
fn embed_options(e: &EmbedRequest) -> Vec<u8> {
    let mut options = vec![u8::from(e.normalize.unwrap_or(true))];
    options.extend_from_slice(&e.truncation.to_le_bytes());
    options
}

/// Embed, per text: only the texts not in the cache are sent.
pub async fn embed(
    registry: &Arc<Registry>,
    default: Duration,
    req: Request<EmbedRequest>,
) -> Result<Response<EmbedResponse>, Status> {
    let n = req.get_ref().inputs.len();
    if n > MAX_EMBED_INPUTS {
        return Err(Error::InvalidArgument(format!(
            "inputs holds {n} texts; the limit is {MAX_EMBED_INPUTS} per call"
        ))
        .into());
    }
    let model_id = req.get_ref().model_id.clone();
    let (ctx, e) = Ctx::new(registry, Family::Text, default, req, &model_id);
    let options = embed_options(&e);
    let keys: Vec<Option<Key>> = e
        .inputs
        .iter()
        .map(|t| ctx.key("embed", &[&options, t.as_bytes()]))
        .collect();
    let (mut found, missing) = lookup::<Embedding>(&ctx, &keys).await;
    let hits = n - missing.len();
    let mut timings = TextTimings::default();
    let mut dimensions = 0;
    let mut retried = false;
    if !missing.is_empty() || n == 0 {
        let sub = EmbedRequest {
            model_id: model_id.clone(),
            inputs: missing.iter().map(|&i| e.inputs[i].clone()).collect(),
            normalize: e.normalize,
            truncation: e.truncation,
        };
        let body = worker_request::Body::Embed(sub);
        let outcome = compute(&ctx, "embed-call", &keys, &missing, "inputs", body).await?;
        let Answer::Body(worker_response::Body::Embed(r)) = &outcome.answer else {
            return Err(unexpected(&outcome.answer).into());
        };
        check_count(r.embeddings.len(), missing.len(), "embeddings")?;
        retried = outcome.retried;
        dimensions = r.dimensions;
        timings = r.timings.unwrap_or_default();
        timings.queue_us += outcome.queued.as_micros() as u64;
        let mut kept = Vec::with_capacity(missing.len());
        for (&i, emb) in missing.iter().zip(&r.embeddings) {
            kept.push((keys[i], emb.encode_to_vec()));
            found[i] = Some(emb.clone());
        }
        ctx.keep(kept).await;
    }
    let embeddings: Vec<Embedding> = found.into_iter().flatten().collect();
    if dimensions == 0 {
        dimensions = embeddings.first().map_or(0, |e| e.values.len() as u32);
    }
    let prompt_tokens = embeddings.iter().map(|e| e.tokens).sum();
    timings.total_us = ctx.elapsed_us();
    let resp = EmbedResponse {
        embeddings,
        dimensions,
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens: 0,
            cached_tokens: 0,
        }),
        timings: Some(timings),
    };
    Ok(tag(Response::new(resp), retried, hits))
}

/// ProcessBatch, per image: only the images not in the cache are sent.
pub async fn process_batch(
    registry: &Arc<Registry>,
    default: Duration,
    req: Request<ProcessBatchRequest>,
) -> Result<Response<ProcessBatchResponse>, Status> {
    let model_id = req.get_ref().model_id.clone();
    let (mut ctx, r) = Ctx::new(registry, Family::Vision, default, req, &model_id);
    if r.images.iter().any(crate::shm::resolve::image_has_ref) {
        ctx.uncached();
    }
    let task = r
        .task
        .as_ref()
        .map(Message::encode_to_vec)
        .unwrap_or_default();
    let keys: Vec<Option<Key>> = r
        .images
        .iter()
        .map(|img| ctx.key("vision-batch", &[&task, &img.encode_to_vec()]))
        .collect();
    let (mut found, missing) = lookup::<ProcessResponse>(&ctx, &keys).await;
    let hits = keys.len() - missing.len();
    let mut retried = false;
    if !missing.is_empty() {
        let sub = ProcessBatchRequest {
            model_id: model_id.clone(),
            task: r.task.clone(),
            images: missing.iter().map(|&i| r.images[i].clone()).collect(),
        };
        let body = worker_request::Body::VisionBatch(sub);
        let outcome = compute(&ctx, "vision-batch-call", &keys, &missing, "images", body).await?;
        let Answer::Body(worker_response::Body::VisionBatch(b)) = &outcome.answer else {
            return Err(unexpected(&outcome.answer).into());
        };
        check_count(b.results.len(), missing.len(), "results")?;
        retried = outcome.retried;
        let mut kept = Vec::with_capacity(missing.len());
        for (&i, result) in missing.iter().zip(&b.results) {
            let mut result = result.clone();
            result.frame_index = 0;
            kept.push((keys[i], result.encode_to_vec()));
            found[i] = Some(result);
        }
        ctx.keep(kept).await;
    }
    let results = found
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, mut res)| {
            res.frame_index = i as u64;
            res
        })
        .collect();
    Ok(tag(
        Response::new(ProcessBatchResponse { results }),
        retried,
        hits,
    ))
}

/// A method cached per call: its key is the whole request (the model id
/// aside, which the context holds).
struct Whole {
    method: &'static str,
    model_id: String,
    /// The request encoded without its model id.
    keyed: Vec<u8>,
    body: worker_request::Body,
    collect: bool,
}

async fn whole<A: Message + Default>(
    registry: &Arc<Registry>,
    family: Family,
    default: Duration,
    req: Request<()>,
    w: Whole,
    extract: impl Fn(Answer) -> Option<A>,
    adjust: impl Fn(&mut A, Option<Duration>, u64),
) -> Result<Response<A>, Status> {
    let (mut ctx, ()) = Ctx::new(registry, family, default, req, &w.model_id);
    if crate::shm::resolve::uses_regions(&w.body) {
        ctx.uncached();
    }
    let key = ctx.key(w.method, &[&w.keyed]);
    if let Some(mut a) = ctx.get(key).await.and_then(|b| A::decode(b).ok()) {
        ctx.count(1, 0);
        adjust(&mut a, None, ctx.elapsed_us());
        return Ok(tag(Response::new(a), false, 1));
    }
    ctx.count(0, 1);
    let outcome = ctx.run(key, w.body, w.collect).await?;
    let answer = outcome.answer.clone();
    let Some(mut a) = extract(answer) else {
        return Err(unexpected(&outcome.answer).into());
    };
    ctx.keep(vec![(key, a.encode_to_vec())]).await;
    adjust(&mut a, Some(outcome.queued), ctx.elapsed_us());
    Ok(tag(Response::new(a), outcome.retried, 0))
}

/// Splits a request into its metadata (an empty message) and its body.
fn split<T>(req: Request<T>) -> (Request<()>, T) {
    let (md, ext, body) = req.into_parts();
    (Request::from_parts(md, ext, ()), body)
}

/// Tokenize, per call.
pub async fn tokenize(
    registry: &Arc<Registry>,
    default: Duration,
    req: Request<TokenizeRequest>,
) -> Result<Response<TokenizeResponse>, Status> {
    let (req, mut t) = split(req);
    // The key's input: the request without its model id (the context's
    // key holds it), encoded once, never copied whole.
    let model_id = std::mem::take(&mut t.model_id);
    let keyed = t.encode_to_vec();
    t.model_id = model_id.clone();
    let w = Whole {
        method: "tokenize",
        model_id,
        keyed,
        body: worker_request::Body::Tokenize(t),
        collect: false,
    };
    whole(
        registry,
        Family::Text,
        default,
        req,
        w,
        |a| match a {
            Answer::Body(worker_response::Body::Tokenize(t)) => Some(t),
            _ => None,
        },
        |_, _, _| {},
    )
    .await
}

fn lite_timings(
    t: &mut Option<sidecar_proto::v1::LiteTimings>,
    queued: Option<Duration>,
    total: u64,
) {
    match queued {
        Some(q) => {
            if let Some(t) = t.as_mut() {
                t.queue_us += q.as_micros() as u64;
                t.total_us += q.as_micros() as u64;
            }
        }
        // From the cache: no queue, no invoke.
        None => {
            *t = Some(sidecar_proto::v1::LiteTimings {
                queue_us: 0,
                invoke_us: 0,
                total_us: total,
            });
        }
    }
}

/// LITE Infer, per call.
pub async fn infer(
    registry: &Arc<Registry>,
    default: Duration,
    req: Request<InferRequest>,
) -> Result<Response<InferResponse>, Status> {
    let (req, mut r) = split(req);
    // The key's input: the request without its model id (the context's
    // key holds it), encoded once, never copied whole.
    let model_id = std::mem::take(&mut r.model_id);
    let keyed = r.encode_to_vec();
    r.model_id = model_id.clone();
    let w = Whole {
        method: "infer",
        model_id,
        keyed,
        body: worker_request::Body::Infer(r),
        collect: false,
    };
    whole(
        registry,
        Family::Lite,
        default,
        req,
        w,
        |a| match a {
            Answer::Body(worker_response::Body::Infer(r)) => Some(r),
            _ => None,
        },
        |a: &mut InferResponse, queued, total| lite_timings(&mut a.timings, queued, total),
    )
    .await
}

/// LITE InferBatch, per call.
pub async fn infer_batch(
    registry: &Arc<Registry>,
    default: Duration,
    req: Request<InferBatchRequest>,
) -> Result<Response<InferBatchResponse>, Status> {
    let (req, mut r) = split(req);
    // The key's input: the request without its model id (the context's
    // key holds it), encoded once, never copied whole.
    let model_id = std::mem::take(&mut r.model_id);
    let keyed = r.encode_to_vec();
    r.model_id = model_id.clone();
    let w = Whole {
        method: "infer-batch",
        model_id,
        keyed,
        body: worker_request::Body::InferBatch(r),
        collect: false,
    };
    whole(
        registry,
        Family::Lite,
        default,
        req,
        w,
        |a| match a {
            Answer::Body(worker_response::Body::InferBatch(r)) => Some(r),
            _ => None,
        },
        |a: &mut InferBatchResponse, queued, total| lite_timings(&mut a.timings, queued, total),
    )
    .await
}

fn generated(a: Answer) -> Option<GenerateResponse> {
    match a {
        Answer::Generated(g) => Some(g),
        Answer::Body(_) => None,
    }
}

/// From the cache, a generation took no prompt or generation time.
fn generation_timings(g: &mut GenerateResponse, queued: Option<Duration>, total: u64) {
    if queued.is_none() {
        g.timings = Some(TextTimings {
            total_us: total,
            time_to_first_token_us: total,
            ..Default::default()
        });
    }
}

/// Unary Generate, greedy or seeded, per call.
pub async fn generate(
    registry: &Arc<Registry>,
    default: Duration,
    req: Request<GenerateRequest>,
) -> Result<Response<GenerateResponse>, Status> {
    let (req, mut g) = split(req);
    // The key's input: the request without its model id (the context's
    // key holds it), encoded once, never copied whole.
    let model_id = std::mem::take(&mut g.model_id);
    let keyed = g.encode_to_vec();
    g.model_id = model_id.clone();
    let w = Whole {
        method: "generate",
        model_id,
        keyed,
        body: worker_request::Body::Generate(g),
        collect: true,
    };
    whole(
        registry,
        Family::Text,
        default,
        req,
        w,
        generated,
        generation_timings,
    )
    .await
}

/// Unary Chat, greedy or seeded, per call.
pub async fn chat(
    registry: &Arc<Registry>,
    default: Duration,
    req: Request<ChatRequest>,
) -> Result<Response<GenerateResponse>, Status> {
    let (req, mut c) = split(req);
    // The key's input: the request without its model id (the context's
    // key holds it), encoded once, never copied whole.
    let model_id = std::mem::take(&mut c.model_id);
    let keyed = c.encode_to_vec();
    c.model_id = model_id.clone();
    let w = Whole {
        method: "chat",
        model_id,
        keyed,
        body: worker_request::Body::Chat(c),
        collect: true,
    };
    whole(
        registry,
        Family::Text,
        default,
        req,
        w,
        generated,
        generation_timings,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embed_option_is_in_the_key_raw() {
        let e = |normalize: Option<bool>, truncation: i32| EmbedRequest {
            model_id: "m".into(),
            inputs: vec!["x".into()],
            normalize,
            truncation,
        };
        // -1 is refused by the worker; 0 is a valid truncation.
        assert_ne!(embed_options(&e(None, -1)), embed_options(&e(None, 0)));
        assert_ne!(embed_options(&e(None, 256)), embed_options(&e(None, 0)));
        assert_ne!(
            embed_options(&e(Some(false), 1)),
            embed_options(&e(Some(true), 1))
        );
        assert_eq!(
            embed_options(&e(None, 1)),
            embed_options(&e(Some(true), 1)),
            "absent is true"
        );
    }

    #[test]
    fn a_refused_item_is_named_by_its_index_in_the_clients_call() {
        let e = reindex(
            Error::InvalidArgument("images[1]: not an image".into()),
            "images",
            &[3, 8],
        );
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m == "images[8]: not an image"),
            "{e:?}"
        );
        let e = reindex(Error::InvalidArgument("other".into()), "images", &[3]);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m == "other"),
            "{e:?}"
        );
        let e = reindex(Error::InvalidArgument("inputs[5] x".into()), "inputs", &[3]);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m == "inputs[5] x"),
            "out of range: kept"
        );
    }
}
