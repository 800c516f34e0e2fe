//! The shared region's layout: a versioned `#[repr(C)]` header, two ring
//! control blocks and two data areas. Only offsets are stored, never
//! pointers. Each side validates the header once when it attaches and then
//! keeps its own copy of the geometry, so nothing the peer writes later can
//! move an access outside the region.
//!
//! ```text
//! 0     header (RegionHeader, 128 bytes)
//! 128   ring 0 control (RingCtl, 192 bytes)   side A → side B (requests)
//! 320   ring 1 control (RingCtl, 192 bytes)   side B → side A (responses)
//! 4096  ring 0 data (capacity 0)
//! ...   ring 1 data (capacity 1)
//! ```

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::error::{Error, Result};
use crate::frame::{ALIGN, HEADER_LEN};
use crate::sys::SharedRegion;

/// "SIDECIPC" in little-endian.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SIDECIPC");
/// Layout version; bump on any change to this file or to frame encoding.
pub(crate) const VERSION: u32 = 1;
const STATE_READY: u32 = 0x5EAD_7001;
const PAGE: usize = 4096;
/// Smallest ring capacity.
pub const MIN_RING_BYTES: usize = PAGE;
/// Largest ring capacity (frame lengths are 32-bit).
pub const MAX_RING_BYTES: usize = 1 << 31;

/// Region header at offset 0. Defines the layout; accessed by offset only.
#[allow(dead_code)]
#[repr(C)]
pub(crate) struct RegionHeader {
    magic: u64,
    version: u32,
    /// `STATE_READY` once the creator has written everything else.
    state: AtomicU32,
    region_len: u64,
    credit_window: u32,
    _reserved: u32,
    rings: [RingDesc; 2],
    _pad: [u8; 48],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RingDesc {
    ctl_offset: u64,
    data_offset: u64,
    capacity: u64,
}

/// Per-ring control block; each word on its own cache line. Accessed by
/// offset only.
#[allow(dead_code)]
#[repr(C, align(64))]
pub(crate) struct RingCtl {
    /// Bytes ever published by the producer (written by the producer only).
    head: AtomicU64,
    _p0: [u8; 56],
    /// Bytes ever released by the consumer (written by the consumer only).
    tail: AtomicU64,
    _p1: [u8; 56],
    /// The consumer sleeps until the doorbell rings for new data.
    consumer_waiting: AtomicU32,
    /// The producer sleeps until the doorbell rings for free space.
    producer_waiting: AtomicU32,
    _p2: [u8; 56],
}

const HEADER_AT: usize = 0;
const CTL_AT: [usize; 2] = [128, 128 + size_of::<RingCtl>()];
const DATA_AT: usize = PAGE;

const _: () = assert!(size_of::<RegionHeader>() == 128);
const _: () = assert!(size_of::<RingCtl>() == 192);
const _: () = assert!(CTL_AT[1] + size_of::<RingCtl>() <= DATA_AT);

/// Where one ring lives in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingGeometry {
    pub(crate) ctl: usize,
    pub(crate) data: usize,
    pub(crate) capacity: usize,
}

impl RingGeometry {
    pub(crate) fn head(self) -> usize {
        self.ctl + offset_of!(RingCtl, head)
    }
    pub(crate) fn tail(self) -> usize {
        self.ctl + offset_of!(RingCtl, tail)
    }
    pub(crate) fn consumer_waiting(self) -> usize {
        self.ctl + offset_of!(RingCtl, consumer_waiting)
    }
    pub(crate) fn producer_waiting(self) -> usize {
        self.ctl + offset_of!(RingCtl, producer_waiting)
    }
    /// Largest payload a frame on this ring can carry.
    pub(crate) fn max_payload(self) -> usize {
        self.capacity - HEADER_LEN
    }
}

/// The validated geometry of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) len: usize,
    pub(crate) rings: [RingGeometry; 2],
    pub(crate) credit_window: u32,
}

fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|v| v / to * to)
}

