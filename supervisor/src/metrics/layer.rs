//! The tower layer that counts every API call by method, model and gRPC
//! status code, and times it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use super::{CallLabels, MethodModel, Metrics, code_name};

/// What the layer knows of a call, and what the handler adds.
#[derive(Debug, Default)]
pub struct CallInfo {
    /// "TextService/Generate", or an HTTP route's name
    /// ("openai/chat.completions").
    pub method: String,
    /// `grpc` or `http`.
    pub protocol: &'static str,
    model: Mutex<String>,
    client: Mutex<String>,
    /// The version of the model that answers (0: none yet).
    version: std::sync::atomic::AtomicU32,
}

impl CallInfo {
    /// A call of `method` that came in by `protocol`.
    pub fn new(method: &str, protocol: &'static str) -> CallInfo {
        CallInfo {
            method: method.to_owned(),
            protocol,
            ..Default::default()
        }
    }

    /// Adds [`MODEL_VERSION_HEADER`] to a response's headers once the
    /// call found its model.
    pub fn stamp_version(&self, headers: &mut http::HeaderMap) {
        let version = self.version.load(std::sync::atomic::Ordering::Relaxed);
        if version > 0 {
            headers.insert(MODEL_VERSION_HEADER, http::HeaderValue::from(version));
        }
    }

    /// The model the call names.
    pub fn model(&self) -> String {
        self.model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

tokio::task_local! {
    static CALL: Arc<CallInfo>;
}

/// The response header naming the version of the model that answered a
/// call (set where the call found its model: an alias or a swap may point
/// the same name at another version for the next call).
pub const MODEL_VERSION_HEADER: &str = "x-sidecar-model-version";

/// Names the version of the current call's model (its last resolution
/// wins); outside a call, nothing.
pub fn note_version(version: u32) {
    let _ = CALL.try_with(|c| {
        c.version
            .store(version, std::sync::atomic::Ordering::Relaxed);
    });
}

/// Names the current call's model (from `api::call_worker`); the method,
/// for the caller's own metrics. Outside a call: "".
pub fn note_model(model: &str) -> String {
    CALL.try_with(|c| {
        *c.model.lock().unwrap_or_else(PoisonError::into_inner) = model.to_owned();
        c.method.clone()
    })
    .unwrap_or_default()
}

/// The current call's protocol (`grpc` or `http`); outside a call: `grpc`.
pub fn call_protocol() -> &'static str {
    CALL.try_with(|c| c.protocol)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or("grpc")
}

/// The current call's scope (its method, model and client), to carry
/// into a task the call hands work to; outside a call: none.
pub fn call_scope() -> Option<Arc<CallInfo>> {
    CALL.try_with(Arc::clone).ok()
}

/// Runs `fut` inside `scope` (from [`call_scope`], taken before the task
/// was spawned), so that what it records names the call's method.
pub async fn within<F: std::future::Future>(scope: Option<Arc<CallInfo>>, fut: F) -> F::Output {
    match scope {
        Some(info) => CALL.scope(info, fut).await,
        None => fut.await,
    }
}

/// Names the current call's client (from `auth::AuthLayer`, inside this
/// layer). Outside a call: nothing.
pub fn note_client(client: &str) {
    let _ = CALL.try_with(|c| {
        *c.client.lock().unwrap_or_else(PoisonError::into_inner) = client.to_owned();
    });
}

/// Counts every call of the service it wraps, into its `Metrics`.
#[derive(Debug, Clone)]
pub struct CallLayer {
    metrics: Arc<Metrics>,
    methods: Arc<HashMap<String, String>>,
}

impl CallLayer {
    /// A layer that records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> CallLayer {
        CallLayer {
            metrics,
            methods: Arc::new(known_methods()),
        }
    }
}

/// The `method` label a call's path gets: `Service/Method` for the API's
/// own methods (read from its descriptor), `unknown` for any other path,
/// so a client choosing paths cannot add series.
const UNKNOWN: &str = "unknown";

