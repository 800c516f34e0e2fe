//! Hostile VISION clients against the real sidecar, worker-vision and
//! BlazeFace: images and H.264 streams that declare huge sizes, chunks of
//! thousands of pictures, framing fed a byte at a time, tracking with
//! 200 000 boxes, expensive batches with a 50 ms deadline, and a B-frame
//! stream split anywhere. Each gets a clear error with the right code
//! naming the limit; the supervisor and the worker keep their pids, the
//! probes answer 200, the model stays READY, the worker's peak memory
//! stays under a figure, and the next call is served.

use std::time::{Duration, Instant};

use e2e::vision::{astronaut, config, faces, sidecar};
use e2e::{Sidecar, serial};
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    Box as PixelBox, FaceDetector, Frame, Image, ModelState, OverflowPolicy, ProcessBatchRequest,
    ProcessRequest, ProcessResponse, StreamConfig, TemplateMatchingTask, TrackingTask, VisionTask,
    frame, image, process_request, vision_task,
};
use tonic::Code;
use tonic::transport::Channel;

/// The worker's peak resident memory must stay below this.
const WORKER_HWM_LIMIT: u64 = 600 << 20;

/// The pids before an attack: (supervisor, worker).
async fn pids(sc: &Sidecar) -> (u32, u32) {
    let m = sc.model("faces").await;
    assert_eq!(m.state, ModelState::Ready as i32, "{m:?}");
    assert!(m.worker_pid > 0, "{m:?}");
    (sc.child.id(), m.worker_pid)
}

/// After an attack: same supervisor and worker, probes 200, the model
/// READY without a restart, the worker's peak memory under the limit, and
/// a normal call finds the astronaut's face.
async fn unharmed(sc: &Sidecar, client: &mut VisionServiceClient<Channel>, before: (u32, u32)) {
    let (sup, worker) = before;
    assert_eq!(sc.child.id(), sup);
    assert!(e2e::alive(sup), "the supervisor is alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    let (code, body) = sc.admin_get("/readyz");
    assert_eq!(code, 200, "{body}");
    let m = sc.model("faces").await;
    assert_eq!(m.state, ModelState::Ready as i32, "{m:?}");
    assert_eq!(
        (m.worker_pid, m.restarts),
        (worker, 0),
        "the worker was not replaced: {m:?}"
    );
    assert!(e2e::alive(worker), "the worker is alive");
    let hwm = e2e::status_bytes(worker, "VmHWM");
    eprintln!("worker VmHWM {} MiB", hwm >> 20);
    assert!(
        hwm < WORKER_HWM_LIMIT,
        "the worker's peak memory reached {} MiB",
        hwm >> 20
    );
    let r = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(faces(FaceDetector::Unspecified)),
            images: vec![astronaut()],
        })
        .await
        .expect("the next call is served")
        .into_inner();
    assert_eq!(r.results[0].faces.len(), 1, "{r:?}");
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend(data);
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

/// A small PNG whose IHDR declares `w`x`h` RGB, with a tiny IDAT.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png_chunk(&mut b, b"IHDR", &ihdr);
    // zlib of a few zero bytes.
    png_chunk(
        &mut b,
        b"IDAT",
        &[
            0x78, 0x9c, 0x63, 0x60, 0x60, 0x00, 0x00, 0x00, 0x04, 0x00, 0x01,
        ],
    );
    png_chunk(&mut b, b"IEND", &[]);
    b
}

/// A small baseline JPEG whose SOF0 declares `w`x`h`.
fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut b = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16];
    b.extend(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    b.extend([0xff, 0xc0, 0, 17, 8]);
    b.extend(h.to_be_bytes());
    b.extend(w.to_be_bytes());
    b.extend([3, 1, 0x22, 0, 2, 0x11, 0, 3, 0x11, 0]);
    b.extend([0xff, 0xd9]);
    b
}

fn encoded(bytes: Vec<u8>) -> Image {
    Image {
        data: Some(image::Data::Encoded(bytes.into())),
    }
}

fn encoded_frame(index: u64, bytes: Vec<u8>) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            index,
            data: Some(frame::Data::Encoded(bytes.into())),
            ..Default::default()
        })),
    }
}

fn h264_chunk(index: u64, chunk: &[u8]) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            index,
            data: Some(frame::Data::H264(chunk.to_vec().into())),
            ..Default::default()
        })),
    }
}

fn flush(index: u64) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            index,
            flush: true,
            ..Default::default()
        })),
    }
}

