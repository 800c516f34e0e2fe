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
use crate::pulse::Pulse;
use crate::registry::Registry;

#[derive(Clone)]
struct Probe {
    registry: Arc<Registry>,
    accepting: Arc<AtomicBool>,
    pulse: Pulse,
}

/// Binds `addr` and serves the probes from a dedicated thread; returns the
/// bound address. `/livez` fails once `pulse` (the main runtime's) has been
/// still for the config's `livez_stall`.
pub fn start(
    addr: SocketAddr,
    registry: Arc<Registry>,
    accepting: Arc<AtomicBool>,
    pulse: Pulse,
) -> Result<SocketAddr, Error> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::Config(format!("admin_listen {addr}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Internal(format!("admin socket: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("admin socket: {e}")))?;
    let max_connections = registry.shared().config.connections.max_connections;
    let probe = Probe {
        registry,
        accepting,
        pulse,
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
                    .route("/livez", get(livez))
                    .route("/readyz", get(readyz))
                    .route("/metrics", get(metrics))
                    .with_state(probe);
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let l = crate::net::Capped::new(l, max_connections, "admin");
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

async fn livez(State(p): State<Probe>) -> (StatusCode, String) {
    match p.pulse.check(p.registry.shared().config.livez_stall) {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Rendered on the admin runtime's blocking pool: a large `/metrics`
/// never delays a `/livez` or `/readyz` answer on its one thread.
async fn metrics(
    State(p): State<Probe>,
) -> (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
) {
    let header = [(
        axum::http::header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )];
    let rendered = tokio::task::spawn_blocking(move || {
        p.registry.shared().metrics.render(&p.registry.gauges())
    })
    .await;
    match rendered {
        Ok(text) => (StatusCode::OK, header, text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            header,
            format!("metrics: {e}\n"),
        ),
    }
}

/// Whether the sidecar is ready (`/readyz`, the Open Inference
/// Protocol's `ServerReady`): accepting calls and every required model
/// READY; why not, when it is not.
pub fn readiness(accepting: &AtomicBool, registry: &Registry) -> Result<(), String> {
    if !accepting.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    let waiting = registry.not_ready();
    if waiting.is_empty() {
        Ok(())
    } else {
        Err(format!("not ready: {}", waiting.join(", ")))
    }
}

async fn readyz(State(p): State<Probe>) -> (StatusCode, String) {
    match readiness(&p.accepting, &p.registry) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
