//! One single-producer, single-consumer ring of frames in the shared region.
//!
//! Positions are byte counters that only grow (`head` published by the
//! producer, `tail` released by the consumer); the index in the data area is
//! the counter modulo the capacity. The producer publishes a frame by
//! storing `head` with release ordering after writing it, so a consumer never
//! sees part of a frame, even if the producer dies while writing one. Every
//! value read from shared memory is checked before use.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use crate::error::{Error, Result};
use crate::frame::{self, Decoded, Flags, HEADER_LEN, Kind, Meta, frame_size};
use crate::layout::RingGeometry;
use crate::sys::SharedRegion;

/// An empty ring whose next frame would start this far in or further
/// starts over at its front instead (a padding frame to the end, as when a
/// frame does not fit). A ring used one message at a time then touches,
/// and keeps resident, only its front: its shared memory is about its
/// largest message, not its capacity.
pub(crate) const REWIND_AFTER: usize = 1 << 20;

/// Writing end of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    region: Arc<SharedRegion>,
    geo: RingGeometry,
    head: u64,
}

/// Where a reserved frame goes.
#[derive(Debug)]
pub(crate) struct Slot {
    at: usize,
    size: usize,
}

impl Producer {
    pub(crate) fn new(region: Arc<SharedRegion>, geo: RingGeometry) -> Self {
        let head = region.atomic_u64(geo.head()).load(Ordering::Acquire);
        Producer { region, geo, head }
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.geo.max_payload()
    }

    fn cap(&self) -> u64 {
        self.geo.capacity as u64
    }

    /// Bytes free now, after checking the consumer's tail.
    fn free(&self) -> Result<u64> {
        let tail = self
            .region
            .atomic_u64(self.geo.tail())
            .load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        if used > self.cap() {
            return Err(Error::Corrupt(format!(
                "consumer tail {tail} is not within {} bytes behind head {}",
                self.cap(),
                self.head
            )));
        }
        Ok(self.cap() - used)
    }

    fn publish(&self) {
        self.region
            .atomic_u64(self.geo.head())
            .store(self.head, Ordering::Release);
    }

    /// Reserves room for a frame of `len` payload bytes, wrapping with a
    /// padding frame when the rest of the ring is too short, or when the
    /// ring is empty and [`REWIND_AFTER`] is behind. `None`: full.
    pub(crate) fn try_reserve(&mut self, len: usize) -> Result<Option<Slot>> {
        let too_large = || Error::TooLarge {
            payload: len,
            max: self.geo.max_payload(),
            ring: self.geo.capacity,
        };
        let size = frame_size(len).ok_or_else(too_large)?;
        if size > self.geo.capacity {
            return Err(too_large());
        }
        loop {
            let free = self.free()?;
            let idx = (self.head % self.cap()) as usize;
            let contiguous = self.geo.capacity - idx;
            let rewind = idx >= REWIND_AFTER && free == self.cap();
            if contiguous < size || rewind {
                if free < contiguous as u64 {
                    return Ok(None);
                }
                if contiguous >= HEADER_LEN {
                    let pad = frame::encode(
                        frame::KIND_PAD,
                        Flags::NONE,
                        0,
                        (contiguous - HEADER_LEN) as u32,
                    );
                    self.region.write(self.geo.data + idx, &pad);
                }
                self.head += contiguous as u64;
                self.publish();
                continue;
            }
            if free < size as u64 {
                return Ok(None);
            }
            return Ok(Some(Slot {
                at: self.geo.data + idx,
                size,
            }));
        }
    }

    /// Reserves room, or registers for a wake-up when there is none. A
    /// wrap may have published padding either way, so the caller checks
    /// `consumer_wants_wake` after this whatever it returns.
    pub(crate) fn reserve(&mut self, len: usize) -> Result<Option<Slot>> {
        if let Some(slot) = self.try_reserve(len)? {
            return Ok(Some(slot));
        }
        self.want_space();
        self.try_reserve(len)
    }

    /// Writes a frame if there is room now, taking `fill` only then;
    /// otherwise registers for a space wake-up. Says whether it was sent
    /// and whether the consumer asked to be woken (ring its doorbell).
    pub(crate) fn offer<F: FnOnce(&mut [u8])>(
        &mut self,
        kind: Kind,
        flags: Flags,
        request_id: u64,
        len: usize,
        fill: &mut Option<F>,
    ) -> Result<Offer> {
        let slot = self.reserve(len)?;
        let sent = match (slot, fill.take()) {
            (Some(slot), Some(fill)) => {
                self.commit(slot, kind, flags, request_id, len, fill);
                true
            }
            (None, f) => {
                *fill = f;
                false
            }
            (Some(_), None) => return Err(Error::Config("frame already sent".into())),
        };
        Ok(Offer {
            sent,
            wake: self.consumer_wants_wake(),
        })
    }

    /// Writes the frame into its slot (`fill` writes the payload in place)
    /// and publishes it.
    pub(crate) fn commit(
        &mut self,
        slot: Slot,
        kind: Kind,
        flags: Flags,
        request_id: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        debug_assert_eq!(frame_size(len), Some(slot.size));
        self.region.fill(slot.at + HEADER_LEN, len, fill);
        let header = frame::encode(kind as u16, flags, request_id, len as u32);
        self.region.write(slot.at, &header);
        self.head += slot.size as u64;
        self.publish();
    }

