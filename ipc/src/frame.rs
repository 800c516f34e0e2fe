//! Frame header encoding and the pure, total decoder.
//!
//! A frame in a ring is a 16-byte little-endian header followed by the
//! payload, padded to 8 bytes:
//!
//! ```text
//! 0      4      6      8              16
//! | len  | kind | flags| request id   | payload ... | pad to 8 |
//! ```
//!
//! `kind == 0` is padding that fills the ring up to its end, so that every
//! frame is contiguous in memory and can be read in place. When fewer than
//! 16 bytes remain before the end, both sides skip them without a header.
//! The decoder never trusts the bytes: every header is checked against what
//! the producer published before any offset is derived from it.

use crate::error::{Error, Result};

/// Header size in bytes.
pub const HEADER_LEN: usize = 16;
/// Frames start on this alignment.
pub(crate) const ALIGN: usize = 8;

/// Frame kinds. The numbers are part of the shared-memory protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// Worker → supervisor, request id 0: version, family, capabilities.
    Hello = 1,
    /// Supervisor → worker: a call, or more input for an open call.
    Request = 2,
    /// Worker → supervisor: (part of) an answer.
    Response = 3,
    /// Supervisor → worker: stop this request and answer it.
    Cancel = 4,
    /// Worker → supervisor, request id 0: liveness and memory.
    Heartbeat = 5,
    /// Worker → supervisor: the request failed (or, with id 0, the worker).
    Error = 6,
    /// Flow control: the consumer of a request's answers grants more frames.
    /// Handled inside this crate; never delivered to the application.
    Credit = 7,
}

pub(crate) const KIND_PAD: u16 = 0;

impl Kind {
    /// The kind for a wire number.
    pub fn from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Request,
            3 => Kind::Response,
            4 => Kind::Cancel,
            5 => Kind::Heartbeat,
            6 => Kind::Error,
            7 => Kind::Credit,
            _ => return None,
        })
    }
}

/// Frame flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(u16);

impl Flags {
    /// No flag.
    pub const NONE: Flags = Flags(0);
    /// Last frame of a request's answer (or of its input).
    pub const END: Flags = Flags(1);
    const KNOWN: u16 = 1;

    /// Raw bits.
    pub fn bits(self) -> u16 {
        self.0
    }
    /// Whether END is set.
    pub fn is_end(self) -> bool {
        self.0 & Self::END.0 != 0
    }
    /// Both sets of flags.
    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    pub(crate) fn from_bits(bits: u16) -> Option<Flags> {
        (bits & !Self::KNOWN == 0).then_some(Flags(bits))
    }
}

/// What a frame header says, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Request the frame belongs to; 0 for the channel itself.
    pub request_id: u64,
    /// Kind.
    pub kind: Kind,
    /// Flags.
    pub flags: Flags,
    /// Payload length in bytes.
    pub len: usize,
}

/// A decoded header: a frame, or padding to skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A frame occupying `size` bytes of the ring (header, payload, padding).
    Frame {
        /// The header's fields.
        meta: Meta,
        /// Bytes the frame occupies in the ring.
        size: usize,
    },
    /// Padding occupying the rest of the ring up to its end.
    Pad {
        /// Bytes to skip.
        size: usize,
    },
}

/// Bytes a frame with `len` payload bytes occupies in a ring.
pub fn frame_size(len: usize) -> Option<usize> {
    len.checked_add(HEADER_LEN + ALIGN - 1)
        .map(|n| n & !(ALIGN - 1))
}

/// Encodes a header.
pub(crate) fn encode(kind: u16, flags: Flags, request_id: u64, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..6].copy_from_slice(&kind.to_le_bytes());
    h[6..8].copy_from_slice(&flags.0.to_le_bytes());
    h[8..16].copy_from_slice(&request_id.to_le_bytes());
    h
}

