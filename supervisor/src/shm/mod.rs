//! Shared-memory regions: POSIX objects (`/dev/shm`) a client registers
//! under a name of its own, so that its tensors and images name bytes in
//! them instead of carrying them (issue 19).
//!
//! One [`Regions`] per supervisor (in `Shared`), keyed by (client
//! identity, name): another identity neither sees nor uses a region (its
//! name is NOT_FOUND, as an unknown one). Registering opens the object
//! ([`open`]: relative to `[shm] dir`, no links, no FIFO waits, the
//! ownership rule), checks its size and keeps the descriptor in an `Arc`:
//! a call in flight keeps it open after an unregister. Each region has an
//! id from a counter, never reused: the key of the workers' tables.
//! [`resolve`] turns a request's refs into `RegionUse`s and in-use guards;
//! [`attach`] passes each descriptor once per worker process and detaches
//! it when the region is forgotten; [`oip`] serves the Open Inference
//! Protocol's SystemSharedMemory* calls on the same registry.

pub mod attach;
pub mod names;
pub mod oip;
pub mod open;
pub mod resolve;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Identity;
use crate::config::ShmConfig;
use crate::error::Error;
use crate::metrics::Metrics;
pub use attach::Attached;
pub use resolve::Held;

/// One registered region.
#[derive(Debug)]
pub struct Region {
    /// The supervisor's id: unique for its life, never reused.
    pub id: u64,
    /// The caller's name for it.
    pub name: String,
    /// The object's key (`/name`).
    pub key: String,
    /// Start within the object, bytes.
    pub offset: u64,
    /// Bytes.
    pub byte_size: u64,
    /// Open read-write.
    pub writable: bool,
    fd: OwnedFd,
    in_use: AtomicU32,
}

