//! Every system call and every `unsafe` block of the crate.
//!
//! The rest of the crate is safe code over what this module exposes: a
//! sealed, mapped memfd region with bounds-checked access, doorbells
//! (eventfd), the death-watch socketpair, and descriptor inheritance across
//! `exec` for exactly one child.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use crate::error::{Error, Result};

/// Seals every region carries: its size can never change, so no peer can
/// make the other side's accesses fault (SIGBUS) by truncating it.
const SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// A shared memory region: an anonymous memfd (no name anywhere in the file
/// system), sealed against resizing, mapped read-write and shared.
#[derive(Debug)]
pub(crate) struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory shared with another process; every
// access goes through atomics or bounds-checked copies below, and the
// protocol decides which side may write which bytes. The pointer is never
// handed out raw.
unsafe impl Send for SharedRegion {}
// SAFETY: as above; `&SharedRegion` only allows atomic access and copies
// whose exclusivity the ring protocol guarantees.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Creates a zero-filled region of `len` bytes, sealed against resizing.
    pub(crate) fn create(name: &CStr, len: usize) -> Result<Self> {
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(|e| Error::io("memfd_create", e))?;
        let size =
            i64::try_from(len).map_err(|_| Error::Config(format!("region of {len} bytes")))?;
        nix::unistd::ftruncate(&fd, size).map_err(|e| Error::io("ftruncate", e))?;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(SEALS)).map_err(|e| Error::io("seal memfd", e))?;
        Self::map(fd, len)
    }

    /// Maps a region received from the creator, after checking that it is a
    /// sealed memfd; returns it with its size.
    pub(crate) fn attach(fd: OwnedFd) -> Result<Self> {
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS)
            .map_err(|e| Error::Attach(format!("region is not a sealable memfd: {e}")))?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW) {
            return Err(Error::Attach(format!(
                "region memfd is not sealed against resizing (seals {seals:?})"
            )));
        }
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| Error::io("fstat region", e))?;
        let len = usize::try_from(stat.st_size)
            .map_err(|_| Error::Attach(format!("region size {}", stat.st_size)))?;
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self> {
        let nz = NonZeroUsize::new(len).ok_or_else(|| Error::Attach("empty region".into()))?;
        // SAFETY: a fresh shared mapping of a memfd whose size is sealed at
        // `len`, so every byte of the mapping stays backed for its lifetime;
        // the kernel picks the address, so nothing existing is replaced.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| Error::io("mmap region", e))?;
        Ok(SharedRegion {
            ptr: ptr.cast(),
            len,
            fd,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Address of `offset`, after checking the access is in bounds.
    fn at(&self, offset: usize, len: usize, align: usize) -> *mut u8 {
        self.check(offset, len, align);
        self.ptr.as_ptr().wrapping_add(offset)
    }

    fn check(&self, offset: usize, len: usize, align: usize) {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.len) && offset.is_multiple_of(align),
            "region access {offset}+{len} outside the {} byte region (bug: offsets come from the validated layout)",
            self.len
        );
    }

    /// The 64-bit atomic at `offset` (8-aligned).
    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        let p = self.at(offset, 8, 8).cast::<AtomicU64>();
        // SAFETY: in bounds and 8-aligned (checked; the mapping is page
        // aligned), valid for the region's lifetime, and only ever accessed
        // atomically by both processes.
        unsafe { &*p }
    }

    /// The 32-bit atomic at `offset` (4-aligned).
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        let p = self.at(offset, 4, 4).cast::<AtomicU32>();
        // SAFETY: as `atomic_u64`.
        unsafe { &*p }
    }

    /// Copies `src` into the region at `offset`.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        let p = self.at(offset, src.len(), 1);
        // SAFETY: in bounds (checked). The ring protocol gives the caller
        // (the ring's single producer) exclusive use of these bytes: they
        // are free space the consumer does not read until published.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len());
        }
    }

    /// Copies bytes at `offset` out of the region.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        let p = self.at(offset, dst.len(), 1);
        // SAFETY: in bounds (checked); the bytes were published by the
        // producer, which does not write them again until released.
        unsafe {
            std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len());
        }
    }

    /// Bytes at `offset`, read in place.
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let p = self.at(offset, len, 1);
        // SAFETY: in bounds (checked). Callers only ask for published,
        // unreleased frames, which the producer does not touch until the
        // consumer moves its tail past them (after this borrow ends). A
        // producer breaking the protocol can change what is read, not where.
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// Lets `fill` write `len` bytes at `offset` in place.
    pub(crate) fn fill(&self, offset: usize, len: usize, fill: impl FnOnce(&mut [u8])) {
        let p = self.at(offset, len, 1);
        // SAFETY: in bounds (checked). Only a ring's single producer calls
        // this (through `&mut Producer`), on free space that no consumer
        // reads and no other slice covers until it is published.
        let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
        fill(buf);
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; every reference
        // handed out borrows `self`, so none outlives this.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A new eventfd (close-on-exec, non-blocking) used as a doorbell.
pub(crate) fn doorbell() -> Result<OwnedFd> {
    let efd = nix::sys::eventfd::EventFd::from_value_and_flags(
        0,
        nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
    )
    .map_err(|e| Error::io("eventfd", e))?;
    Ok(efd.into())
}

/// Rings a doorbell. A full counter (EAGAIN) means it is rung already.
pub(crate) fn ring(bell: BorrowedFd<'_>) -> Result<()> {
    match nix::unistd::write(bell, &1u64.to_ne_bytes()) {
        Ok(_) | Err(Errno::EAGAIN) => Ok(()),
        Err(e) => Err(Error::io("ring doorbell", e)),
    }
}

/// Resets a doorbell; true when it had been rung.
pub(crate) fn reset(bell: BorrowedFd<'_>) -> Result<bool> {
    let mut buf = [0u8; 8];
    match nix::unistd::read(bell, &mut buf) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN) => Ok(false),
        Err(e) => Err(Error::io("reset doorbell", e)),
    }
}

