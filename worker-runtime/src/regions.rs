//! The caller's shared-memory regions as a worker holds them: a table of
//! open descriptors keyed by the supervisor's region id ([`Regions`]), and
//! one request's view of them by the caller's names ([`Resolved`]).
//!
//! A request names regions only through its own `WorkerRequest.regions`
//! list: a name not in it is refused, never looked up in the table. A
//! `RegionUse` with `attach` set brings its descriptor (passed over the
//! channel's socketpair just before the frame, tagged with the id): it is
//! claimed here with a bounded wait and kept until `RegionDetach`. A use
//! without `attach` whose id the table lacks first claims, without
//! waiting, a descriptor already passed under that id (sent for a request
//! that never arrived) before it is refused; `RegionDetach` also closes
//! unclaimed descriptors of the ids it names.
//!
//! Bytes are moved with `pread`/`pwrite` on the descriptor, never through
//! a mapping: a client may `ftruncate` its object at any moment, and a
//! read past a shrunk object's end is then a short read (a clear error for
//! that request), never a SIGBUS. The `pread` goes straight into the
//! destination the caller gives (LiteRT's input buffer, a BGR matrix), so
//! a region's bytes are copied once, as a frame's are. Every use re-checks
//! the window against the object's current size (`fstat`) first, and a
//! write never lands past that size, unless the client shrinks the object
//! between that check and the write ([`Resolved::write`]): the write then
//! grows it back, but never past the registered window.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ipc::BlockingChannel;
use sidecar_proto::v1::SharedMemoryRef;
use sidecar_proto::worker::RegionUse;

use crate::error::{Code, WorkerError};

/// How long a request's `attach` waits for its descriptor.
pub const ATTACH_WAIT: Duration = Duration::from_secs(2);

/// Most regions one worker keeps attached (the channel holds at most as
/// many passed descriptors; the supervisor's book keeps to it).
pub const MAX_REGIONS: usize = ipc::MAX_PASSED;

/// Most regions detached while a call or a waiting stream frame still
/// holds them (their descriptors stay open until those end). Apart from
/// [`MAX_REGIONS`], which the supervisor counts on; with the defaults
/// (4 streams of at most 128 waiting frames) it is never reached, and the
/// worker's descriptor limit (4096) stays far.
pub const MAX_HELD_DETACHED: usize = 1024;

/// One open region: the descriptor the supervisor passed.
#[derive(Debug)]
struct Open {
    file: File,
}

/// The worker's open regions by id. A request's handles are `Arc`s, so a
/// detach while a call uses one closes it when that call ends.
#[derive(Debug, Default)]
pub struct Regions {
    open: HashMap<u64, Arc<Open>>,
    /// Regions detached while a call or a waiting frame still held them:
    /// their descriptors stay open until the last of those ends, and
    /// count toward [`MAX_HELD_DETACHED`] until then.
    detached: Vec<Weak<Open>>,
}

impl Regions {
    /// Regions open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Closes the regions of `ids` (a call using one keeps it until it
    /// ends), and any descriptor of theirs passed but never claimed (its
    /// request never came); how many were open.
    pub fn detach(&mut self, chan: &BlockingChannel, ids: &[u64]) -> u32 {
        chan.forget_fd(ids);
        let mut n = 0;
        for id in ids {
            if let Some(open) = self.open.remove(id) {
                n += 1;
                if Arc::strong_count(&open) > 1 {
                    self.detached.push(Arc::downgrade(&open));
                }
            }
        }
        n
    }

