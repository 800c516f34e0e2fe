//! The channel's one error type.

use std::io;

/// What can go wrong on a channel. Every variant is final for the channel
/// except [`Error::Timeout`] and [`Error::WouldBlock`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The other process died or closed its end. Frames it had fully written
    /// before are still delivered; after this every call fails the same way.
    #[error("ipc peer gone: the process on the other end of the channel exited or closed it")]
    PeerGone,
    /// The shared region or a frame in it is not what the protocol allows
    /// (garbage, truncated frame, impossible ring positions). The channel is
    /// unusable; kill the peer and make a new one.
    #[error("ipc channel corrupt: {0}")]
    Corrupt(String),
    /// The peer broke the channel's rules with well-formed frames: more
    /// answer frames than its credit window allows, or more control frames
    /// than the control queue holds. The channel is closed; kill the peer
    /// (reason `protocol`) and make a new one.
    #[error("ipc protocol violation by the peer: {0}")]
    Protocol(String),
    /// A copy of another final error of the channel (an I/O failure of its
    /// pump, say), handed to every waiter: not the peer's fault.
    #[error("ipc channel failed: {0}")]
    Broken(String),
    /// A payload larger than the ring can ever hold.
    #[error(
        "ipc payload of {payload} bytes exceeds this channel's largest frame payload of {max} bytes (ring of {ring} bytes)"
    )]
    TooLarge {
        /// Bytes asked for.
        payload: usize,
        /// Largest payload one frame can carry on this ring.
        max: usize,
        /// Ring capacity in bytes.
        ring: usize,
    },
    /// A blocking wait reached its timeout.
    #[error("ipc wait timed out")]
    Timeout,
    /// A non-blocking call could not proceed now.
    #[error("ipc would block: {0}")]
    WouldBlock(Blocked),
    /// The configuration asked for something the channel cannot do.
    #[error("ipc config: {0}")]
    Config(String),
    /// Inherited descriptors missing or of the wrong kind.
    #[error("ipc attach: {0}")]
    Attach(String),
    /// A system call failed.
    #[error("ipc {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// Why a non-blocking send could not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The ring has no room for the frame now.
    RingFull,
    /// The request's consumer has not granted credit for more frames: the
    /// request is paused; other requests are not.
    NoCredit,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Blocked::RingFull => "ring full",
            Blocked::NoCredit => "request paused: no credit from its consumer",
        })
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            op,
            source: source.into(),
        }
    }

    /// A copy of a final error, for handing to every waiter of a dead
    /// channel.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Error::PeerGone => Error::PeerGone,
            Error::Corrupt(m) => Error::Corrupt(m.clone()),
            Error::Protocol(m) => Error::Protocol(m.clone()),
            Error::Broken(m) => Error::Broken(m.clone()),
            other => Error::Broken(other.to_string()),
        }
    }

    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::PeerGone => "peer_gone",
            Error::Corrupt(_) => "corrupt",
            Error::Protocol(_) => "protocol",
            Error::Broken(_) => "broken",
            Error::TooLarge { .. } => "too_large",
            Error::Timeout => "timeout",
            Error::WouldBlock(_) => "would_block",
            Error::Config(_) => "config",
            Error::Attach(_) => "attach",
            Error::Io { .. } => "io",
        }
    }
}

impl From<nix::errno::Errno> for Error {
    fn from(e: nix::errno::Errno) -> Self {
        Error::io("syscall", io::Error::from(e))
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
