//! A frame received on a blocking channel: in place or copied.

use std::sync::Arc;

use bytes::Bytes;

use super::BlockingChannel;
use crate::frame::{Flags, Kind, Meta};

/// A frame received on a [`BlockingChannel`].
///
/// The first frame taken while no other is held is read in place in the
/// shared region (no copy); its space returns to the sender when this is
/// dropped. Others are copies. Either way [`Received::payload`] gives the
/// bytes.
#[derive(Debug)]
pub struct Received<'a> {
    pub(super) chan: &'a BlockingChannel,
    pub(super) meta: Meta,
    pub(super) payload: Payload<'a>,
}

#[derive(Debug)]
pub(super) enum Payload<'a> {
    /// In the shared region at offset `at`.
    InPlace {
        at: usize,
        bytes: &'a [u8],
    },
    Owned(Vec<u8>),
}

impl Received<'_> {
    /// The request this frame belongs to (0: the channel itself).
    pub fn request_id(&self) -> u64 {
        self.meta.request_id
    }
    /// Frame kind.
    pub fn kind(&self) -> Kind {
        self.meta.kind
    }
    /// Frame flags.
    pub fn flags(&self) -> Flags {
        self.meta.flags
    }
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        match &self.payload {
            Payload::InPlace { bytes, .. } => bytes,
            Payload::Owned(v) => v,
        }
    }
    /// Whether the payload is read in place in shared memory.
    pub fn is_in_place(&self) -> bool {
        matches!(self.payload, Payload::InPlace { .. })
    }
}

impl BlockingChannel {
    /// `frame`'s payload as [`Bytes`] that may outlive it, without a copy:
    /// a copied payload is moved; one read in place stays held in the
    /// shared region (later frames are copies, and the sender cannot reuse
    /// its space) until the last clone of the `Bytes` is dropped, so keep
    /// them briefly: decode, use, drop. A frame of another channel is
    /// copied.
    pub fn payload_bytes(self: &Arc<Self>, mut frame: Received<'_>) -> Bytes {
        if !std::ptr::eq(frame.chan, Arc::as_ptr(self)) {
            return Bytes::copy_from_slice(frame.payload());
        }
        // The frame is left owning nothing, so its drop releases nothing.
        match std::mem::replace(&mut frame.payload, Payload::Owned(Vec::new())) {
            Payload::Owned(v) => Bytes::from(v),
            Payload::InPlace { at, bytes } => Bytes::from_owner(Held {
                chan: self.clone(),
                at,
                len: bytes.len(),
            }),
        }
    }
}

/// A payload read in place, held until dropped.
struct Held {
    chan: Arc<BlockingChannel>,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        self.chan.region.bytes(self.at, self.len)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.chan.release_held();
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        if self.is_in_place() {
            self.chan.release_held();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::error::{Blocked, Error};
    use crate::{BlockingChannel, ChannelConfig, Flags, Kind};

    const SOON: Duration = Duration::from_secs(5);

    fn full(r: crate::Result<()>) -> bool {
        matches!(r, Err(Error::WouldBlock(Blocked::RingFull)))
    }

    #[test]
    fn held_bytes_keep_their_space_until_the_last_clone_is_dropped() {
        let (a, b) = crate::create(ChannelConfig::with_ring_bytes(64 << 10)).unwrap();
        let (a, b) = (
            BlockingChannel::new(a).unwrap(),
            Arc::new(BlockingChannel::new(b).unwrap()),
        );
        let big = |k: u8| vec![k; 40_000];
        a.send(1, Kind::Request, Flags::NONE, &big(1)).unwrap();
        let first = b.recv_timeout(SOON).unwrap();
        assert!(first.is_in_place());
        let held = b.payload_bytes(first);
        assert_eq!(&held[..], &big(1)[..]);

        // The sender cannot reuse the held space, even after the first
        // handle is gone while a clone lives.
        assert!(full(a.try_send(2, Kind::Request, Flags::NONE, &big(2))));
        let clone = held.slice(10..20);
        drop(held);
        assert!(full(a.try_send(2, Kind::Request, Flags::NONE, &big(2))));
        assert_eq!(&clone[..], &[1u8; 10][..]);
        drop(clone);
        a.try_send(2, Kind::Request, Flags::NONE, &big(2)).unwrap();

        // A frame that arrives while another is held is a copy, and its
        // bytes are moved out.
        let second = b.recv_timeout(SOON).unwrap();
        let held = b.payload_bytes(second);
        a.send(3, Kind::Request, Flags::NONE, b"small").unwrap();
        let third = b.recv_timeout(SOON).unwrap();
        assert!(!third.is_in_place());
        assert_eq!(&b.payload_bytes(third)[..], b"small");
        assert_eq!(&held[..], &big(2)[..]);
        drop(held);

        // Nothing held: the next frame is in place again.
        a.send(4, Kind::Request, Flags::NONE, &big(4)).unwrap();
        let fourth = b.recv_timeout(SOON).unwrap();
        assert!(fourth.is_in_place());
        assert_eq!(fourth.request_id(), 4);
    }

    #[test]
    fn a_frame_of_another_channel_is_copied() {
        let (a, b) = crate::create(ChannelConfig::default()).unwrap();
        let (a, b) = (
            BlockingChannel::new(a).unwrap(),
            BlockingChannel::new(b).unwrap(),
        );
        let (_c, d) = crate::create(ChannelConfig::default()).unwrap();
        let other = Arc::new(BlockingChannel::new(d).unwrap());
        a.send(1, Kind::Request, Flags::NONE, b"mine").unwrap();
        let frame = b.recv_timeout(SOON).unwrap();
        let bytes = other.payload_bytes(frame);
        assert_eq!(&bytes[..], b"mine");
        // The frame itself was released by its own drop.
        a.send(2, Kind::Request, Flags::NONE, b"next").unwrap();
        assert!(b.recv_timeout(SOON).unwrap().is_in_place());
    }
}