    /// One request's `regions`: claims the descriptors of those with
    /// `attach`, then finds each in the table. Every descriptor passed is
    /// claimed (or dropped) even when the request is refused, so none is
    /// left waiting in the channel.
    pub fn resolve(
        &mut self,
        chan: &BlockingChannel,
        uses: Vec<RegionUse>,
    ) -> Result<Resolved, WorkerError> {
        let mut first_error = None;
        for u in uses.iter().filter(|u| u.attach) {
            if let Err(e) = self.attach(chan, u) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let mut resolved = Vec::with_capacity(uses.len());
        for (i, u) in uses.into_iter().enumerate() {
            if resolved
                .iter()
                .any(|(r, _): &(RegionUse, _)| r.name == u.name)
            {
                return Err(WorkerError::invalid(format!(
                    "regions[{i}].name: region {:?} is listed twice",
                    u.name
                )));
            }
            u.offset.checked_add(u.byte_size).ok_or_else(|| {
                WorkerError::invalid(format!(
                    "regions[{i}]: region {:?} has offset {} + byte_size {} past 2^64",
                    u.name, u.offset, u.byte_size
                ))
            })?;
            if !u.attach && !self.open.contains_key(&u.id) {
                // A descriptor passed for a request that never arrived (the
                // supervisor's call was cancelled after `send_fd`) is
                // still waiting in the channel: claim it without waiting.
                if let Ok(fd) = chan.take_fd(u.id, Duration::ZERO) {
                    self.insert(&u, fd)?;
                }
            }
            let open = self.open.get(&u.id).cloned().ok_or_else(|| {
                WorkerError::precondition(format!(
                    "region {:?} (id {}) is not attached to this worker",
                    u.name, u.id
                ))
            })?;
            resolved.push((u, open));
        }
        Ok(Resolved { uses: resolved })
    }

    fn attach(&mut self, chan: &BlockingChannel, u: &RegionUse) -> Result<(), WorkerError> {
        let fd: OwnedFd = chan.take_fd(u.id, ATTACH_WAIT).map_err(|e| match e {
            ipc::Error::Timeout => WorkerError::new(
                Code::Unavailable,
                format!(
                    "region {:?} (id {}): its descriptor did not arrive within {} ms",
                    u.name,
                    u.id,
                    ATTACH_WAIT.as_millis()
                ),
            ),
            e => WorkerError::internal(format!(
                "region {:?} (id {}): receiving its descriptor failed: {e}",
                u.name, u.id
            )),
        })?;
        self.insert(u, fd)
    }

    fn insert(&mut self, u: &RegionUse, fd: OwnedFd) -> Result<(), WorkerError> {
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| {
            WorkerError::internal(format!("region {:?}: fstat failed: {e}", u.name))
        })?;
        if !meta.is_file() {
            return Err(WorkerError::invalid(format!(
                "region {:?}: its descriptor is not a regular file (shared-memory object)",
                u.name
            )));
        }
        if self.open.len() >= MAX_REGIONS && !self.open.contains_key(&u.id) {
            return Err(WorkerError::new(
                Code::ResourceExhausted,
                format!(
                    "region {:?}: this worker holds {} regions, the most it keeps ({MAX_REGIONS}); unregister some",
                    u.name,
                    self.open.len()
                ),
            ));
        }
        self.detached.retain(|w| w.strong_count() > 0);
        if self.detached.len() >= MAX_HELD_DETACHED {
            return Err(WorkerError::new(
                Code::ResourceExhausted,
                format!(
                    "region {:?}: {} unregistered regions are still held by calls or waiting stream frames of this worker, the most it keeps open ({MAX_HELD_DETACHED}); let those frames be answered",
                    u.name,
                    self.detached.len()
                ),
            ));
        }
        // The same id attached again: a holder of the old descriptor
        // keeps it, counted as detached.
        if let Some(old) = self.open.insert(u.id, Arc::new(Open { file }))
            && Arc::strong_count(&old) > 1
        {
            self.detached.push(Arc::downgrade(&old));
        }
        Ok(())
    }
}

/// One request's regions by the caller's names: what its refs may name.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    uses: Vec<(RegionUse, Arc<Open>)>,
}

/// Where a ref's bytes are in the object.
struct Window<'a> {
    name: &'a str,
    file: &'a File,
    /// Object offset of the ref's first byte.
    at: u64,
    /// The ref's bytes.
    len: u64,
    writable: bool,
}

impl Resolved {
    /// Whether the request named no region.
    pub fn is_empty(&self) -> bool {
        self.uses.is_empty()
    }

