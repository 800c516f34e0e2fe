//! VISION tasks end to end on the real sidecar: template matching, auto-crop,
//! tracking with trajectories, and H.264 streams made by ffmpeg.

use e2e::serial;
use e2e::vision::{FACE, astronaut, config, iou, sidecar};
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    Box as PixelBox, Frame, Image, OverflowPolicy, PixelFormat, ProcessBatchRequest,
    ProcessRequest, RawImage, StreamConfig, TrackingTask, VisionTask, frame, image,
    process_request, vision_task,
};
use tonic::Code;
use tonic::transport::Channel;

/// A deterministic texture, BGR, `w`x`h`, shifted right by `dx` and down by
/// `dy` (what scrolls in from the edge is texture too): smooth structure at
/// several scales that never repeats within the frame, plus pixel noise.
fn texture(w: usize, h: usize, dx: usize, dy: usize) -> Vec<u8> {
    let value = |x: f64, y: f64, c: f64| -> u8 {
        let smooth = 60.0 * (x / 9.3 + c).sin() * (y / 7.1).cos()
            + 45.0 * ((x + 2.0 * y) / 23.7 + c * 0.7).sin()
            + 30.0 * ((x * x + y * y).sqrt() / 17.9).sin();
        let hash =
            ((x as u64 * 73_856_093) ^ (y as u64 * 19_349_663) ^ (c as u64 * 83_492_791)) % 17;
        (128.0 + smooth + hash as f64).clamp(0.0, 255.0) as u8
    };
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                out.push(value(
                    (x + 1000 - dx) as f64,
                    (y + 1000 - dy) as f64,
                    c as f64,
                ));
            }
        }
    }
    out
}

fn raw_bgr(w: u32, h: u32, data: Vec<u8>) -> Image {
    Image {
        data: Some(image::Data::Raw(RawImage {
            width: w,
            height: h,
            format: PixelFormat::Bgr8 as i32,
            stride: 0,
            data: data.into(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_template_from_another_frame_is_found_within_two_pixels() {
    use sidecar_proto::v1::{MatchMethod, TemplateMatchingTask};
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let (w, h) = (320usize, 240usize);
    // The template: a 48x36 patch of frame A at (100, 80), with noise.
    let a = texture(w, h, 0, 0);
    let (tx, ty, tw, th) = (100usize, 80usize, 48usize, 36usize);
    let mut patch = Vec::with_capacity(tw * th * 3);
    for y in ty..ty + th {
        for x in tx..tx + tw {
            for c in 0..3 {
                let noise = ((x * 31 + y * 17 + c * 7) % 21) as i32 - 10;
                patch.push((i32::from(a[(y * w + x) * 3 + c]) + noise).clamp(0, 255) as u8);
            }
        }
    }
    // Searched in frame B, where everything moved 7 px right and 3 down.
    let b = raw_bgr(w as u32, h as u32, texture(w, h, 7, 3));
    let task = |grayscale: bool, scale: f32| VisionTask {
        task: Some(vision_task::Task::TemplateMatching(TemplateMatchingTask {
            template: Some(raw_bgr(tw as u32, th as u32, patch.clone())),
            method: MatchMethod::CcoeffNormed as i32,
            grayscale,
            scale,
            min_score: 0.5,
        })),
    };
    for (grey, scale) in [(false, 1.0), (true, 1.0), (true, 0.5)] {
        let r = client
            .process_batch(ProcessBatchRequest {
                model_id: "faces".into(),
                task: Some(task(grey, scale)),
                images: vec![b.clone()],
            })
            .await
            .expect("batch")
            .into_inner();
        let m = r.results[0].template_match.expect("a match");
        let found = m.r#box.expect("box");
        eprintln!("grey {grey} scale {scale}: {found:?} score {}", m.score);
        assert!(m.found, "{m:?}");
        assert!(
            (found.x - 107.0).abs() <= 2.0 && (found.y - 83.0).abs() <= 2.0,
            "grey {grey} scale {scale}: {found:?}, expected (107, 83)"
        );
        assert_eq!((found.width, found.height), (tw as f32, th as f32));
    }

    // In a stream, every frame gets its match.
    let stream = vec![
        ProcessRequest {
            msg: Some(process_request::Msg::Config(StreamConfig {
                model_id: "faces".into(),
                tasks: vec![task(true, 1.0)],
                ..Default::default()
            })),
        },
        ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                index: 1,
                data: Some(frame::Data::Raw(RawImage {
                    width: w as u32,
                    height: h as u32,
                    format: PixelFormat::Bgr8 as i32,
                    stride: 0,
                    data: texture(w, h, 7, 3).into(),
                })),
                ..Default::default()
            })),
        },
    ];
    let mut s = client
        .process(tokio_stream::iter(stream))
        .await
        .expect("open")
        .into_inner();
    let r = s.message().await.expect("result").expect("one");
    let found = r.template_match.expect("match").r#box.expect("box");
    assert!(
        (found.x - 107.0).abs() <= 2.0 && (found.y - 83.0).abs() <= 2.0,
        "{found:?}"
    );

    // A template larger than the frame, and a scale out of range.
    let small = raw_bgr(20, 20, vec![0u8; 20 * 20 * 3]);
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(task(false, 1.0)),
            images: vec![small],
        })
        .await
        .expect_err("too small");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("images[0]") && err.message().contains("smaller than the template"),
        "{}",
        err.message()
    );
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(task(false, 1.5)),
            images: vec![b],
        })
        .await
        .expect_err("scale");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("scale 1.5"), "{}", err.message());
}

