//! Ring and layout tests over real shared regions in this process,
//! including regions full of garbage.

use std::ffi::CStr;
use std::sync::Arc;

use proptest::prelude::*;

use super::{Consumer, Producer};
use crate::error::Error;
use crate::frame::{Flags, Kind};
use crate::layout::Layout;
use crate::sys::SharedRegion;

const NAME: &CStr = c"sidecar-ipc-test";

fn ring_pair(capacity: usize) -> (Producer, Consumer, Arc<SharedRegion>, Layout) {
    let layout = Layout::plan([capacity, capacity], 8).unwrap();
    let region = Arc::new(SharedRegion::create(NAME, layout.len).unwrap());
    layout.initialise(&region);
    let geo = layout.rings[0];
    (
        Producer::new(region.clone(), geo),
        Consumer::new(region.clone(), geo),
        region,
        layout,
    )
}

fn send(p: &mut Producer, id: u64, payload: &[u8]) -> bool {
    match p.try_reserve(payload.len()).unwrap() {
        Some(slot) => {
            p.commit(slot, Kind::Request, Flags::NONE, id, payload.len(), |b| {
                b.copy_from_slice(payload)
            });
            true
        }
        None => false,
    }
}

#[test]
fn thousands_of_frames_wrap_around_intact() {
    let (mut p, mut c, region, _) = ring_pair(4096);
    let mut next_send = 0u64;
    let mut next_recv = 0u64;
    let size = |i: u64| ((i * 37) % 1500) as usize;
    let body = |i: u64| -> Vec<u8> { (0..size(i)).map(|j| (i as usize + j) as u8).collect() };
    while next_recv < 5000 {
        while next_send < 5000 && send(&mut p, next_send, &body(next_send)) {
            next_send += 1;
        }
        let mut got = 0;
        while let Some(f) = c.next().unwrap() {
            assert_eq!(f.meta.request_id, next_recv);
            assert_eq!(
                region.bytes(f.payload_at, f.meta.len),
                body(next_recv).as_slice()
            );
            next_recv += 1;
            got += 1;
        }
        assert!(got > 0, "no progress at frame {next_recv}");
        c.release();
    }
    let total: usize = (0..5000)
        .map(|i| crate::frame::frame_size(size(i)).unwrap())
        .sum();
    assert!(
        total > 100 * 4096,
        "wrapped the ring many times over: {total} bytes"
    );
}

#[test]
fn a_full_ring_refuses_until_released_and_large_frames_fit_after_padding() {
    let (mut p, mut c, _, _) = ring_pair(4096);
    assert!(send(&mut p, 1, &[1; 1000]));
    assert!(send(&mut p, 2, &[2; 1000]));
    assert!(send(&mut p, 3, &[3; 1000]));
    assert!(!send(&mut p, 4, &[4; 2000]), "full");
    while c.next().unwrap().is_some() {}
    c.release();
    // 3048 bytes used from the start: the next 4000-byte frame must pad
    // the last 1048 bytes and start over.
    assert!(send(&mut p, 5, &[5; 4000]));
    let f = c.next().unwrap().unwrap();
    assert_eq!((f.meta.request_id, f.meta.len), (5, 4000));
}

#[test]
fn an_empty_ring_starts_over_at_its_front_after_the_first_mib() {
    let (mut p, mut c, region, layout) = ring_pair(8 << 20);
    let front = layout.rings[0].data + crate::frame::HEADER_LEN;
    let mib = vec![7u8; 1 << 20];
    // Two frames back to back: the second follows the first.
    assert!(send(&mut p, 1, &mib));
    assert!(send(&mut p, 2, &mib));
    let first = c.next().unwrap().unwrap();
    let second = c.next().unwrap().unwrap();
    assert_eq!(first.payload_at, front);
    assert!(second.payload_at > first.payload_at + (1 << 20));
    // Not yet released: the next frame goes on past them.
    assert!(send(&mut p, 3, &mib));
    let third = c.next().unwrap().unwrap();
    assert!(third.payload_at > second.payload_at);
    c.release();
    // Empty and past the first MiB: the next frame is at the front again,
    // intact.
    assert!(send(&mut p, 4, &[4; 100]));
    let fourth = c.next().unwrap().unwrap();
    assert_eq!((fourth.meta.request_id, fourth.payload_at), (4, front));
    assert_eq!(region.bytes(fourth.payload_at, 100), &[4u8; 100][..]);
    c.release();
    // Empty but still within the first MiB: no rewind.
    assert!(send(&mut p, 5, &[5; 100]));
    let fifth = c.next().unwrap().unwrap();
    assert!(fifth.payload_at > front);
}