impl Region {
    /// The object's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Calls using it now.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// A call's hold on a region: counted in `in_use` while it lives, and
/// keeps the descriptor open.
#[derive(Debug)]
pub struct InUse(pub Arc<Region>);

impl InUse {
    fn new(r: Arc<Region>) -> InUse {
        r.in_use.fetch_add(1, Ordering::Relaxed);
        InUse(r)
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The caller of a registry call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its identity (`auth::Identity`): whose regions these are.
    pub identity: Identity,
    /// Its uid, when it came over a Unix socket (peer credentials).
    pub uid: Option<u32>,
}

impl Caller {
    /// The caller of a tonic call.
    pub fn of_call<T>(req: &tonic::Request<T>) -> Caller {
        use tonic::transport::server::UdsConnectInfo;
        let ext = req.extensions();
        let uid = ext
            .get::<crate::net::ConnInfo<UdsConnectInfo>>()
            .and_then(|i| i.transport.peer_cred)
            .or_else(|| ext.get::<UdsConnectInfo>().and_then(|i| i.peer_cred))
            .map(|c| c.uid());
        Caller {
            identity: Identity::of_call(req),
            uid,
        }
    }
}

/// What a register asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// Region name.
    pub name: String,
    /// Object key.
    pub key: String,
    /// Start within the object.
    pub offset: u64,
    /// Bytes.
    pub byte_size: u64,
    /// Write access required.
    pub writable: bool,
}

#[derive(Debug, Default)]
struct Table {
    by_owner: HashMap<Identity, BTreeMap<String, Arc<Region>>>,
    total: usize,
    bytes: u64,
}

/// The supervisor's regions.
#[derive(Debug)]
pub struct Regions {
    config: ShmConfig,
    own_uid: u32,
    table: Mutex<Table>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// The worker processes holding descriptors.
    pub holders: attach::Holders,
}

impl Regions {
    /// An empty registry under `config`.
    pub fn new(config: ShmConfig, metrics: Arc<Metrics>) -> Regions {
        Regions {
            config,
            own_uid: nix::unistd::geteuid().as_raw(),
            table: Mutex::default(),
            next_id: AtomicU64::new(1),
            metrics,
            holders: attach::Holders::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enabled(&self) -> Result<(), Error> {
        if self.config.enabled {
            return Ok(());
        }
        Err(Error::FailedPrecondition(
            "shared-memory regions are disabled on this sidecar ([shm] enabled = false)".into(),
        ))
    }

    fn publish(&self, t: &Table) {
        self.metrics.shm_regions.set(t.total as i64);
        self.metrics
            .shm_region_bytes
            .set(i64::try_from(t.bytes).unwrap_or(i64::MAX));
    }

    /// Registers a region for `caller`.
    pub fn register(&self, caller: &Caller, r: Registration) -> Result<Arc<Region>, Error> {
        self.enabled()?;
        names::check_name("name", &r.name)?;
        let file = names::check_key(&r.key)?;
        let what = format!("region {}", names::shown(&r.name));
        let end = names::window_end(&what, r.offset, r.byte_size)?;
        self.room(caller, &r.name)?;
        let asker = open::Asker {
            uid: caller.uid,
            own_uid: self.own_uid,
        };
        let opened = open::open(&self.config.dir, &r.key, file, asker, r.writable)?;
        if opened.size < end {
            return Err(Error::InvalidArgument(format!(
                "shared-memory object {} holds {} bytes, under offset {} + byte_size {} = {end}",
                names::shown(&r.key),
                opened.size,
                r.offset,
                r.byte_size
            )));
        }
        let mut t = self.table();
        // Checked again under the lock: another register may have won.
        self.room_in(&t, caller, &r.name)?;
        let region = Arc::new(Region {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: r.name.clone(),
            key: r.key,
            offset: r.offset,
            byte_size: r.byte_size,
            writable: opened.writable,
            fd: opened.fd,
            in_use: AtomicU32::new(0),
        });
        t.by_owner
            .entry(caller.identity.clone())
            .or_default()
            .insert(r.name, region.clone());
        t.total += 1;
        t.bytes = t.bytes.saturating_add(region.byte_size);
        self.publish(&t);
        tracing::info!(client = %caller.identity, id = region.id, bytes = region.byte_size, writable = region.writable, "shared-memory region registered");
        Ok(region)
    }

    fn room(&self, caller: &Caller, name: &str) -> Result<(), Error> {
        let t = self.table();
        self.room_in(&t, caller, name)
    }

    fn room_in(&self, t: &Table, caller: &Caller, name: &str) -> Result<(), Error> {
        let mine = t.by_owner.get(&caller.identity);
        if mine.is_some_and(|m| m.contains_key(name)) {
            return Err(Error::AlreadyExists(format!(
                "shared-memory region {} is already registered by this client; unregister it first",
                names::shown(name)
            )));
        }
        let held = mine.map_or(0, BTreeMap::len);
        if held >= self.config.max_regions_per_client {
            return Err(Error::ResourceExhausted(format!(
                "this client holds {held} shared-memory regions; shm.max_regions_per_client is {}",
                self.config.max_regions_per_client
            )));
        }
        if t.total >= self.config.max_regions {
            return Err(Error::ResourceExhausted(format!(
                "the sidecar holds {} shared-memory regions of all clients; shm.max_regions is {}",
                t.total, self.config.max_regions
            )));
        }
        Ok(())
    }

    /// Forgets `caller`'s region `name`, or all of its regions when
    /// `name` is empty; returns those forgotten. The workers holding
    /// them are told to close them (in the background: never waits on a
    /// worker).
    pub fn unregister(&self, caller: &Caller, name: &str) -> Vec<Arc<Region>> {
        let mut t = self.table();
        let gone: Vec<Arc<Region>> = match t.by_owner.get_mut(&caller.identity) {
            None => Vec::new(),
            Some(mine) if name.is_empty() => std::mem::take(mine).into_values().collect(),
            Some(mine) => mine.remove(name).into_iter().collect(),
        };
        if t.by_owner
            .get(&caller.identity)
            .is_some_and(BTreeMap::is_empty)
        {
            t.by_owner.remove(&caller.identity);
        }
        t.total -= gone.len();
        for r in &gone {
            t.bytes = t.bytes.saturating_sub(r.byte_size);
        }
        self.publish(&t);
        drop(t);
        if !gone.is_empty() {
            let ids: Vec<u64> = gone.iter().map(|r| r.id).collect();
            tracing::info!(client = %caller.identity, ?ids, "shared-memory regions unregistered");
            self.holders.detach(&ids);
        }
        gone
    }

    /// `caller`'s regions by name (`name` empty: all of them).
    pub fn list(&self, caller: &Caller, name: &str) -> Vec<Arc<Region>> {
        let t = self.table();
        let Some(mine) = t.by_owner.get(&caller.identity) else {
            return Vec::new();
        };
        if name.is_empty() {
            mine.values().cloned().collect()
        } else {
            mine.get(name).cloned().into_iter().collect()
        }
    }

    /// `identity`'s region `name`, held in use.
    fn hold(&self, identity: &Identity, name: &str) -> Result<InUse, Error> {
        self.enabled()?;
        let t = self.table();
        t.by_owner
            .get(identity)
            .and_then(|m| m.get(name))
            .cloned()
            .map(InUse::new)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "shared-memory region {} is not registered",
                    names::shown(name)
                ))
            })
    }
}

#[cfg(test)]
mod tests;