/// A dark 320x180 BGR frame with a bright textured 30x30 square centred at
/// (`cx`, 90).
fn square_frame(cx: usize) -> Vec<u8> {
    let (w, h) = (320usize, 180usize);
    let mut out = vec![20u8; w * h * 3];
    for y in 75..105 {
        for x in cx - 15..cx + 15 {
            for c in 0..3 {
                out[(y * w + x) * 3 + c] = 160 + ((x * 7 + y * 13 + c * 5) % 90) as u8;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_crop_follows_faces_and_salient_motion_smoothly() {
    use sidecar_proto::v1::{AutoCropTask, CropFocus};
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let crop = |focus: CropFocus| VisionTask {
        task: Some(vision_task::Task::AutoCrop(AutoCropTask {
            aspect_ratio: 9.0 / 16.0,
            focus: focus as i32,
            smoothing: 0.0,
            max_shift: 0.0,
        })),
    };

    // Faces: a 9:16 window over the square photograph, around the face.
    let r = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(crop(CropFocus::Unspecified)),
            images: vec![astronaut()],
        })
        .await
        .expect("crop")
        .into_inner();
    let window = r.results[0].crop.clone().expect("a window");
    let b = window.r#box.expect("box");
    eprintln!("faces: {b:?}");
    assert_eq!(window.focus, "faces");
    assert!(
        (b.height - 512.0).abs() < 0.5 && (b.width - 288.0).abs() < 0.5,
        "{b:?}"
    );
    assert!(
        b.x <= FACE.x && b.x + b.width >= FACE.x + FACE.width,
        "the face is inside {b:?}"
    );

    // Saliency: a bright square moving right 12 px a frame.
    let mut frames = vec![ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![crop(CropFocus::Saliency)],
            ..Default::default()
        })),
    }];
    let positions: Vec<usize> = (0..20).map(|i| 40 + 12 * i).collect();
    for (i, &cx) in positions.iter().enumerate() {
        frames.push(ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                index: i as u64,
                data: Some(frame::Data::Raw(RawImage {
                    width: 320,
                    height: 180,
                    format: PixelFormat::Bgr8 as i32,
                    stride: 0,
                    data: square_frame(cx).into(),
                })),
                ..Default::default()
            })),
        });
    }
    let mut s = client
        .process(tokio_stream::iter(frames))
        .await
        .expect("open")
        .into_inner();
    let mut centres = Vec::new();
    while let Some(r) = s.message().await.expect("ends cleanly") {
        let w = r.crop.expect("a window");
        assert_eq!(w.focus, "saliency");
        let b = w.r#box.expect("box");
        assert!(
            (b.height - 180.0).abs() < 0.5 && (b.width - 101.25).abs() < 0.5,
            "{b:?}"
        );
        assert!(
            b.x >= -0.01 && b.x + b.width <= 320.01,
            "inside the frame: {b:?}"
        );
        centres.push(b.x + b.width / 2.0);
    }
    eprintln!("saliency centres: {centres:?}");
    assert_eq!(centres.len(), 20);
    // The first window is on the square; then it follows, smoothly: no
    // step beyond the default 5% of the width, never backwards.
    assert!(
        (centres[0] - 50.6).abs() < 25.0,
        "first window at {}",
        centres[0]
    );
    for pair in centres.windows(2) {
        let step = pair[1] - pair[0];
        assert!((-0.5..=16.01).contains(&step), "step {step} in {centres:?}");
    }
    assert!(
        centres[19] > centres[0] + 100.0,
        "it followed the square: {centres:?}"
    );
}

