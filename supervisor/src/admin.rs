//! The HTTP admin port: `/livez`, `/readyz` and `/metrics`, on a runtime of its own so
//! probes are answered however busy the data path is. Read-only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::error::Error;
use crate::registry::Registry;

#[derive(Clone)]
struct Probe {
    registry: Arc<Registry>,
    accepting: Arc<AtomicBool>,
}

/// Binds `addr` and serves the probes from a dedicated thread; returns the
/// bound address.
pub fn start(
    addr: SocketAddr,
    registry: Arc<Registry>,
    accepting: Arc<AtomicBool>,
) -> Result<SocketAddr, Error> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::Config(format!("admin_listen {addr}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Internal(format!("admin socket: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("admin socket: {e}")))?;
    let probe = Probe {
        registry,
        accepting,
    };
    std::thread::Builder::new()
        .name("admin-http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("admin runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let app = Router::new()
                    .route("/livez", get(|| async { "ok\n" }))
                    .route("/readyz", get(readyz))
                    .route("/metrics", get(metrics))
                    .with_state(probe);
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            tracing::error!("admin server: {e}");
                        }
                    }
                    Err(e) => tracing::error!("admin listener: {e}"),
                }
            });
        })
        .map_err(|e| Error::Internal(format!("admin thread: {e}")))?;
    Ok(local)
}

async fn metrics(State(p): State<Probe>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        p.registry.shared().metrics.render(&p.registry.gauges()),
    )
}

async fn readyz(State(p): State<Probe>) -> (StatusCode, String) {
    if !p.accepting.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    let waiting = p.registry.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
    }
}
