//! The tower layer that tells each connection which calls are open on it
//! (for its idle timeout): a call counts from its request until its answer
//! is finished or dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};

use super::conn::{Active, Activity, ConnInfo};

/// See the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActiveLayer;

impl<S> tower::Layer<S> for ActiveLayer {
    type Service = ActiveService<S>;
    fn layer(&self, inner: S) -> ActiveService<S> {
        ActiveService { inner }
    }
}

/// See [`ActiveLayer`].
#[derive(Debug, Clone)]
pub struct ActiveService<S> {
    inner: S,
}

/// The connection's activity, for the transports the sidecar listens on.
fn activity<B>(req: &http::Request<B>) -> Option<&Arc<Activity>> {
    let ext = req.extensions();
    ext.get::<ConnInfo<TcpConnectInfo>>()
        .map(|i| &i.activity)
        .or_else(|| ext.get::<ConnInfo<UdsConnectInfo>>().map(|i| &i.activity))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for ActiveService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: http_body::Body + Send + 'static,
{
    type Response = http::Response<Tracked<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let active = activity(&req).map(Activity::enter);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| Tracked {
                body,
                _active: active,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call open on its connection.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        _active: Option<Active>,
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
