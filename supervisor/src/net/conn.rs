//! One accepted connection: its place under the connection cap, and the
//! calls open on it, so that a connection with none for `idle_timeout` is
//! closed (keepalive PINGs alone do not keep it).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Interval, MissedTickBehavior};
use tonic::transport::server::Connected;

/// The calls open on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    since: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            open: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    /// A call starts; it ends when the guard is dropped (its answer
    /// finished or was abandoned).
    pub fn enter(self: &Arc<Self>) -> Active {
        self.open.fetch_add(1, Ordering::SeqCst);
        Active(self.clone())
    }

    /// How long the connection has had no call open (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

/// One open call of a connection (see [`Activity::enter`]).
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut since = self.0.since.lock().unwrap_or_else(PoisonError::into_inner);
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
        }
    }
}

/// What a call learns of its connection (in the request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo<I> {
    /// The transport's own (the peer's address, for TCP).
    pub transport: I,
    /// The connection's calls.
    pub activity: Arc<Activity>,
}

/// An accepted connection under the limits of `net::incoming`.
#[derive(Debug)]
pub struct Conn<IO> {
    io: IO,
    _place: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    /// The idle timeout and its clock; `None`: the connection is never
    /// closed for idleness (a listener whose calls are not counted).
    idle: Option<(Duration, Interval)>,
}

impl<IO> Conn<IO> {
    pub(super) fn new(io: IO, place: OwnedSemaphorePermit, idle: Option<Duration>) -> Self {
        let idle = idle.map(|idle| {
            let mut tick = tokio::time::interval(
                (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            );
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            (idle, tick)
        });
        Conn {
            io,
            _place: place,
            activity: Arc::default(),
            idle,
        }
    }
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = ConnInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            transport: self.io.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // What the client sent first: a request that arrives as the idle
        // time runs out is read, not cut off.
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if read.is_ready() {
            return read;
        }
        if let Some((idle, tick)) = this.idle.as_mut() {
            while tick.poll_tick(cx).is_ready() {
                if this.activity.idle_for() >= *idle {
                    // The end of the input: the server closes the connection.
                    tracing::debug!("closing a connection idle for {idle:?}");
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Poll::Pending
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