/// Every method of the API: its path (`/sidecar.v1.TextService/Generate`)
/// → its label (`TextService/Generate`).
fn known_methods() -> HashMap<String, String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(sidecar_proto::FILE_DESCRIPTOR_SET) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let label = format!("{}/{}", service.name(), method.name());
                out.insert(format!("/{}.{label}", file.package()), label);
            }
        }
    }
    out
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;
    fn layer(&self, inner: S) -> CallService<S> {
        CallService {
            inner,
            metrics: self.metrics.clone(),
            methods: self.methods.clone(),
        }
    }
}

/// See [`CallLayer`].
#[derive(Debug, Clone)]
pub struct CallService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    methods: Arc<HashMap<String, String>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for CallService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: http_body::Body + Send + 'static,
{
    type Response = http::Response<Recorded<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // Health probes and reflection (`/grpc.…`) are not counted.
        let method = if path.starts_with("/grpc.") {
            String::new()
        } else {
            self.methods
                .get(path)
                .map_or_else(|| UNKNOWN.to_owned(), Clone::clone)
        };
        let info = Arc::new(CallInfo::new(&method, "grpc"));
        let mut record = Record::new(info.clone(), self.metrics.clone());
        let fut = CALL.scope(info.clone(), self.inner.call(req));
        Box::pin(async move {
            let mut resp = fut.await?;
            info.stamp_version(resp.headers_mut());
            // An error answer carries its status in the headers.
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok());
            if let Some(code) = code {
                record.finish(code);
            }
            Ok(resp.map(|body| Recorded { body, record }))
        })
    }
}

/// One call's count and latency, recorded once: with its gRPC code
/// ([`Record::finish`]), or CANCELLED when dropped before (the client
/// went away).
#[derive(Debug)]
pub struct Record {
    info: Arc<CallInfo>,
    metrics: Arc<Metrics>,
    started: Instant,
    done: bool,
}

impl Record {
    /// Starts timing the call `info`.
    pub fn new(info: Arc<CallInfo>, metrics: Arc<Metrics>) -> Record {
        Record {
            info,
            metrics,
            started: Instant::now(),
            done: false,
        }
    }

    /// Records the call with its gRPC code (the first time only).
    pub fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        if self.info.method.is_empty() {
            return;
        }
        let m = &self.metrics;
        let model = self.info.model();
        let client = self
            .info
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        m.requests
            .get_or_create(&CallLabels {
                method: self.info.method.clone(),
                model: model.clone(),
                code: code_name(code).to_owned(),
                client: m.client_label(&client),
                protocol: self.info.protocol.to_owned(),
            })
            .inc();
        m.latency
            .get_or_create(&MethodModel {
                method: self.info.method.clone(),
                model,
                protocol: self.info.protocol.to_owned(),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // The body went away before its trailers: the client cancelled.
        self.finish(tonic::Code::Cancelled as i32);
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call when its trailers pass.
    pub struct Recorded<B> {
        #[pin]
        body: B,
        record: Record,
    }
}

impl<B: http_body::Body> http_body::Body for Recorded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
        {
            let code = trailers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(tonic::Code::Unknown as i32);
            this.record.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_label_set_is_bounded() {
        let m = Metrics::new();
        for i in 0..super::super::MAX_CLIENTS {
            assert_eq!(m.client_label(&format!("c{i}")), format!("c{i}"));
        }
        assert_eq!(m.client_label("late"), super::super::OTHER_CLIENT);
        assert_eq!(m.client_label("c7"), "c7", "a known value keeps its label");
    }

    #[test]
    fn only_the_apis_own_methods_get_their_names() {
        let known = known_methods();
        assert_eq!(
            known
                .get("/sidecar.v1.TextService/Generate")
                .map(String::as_str),
            Some("TextService/Generate")
        );
        assert!(known.contains_key("/sidecar.v1.ModelService/LoadModel"));
        assert!(known.len() > 20, "{}", known.len());
        for made_up in [
            "/x.TextService/Generate",
            "/sidecar.v1.TextService/Nope",
            "/",
            "",
        ] {
            assert!(!known.contains_key(made_up), "{made_up}");
        }
    }
}
