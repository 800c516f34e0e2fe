//! TLS on the API port: each accepted connection's handshake runs in its
//! own task, bounded by `tls.handshake_timeout` and holding one of the
//! listener's places meanwhile, so a client that sends nothing (or
//! garbage) costs one place for a bounded time and never holds up the
//! accept loop or another client's handshake. The server configuration
//! is swapped whole when the files change ([`reload`]): new handshakes get
//! the new certificate, established connections keep theirs.

mod reload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::{Conn, Places, Transport};
use crate::config::{Connections, Tls};
use crate::error::Error;

/// The server configuration new handshakes use, and where it comes from.
#[derive(Debug)]
pub struct Acceptor {
    current: RwLock<Arc<ServerConfig>>,
    tls: Tls,
    /// Handshakes that failed or timed out (logged at 1, 2, 4, 8, ...).
    failed: AtomicU64,
    /// The protocols offered in ALPN: `h2` on the gRPC port, `h2` and
    /// `http/1.1` on the HTTP API's.
    alpn: Vec<Vec<u8>>,
}

impl Acceptor {
    /// Reads the files of `tls` (an error names the file and what is
    /// wrong) and starts watching them for changes: the watch stops once
    /// the acceptor is dropped.
    pub fn start(tls: &Tls) -> Result<Arc<Acceptor>, Error> {
        Self::start_with_alpn(tls, vec![b"h2".to_vec()])
    }

    /// [`Acceptor::start`] for an HTTP/1.1 and HTTP/2 listener (the
    /// OpenAI-compatible API): ALPN offers `h2` and `http/1.1`.
    pub fn start_http(tls: &Tls) -> Result<Arc<Acceptor>, Error> {
        Self::start_with_alpn(tls, vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }

    fn start_with_alpn(tls: &Tls, alpn: Vec<Vec<u8>>) -> Result<Arc<Acceptor>, Error> {
        // The files' stamps before they are read: a change made while
        // they are read is seen by the first check.
        let stamps = reload::Stamps::of(tls);
        let mut config = tls.server_config()?;
        config.alpn_protocols = alpn.clone();
        let acceptor = Arc::new(Acceptor {
            current: RwLock::new(Arc::new(config)),
            tls: tls.clone(),
            failed: AtomicU64::new(0),
            alpn,
        });
        tracing::info!(
            cert = %tls.cert.display(),
            fingerprint = %reload::fingerprint(&tls.cert),
            mtls = tls.client_ca.is_some(),
            "TLS on the API port"
        );
        tokio::spawn(reload::watch(Arc::downgrade(&acceptor), stamps));
        Ok(acceptor)
    }

    /// The configuration a handshake starting now uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, mut config: ServerConfig) {
        config.alpn_protocols = self.alpn.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }

    /// The handshake of one connection, within `tls.handshake_timeout`.
    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let accept = tokio_rustls::TlsAcceptor::from(self.current()).accept(tcp);
        let why = match tokio::time::timeout(self.tls.handshake_timeout, accept).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "not finished within {:?} (tls.handshake_timeout)",
                self.tls.handshake_timeout
            ),
        };
        let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(failed = n, "TLS handshake failed, connection closed: {why}");
        } else {
            tracing::debug!(failed = n, "TLS handshake failed: {why}");
        }
        None
    }

    fn handshake_timeout(&self) -> Duration {
        self.tls.handshake_timeout
    }
}

/// How long the accept loop pauses after a failed accept.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// The API port's connections with TLS: like [`super::incoming`] (a place
/// each under `max_connections`, the idle timeout once the handshake is
/// done), and a connection is handed on only once its handshake finished.
/// The accept loop runs in its own task and ends when the returned stream
/// is dropped.
pub fn incoming<S>(
    accepted: S,
    c: &Connections,
    what: &'static str,
    acceptor: Arc<Acceptor>,
) -> impl Stream<Item = std::io::Result<Conn<Transport>>> + use<S>
where
    S: Stream<Item = std::io::Result<TcpStream>> + Send + 'static,
{
    let places = Places::new(c.max_connections, what);
    let idle = c.idle_timeout;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        let mut failures: u64 = 0;
        loop {
            let next = tokio::select! {
                () = tx.closed() => break,
                next = accepted.next() => next,
            };
            let tcp = match next {
                None => break,
                Some(Err(e)) => {
                    // Out of descriptors (EMFILE) fails every accept at
                    // once: pause instead of spinning, and log the 1st,
                    // 2nd, 4th… failure only.
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(listener = what, failures, "accept failed: {e}");
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
                Some(Ok(tcp)) => tcp,
            };
            // Past the cap: dropped (closed) at once, before any handshake.
            let Some(place) = places.take() else {
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(tls) = acceptor.handshake(tcp).await {
                    let conn = Conn::new(Transport::Tls(Box::new(tls)), place, Some(idle));
                    // The server stopped: the connection is closed.
                    let _ = tx.send(Ok(conn));
                }
            });
        }
        tracing::debug!(
            listener = what,
            "accept loop stopped (handshake timeout was {:?})",
            acceptor.handshake_timeout()
        );
    });
    UnboundedReceiverStream::new(rx)
}

#[cfg(test)]
mod tests;