impl Layout {
    /// Layout for rings of (at least) the given capacities.
    pub(crate) fn plan(ring_bytes: [usize; 2], credit_window: u32) -> Result<Layout> {
        let mut rings = [RingGeometry {
            ctl: 0,
            data: 0,
            capacity: 0,
        }; 2];
        let mut at = DATA_AT;
        for (i, want) in ring_bytes.into_iter().enumerate() {
            let capacity = round_up(want.max(MIN_RING_BYTES), PAGE)
                .filter(|c| *c <= MAX_RING_BYTES)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "ring of {want} bytes: the largest is {MAX_RING_BYTES}"
                    ))
                })?;
            rings[i] = RingGeometry {
                ctl: CTL_AT[i],
                data: at,
                capacity,
            };
            at += capacity;
        }
        if credit_window == 0 {
            return Err(Error::Config("credit window of 0 frames".into()));
        }
        Ok(Layout {
            len: at,
            rings,
            credit_window,
        })
    }

    /// Writes the header into a fresh (zeroed) region and marks it ready.
    pub(crate) fn initialise(&self, region: &SharedRegion) {
        let mut bytes = [0u8; size_of::<RegionHeader>()];
        put(
            &mut bytes,
            offset_of!(RegionHeader, magic),
            &MAGIC.to_le_bytes(),
        );
        put(
            &mut bytes,
            offset_of!(RegionHeader, version),
            &VERSION.to_le_bytes(),
        );
        put(
            &mut bytes,
            offset_of!(RegionHeader, region_len),
            &(self.len as u64).to_le_bytes(),
        );
        put(
            &mut bytes,
            offset_of!(RegionHeader, credit_window),
            &self.credit_window.to_le_bytes(),
        );
        for (i, r) in self.rings.iter().enumerate() {
            let at = offset_of!(RegionHeader, rings) + i * size_of::<RingDesc>();
            put(
                &mut bytes,
                at + offset_of!(RingDesc, ctl_offset),
                &(r.ctl as u64).to_le_bytes(),
            );
            put(
                &mut bytes,
                at + offset_of!(RingDesc, data_offset),
                &(r.data as u64).to_le_bytes(),
            );
            put(
                &mut bytes,
                at + offset_of!(RingDesc, capacity),
                &(r.capacity as u64).to_le_bytes(),
            );
        }
        region.write(HEADER_AT, &bytes);
        region
            .atomic_u32(HEADER_AT + offset_of!(RegionHeader, state))
            .store(STATE_READY, std::sync::atomic::Ordering::Release);
    }

    /// Reads and checks the header of a region made by the other side.
    pub(crate) fn validate(region: &SharedRegion) -> Result<Layout> {
        let len = region.len();
        if len < DATA_AT + 2 * MIN_RING_BYTES {
            return Err(Error::Corrupt(format!(
                "region of {len} bytes is too small"
            )));
        }
        let state = region
            .atomic_u32(HEADER_AT + offset_of!(RegionHeader, state))
            .load(std::sync::atomic::Ordering::Acquire);
        let mut h = [0u8; size_of::<RegionHeader>()];
        region.read(HEADER_AT, &mut h);
        let magic = get_u64(&h, offset_of!(RegionHeader, magic));
        if magic != MAGIC {
            return Err(Error::Corrupt(format!("bad region magic {magic:#018x}")));
        }
        let version = get_u32(&h, offset_of!(RegionHeader, version));
        if version != VERSION {
            return Err(Error::Corrupt(format!(
                "region layout version {version}, this build speaks {VERSION}"
            )));
        }
        if state != STATE_READY {
            return Err(Error::Corrupt(format!(
                "region not initialised (state {state:#x})"
            )));
        }
        let region_len = get_u64(&h, offset_of!(RegionHeader, region_len));
        if region_len != len as u64 {
            return Err(Error::Corrupt(format!(
                "header says {region_len} bytes, the region has {len}"
            )));
        }
        let credit_window = get_u32(&h, offset_of!(RegionHeader, credit_window));
        let mut rings = [RingGeometry {
            ctl: 0,
            data: 0,
            capacity: 0,
        }; 2];
        for (i, ring) in rings.iter_mut().enumerate() {
            let at = offset_of!(RegionHeader, rings) + i * size_of::<RingDesc>();
            let ctl = get_u64(&h, at + offset_of!(RingDesc, ctl_offset));
            let data = get_u64(&h, at + offset_of!(RingDesc, data_offset));
            let capacity = get_u64(&h, at + offset_of!(RingDesc, capacity));
            *ring = RingGeometry {
                ctl: ctl as usize,
                data: data as usize,
                capacity: capacity as usize,
            };
            if ctl != CTL_AT[i] as u64 {
                return Err(Error::Corrupt(format!("ring {i} control at {ctl}")));
            }
            let ok = capacity >= MIN_RING_BYTES as u64
                && capacity <= MAX_RING_BYTES as u64
                && capacity.is_multiple_of(PAGE as u64)
                && data.is_multiple_of(PAGE as u64)
                && data >= DATA_AT as u64
                && data
                    .checked_add(capacity)
                    .is_some_and(|end| end <= len as u64);
            if !ok {
                return Err(Error::Corrupt(format!(
                    "ring {i}: {capacity} bytes at {data} in a {len} byte region"
                )));
            }
        }
        let [a, b] = rings;
        if a.data < b.data + b.capacity && b.data < a.data + a.capacity {
            return Err(Error::Corrupt("the two rings overlap".into()));
        }
        if credit_window == 0 {
            return Err(Error::Corrupt("credit window of 0 frames".into()));
        }
        debug_assert_eq!(ALIGN, 8);
        Ok(Layout {
            len,
            rings,
            credit_window,
        })
    }
}

fn put(buf: &mut [u8], at: usize, v: &[u8]) {
    buf[at..at + v.len()].copy_from_slice(v);
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}
