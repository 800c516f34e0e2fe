//! The gRPC services of the API port.

pub mod admin;
pub mod aliases;
pub mod deterministic;
pub mod files;
pub mod lite;
pub mod model;
pub mod oip;
pub mod outflow;
pub mod reflection;
pub mod shm;
pub mod text;
pub mod vision;

use std::time::{Duration, Instant};

use sidecar_proto::worker::{WorkerRequest, worker_request, worker_response};
use tonic::Request;

use crate::config::Family;
use crate::error::Error;
use crate::registry::Registry;
use crate::worker::CallStream;

/// Checks that the model exists and is of `family`, then sends `body` to
/// its worker under the call's deadline (`default` when it sets none).
pub async fn call_worker<T>(
    registry: &Registry,
    family: Family,
    default: Duration,
    req: Request<T>,
    into_body: impl FnOnce(T) -> (String, worker_request::Body),
) -> Result<CallStream, Error> {
    let deadline = deadline(&req, default, registry.shared().config.deadlines.max);
    let request_id = request_id(&req, &registry.shared().request_ids);
    let identity = crate::auth::Identity::of_call(&req);
    let client = identity.to_string();
    let priority = crate::traffic::Priority::of(req.metadata())
        .map_err(|e| e.with_request_id(&request_id, &client))?;
    let charged = req.extensions().get::<crate::traffic::Charged>().is_some();
    let resolved = req.extensions().get::<Resolved>().map(|r| r.0.clone());
    let (model_id, body) = into_body(req.into_inner());
    let ticket = crate::traffic::Ticket {
        identity,
        priority,
        cost: if charged {
            0
        } else {
            crate::traffic::cost(&body)
        },
    };
    // The metrics name a model only once it is known: a client's made-up
    // ids all count as one `unknown` model.
    let handle = match resolved {
        Some(h) => h,
        None => registry.get(&model_id).map_err(|e| {
            crate::metrics::note_model(crate::metrics::UNKNOWN_MODEL);
            e.with_request_id(&request_id, &client)
        })?,
    };
    // By the model's id: an alias or "id@version" counts under its id.
    let method = crate::metrics::note_model(&handle.spec.id);
    crate::metrics::note_version(handle.version());
    if handle.spec.family != family {
        return Err(Error::FailedPrecondition(format!(
            "model {model_id:?} is a {} model, not {}",
            handle
                .spec
                .family
                .to_proto()
                .as_str_name()
                .trim_start_matches("MODEL_FAMILY_"),
            family
                .to_proto()
                .as_str_name()
                .trim_start_matches("MODEL_FAMILY_"),
        ))
        .with_request_id(&request_id, &client));
    }
    // The caller's own regions only, checked before any worker is involved;
    // a request without refs is unchanged.
    let held = registry
        .shared()
        .shm
        .resolve(&ticket.identity, &body)
        .map_err(|e| e.with_request_id(&request_id, &client))?;
    tracing::debug!(request_id, client = %client, model = %model_id, "worker call");
    let req = WorkerRequest {
        request_tag: request_id.clone(),
        cache_partition: client.clone(),
        regions: held.uses(),
        deadline_unix_ms: 0,
        body: Some(body),
    };
    match handle.call_as(req, deadline, ticket, held).await {
        Ok(mut call) => {
            call.client = client;
            registry
                .shared()
                .metrics
                .queue_wait
                .get_or_create(&crate::metrics::MethodModel {
                    method,
                    model: handle.spec.id.clone(),
                    protocol: crate::metrics::call_protocol().to_owned(),
                })
                .observe(call.queued.as_secs_f64());
            Ok(call)
        }
        Err(e) => {
            tracing::info!(request_id, client = %client, model = %model_id, "call refused: {e}");
            Err(e.with_request_id(&request_id, &client))
        }
    }
}

/// The version of a model a call's name resolved to, kept in the
/// request's extensions once found: every later step of the call (the
/// charge, the cache's key, the execution, a re-send after a worker death)
/// uses that version, even when an alias moves or a swap switches the id
/// meanwhile.
#[derive(Debug, Clone)]
pub struct Resolved(pub crate::worker::WorkerHandle);

/// Charges the caller's class the cost of a unary call to `model_id`
/// (`what` reads both from the request) against its rate limit, where the
/// call enters the API: before the result cache, so every call counts,
/// whoever answers it. Marks the request (`traffic::Charged`) so that its
/// execution is not charged again. An unknown model or another family's
/// is left to `call_worker` to refuse, uncharged.
pub fn charge<T>(
    registry: &Registry,
    family: Family,
    mut req: Request<T>,
    what: impl FnOnce(&T) -> (&str, u32),
) -> Result<Request<T>, Error> {
    let (model_id, cost) = what(req.get_ref());
    let found = match req.extensions().get::<Resolved>() {
        Some(r) => Ok(r.0.clone()),
        None => registry.get(model_id),
    };
    let Ok(handle) = found else {
        return Ok(req);
    };
    if handle.spec.family != family {
        return Ok(req);
    }
    // The version charged is the one that runs the call.
    req.extensions_mut().insert(Resolved(handle.clone()));
    let identity = crate::auth::Identity::of_call(&req);
    if let Err(e) = handle.charge(&identity, cost) {
        let request_id = request_id(&req, &registry.shared().request_ids);
        return Err(e.with_request_id(&request_id, &identity.to_string()));
    }
    req.extensions_mut().insert(crate::traffic::Charged);
    Ok(req)
}

/// The single answer of a unary worker call.
pub async fn one_answer(call: &mut CallStream) -> Result<worker_response::Body, Error> {
    match call.next().await {
        Some(Ok(r)) => r
            .body
            .ok_or_else(|| Error::Internal("the worker answered with an empty body".into())),
        Some(Err(e)) => Err(e),
        None => Err(Error::Internal(
            "the worker closed the call without an answer".into(),
        )),
    }
}

/// The call's deadline: the `grpc-timeout` header, or `default`; never
/// more than `max` away (`deadlines.max`), whatever the client asks.
pub fn deadline<T>(req: &tonic::Request<T>, default: Duration, max: Duration) -> Instant {
    let timeout = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(default)
        .min(max);
    Instant::now() + timeout
}

/// Parses a `grpc-timeout` value ("100m", "5S", ...).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's `x-request-id`, or a new one from `ids`.
pub fn request_id<T>(req: &tonic::Request<T>, ids: &crate::ids::RequestIds) -> String {
    req.metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| ids.next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }

    #[test]
    fn deadlines_are_clamped_to_the_max() {
        let max = Duration::from_secs(3600);
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert("grpc-timeout", "99999999H".parse().unwrap());
        let left = deadline(&req, Duration::from_secs(30), max) - Instant::now();
        assert!(
            left <= max && left > max - Duration::from_secs(5),
            "{left:?}"
        );
        req.metadata_mut()
            .insert("grpc-timeout", "5S".parse().unwrap());
        let left = deadline(&req, Duration::from_secs(30), max) - Instant::now();
        assert!(
            left <= Duration::from_secs(5) && left > Duration::from_secs(4),
            "{left:?}"
        );
        let none = tonic::Request::new(());
        let left = deadline(&none, Duration::from_secs(7200), max) - Instant::now();
        assert!(left <= max, "a default past the max is cut too: {left:?}");
    }
}
