//! The HTTP API's listener: accepted through `net` (the connection cap,
//! the idle timeout, TLS) and served by hyper's HTTP/1.1 + HTTP/2 server
//! under `[connections]`' HTTP/2 limits, each request carrying its
//! connection's `net::ConnInfo` so `net::ActiveLayer` counts it.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::api::text::TextApi;
use crate::auth::Auth;
use crate::config::{Connections, HttpAddress};
use crate::error::Error;
use crate::registry::Registry;

/// The running listener.
#[derive(Debug)]
pub struct Server {
    /// Where it listens ("127.0.0.1:8080" or "unix:/path").
    pub address: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    unix: Option<std::path::PathBuf>,
}

impl Server {
    /// Stops accepting, lets the requests in flight finish (each
    /// connection is closed once its answers are done), up to `grace`.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!("HTTP API: requests still running after {grace:?}; stopping anyway");
            // Dropping the task aborts it and its `JoinSet` of
            // connections with it: no answer outlives the stop.
            task.abort();
        }
        if let Some(path) = &self.unix {
            crate::ctl::socket::remove(path);
        }
    }
}

/// Binds `[openai]`'s address and serves the API; `None` when
/// `openai.enabled` is false. A bind that fails stops the start.
pub async fn start(
    registry: Arc<Registry>,
    auth: Arc<Auth>,
    tls: Option<Arc<crate::net::tls::Acceptor>>,
) -> Result<Option<Server>, Error> {
    let config = registry.shared().config.clone();
    let section = &config.openai;
    if !section.enabled {
        return Ok(None);
    }
    let api = TextApi {
        registry: registry.clone(),
        config: config.clone(),
    };
    let ctx = super::Ctx {
        api,
        registry,
        auth,
        started_unix: super::unix_now(),
        fingerprint: Arc::from(format!("sidecar-{}", env!("CARGO_PKG_VERSION"))),
    };
    let app = super::router::router(ctx);
    let (stop, stopped) = watch::channel(false);
    let c = config.connections.clone();
    match &section.address {
        HttpAddress::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Config(format!("openai.address {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| Error::Internal(format!("HTTP API socket: {e}")))?;
            // The same warnings as the gRPC port's: open, or tokens in
            // clear, where other hosts can reach it.
            if let Some(warning) = config.exposure_at("HTTP API", local) {
                tracing::warn!("{warning} (openai.address)");
            }
            let accepted = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                if let Ok(s) = &conn
                    && let Err(e) = s.set_nodelay(true)
                {
                    tracing::warn!("TCP_NODELAY: {e}");
                }
                conn
            });
            let incoming = crate::net::api(accepted, &c, tls);
            let task = tokio::spawn(serve(incoming, app, c, stopped));
            Ok(Some(Server {
                address: local.to_string(),
                stop,
                task,
                unix: None,
            }))
        }
        HttpAddress::Unix(path) => {
            // As the control socket: a directory only we can enter, the
            // socket 0600, a previous run's socket replaced but a live
            // one or any other file refused. With a tokens file, a local
            // peer without a token is known by its uid; only our uid (and
            // root) can reach the socket.
            let listener = crate::ctl::socket::bind_as(path, "openai.address")?;
            let incoming = crate::net::incoming(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                &c,
                "openai",
            );
            let task = tokio::spawn(serve(incoming, app, c, stopped));
            Ok(Some(Server {
                address: format!("unix:{}", path.display()),
                stop,
                task,
                unix: Some(path.clone()),
            }))
        }
    }
}

/// Serves each connection of `incoming` in its own task until `stop`;
/// then waits for the open connections to finish their answers.
async fn serve<IO, S>(
    incoming: S,
    app: axum::Router,
    c: Connections,
    mut stop: watch::Receiver<bool>,
) where
    S: Stream<Item = std::io::Result<crate::net::Conn<IO>>> + Send + 'static,
    IO: Connected + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    <IO as Connected>::ConnectInfo: Clone + Send + Sync + 'static,
{
    let mut incoming = std::pin::pin!(incoming);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client that never finishes its headers (slowloris) is cut
        // off; between requests the connection's idle timeout applies.
        .header_read_timeout(c.idle_timeout.min(Duration::from_secs(30)));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(c.max_streams)
        .max_pending_accept_reset_streams(c.max_pending_resets)
        .max_local_error_reset_streams(c.max_error_resets)
        .keep_alive_interval(c.keepalive_interval)
        .keep_alive_timeout(c.keepalive_timeout);
    let builder = Arc::new(builder);
    let mut open = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            conn = incoming.next() => conn,
        };
        let conn = match conn {
            None => break,
            Some(Err(e)) => {
                // Out of descriptors or memory: a pause, instead of a spin
                // that takes a core while the condition lasts.
                tracing::warn!("HTTP API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Some(Ok(conn)) => conn,
        };
        let info = conn.connect_info();
        let svc = tower::ServiceBuilder::new()
            .layer(crate::net::ActiveLayer)
            .service(app.clone());
        let svc = tower::util::MapRequest::new(svc, move |mut req: http::Request<_>| {
            req.extensions_mut().insert(info.clone());
            req
        });
        let builder = builder.clone();
        let mut stop = stop.clone();
        // Finished connections are reaped as new ones come.
        while open.try_join_next().is_some() {}
        open.spawn(async move {
            let served =
                builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(svc));
            let mut served = std::pin::pin!(served);
            tokio::select! {
                r = served.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("HTTP API connection: {e}");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => served.as_mut().graceful_shutdown(),
            }
            if let Err(e) = served.await {
                tracing::debug!("HTTP API connection: {e}");
            }
        });
    }
    while open.join_next().await.is_some() {}
}