/// A 320x240 BGR frame: a smooth background and a distinct textured 40x40
/// object with its top-left corner at (`x`, `y`).
fn object_frame(x: usize, y: usize) -> Vec<u8> {
    let mut out = texture(320, 240, 0, 0);
    for v in out.iter_mut() {
        *v /= 3;
    }
    for yy in y..y + 40 {
        for xx in x..x + 40 {
            for c in 0..3 {
                let (dx, dy) = (xx - x, yy - y);
                out[(yy * 320 + xx) * 3 + c] = if (dx / 8 + dy / 8 + c) % 2 == 0 {
                    250
                } else {
                    90
                };
            }
        }
    }
    out
}

async fn track(
    client: &mut VisionServiceClient<Channel>,
    tracker: sidecar_proto::v1::TrackerType,
) -> Vec<sidecar_proto::v1::ProcessResponse> {
    let start = PixelBox {
        x: 40.0,
        y: 60.0,
        width: 40.0,
        height: 40.0,
    };
    let mut frames = vec![ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![VisionTask {
                task: Some(vision_task::Task::Tracking(TrackingTask {
                    tracker: tracker as i32,
                    initial_boxes: vec![start],
                    trajectory_length: 8,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })),
    }];
    for i in 0..20usize {
        frames.push(ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                index: i as u64,
                data: Some(frame::Data::Raw(RawImage {
                    width: 320,
                    height: 240,
                    format: PixelFormat::Bgr8 as i32,
                    stride: 0,
                    data: object_frame(40 + 5 * i, 60 + 2 * i).into(),
                })),
                ..Default::default()
            })),
        });
    }
    let mut s = client
        .process(tokio_stream::iter(frames))
        .await
        .expect("open")
        .into_inner();
    let mut results = Vec::new();
    while let Some(r) = s.message().await.expect("ends cleanly") {
        results.push(r);
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_object_keeps_its_id_and_its_trajectory() {
    use sidecar_proto::v1::TrackerType;
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    for tracker in [TrackerType::Csrt, TrackerType::Kcf, TrackerType::Medianflow] {
        let results = track(&mut client, tracker).await;
        assert_eq!(results.len(), 20, "{tracker:?}");
        let mut worst = 1.0f32;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.tracks.len(), 1, "{tracker:?} frame {i}: {:?}", r.tracks);
            let t = &r.tracks[0];
            assert_eq!(t.track_id, 1, "{tracker:?}: the id is stable");
            let truth = PixelBox {
                x: (40 + 5 * i) as f32,
                y: (60 + 2 * i) as f32,
                width: 40.0,
                height: 40.0,
            };
            let v = iou(&t.r#box.expect("box"), &truth);
            worst = worst.min(v);
            assert!(
                t.visible && v >= 0.5,
                "{tracker:?} frame {i}: IoU {v}, {:?}",
                t.r#box
            );
            assert_eq!(t.trajectory.len(), (i + 1).min(8), "bounded trajectory");
            assert_eq!(t.trajectory.last().expect("point").frame_index, i as u64);
        }
        eprintln!("{tracker:?}: lowest IoU {worst:.2} over 20 frames");
    }
}

/// An H.264 Annex-B stream made by ffmpeg (x264, High profile, up to 3
/// B-frames), and its frame count as ffprobe reads it.
fn ffmpeg_h264(w: u32, h: u32, frames: u32) -> (Vec<u8>, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stream.264");
    let x264 = ["-profile:v", "high", "-bf", "3", "-g", "24"];
    e2e::vision::ffmpeg_h264(&path, w as usize, h as usize, frames, &x264)
        .unwrap_or_else(|e| panic!("{e}"));
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames,has_b_frames"])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&probe.stdout).to_string();
    let field = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{k} not in ffprobe's {text:?}"))
    };
    assert!(field("has_b_frames") > 0, "a stream with B-frames: {text}");
    (
        std::fs::read(&path).expect("stream"),
        field("nb_read_frames"),
    )
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
    msgs.push(ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            flush: true,
            ..Default::default()
        })),
    });
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
        ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                flush: true,
                ..Default::default()
            })),
        },
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
    msgs.push(ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            flush: true,
            ..Default::default()
        })),
    });
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
