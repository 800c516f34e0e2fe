//! A Process stream's flow bookkeeping in the supervisor: what its
//! worker holds ([`Held`]), what a frame costs there ([`frame_bytes`]),
//! which frames are never dropped ([`is_h264`]), and the answer of a frame
//! dropped here ([`dropped_result`]).

use sidecar_proto::v1::{Frame, ProcessResponse, frame};

/// The frame messages of a stream its worker holds: sent, not yet answered
/// in full (one result, a `dropped` result, an empty answer for an H.264
/// chunk that completed no picture, or several results, all but the last
/// marked `more`), and the bytes they hold there ([`frame_bytes`]). Bounds
/// what a stream keeps in its worker, in frames and in bytes, with the
/// worker's own figures (`max_pending_frames`, `max_pending_bytes`).
#[derive(Debug)]
pub(super) struct Held {
    /// Each unanswered message's bytes, oldest first (answers come in
    /// order).
    messages: std::collections::VecDeque<u64>,
    bytes: u64,
    most: usize,
    most_bytes: u64,
}

impl Held {
    /// With the default overflow policy the client is not read beyond
    /// `max_pending` (HTTP/2 flow control holds it back). With DROP_OLDEST
    /// it is read on, so the worker sees new frames and drops old ones,
    /// up to twice that: H.264 chunks are never dropped. The same for
    /// bytes: the client is read while the unanswered frames hold less
    /// than `max_pending_bytes` (twice that with DROP_OLDEST), as the
    /// worker takes a frame while its waiting ones hold less.
    pub(super) fn new(max_pending: usize, max_pending_bytes: u64, drop_oldest: bool) -> Held {
        let (most, most_bytes) = if drop_oldest {
            (2 * max_pending, max_pending_bytes.saturating_mul(2))
        } else {
            (max_pending, max_pending_bytes)
        };
        Held {
            messages: std::collections::VecDeque::new(),
            bytes: 0,
            most,
            most_bytes,
        }
    }

    pub(super) fn may_read(&self) -> bool {
        self.messages.len() < self.most && self.bytes < self.most_bytes
    }

