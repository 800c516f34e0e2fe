//! A frame received on a blocking channel: in place or copied.

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
    InPlace(&'a [u8]),
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
            Payload::InPlace(b) => b,
            Payload::Owned(v) => v,
        }
    }
    /// Whether the payload is read in place in shared memory.
    pub fn is_in_place(&self) -> bool {
        matches!(self.payload, Payload::InPlace(_))
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        if self.is_in_place() {
            self.chan.release_held();
        }
    }
}