#[test]
fn too_large_names_both_sizes() {
    let (mut p, _, _, _) = ring_pair(4096);
    let err = p.try_reserve(5000).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                payload: 5000,
                max: 4080,
                ring: 4096
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("5000") && msg.contains("4080"), "{msg}");
}

#[test]
fn a_truncated_frame_is_an_error_not_a_read_past_head() {
    let (mut p, mut c, region, layout) = ring_pair(4096);
    assert!(send(&mut p, 1, &[1; 100]));
    // Rewrite the published frame's header to claim 1000 payload bytes.
    let header = crate::frame::encode(Kind::Request as u16, Flags::NONE, 1, 1000);
    region.write(layout.rings[0].data, &header);
    let err = c.next().unwrap_err();
    assert!(err.to_string().contains("truncated frame"), "{err}");
}

#[test]
fn impossible_positions_are_errors() {
    let (_, mut c, region, layout) = ring_pair(4096);
    region
        .atomic_u64(layout.rings[0].head())
        .store(1 << 40, std::sync::atomic::Ordering::Release);
    assert!(matches!(c.next(), Err(Error::Corrupt(_))));
    let (mut p, _, region, layout) = ring_pair(4096);
    region
        .atomic_u64(layout.rings[0].tail())
        .store(99_999, std::sync::atomic::Ordering::Release);
    assert!(matches!(p.try_reserve(10), Err(Error::Corrupt(_))));
}

#[test]
fn garbage_headers_are_refused() {
    let layout = Layout::plan([4096, 4096], 8).unwrap();
    let region = SharedRegion::create(NAME, layout.len).unwrap();
    region.write(0, &[0xA5; 4096]);
    let err = Layout::validate(&region).unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");

    let region = SharedRegion::create(NAME, layout.len).unwrap();
    layout.initialise(&region);
    assert_eq!(Layout::validate(&region).unwrap(), layout);
    // Wrong version.
    region.write(8, &2u32.to_le_bytes());
    assert!(
        Layout::validate(&region)
            .unwrap_err()
            .to_string()
            .contains("version")
    );
    // Rings pointing outside the region.
    let region = SharedRegion::create(NAME, layout.len).unwrap();
    layout.initialise(&region);
    region.write(48 + 8, &(1u64 << 30).to_le_bytes());
    assert!(Layout::validate(&region).is_err());
    // Never initialised.
    let region = SharedRegion::create(NAME, layout.len).unwrap();
    assert!(Layout::validate(&region).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the other process writes into the ring and its positions,
    /// the consumer returns frames inside the ring or an error; it never
    /// panics or reads outside.
    #[test]
    fn consumer_survives_any_garbage(
        data in proptest::collection::vec(any::<u8>(), 4096),
        seeds in proptest::collection::vec(any::<(u64, u16)>(), 0..64),
        start in any::<u64>(),
        ahead in 0u64..6000,
    ) {
        let (_, _, region, layout) = ring_pair(4096);
        let geo = layout.rings[0];
        region.write(geo.data, &data);
        // Sprinkle plausible headers so that decoding goes deeper than the
        // first check.
        for (pos, len) in seeds {
            let at = (pos % 4096) as usize & !7;
            if at + 16 <= 4096 {
                let kind = (pos % 9) as u16;
                let h = crate::frame::encode(kind, Flags::NONE, pos, u32::from(len));
                region.write(geo.data + at, &h);
            }
        }
        let start = start & !7;
        region.atomic_u64(geo.tail()).store(start, std::sync::atomic::Ordering::Release);
        region.atomic_u64(geo.head()).store(start.wrapping_add(ahead), std::sync::atomic::Ordering::Release);
        let mut c = Consumer::new(region.clone(), geo);
        for _ in 0..600 {
            match c.next() {
                Ok(Some(f)) => {
                    prop_assert!(f.payload_at >= geo.data);
                    prop_assert!(f.payload_at + f.meta.len <= geo.data + geo.capacity);
                    let _ = region.bytes(f.payload_at, f.meta.len);
                }
                Ok(None) => break,
                Err(Error::Corrupt(_)) => break,
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
            c.release();
        }
    }
}