/// Decodes and checks the header found at the consumer's position.
///
/// `published` is how many bytes the producer has published beyond this
/// position, `contiguous` how many remain before the ring's end. Total: any
/// input gives `Ok` or `Err`, never a panic.
pub fn decode(header: &[u8; HEADER_LEN], published: usize, contiguous: usize) -> Result<Decoded> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let kind = u16::from_le_bytes([header[4], header[5]]);
    let flags = u16::from_le_bytes([header[6], header[7]]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&header[8..16]);
    let request_id = u64::from_le_bytes(id);

    if contiguous < HEADER_LEN || published < HEADER_LEN {
        return Err(Error::Corrupt(format!(
            "truncated frame header: {published} bytes published, {contiguous} before the ring's end, header needs {HEADER_LEN}"
        )));
    }
    if kind == KIND_PAD {
        if len.checked_add(HEADER_LEN) != Some(contiguous) || published < contiguous {
            return Err(Error::Corrupt(format!(
                "bad padding frame: covers {len}+{HEADER_LEN} bytes, {contiguous} remain before the ring's end, {published} published"
            )));
        }
        return Ok(Decoded::Pad { size: contiguous });
    }
    let kind =
        Kind::from_u16(kind).ok_or_else(|| Error::Corrupt(format!("unknown frame kind {kind}")))?;
    let flags = Flags::from_bits(flags)
        .ok_or_else(|| Error::Corrupt(format!("unknown frame flags {flags:#06x}")))?;
    let size =
        frame_size(len).ok_or_else(|| Error::Corrupt(format!("frame length {len} overflows")))?;
    if size > contiguous || size > published {
        return Err(Error::Corrupt(format!(
            "truncated frame: {kind:?} of {len} payload bytes needs {size} bytes, {published} published, {contiguous} before the ring's end"
        )));
    }
    Ok(Decoded::Frame {
        meta: Meta {
            request_id,
            kind,
            flags,
            len,
        },
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_a_header() {
        let h = encode(Kind::Response as u16, Flags::END, 42, 100);
        let d = decode(&h, 1000, 1000).unwrap();
        assert_eq!(
            d,
            Decoded::Frame {
                meta: Meta {
                    request_id: 42,
                    kind: Kind::Response,
                    flags: Flags::END,
                    len: 100
                },
                size: 120
            }
        );
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let h = encode(Kind::Request as u16, Flags::NONE, 1, 100);
        let err = decode(&h, 64, 4096).unwrap_err();
        assert!(err.to_string().contains("truncated frame"), "{err}");
    }

    #[test]
    fn unknown_kind_and_flags_are_errors() {
        let h = encode(99, Flags::NONE, 1, 0);
        assert!(
            decode(&h, 64, 64)
                .unwrap_err()
                .to_string()
                .contains("kind 99")
        );
        let mut h = encode(Kind::Request as u16, Flags::NONE, 1, 0);
        h[6] = 0x80;
        assert!(
            decode(&h, 64, 64)
                .unwrap_err()
                .to_string()
                .contains("flags")
        );
    }

    #[test]
    fn padding_must_reach_the_ring_end_exactly() {
        let h = encode(KIND_PAD, Flags::NONE, 0, 48);
        assert_eq!(decode(&h, 4096, 64).unwrap(), Decoded::Pad { size: 64 });
        assert!(decode(&h, 4096, 72).is_err());
        assert!(decode(&h, 32, 64).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn decoder_is_total_and_never_overruns(
            header in proptest::array::uniform16(any::<u8>()),
            published in 0usize..1 << 20,
            contiguous in 0usize..1 << 20,
        ) {
            match decode(&header, published, contiguous) {
                Ok(Decoded::Frame { meta, size }) => {
                    prop_assert!(size <= published && size <= contiguous);
                    prop_assert!(HEADER_LEN + meta.len <= size);
                    prop_assert_eq!(size % ALIGN, 0);
                }
                Ok(Decoded::Pad { size }) => {
                    prop_assert!(size == contiguous && size <= published);
                }
                Err(Error::Corrupt(_)) => {}
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
}