/// Runs a stream to its end: its results, and its error if it ended in
/// one.
async fn run_stream(
    client: &mut VisionServiceClient<Channel>,
    msgs: Vec<ProcessRequest>,
) -> (Vec<ProcessResponse>, Option<tonic::Status>) {
    let mut s = match client.process(tokio_stream::iter(msgs)).await {
        Ok(s) => s.into_inner(),
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut out = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fn assert_refused(err: &tonic::Status, code: Code, parts: &[&str]) {
    assert_eq!(err.code(), code, "{err:?}");
    for p in parts {
        assert!(err.message().contains(p), "{:?} lacks {p:?}", err.message());
    }
    eprintln!("refused: {}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_declaring_huge_sizes_are_refused_before_decoding() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = pids(&sc).await;
    let png = png_declaring(30000, 30000);
    assert!(png.len() < 100, "a small file: {} bytes", png.len());
    let limit = "16384 per side and 33177600 pixels (max_pixels)";

    // In a batch, after a good image.
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(faces(FaceDetector::Unspecified)),
            images: vec![astronaut(), encoded(png.clone())],
        })
        .await
        .expect_err("30000x30000");
    assert_refused(
        &err,
        Code::InvalidArgument,
        &[
            "images[1]: a PNG of 30000x30000 pixels (900000000) exceeds the limits of",
            limit,
        ],
    );

    // As a template.
    let template = VisionTask {
        task: Some(vision_task::Task::TemplateMatching(TemplateMatchingTask {
            template: Some(encoded(png.clone())),
            ..Default::default()
        })),
    };
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(template),
            images: vec![astronaut()],
        })
        .await
        .expect_err("30000x30000 template");
    assert_refused(
        &err,
        Code::InvalidArgument,
        &[
            "template_matching.template: a PNG of 30000x30000 pixels",
            limit,
        ],
    );

    // As a stream frame, after a good one.
    let astronaut_bytes = match astronaut().data {
        Some(image::Data::Encoded(b)) => b.to_vec(),
        _ => panic!("astronaut() is encoded"),
    };
    let msgs = vec![
        config(OverflowPolicy::Unspecified, 4),
        encoded_frame(0, astronaut_bytes),
        encoded_frame(1, png.clone()),
    ];
    let (results, err) = run_stream(&mut client, msgs).await;
    assert_eq!(results.len(), 1, "the good frame's result first");
    assert_refused(
        &err.expect("the stream ends in an error"),
        Code::InvalidArgument,
        &["frame 1: a PNG of 30000x30000 pixels", limit],
    );

    // A JPEG whose SOF declares 65000x16000.
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(faces(FaceDetector::Unspecified)),
            images: vec![encoded(jpeg_declaring(65000, 16000))],
        })
        .await
        .expect_err("65000x16000");
    assert_refused(
        &err,
        Code::InvalidArgument,
        &[
            "images[0]: a JPEG of 65000x16000 pixels (1040000000)",
            limit,
        ],
    );

    // A format whose size cannot be read first is refused, not decoded.
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(faces(FaceDetector::Unspecified)),
            images: vec![encoded(
                b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 9 +X 9\n".to_vec(),
            )],
        })
        .await
        .expect_err("unknown format");
    assert_refused(
        &err,
        Code::InvalidArgument,
        &[
            "images[0]: the encoded image (",
            "not an image format whose size can be read before decoding",
        ],
    );
    unharmed(&sc, &mut client, before).await;
}

/// A bit writer for a hand-made SPS.
#[derive(Default)]
struct Bits(Vec<u8>);

impl Bits {
    fn put(&mut self, v: u64, n: u32) {
        for k in (0..n).rev() {
            self.0.push((v >> k & 1) as u8);
        }
    }

    fn ue(&mut self, v: u64) {
        let x = v + 1;
        let len = 64 - x.leading_zeros();
        self.put(0, len - 1);
        self.put(x, len);
    }

    fn bytes(mut self) -> Vec<u8> {
        self.put(1, 1);
        while !self.0.len().is_multiple_of(8) {
            self.0.push(0);
        }
        self.0
            .chunks(8)
            .map(|c| c.iter().fold(0, |a, b| a << 1 | b))
            .collect()
    }
}