    pub(super) fn sent(&mut self, bytes: u64) {
        self.messages.push_back(bytes);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    pub(super) fn answered(&mut self, more: bool) {
        if !more && let Some(b) = self.messages.pop_front() {
            // The sum saturates on absurd sizes (the worker refuses
            // those frames): never below zero.
            self.bytes = self.bytes.saturating_sub(b);
        }
    }
}

/// The result of a frame the supervisor drops itself (DROP_OLDEST over
/// the rate limit): `dropped`, and `released` naming the frame's region
/// bytes as the frame named them (never read: the client may reuse them).
pub(super) fn dropped_result(f: &Frame) -> ProcessResponse {
    let released = match &f.data {
        Some(frame::Data::Raw(raw)) => raw.shm.clone(),
        Some(frame::Data::EncodedShm(r)) => Some(r.clone()),
        _ => None,
    };
    ProcessResponse {
        frame_index: f.index,
        timestamp_us: f.timestamp_us,
        dropped: true,
        released,
        ..Default::default()
    }
}

/// Whether a frame is a piece of the stream's H.264 (a chunk, or a flush
/// with no data): never dropped, as the pictures after it depend on it.
pub(super) fn is_h264(f: &Frame) -> bool {
    matches!(f.data, Some(frame::Data::H264(_))) || (f.data.is_none() && f.flush)
}

/// What a frame holds in its worker while it waits: raw pixels given
/// inline as converted (3 bytes a pixel), an encoded file or H.264 chunk
/// given inline as its length; a frame in a region holds nothing there.
pub(super) fn frame_bytes(f: &Frame) -> u64 {
    match &f.data {
        Some(frame::Data::Raw(raw)) if raw.shm.is_none() || !raw.data.is_empty() => {
            u64::from(raw.width)
                .saturating_mul(u64::from(raw.height))
                .saturating_mul(3)
        }
        Some(frame::Data::Encoded(b) | frame::Data::H264(b)) => b.len() as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{Frame, Held, dropped_result, frame, frame_bytes, is_h264};
    use sidecar_proto::v1::{RawImage, SharedMemoryRef};

    #[test]
    fn a_dropped_region_frame_releases_its_bytes() {
        let slot = |offset| SharedMemoryRef {
            region: "ring".into(),
            offset,
            byte_size: 2_764_800,
        };
        let raw = Frame {
            index: 7,
            timestamp_us: 70,
            data: Some(frame::Data::Raw(RawImage {
                shm: Some(slot(2_764_800)),
                ..Default::default()
            })),
            ..Default::default()
        };
        let got = dropped_result(&raw);
        assert!(got.dropped);
        assert_eq!((got.frame_index, got.timestamp_us), (7, 70));
        assert_eq!(got.released, Some(slot(2_764_800)));
        let encoded = Frame {
            index: 8,
            data: Some(frame::Data::EncodedShm(slot(0))),
            ..Default::default()
        };
        assert_eq!(dropped_result(&encoded).released, Some(slot(0)));
        let inline = Frame {
            index: 9,
            data: Some(frame::Data::Encoded(vec![0xff, 0xd8].into())),
            ..Default::default()
        };
        assert_eq!(dropped_result(&inline).released, None, "no region");
    }

    #[test]
    fn a_chunk_with_several_pictures_counts_once() {
        let mut held = Held::new(2, 1 << 20, false);
        held.sent(0);
        held.sent(0);
        assert!(!held.may_read(), "two messages held, two allowed");
        // A chunk that completed three pictures: two answers marked more.
        held.answered(true);
        held.answered(true);
        assert!(!held.may_read(), "the chunk is not done yet");
        held.answered(false);
        assert!(held.may_read());
        held.sent(0);
        assert!(!held.may_read());
    }

    #[test]
    fn drop_oldest_reads_on_but_not_without_bound() {
        let mut held = Held::new(2, 1 << 20, true);
        for _ in 0..4 {
            assert!(held.may_read());
            held.sent(0);
        }
        assert!(!held.may_read(), "H.264 chunks are never dropped");
        held.answered(false);
        assert!(held.may_read());
    }

    #[test]
    fn h264_chunks_and_flushes_are_never_dropped_over_the_rate() {
        let chunk = Frame {
            data: Some(frame::Data::H264(vec![0; 4].into())),
            ..Default::default()
        };
        let flush = Frame {
            flush: true,
            ..Default::default()
        };
        let picture = Frame {
            data: Some(frame::Data::Raw(RawImage::default())),
            ..Default::default()
        };
        assert!(is_h264(&chunk));
        assert!(
            is_h264(&flush),
            "a flush with no data ends the H.264 stream"
        );
        assert!(!is_h264(&picture));
        assert!(
            !is_h264(&Frame::default()),
            "no data, no flush: a bad frame"
        );
    }

    #[test]
    fn the_client_is_read_while_the_unanswered_frames_hold_less_than_the_limit() {
        let frame = |w: u32, h: u32| Frame {
            data: Some(frame::Data::Raw(RawImage {
                width: w,
                height: h,
                data: vec![0; 4].into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        // Raw pixels count as converted (3 bytes a pixel), whatever the
        // message carries; a frame in a region counts nothing.
        assert_eq!(frame_bytes(&frame(1280, 720)), 2_764_800);
        assert_eq!(frame_bytes(&frame(u32::MAX, u32::MAX)), u64::MAX);
        let in_region = Frame {
            data: Some(frame::Data::Raw(RawImage {
                width: 1280,
                height: 720,
                shm: Some(SharedMemoryRef::default()),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(frame_bytes(&in_region), 0);
        let chunk = Frame {
            data: Some(frame::Data::H264(vec![0; 1000].into())),
            ..Default::default()
        };
        assert_eq!(frame_bytes(&chunk), 1000);

        let mut held = Held::new(64, 8 << 20, false);
        for _ in 0..3 {
            assert!(held.may_read());
            held.sent(2_764_800);
        }
        assert!(held.may_read(), "8 294 400 bytes held, under 8 MiB");
        held.sent(2_764_800);
        assert!(!held.may_read(), "11 059 200 bytes held");
        held.answered(true);
        assert!(!held.may_read(), "a chunk's first picture frees nothing");
        held.answered(false);
        assert!(held.may_read(), "one frame answered");
        // DROP_OLDEST reads on up to twice the bytes.
        let mut held = Held::new(64, 8 << 20, true);
        for _ in 0..7 {
            held.sent(2_764_800);
        }
        assert!(!held.may_read(), "19 353 600 bytes held, over 16 MiB");
        // An answer with nothing held left is harmless, and absurd sizes
        // saturate without wrapping.
        let mut held = Held::new(2, 1, false);
        held.answered(false);
        assert!(held.may_read());
        held.sent(u64::MAX);
        held.sent(5);
        held.answered(false);
        held.answered(false);
        assert!(held.may_read(), "nothing held");
    }
}