/// The death-watch pair: each side keeps one end; when a process dies its
/// end closes and the other reads end-of-file at once.
pub(crate) fn death_watch_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| Error::io("socketpair", e))
}

/// Most descriptors one `SCM_RIGHTS` message carries on Linux
/// (`include/net/scm.h`).
const SCM_MAX_FD: usize = 253;

/// Bytes of the tag that travels with a passed descriptor.
const TAG_BYTES: usize = 8;

/// Sends `fd` over the death-watch socket with its tag: one message of the
/// tag's 8 bytes carrying the descriptor (`SCM_RIGHTS`). Ok(false): the
/// socket's buffer is full now (wait until it is writable and try again).
pub(crate) fn send_fd(sock: BorrowedFd<'_>, tag: u64, fd: BorrowedFd<'_>) -> Result<bool> {
    let bytes = tag.to_le_bytes();
    let iov = [std::io::IoSlice::new(&bytes)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    loop {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, flags, None) {
            // A Unix stream socket takes a message carrying descriptors
            // whole or not at all when it is this small.
            Ok(n) if n == TAG_BYTES => return Ok(true),
            Ok(n) => {
                return Err(Error::Broken(format!(
                    "descriptor message sent short: {n} of {TAG_BYTES} bytes"
                )));
            }
            Err(Errno::EAGAIN) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => return Err(Error::PeerGone),
            Err(e) => return Err(Error::io("send descriptor", e)),
        }
    }
}