/// Start code and a Baseline SPS of `mbs_w`x`mbs_h` macroblocks.
fn sps_nal(mbs_w: u64, mbs_h: u64) -> Vec<u8> {
    let mut b = Bits::default();
    b.put(66, 8);
    b.put(0, 8);
    b.put(40, 8);
    b.ue(0); // seq_parameter_set_id
    b.ue(0); // log2_max_frame_num_minus4
    b.ue(2); // pic_order_cnt_type
    b.ue(1); // max_num_ref_frames
    b.put(0, 1);
    b.ue(mbs_w - 1);
    b.ue(mbs_h - 1);
    b.put(1, 1); // frame_mbs_only_flag
    b.put(1, 1); // direct_8x8_inference_flag
    b.put(0, 1); // frame_cropping_flag
    b.put(0, 1); // vui_parameters_present_flag
    let mut nal = vec![0, 0, 0, 1, 0x67];
    let mut zeros = 0;
    for byte in b.bytes() {
        if zeros >= 2 && byte <= 3 {
            nal.push(3);
            zeros = 0;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        nal.push(byte);
    }
    nal
}

/// `frames` pictures of 3840x2160 black, x264 ultrafast without B-frames:
/// one IDR picture and then P pictures of nothing but skipped macroblocks.
fn uhd_skip_stream(frames: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("skip.264");
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "color=c=black:s=3840x2160:r=25"])
        .args(["-frames:v", &frames.to_string(), "-c:v", "libx264"])
        .args(["-preset", "ultrafast", "-bf", "0", "-g", "100000"])
        .args(["-pix_fmt", "yuv420p", "-f", "h264"])
        .arg(&path)
        .output()
        .expect("ffmpeg (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).expect("stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_streams_declaring_huge_sizes_or_too_many_pictures_are_refused() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = pids(&sc).await;

    // An SPS declaring 16384x16384: refused before the decoder sees it.
    let mut chunk = sps_nal(1024, 1024);
    chunk.extend([0, 0, 0, 1, 0x09, 0xf0]);
    let msgs = vec![
        config(OverflowPolicy::Unspecified, 4),
        h264_chunk(0, &chunk),
        flush(0),
    ];
    let (results, err) = run_stream(&mut client, msgs).await;
    assert!(results.is_empty());
    assert_refused(
        &err.expect("refused"),
        Code::InvalidArgument,
        &[
            "frame 0 (H.264 chunk): the SPS of 16384x16384 pixels (268435456) exceeds the limits of 16384 per side and 33177600 pixels (max_pixels)",
        ],
    );

    // One 3840x2160 chunk of 400 pictures (all but the first skipped
    // macroblocks only): refused at the 65th, none of them kept.
    let started = Instant::now();
    let stream = uhd_skip_stream(400);
    eprintln!(
        "ffmpeg: 400 UHD pictures in {} bytes, {:?}",
        stream.len(),
        started.elapsed()
    );
    let msgs = vec![
        config(OverflowPolicy::Unspecified, 4),
        h264_chunk(0, &stream),
        flush(0),
    ];
    let started = Instant::now();
    let (results, err) = run_stream(&mut client, msgs).await;
    eprintln!("answered in {:?}", started.elapsed());
    assert!(results.is_empty(), "{} results", results.len());
    assert_refused(
        &err.expect("refused"),
        Code::InvalidArgument,
        &[
            "frame 0 (H.264 chunk): the chunk completes more than 64 pictures (max_pictures_per_chunk)",
        ],
    );
    // The same pictures in chunks of up to 64 are served.
    let (_, probe_err) = run_stream(
        &mut client,
        vec![
            config(OverflowPolicy::Unspecified, 4),
            h264_chunk(0, &uhd_skip_stream(40)),
            flush(0),
        ],
    )
    .await;
    assert!(probe_err.is_none(), "{probe_err:?}");
    unharmed(&sc, &mut client, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_kib_without_a_start_code_a_byte_at_a_time_is_answered_promptly() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = pids(&sc).await;
    let cpu_before = e2e::cpu_seconds(before.1).expect("worker alive");

    // A filler NAL unit's start, then 64 KiB with no start code, each byte
    // its own message: every message is acknowledged, the stream ends
    // cleanly at the flush.
    let mut bytes = vec![0u8, 0, 0, 1, 0x0c];
    bytes.extend(std::iter::repeat_n(0x55u8, 64 << 10));
    let mut msgs = vec![config(OverflowPolicy::Unspecified, 64)];
    msgs.extend(bytes.iter().map(|b| h264_chunk(0, std::slice::from_ref(b))));
    msgs.push(flush(0));
    let started = Instant::now();
    let (results, err) = run_stream(&mut client, msgs).await;
    let took = started.elapsed();
    let cpu = e2e::cpu_seconds(before.1).expect("worker alive") - cpu_before;
    eprintln!(
        "{} one-byte chunks answered in {took:?}; worker CPU {cpu:.2} s",
        bytes.len()
    );
    // Every chunk was acknowledged; at the flush the unit goes to the
    // decoder, which may refuse 64 KiB of filler: a clear error naming
    // the frame, not a hang.
    if let Some(e) = &err {
        assert_refused(e, Code::InvalidArgument, &["frame 0 (H.264 chunk): "]);
    }
    assert!(results.is_empty(), "no picture in filler data");
    // Bounded: the worker's share is linear (the framer examines each
    // byte once); the wall time is the gRPC and channel round trips of
    // 65 541 messages.
    assert!(took < Duration::from_secs(240), "{took:?}");
    assert!(cpu < 5.0, "the worker spent {cpu:.2} s of CPU");

    // Without a start code at all: refused at the 4th byte.
    let mut msgs = vec![config(OverflowPolicy::Unspecified, 64)];
    msgs.extend((0..64 << 10).map(|_| h264_chunk(0, &[0x55])));
    let started = Instant::now();
    let (results, err) = run_stream(&mut client, msgs).await;
    assert!(results.is_empty());
    assert_refused(
        &err.expect("refused"),
        Code::InvalidArgument,
        &[
            "frame 0 (H.264 chunk): not an H.264 Annex-B stream: it does not begin with a start code",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    unharmed(&sc, &mut client, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_with_200_000_initial_boxes_is_refused_naming_the_limit() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = pids(&sc).await;
    let boxes: Vec<PixelBox> = (0..200_000)
        .map(|i| PixelBox {
            x: (i % 400) as f32,
            y: (i / 400 % 400) as f32,
            width: 16.0,
            height: 16.0,
        })
        .collect();
    let config = StreamConfig {
        model_id: "faces".into(),
        tasks: vec![VisionTask {
            task: Some(vision_task::Task::Tracking(TrackingTask {
                initial_boxes: boxes,
                ..Default::default()
            })),
        }],
        max_pending_frames: 4,
        ..Default::default()
    };
    let astronaut_bytes = match astronaut().data {
        Some(image::Data::Encoded(b)) => b.to_vec(),
        _ => panic!("astronaut() is encoded"),
    };
    let msgs = vec![
        ProcessRequest {
            msg: Some(process_request::Msg::Config(config)),
        },
        encoded_frame(0, astronaut_bytes),
    ];
    let started = Instant::now();
    let (results, err) = run_stream(&mut client, msgs).await;
    assert!(results.is_empty());
    assert_refused(
        &err.expect("refused"),
        Code::InvalidArgument,
        &["tracking.initial_boxes holds 200000 boxes; at most 256 are allowed (max_tracks)"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    unharmed(&sc, &mut client, before).await;
}

/// A 3840x2160 JPEG of ffmpeg's test pattern: tens of milliseconds to
/// decode.
fn uhd_jpeg() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uhd.jpg");
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args([
            "-i",
            "testsrc2=size=3840x2160",
            "-frames:v",
            "1",
            "-q:v",
            "2",
        ])
        .arg(&path)
        .output()
        .expect("ffmpeg (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).expect("jpeg")
}

/// Waits until the worker's CPU time stops growing (idle for 300 ms), at
/// most `limit`; its CPU seconds then.
async fn settled_cpu(pid: u32, limit: Duration) -> f64 {
    let start = Instant::now();
    let mut last = e2e::cpu_seconds(pid).expect("worker alive");
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = e2e::cpu_seconds(pid).expect("worker alive");
        if now - last < 0.02 {
            return now;
        }
        assert!(
            start.elapsed() < limit,
            "the worker was still busy after {limit:?}"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_batches_past_a_50_ms_deadline_stop_between_images() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = pids(&sc).await;
    let jpeg = uhd_jpeg();
    let batch = || ProcessBatchRequest {
        model_id: "faces".into(),
        task: Some(faces(FaceDetector::Unspecified)),
        images: (0..24).map(|_| encoded(jpeg.clone())).collect(),
    };
    // What the whole batch costs the worker, without a deadline.
    let cpu0 = settled_cpu(before.1, Duration::from_secs(10)).await;
    let r = client
        .process_batch(batch())
        .await
        .expect("the whole batch")
        .into_inner();
    assert_eq!(r.results.len(), 24);
    let full = settled_cpu(before.1, Duration::from_secs(10)).await - cpu0;
    eprintln!("the whole batch: {full:.2} s of worker CPU");
    assert!(full > 0.5, "an expensive batch: {full:.2} s");

    drop(client);
    drop(sc);

    // Seven times in a minute with a 50 ms deadline. The deadline is the
    // server's default (`deadlines.unary`): a client's own timer on its
    // `grpc-timeout` would race the server's answer and may report
    // CANCELLED "Timeout expired" before the server has even read the
    // upload, proving nothing about the worker.
    let store = e2e::store();
    e2e::add_model(&store, e2e::vision::BLAZEFACE);
    let sc = Sidecar::start(
        store,
        &format!(
            "[deadlines]\nunary = 0.05\n[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{}\"\nvision = {{ threads = 1 }}\n",
            e2e::vision::BLAZEFACE
        ),
    );
    sc.ready("faces").await;
    let mut client = VisionServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let before = pids(&sc).await;
    let started = Instant::now();
    for k in 0..7 {
        let cpu_start = settled_cpu(before.1, Duration::from_secs(10)).await;
        let err = client
            .process_batch(batch())
            .await
            .expect_err("past its deadline");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        let spent = settled_cpu(before.1, Duration::from_secs(10)).await - cpu_start;
        eprintln!(
            "call {k}: {} after {spent:.2} s of worker CPU",
            err.message()
        );
        assert!(
            spent < full / 3.0,
            "the worker went on after the deadline: {spent:.2} s of a {full:.2} s batch"
        );
        let m = sc.model("faces").await;
        assert_eq!(m.state, ModelState::Ready as i32, "{m:?}");
        assert_eq!(m.worker_pid, before.1, "the worker was not killed");
        assert_eq!(m.restarts, 0, "{m:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    // A call with a deadline of its own is served by the same worker.
    let mut req = tonic::Request::new(ProcessBatchRequest {
        images: vec![encoded(jpeg.clone())],
        ..batch()
    });
    req.set_timeout(Duration::from_secs(30));
    let r = client
        .process_batch(req)
        .await
        .expect("served")
        .into_inner();
    assert_eq!(r.results.len(), 1);
    let m = sc.model("faces").await;
    assert_eq!((m.worker_pid, m.restarts), (before.1, 0));
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    assert_eq!(sc.child.id(), before.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_pictures_are_numbered_consecutively_however_the_stream_is_split() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = pids(&sc).await;
    let (small, small_n) = e2e::vision::b_frame_stream(64, 48, 30);
    // 640x480: a 64 KiB chunk holds fewer than max_pictures_per_chunk (64).
    let (large, large_n) = e2e::vision::b_frame_stream(640, 480, 300);
    eprintln!(
        "streams: {} bytes ({small_n} pictures), {} bytes ({large_n} pictures)",
        small.len(),
        large.len()
    );
    // Chunk sizes from 1 to 65536; each chunk carries the client's own
    // message number as its index (ignored after the first, whose index
    // is where numbering starts), and the flush another.
    for size in [1usize, 2, 3, 5, 17, 64, 333, 1000, 4096, 7919, 20000, 65536] {
        let (stream, pictures) = if size < 1000 {
            (&small, small_n)
        } else {
            (&large, large_n)
        };
        let first = 1000 + size as u64;
        let mut msgs = vec![config(OverflowPolicy::Unspecified, 16)];
        for (k, c) in stream.chunks(size).enumerate() {
            let index = if k == 0 { first } else { k as u64 };
            msgs.push(h264_chunk(index, c));
        }
        let chunks = msgs.len() - 1;
        msgs.push(flush(chunks as u64 + 1));
        let (results, err) = run_stream(&mut client, msgs).await;
        assert!(err.is_none(), "chunks of {size}: {err:?}");
        let indices: Vec<u64> = results.iter().map(|r| r.frame_index).collect();
        assert_eq!(
            indices,
            (first..first + pictures).collect::<Vec<u64>>(),
            "chunks of {size} bytes ({chunks} chunks): every picture once, numbered on from the first chunk's index"
        );
    }
    // Without indices, numbering starts at 0.
    let mut msgs = vec![config(OverflowPolicy::Unspecified, 16)];
    msgs.extend(large.chunks(30000).map(|c| h264_chunk(0, c)));
    msgs.push(flush(0));
    let (results, err) = run_stream(&mut client, msgs).await;
    assert!(err.is_none(), "{err:?}");
    let indices: Vec<u64> = results.iter().map(|r| r.frame_index).collect();
    assert_eq!(indices, (0..large_n).collect::<Vec<u64>>());
    unharmed(&sc, &mut client, before).await;
}
