//! Limits on the connections of every listener: `[connections]` in the
//! config file.

use std::time::Duration;

use serde::Deserialize;

use super::units::secs;

/// Limits on every connection the sidecar accepts. A client that opens
/// thousands of streams, floods resets, goes silent or stops reading costs
/// a bounded share of the sidecar, and the others are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Connections {
    /// Connections open at once per listener; more are closed as they are
    /// accepted.
    pub max_connections: usize,
    /// HTTP/2 streams a connection may have open at once (advertised in
    /// SETTINGS_MAX_CONCURRENT_STREAMS; more are refused by the protocol).
    pub max_streams: u32,
    /// Streams a client may reset before the server accepted them
    /// (the "rapid reset" flood) before the connection gets a GOAWAY.
    pub max_pending_resets: usize,
    /// Streams the server may reset on a connection (refused past
    /// `max_streams`, answered before their request was read) before the
    /// connection gets a GOAWAY: hyper's own default, 1024.
    pub max_error_resets: usize,
    /// HTTP/2 PING interval on an open connection.
    #[serde(with = "secs")]
    pub keepalive_interval: Duration,
    /// A PING not answered within this closes the connection.
    #[serde(with = "secs")]
    pub keepalive_timeout: Duration,
    /// A connection with no call open this long is closed.
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// A streaming answer whose client has read nothing for this long is
    /// ended (RESOURCE_EXHAUSTED), so it no longer holds a worker's slot.
    #[serde(with = "secs")]
    pub stream_stall: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max_connections: 1024,
            max_streams: 256,
            max_pending_resets: 20,
            max_error_resets: 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(300),
            stream_stall: Duration::from_secs(60),
        }
    }
}
