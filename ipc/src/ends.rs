//! Making a channel, and handing one side of it to a child process.
//!
//! A channel is a sealed memfd region, two eventfd doorbells and a
//! socketpair. [`create`] returns the two sides as [`Ends`]: descriptor
//! bundles that stay close-on-exec in this process. One side is attached
//! here ([`crate::AsyncChannel::new`] or [`crate::BlockingChannel::new`]),
//! the other goes to exactly one child with [`Ends::spawn`], which clears
//! close-on-exec for its descriptors in that child only and names them in
//! the `SIDECAR_IPC` environment variable. The child attaches with
//! [`Ends::from_env`], which marks them close-on-exec again so that nothing
//! the worker starts inherits the region. Nothing has a name under
//! `/dev/shm` or anywhere else in the file system.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::ring::{Consumer, Producer};
use crate::sys::{self, ChildSetup, SharedRegion};

/// The environment variable that names the inherited descriptors.
pub const ENV_VAR: &str = "SIDECAR_IPC";
/// The environment variable that names the open files handed to the child
/// beside its channel ([`Ends::spawn_with_files`]), in order, comma-separated.
pub const FILES_ENV_VAR: &str = "SIDECAR_IPC_FILES";
const REGION_NAME: &CStr = c"sidecar-ipc";

/// Sizes of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Capacity of the ring from side A (the creator, the supervisor) to
    /// side B (the worker), in bytes; rounded up to 4 KiB. Bounds the
    /// largest request payload.
    pub request_ring_bytes: usize,
    /// Capacity of the ring from side B to side A, in bytes. Bounds the
    /// largest response payload.
    pub response_ring_bytes: usize,
    /// Answer frames a request may have in flight before its consumer reads
    /// them (per request id). A slow consumer pauses only its own request.
    pub credit_window: u32,
}

impl ChannelConfig {
    /// Rings of `bytes` each, a window of 64 frames.
    pub fn with_ring_bytes(bytes: usize) -> Self {
        ChannelConfig {
            request_ring_bytes: bytes,
            response_ring_bytes: bytes,
            credit_window: 64,
        }
    }
}

impl Default for ChannelConfig {
    /// 4 MiB each way: enough for a text worker. Vision and lite workers
    /// need rings as large as their largest frame or tensor set.
    fn default() -> Self {
        Self::with_ring_bytes(4 << 20)
    }
}

/// Which side of the channel a set of ends belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The creator (the supervisor): writes ring 0, reads ring 1.
    A,
    /// The child (the worker): writes ring 1, reads ring 0.
    B,
}

/// One side of a channel: the descriptors it needs, not yet attached.
#[derive(Debug)]
pub struct Ends {
    side: Side,
    region: OwnedFd,
    /// Doorbell this side waits on.
    my_bell: OwnedFd,
    /// Doorbell this side rings for the other.
    peer_bell: OwnedFd,
    /// This side's end of the death-watch socketpair.
    sock: OwnedFd,
}

/// Makes a channel and returns its two sides.
pub fn create(config: ChannelConfig) -> Result<(Ends, Ends)> {
    let layout = Layout::plan(
        [config.request_ring_bytes, config.response_ring_bytes],
        config.credit_window,
    )?;
    let region = SharedRegion::create(REGION_NAME, layout.len)?;
    layout.initialise(&region);
    let bell_a = sys::doorbell()?;
    let bell_b = sys::doorbell()?;
    let (sock_a, sock_b) = sys::death_watch_pair()?;
    let a = Ends {
        side: Side::A,
        region: sys::dup(region.fd())?,
        my_bell: sys::dup(bell_a.as_fd())?,
        peer_bell: sys::dup(bell_b.as_fd())?,
        sock: sock_a,
    };
    let b = Ends {
        side: Side::B,
        region: sys::dup(region.fd())?,
        my_bell: bell_b,
        peer_bell: bell_a,
        sock: sock_b,
    };
    Ok((a, b))
}

static ADOPTED: AtomicBool = AtomicBool::new(false);
static FILES_ADOPTED: AtomicBool = AtomicBool::new(false);

/// The open files this process's parent handed it with
/// [`Ends::spawn_with_files`] ([`FILES_ENV_VAR`]), in order, each checked
/// to be an open file in the file system (not a socket, pipe or other
/// anonymous descriptor) and made close-on-exec. Empty when the variable
/// is unset. Callable once per process.
pub fn inherited_files() -> Result<Vec<OwnedFd>> {
    let Ok(value) = std::env::var(FILES_ENV_VAR) else {
        return Ok(Vec::new());
    };
    let bad = || Error::Attach(format!("{FILES_ENV_VAR}={value:?} is malformed"));
    let fds: Vec<i32> = value
        .split(',')
        .map(|f| f.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let mut seen = fds.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != fds.len() {
        return Err(bad());
    }
    // A file in the file system: never one of the channel's descriptors
    // (a memfd, eventfds, a socket), which `Ends::from_env` owns.
    for &fd in &fds {
        let target = sys::fd_target(fd)?;
        if !target.starts_with('/') || target.starts_with("/memfd:") {
            return Err(Error::Attach(format!(
                "{FILES_ENV_VAR}: descriptor {fd} points to {target:?}, not a file"
            )));
        }
    }
    if FILES_ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(Error::Attach(
            "the inherited files were taken already".into(),
        ));
    }
    fds.into_iter()
        .map(|fd| sys::adopt_inherited(fd, "/"))
        .collect()
}