/// Reads the death-watch socket without blocking until it is empty: every
/// descriptor passed with its tag goes to `got`; true when the peer's end
/// is closed. A message that is not a tag with exactly one descriptor (the
/// peer broke the protocol) is dropped, its descriptors closed.
pub(crate) fn receive(sock: BorrowedFd<'_>, got: &mut dyn FnMut(u64, OwnedFd)) -> Result<bool> {
    loop {
        let mut buf = [0u8; TAG_BYTES];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        // Room for SCM_MAX_FD (253) descriptors, the most one message can
        // carry on Linux: the kernel never truncates what even a broken
        // peer sends (MSG_CTRUNC), so `cmsgs()` never fails and every
        // descriptor installed is owned here (and closed when dropped).
        let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
        let (n, mut fds) = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), flags)
        {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            fds.extend(raw.into_iter().map(|r| {
                                // SAFETY: the kernel has just installed `r`
                                // in this process's table for this message;
                                // nothing else refers to it, so this is its
                                // one owner.
                                unsafe { OwnedFd::from_raw_fd(r) }
                            }));
                        }
                    }
                }
                (msg.bytes, fds)
            }
            Err(Errno::EAGAIN) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Ok(true),
            Err(e) => return Err(Error::io("read death-watch socket", e)),
        };
        if n == 0 && fds.is_empty() {
            return Ok(true);
        }
        if n == TAG_BYTES && fds.len() == 1 {
            let fd = fds.pop().expect("one descriptor");
            got(u64::from_le_bytes(buf), fd);
        }
        // Anything else is dropped here (its descriptors closed).
    }
}

/// Checks the death-watch socket without blocking: true when the peer's
/// end is closed.
pub(crate) fn peer_closed(sock: BorrowedFd<'_>) -> Result<bool> {
    let mut buf = [0u8; 64];
    loop {
        match nix::unistd::read(sock, &mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => continue, // nothing is ever sent; drain and ignore
            Err(Errno::EAGAIN) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Ok(true),
            Err(e) => return Err(Error::io("read death-watch socket", e)),
        }
    }
}

/// Duplicates a descriptor (close-on-exec).
pub(crate) fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    fd.try_clone_to_owned().map_err(|e| Error::io("dup", e))
}

/// What `/proc/self/fd/N` points to ("anon_inode:[eventfd]", "socket:[..]",
/// "/memfd:sidecar-ipc (deleted)").
pub(crate) fn fd_target(fd: RawFd) -> Result<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| Error::Attach(format!("descriptor {fd} is not open: {e}")))
}

/// Takes ownership of a descriptor inherited across `exec`, after checking
/// that it is open and points to `expect` (a substring of its
/// `/proc/self/fd` link), and marks it close-on-exec so that no process this
/// one starts inherits it.
pub(crate) fn adopt_inherited(fd: RawFd, expect: &str) -> Result<OwnedFd> {
    if fd < 3 {
        return Err(Error::Attach(format!(
            "descriptor {fd} is a standard stream"
        )));
    }
    let target = fd_target(fd)?;
    if !target.contains(expect) {
        return Err(Error::Attach(format!(
            "descriptor {fd} points to {target:?}, expected {expect}"
        )));
    }
    // SAFETY: the descriptor is open (its /proc link exists) and was handed
    // to this process by its parent for exactly this use. Its two callers
    // each run at most once per process (a process-wide flag each) and
    // adopt disjoint descriptors: `Ends::from_env` the channel's (a memfd,
    // eventfds, a socket), `inherited_files` only distinct files in the
    // file system. So no other owner of this descriptor exists or will be
    // made.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| Error::io("set cloexec", e))?;
    Ok(owned)
}

/// Options for a child process that holds one end of a channel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildSetup {
    /// Signal the child gets when the spawning thread exits.
    pub(crate) parent_death_signal: Option<i32>,
}

/// Spawns `cmd` so that exactly `keep` survive its `exec` (they are
/// close-on-exec everywhere else, so concurrent spawns of other children do
/// not leak them).
pub(crate) fn spawn_keeping(
    cmd: &mut Command,
    keep: &[BorrowedFd<'_>],
    setup: ChildSetup,
) -> std::io::Result<Child> {
    let fds: Vec<RawFd> = keep.iter().map(|f| f.as_raw_fd()).collect();
    let parent = std::process::id() as libc::pid_t;
    let pdeathsig = setup.parent_death_signal;
    let setup = move || child_setup(&fds, pdeathsig, parent);
    // SAFETY: `child_setup` runs in the forked child before exec and only
    // makes async-signal-safe system calls (fcntl, prctl, getppid) on values
    // captured by copy; it allocates nothing.
    unsafe {
        cmd.pre_exec(setup);
    }
    cmd.spawn()
}

/// In the child between fork and exec: keep `fds` across exec, and ask for
/// `pdeathsig` when the parent thread exits.
fn child_setup(fds: &[RawFd], pdeathsig: Option<i32>, parent: libc::pid_t) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl on a descriptor number; an invalid one gives EBADF.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if let Some(sig) = pdeathsig {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() };
        // The parent may have died before prctl took effect.
        if ppid != parent {
            return Err(std::io::Error::other("parent exited during spawn"));
        }
    }
    Ok(())
}