    /// Writes part of a frame and does not publish it: what a producer
    /// killed mid-write leaves behind. For the crate's fault tests.
    pub(crate) fn write_unpublished(&mut self, slot: &Slot, len: usize, written: usize, byte: u8) {
        let header = frame::encode(Kind::Response as u16, Flags::END, 1, len as u32);
        self.region.write(slot.at, &header);
        self.region
            .fill(slot.at + HEADER_LEN, written.min(len), |b| b.fill(byte));
    }

    /// Asks the consumer to ring when it frees space; the caller re-checks
    /// for space after this before sleeping.
    pub(crate) fn want_space(&self) {
        self.region
            .atomic_u32(self.geo.producer_waiting())
            .store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Whether the consumer asked to be woken for data; clears the request.
    pub(crate) fn consumer_wants_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        let w = self.region.atomic_u32(self.geo.consumer_waiting());
        w.load(Ordering::SeqCst) != 0 && w.swap(0, Ordering::SeqCst) != 0
    }
}

/// What `Producer::offer` did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    pub(crate) sent: bool,
    pub(crate) wake: bool,
}

/// A frame found in the ring, not yet released.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub(crate) meta: Meta,
    /// Region offset of the payload.
    pub(crate) payload_at: usize,
    /// Ring position where the frame starts.
    pub(crate) start: u64,
}

/// Reading end of a ring. Frames are read at `cursor`; the space before
/// `cursor` is handed back to the producer by `release`, except from a held
/// frame on (one read in place and still in use).
#[derive(Debug)]
pub(crate) struct Consumer {
    region: Arc<SharedRegion>,
    geo: RingGeometry,
    cursor: u64,
    released: u64,
    held: Option<u64>,
}

impl Consumer {
    pub(crate) fn new(region: Arc<SharedRegion>, geo: RingGeometry) -> Self {
        let tail = region.atomic_u64(geo.tail()).load(Ordering::Acquire);
        Consumer {
            region,
            geo,
            cursor: tail,
            released: tail,
            held: None,
        }
    }

    pub(crate) fn region_arc(&self) -> Arc<SharedRegion> {
        self.region.clone()
    }

    fn cap(&self) -> u64 {
        self.geo.capacity as u64
    }

    /// Bytes published beyond the cursor, after checking the producer's head.
    fn published(&self) -> Result<u64> {
        let head = self
            .region
            .atomic_u64(self.geo.head())
            .load(Ordering::Acquire);
        let ahead = head.wrapping_sub(self.cursor);
        let unreleased = head.wrapping_sub(self.released);
        if ahead > self.cap() || unreleased > self.cap() {
            return Err(Error::Corrupt(format!(
                "producer head {head} is not within {} bytes ahead of position {}",
                self.cap(),
                self.cursor
            )));
        }
        Ok(ahead)
    }

    /// Whether a frame (or padding) is waiting at the cursor.
    pub(crate) fn has_data(&self) -> Result<bool> {
        Ok(self.published()? > 0)
    }

    /// The next frame at the cursor, skipping padding; the cursor moves past
    /// it. `None` when the producer has published nothing more.
    pub(crate) fn next(&mut self) -> Result<Option<Found>> {
        loop {
            let published = self.published()? as usize;
            if published == 0 {
                return Ok(None);
            }
            let idx = (self.cursor % self.cap()) as usize;
            let contiguous = self.geo.capacity - idx;
            if contiguous < HEADER_LEN {
                if published < contiguous {
                    return Err(Error::Corrupt(format!(
                        "{published} bytes published inside the {contiguous} byte ring tail"
                    )));
                }
                self.cursor += contiguous as u64;
                continue;
            }
            let mut header = [0u8; HEADER_LEN];
            self.region.read(self.geo.data + idx, &mut header);
            match frame::decode(&header, published, contiguous)? {
                Decoded::Pad { size } => self.cursor += size as u64,
                Decoded::Frame { meta, size } => {
                    let start = self.cursor;
                    self.cursor += size as u64;
                    return Ok(Some(Found {
                        meta,
                        payload_at: self.geo.data + idx + HEADER_LEN,
                        start,
                    }));
                }
            }
        }
    }

    /// Keeps the space from `frame` on from being released until `unhold`.
    pub(crate) fn hold(&mut self, frame: &Found) {
        debug_assert!(self.held.is_none());
        self.held = Some(frame.start);
    }

    pub(crate) fn unhold(&mut self) {
        self.held = None;
    }

    pub(crate) fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Hands consumed space back to the producer; true when the producer
    /// asked to be woken for space (the caller rings its doorbell).
    pub(crate) fn release(&mut self) -> bool {
        let to = self.held.unwrap_or(self.cursor);
        if to == self.released {
            return false;
        }
        self.released = to;
        self.region
            .atomic_u64(self.geo.tail())
            .store(to, Ordering::Release);
        fence(Ordering::SeqCst);
        let w = self.region.atomic_u32(self.geo.producer_waiting());
        w.load(Ordering::SeqCst) != 0 && w.swap(0, Ordering::SeqCst) != 0
    }

    /// Withdraws `want_data` while this side watches the ring itself.
    pub(crate) fn clear_want_data(&self) {
        self.region
            .atomic_u32(self.geo.consumer_waiting())
            .store(0, Ordering::SeqCst);
    }

    /// Asks the producer to ring when it publishes; the caller re-checks
    /// `has_data` after this before sleeping.
    pub(crate) fn want_data(&self) {
        self.region
            .atomic_u32(self.geo.consumer_waiting())
            .store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
