//! The admin port's listener for axum (HTTP/1): the same connection cap as
//! every other listener. Its connections have no idle timeout of their
//! own (its calls are probes and scrapes, not counted per connection);
//! hyper closes an HTTP/1 connection between requests when the client
//! goes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::{Conn, Places};

/// See the module.
#[derive(Debug)]
pub struct Capped {
    listener: TcpListener,
    places: Places,
}

impl Capped {
    /// `listener`, with at most `max_connections` connections open.
    pub fn new(listener: TcpListener, max_connections: usize, what: &'static str) -> Self {
        Capped {
            listener,
            places: Places::new(max_connections, what),
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Conn<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((io, addr)) => {
                    if let Some(place) = self.places.take() {
                        return (Conn::new(io, place, None), addr);
                    }
                }
                Err(e) => {
                    // Out of descriptors, say: wait a little, as axum's
                    // own listener does, rather than spin.
                    tracing::warn!(listener = self.places.what, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
