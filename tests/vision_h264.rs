//! H.264 streams made by ffmpeg through the real sidecar: split anywhere,
//! every picture ffprobe counts is decoded in order; garbage ends only its
//! stream; a fast sender is held back by `max_pending_frames`.

use e2e::serial;
use e2e::vision::{b_frame_stream as ffmpeg_h264, config, sidecar};
use sidecar_proto::v1::{Frame, OverflowPolicy, ProcessRequest, frame, process_request};
use tonic::Code;

/// The end of a stream's pictures: the decoder gives what it still holds.
fn flush() -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            flush: true,
            ..Default::default()
        })),
    }
}

fn h264_chunk(chunk: &[u8]) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            data: Some(frame::Data::H264(chunk.to_vec().into())),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_stream_split_anywhere_decodes_every_frame() {
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let (stream, probed) = ffmpeg_h264(320, 240, 60);
    let mut msgs = vec![config(OverflowPolicy::Unspecified, 4)];
    // Chunks of 1..2000 bytes: NAL units split across messages anywhere.
    let (mut at, mut k) = (0usize, 0usize);
    while at < stream.len() {
        let len = (k * 7919 % 2000 + 1).min(stream.len() - at);
        msgs.push(h264_chunk(&stream[at..at + len]));
        (at, k) = (at + len, k + 1);
    }
    msgs.push(flush());
    let mut s = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("open")
        .into_inner();
    let mut indices = Vec::new();
    while let Some(r) = s.message().await.expect("ends cleanly") {
        assert_eq!((r.width, r.height), (320, 240));
        indices.push(r.frame_index);
    }
    eprintln!(
        "{} pictures from {k} chunks; ffprobe counts {probed}",
        indices.len()
    );
    assert_eq!(probed, 60);
    assert_eq!(
        indices,
        (0..probed).collect::<Vec<u64>>(),
        "every frame ffprobe counts, in order"
    );

    // Garbage after a good start ends that stream with INVALID_ARGUMENT
    // naming the frame it would have been; a new stream decodes again.
    let mut garbage = vec![0u8, 0, 0, 1];
    garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    garbage.extend([0, 0, 1]);
    let head = stream.len() / 2;
    let msgs = vec![
        config(OverflowPolicy::Unspecified, 4),
        h264_chunk(&stream[..head]),
        h264_chunk(&garbage),
    ];
    let mut s = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("open")
        .into_inner();
    let mut good = 0u64;
    let err = loop {
        match s.message().await {
            Ok(Some(_)) => good += 1,
            Ok(None) => panic!("garbage accepted"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("frame {good} (H.264 chunk)"))
            && err.message().contains("H.264 data the decoder refuses"),
        "{}",
        err.message()
    );
    eprintln!("garbage after {good} pictures: {}", err.message());
    let not_h264 = vec![
        config(OverflowPolicy::Unspecified, 4),
        h264_chunk(b"GIF89a garbage"),
    ];
    let mut s = client
        .process(tokio_stream::iter(not_h264))
        .await
        .expect("open")
        .into_inner();
    let err = s.message().await.expect_err("not Annex-B");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("frame 0 (H.264 chunk): not an H.264 Annex-B stream"),
        "{}",
        err.message()
    );
    let (short, _) = ffmpeg_h264(160, 120, 5);
    let msgs = vec![
        config(OverflowPolicy::Unspecified, 4),
        h264_chunk(&short),
        flush(),
    ];
    let mut s = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("open")
        .into_inner();
    let mut n = 0;
    while s.message().await.expect("decodes").is_some() {
        n += 1;
    }
    assert_eq!(n, 5, "the worker still decodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_h264_sender_is_held_back_by_max_pending_frames() {
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let (stream, probed) = ffmpeg_h264(320, 240, 60);
    // The stream 12 times over (each copy starts with an IDR picture), in
    // 32 KiB chunks of several pictures each, all offered at once: the
    // worker may hold at most 2 chunks, so no picture waits in it for long.
    let mut msgs = vec![config(OverflowPolicy::Unspecified, 2)];
    let copies = 12;
    let all: Vec<u8> = (0..copies).flat_map(|_| stream.iter().copied()).collect();
    msgs.extend(all.chunks(32 << 10).map(h264_chunk));
    let chunks = msgs.len() - 1;
    msgs.push(flush());
    let started = std::time::Instant::now();
    let mut s = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("open")
        .into_inner();
    let (mut pictures, mut longest) = (0u64, 0u64);
    while let Some(r) = s.message().await.expect("ends cleanly") {
        pictures += 1;
        longest = longest.max(r.timings.expect("timings").total_us);
    }
    let wall = started.elapsed().as_micros() as u64;
    eprintln!(
        "{pictures} pictures from {chunks} chunks in {wall} µs; longest wait in the worker {longest} µs"
    );
    assert_eq!(pictures, copies * probed, "every picture of every copy");
    // Were the chunks all forwarded at once, the last pictures would wait
    // in the worker for most of the run.
    assert!(
        longest < wall / 5,
        "a picture waited {longest} µs in the worker of a {wall} µs run"
    );
}
