//! Every listener's connections under one set of limits
//! (`config::Connections`): HTTP/2 stream and reset limits, keepalive, a
//! cap on open connections, and an idle timeout. The API port and the
//! control socket (and any listener the sidecar gains) are built here, and
//! the admin port's HTTP/1 server accepts through [`Capped`], so
//! none of them can be left with tonic's defaults (no stream limit, no
//! limit on resets, no keepalive). The API port's connections may be TLS
//! ([`tls`]).

mod active;
mod capped;
mod conn;
pub mod tls;
mod transport;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio_stream::{Stream, StreamExt};

use crate::config::Connections;

pub use active::ActiveLayer;
pub use capped::Capped;
pub use conn::{Activity, Conn, ConnInfo};
pub use transport::Transport;

/// The API port's accepted connections, as the server takes them.
pub type ApiIncoming = Pin<Box<dyn Stream<Item = std::io::Result<Conn<Transport>>> + Send>>;

/// The API port's connections: with TLS when `tls` is given (a handshake
/// per connection, see [`tls::incoming`]), else plain; under the same
/// limits either way.
pub fn api<S>(accepted: S, c: &Connections, tls: Option<Arc<tls::Acceptor>>) -> ApiIncoming
where
    S: Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static,
{
    match tls {
        Some(acceptor) => Box::pin(tls::incoming(accepted, c, "api", acceptor)),
        None => Box::pin(incoming(
            accepted.map(|conn| conn.map(Transport::Plain)),
            c,
            "api",
        )),
    }
}

/// A server builder with the connection limits applied.
pub fn server(c: &Connections) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(c.max_streams))
        .http2_max_pending_accept_reset_streams(Some(c.max_pending_resets))
        .http2_max_local_error_reset_streams(Some(c.max_error_resets))
        .http2_keepalive_interval(Some(c.keepalive_interval))
        .http2_keepalive_timeout(Some(c.keepalive_timeout))
        // gRPC is HTTP/2 only: an HTTP/1 request is refused by hyper.
        .accept_http1(false)
}

/// The accepted connections of one listener (`what` names it in logs),
/// each holding one of `max_connections` places and closed once idle for
/// `idle_timeout`; a connection past the cap is closed as it is accepted.
pub fn incoming<IO, S>(
    accepted: S,
    c: &Connections,
    what: &'static str,
) -> impl Stream<Item = std::io::Result<Conn<IO>>> + use<IO, S>
where
    S: Stream<Item = std::io::Result<IO>>,
    IO: tonic::transport::server::Connected,
{
    let places = Places::new(c.max_connections, what);
    let idle = c.idle_timeout;
    accepted.filter_map(move |conn| match conn {
        Err(e) => Some(Err(e)),
        Ok(io) => places
            .take()
            .map(|place| Ok(Conn::new(io, place, Some(idle)))),
    })
}

/// One listener's places under `connections.max_connections`.
#[derive(Debug)]
struct Places {
    free: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
    what: &'static str,
}

impl Places {
    fn new(max: usize, what: &'static str) -> Self {
        Places {
            free: Arc::new(Semaphore::new(max)),
            max,
            refused: AtomicU64::new(0),
            what,
        }
    }

    /// A place for a new connection; `None` (and the connection is to be
    /// closed) when all are taken.
    fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let place = self.free.clone().try_acquire_owned().ok();
        if place.is_none() {
            // Logged at 1, 2, 4, 8, ... refusals: a flood of connections
            // cannot flood the log.
            let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    listener = self.what,
                    refused = n,
                    "connection closed: {} connections are open (connections.max_connections)",
                    self.max
                );
            }
        }
        place
    }
}

#[cfg(test)]
mod tests;