impl Ends {
    /// Which side these are.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Spawns `cmd` holding these ends (and no other descriptor of this
    /// crate), and closes them here, so that this process sees the child's
    /// death on the channel. The child gets `PR_SET_PDEATHSIG` with
    /// `parent_death_signal` when given: spawn from a thread that lives as
    /// long as the process, since the signal fires when that thread exits.
    pub fn spawn(self, cmd: &mut Command, parent_death_signal: Option<i32>) -> Result<Child> {
        self.spawn_with_files(cmd, parent_death_signal, &[])
    }

    /// [`Ends::spawn`], also handing the child `files`: descriptors this
    /// process opened (close-on-exec here), kept open across the child's
    /// `exec` under the same numbers and named, in order, in
    /// [`FILES_ENV_VAR`]; the child takes them with [`inherited_files`].
    /// So a file is checked and opened by this process, and the child reads
    /// that same open file without resolving any path.
    pub fn spawn_with_files(
        self,
        cmd: &mut Command,
        parent_death_signal: Option<i32>,
        files: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Child> {
        let side = match self.side {
            Side::A => "a",
            Side::B => "b",
        };
        let value = format!(
            "{side}:{},{},{},{}",
            self.region.as_raw_fd(),
            self.my_bell.as_raw_fd(),
            self.peer_bell.as_raw_fd(),
            self.sock.as_raw_fd()
        );
        cmd.env(ENV_VAR, value);
        let numbers: Vec<String> = files.iter().map(|f| f.as_raw_fd().to_string()).collect();
        if numbers.is_empty() {
            cmd.env_remove(FILES_ENV_VAR);
        } else {
            cmd.env(FILES_ENV_VAR, numbers.join(","));
        }
        let mut keep = vec![
            self.region.as_fd(),
            self.my_bell.as_fd(),
            self.peer_bell.as_fd(),
            self.sock.as_fd(),
        ];
        keep.extend_from_slice(files);
        let child = sys::spawn_keeping(
            cmd,
            &keep,
            ChildSetup {
                parent_death_signal,
            },
        )
        .map_err(|e| Error::io("spawn peer", e))?;
        drop(self);
        Ok(child)
    }

    /// The ends this process inherited from its parent (`SIDECAR_IPC`).
    /// Callable once per process.
    pub fn from_env() -> Result<Ends> {
        let value = std::env::var(ENV_VAR).map_err(|_| {
            Error::Attach(format!(
                "{ENV_VAR} is not set: not started by a channel creator"
            ))
        })?;
        let bad = || Error::Attach(format!("{ENV_VAR}={value:?} is malformed"));
        let (side, fds) = value.split_once(':').ok_or_else(bad)?;
        let side = match side {
            "a" => Side::A,
            "b" => Side::B,
            _ => return Err(bad()),
        };
        let fds: Vec<i32> = fds
            .split(',')
            .map(|f| f.parse().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        let [region, my_bell, peer_bell, sock] = fds[..] else {
            return Err(bad());
        };
        if ADOPTED.swap(true, Ordering::SeqCst) {
            return Err(Error::Attach(
                "the inherited channel was attached already".into(),
            ));
        }
        Ok(Ends {
            side,
            region: sys::adopt_inherited(region, "memfd:sidecar-ipc")?,
            my_bell: sys::adopt_inherited(my_bell, "[eventfd]")?,
            peer_bell: sys::adopt_inherited(peer_bell, "[eventfd]")?,
            sock: sys::adopt_inherited(sock, "socket:")?,
        })
    }

    /// Maps the region, checks its header and builds this side's ring ends.
    pub(crate) fn attach(self) -> Result<Attached> {
        let region = Arc::new(SharedRegion::attach(self.region)?);
        let layout = Layout::validate(&region)?;
        let (tx, rx) = match self.side {
            Side::A => (layout.rings[0], layout.rings[1]),
            Side::B => (layout.rings[1], layout.rings[0]),
        };
        Ok(Attached {
            side: self.side,
            tx: Producer::new(region.clone(), tx),
            rx: Consumer::new(region, rx),
            credit_window: layout.credit_window,
            region_bytes: layout.len,
            my_bell: self.my_bell,
            peer_bell: self.peer_bell,
            sock: self.sock,
        })
    }
}

/// An attached side, taken apart by the blocking and async front ends.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) side: Side,
    pub(crate) tx: Producer,
    pub(crate) rx: Consumer,
    pub(crate) credit_window: u32,
    pub(crate) region_bytes: usize,
    pub(crate) my_bell: OwnedFd,
    pub(crate) peer_bell: OwnedFd,
    pub(crate) sock: OwnedFd,
}