    /// The object window of `r` (`field` names it in messages): the name
    /// must be in the request's list and the ref inside the region.
    fn window(&self, r: &SharedMemoryRef, field: &str) -> Result<Window<'_>, WorkerError> {
        let (u, open) = self
            .uses
            .iter()
            .find(|(u, _)| u.name == r.region)
            .ok_or_else(|| {
                WorkerError::invalid(format!(
                    "{field}.region: {:?} is not a region this request may use",
                    r.region
                ))
            })?;
        let end = r.offset.checked_add(r.byte_size);
        if end.is_none_or(|end| end > u.byte_size) {
            return Err(WorkerError::invalid(format!(
                "{field}: offset {} + byte_size {} passes the end of region {:?} ({} bytes)",
                r.offset, r.byte_size, r.region, u.byte_size
            )));
        }
        // Cannot overflow: the RegionUse's offset + byte_size was checked
        // when resolved, and r.offset <= u.byte_size.
        let at = u.offset + r.offset;
        Ok(Window {
            name: &u.name,
            file: &open.file,
            at,
            len: r.byte_size,
            writable: u.writable,
        })
    }

    /// Checks before any work that `r` may take `len` bytes (written when
    /// `write`): a name the request lists, inside its region, at least
    /// `len` bytes, writable when written. The object's size is checked
    /// again at the read or write itself.
    pub fn check(
        &self,
        r: &SharedMemoryRef,
        field: &str,
        len: u64,
        write: bool,
    ) -> Result<(), WorkerError> {
        let w = self.window(r, field)?;
        if write && !w.writable {
            return Err(not_writable(field, w.name));
        }
        if len > w.len {
            return Err(WorkerError::invalid(format!(
                "{field}.byte_size: {} bytes, but {len} are needed",
                w.len
            )));
        }
        Ok(())
    }

    /// Reads the first `dst.len()` bytes of `r` into `dst` (one copy,
    /// `pread`); `dst` must not be longer than the ref.
    pub fn read_into(
        &self,
        r: &SharedMemoryRef,
        field: &str,
        dst: &mut [u8],
    ) -> Result<(), WorkerError> {
        let w = self.window(r, field)?;
        let want = dst.len() as u64;
        if want > w.len {
            return Err(WorkerError::invalid(format!(
                "{field}.byte_size: {} bytes, but {want} are needed",
                w.len
            )));
        }
        w.check_size(want)?;
        w.file
            .read_exact_at(dst, w.at)
            .map_err(|e| w.io_error("reading", want, &e))
    }

    /// The ref's `byte_size` bytes (one copy, `pread`).
    pub fn read(&self, r: &SharedMemoryRef, field: &str) -> Result<Vec<u8>, WorkerError> {
        let w = self.window(r, field)?;
        // Checked against the object's size before anything is allocated.
        w.check_size(w.len)?;
        let len = usize::try_from(w.len)
            .map_err(|_| WorkerError::invalid(format!("{field}.byte_size: {} bytes", w.len)))?;
        let mut out = vec![0u8; len];
        w.file
            .read_exact_at(&mut out, w.at)
            .map_err(|e| w.io_error("reading", w.len, &e))?;
        Ok(out)
    }

    /// Writes `src` at the start of `r` (one copy, `pwrite`): the region
    /// must be writable and the ref at least `src.len()` bytes long.
    ///
    /// The size check and the `pwrite` are not atomic: a client that
    /// shrinks its object between them (`ftruncate`) has it grown back by
    /// the write, up to the end of these `src.len()` bytes at most, which
    /// lie within the ref and so within the window it registered (never
    /// past `offset + byte_size`; the shrunk range reads back as zeros
    /// except what was written). Only the client's own racing truncate
    /// can cause it; no other object, and no byte outside its window, is
    /// ever written.
    pub fn write(&self, r: &SharedMemoryRef, field: &str, src: &[u8]) -> Result<(), WorkerError> {
        let w = self.window(r, field)?;
        if !w.writable {
            return Err(not_writable(field, w.name));
        }
        let len = src.len() as u64;
        if len > w.len {
            return Err(WorkerError::invalid(format!(
                "{field}.byte_size: {} bytes, but the output holds {len}",
                w.len
            )));
        }
        w.check_size(len)?;
        w.file
            .write_all_at(src, w.at)
            .map_err(|e| w.io_error("writing", len, &e))
    }
}

impl Window<'_> {
    /// FAILED_PRECONDITION when the object no longer holds the first
    /// `len` bytes of the window (the client shrank it).
    fn check_size(&self, len: u64) -> Result<(), WorkerError> {
        let size = self
            .file
            .metadata()
            .map_err(|e| {
                WorkerError::internal(format!("region {:?}: fstat failed: {e}", self.name))
            })?
            .len();
        let end = self.at.saturating_add(len);
        if end > size {
            return Err(shrank(self.name, size, end));
        }
        Ok(())
    }

    fn io_error(&self, what: &str, len: u64, e: &std::io::Error) -> WorkerError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            let size = self.file.metadata().map_or(0, |m| m.len());
            return shrank(self.name, size, self.at + len);
        }
        WorkerError::internal(format!(
            "region {:?}: {what} {len} bytes at {} failed: {e}",
            self.name, self.at
        ))
    }
}

fn not_writable(field: &str, name: &str) -> WorkerError {
    WorkerError::invalid(format!(
        "{field}.region: region {name:?} was not registered writable"
    ))
}

fn shrank(name: &str, size: u64, end: u64) -> WorkerError {
    WorkerError::precondition(format!(
        "region {name:?} shrank to {size} bytes; the request needs its bytes up to {end}"
    ))
}

#[cfg(test)]
mod tests;