/// Registers a descriptor this crate owns with the tokio reactor (read
/// readiness only). Must be called inside a tokio runtime.
pub(crate) fn async_fd(fd: OwnedFd) -> Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    async_fd_with(fd, tokio::io::Interest::READABLE)
}

/// [`async_fd`] with the readiness wanted (the death-watch socket also
/// waits to be writable when it passes descriptors).
pub(crate) fn async_fd_with(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, so the descriptor is
    // open, refers to the same file description and returns the same number
    // for as long as the `AsyncFd` lives.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| Error::io("register with tokio", e.into_parts().1))
}

/// Makes reads on `fd` block (clears `O_NONBLOCK` on its file description).
pub(crate) fn set_blocking(fd: BorrowedFd<'_>) -> Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::io("F_GETFL", e))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| Error::io("F_SETFL", e))?;
    Ok(())
}

/// Sleeps on a blocking doorbell until it rings (one `read`, which also
/// resets it), or until `timeout`.
pub(crate) fn sleep_on(bell: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<()> {
    if let Some(t) = timeout {
        let ms = t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(bell, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(Error::io("poll doorbell", e)),
        }
    }
    let mut buf = [0u8; 8];
    match nix::unistd::read(bell, &mut buf) {
        Ok(_) | Err(Errno::EINTR) | Err(Errno::EAGAIN) => Ok(()),
        Err(e) => Err(Error::io("wait doorbell", e)),
    }
}

/// Blocks until the peer's end of the death-watch socket closes (true) or
/// `stop` rings (false); descriptors passed meanwhile go to `got`.
pub(crate) fn watch_for_close(
    sock: BorrowedFd<'_>,
    stop: BorrowedFd<'_>,
    got: &mut dyn FnMut(u64, OwnedFd),
) -> Result<bool> {
    loop {
        let mut fds = [
            PollFd::new(sock, PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("poll death-watch socket", e)),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(false);
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) && receive(sock, got)? {
            return Ok(true);
        }
    }
}

/// Sets one of glibc's `mallopt` parameters; false when glibc refuses it.
pub(crate) fn mallopt(param: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: `mallopt` only updates the allocator's tunables (under its
    // own lock); any value is accepted or refused with 0.
    unsafe { libc::mallopt(param, value) == 1 }
}

#[cfg(test)]
mod receive_tests {
    use super::*;

    /// A broken peer sends one message with 200 descriptors (the write end
    /// of a pipe, 200 times): none is handed on, and none leaks: once ours
    /// is closed, the pipe's read end sees end-of-file.
    #[test]
    fn a_message_with_many_descriptors_is_closed_whole() {
        let (a, b) = death_watch_pair().expect("pair");
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
                .expect("pipe");
        let many = vec![w.as_raw_fd(); 200];
        let tag = 5u64.to_le_bytes();
        let iov = [std::io::IoSlice::new(&tag)];
        let cmsg = [ControlMessage::ScmRights(&many)];
        let sent = sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None);
        assert_eq!(sent, Ok(TAG_BYTES));
        drop(w);
        let mut handed = 0;
        let closed = receive(b.as_fd(), &mut |_, _| handed += 1).expect("receive");
        assert!(!closed);
        assert_eq!(handed, 0, "not a tag with exactly one descriptor");
        let mut buf = [0u8; 1];
        assert_eq!(
            nix::unistd::read(&r, &mut buf),
            Ok(0),
            "a copy of the pipe's write end leaked"
        );
    }
}
