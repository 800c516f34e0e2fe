//! VisionService streams: a Y4M video's frames with back-pressure (a file:
//! every frame) or drops (`--live`: a camera's pace), and an H.264 file in
//! chunks. Y4M (`ffmpeg -i in.mp4 -pix_fmt yuv420p out.y4m`) keeps this
//! crate free of native video libraries: its frames are I420 as they are.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    FaceDetectionTask, Frame, OverflowPolicy, PixelFormat, ProcessRequest, RawImage, StreamConfig,
    VisionTask, frame, process_request, vision_task,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::conn::{Call, MAX_MESSAGE_BYTES, connect, show};

fn config(model: &str, max_pending: u32, overflow: OverflowPolicy) -> ProcessRequest {
    let faces = VisionTask {
        task: Some(vision_task::Task::Faces(FaceDetectionTask {
            min_score: 0.5,
            ..Default::default()
        })),
    };
    ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: model.into(),
            tasks: vec![faces],
            max_pending_frames: max_pending,
            overflow: overflow as i32,
        })),
    }
}

fn frame_msg(index: u64, timestamp_us: i64, data: frame::Data) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            index,
            timestamp_us,
            data: Some(data),
            ..Default::default()
        })),
    }
}

/// A YUV4MPEG2 file: its size, frame rate and 4:2:0 frames.
#[derive(Debug)]
struct Y4m {
    width: u32,
    height: u32,
    fps: f64,
    frames: Vec<Vec<u8>>,
}

fn parse_y4m(data: &[u8]) -> Result<Y4m, String> {
    let end = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no Y4M header line")?;
    let header = std::str::from_utf8(&data[..end]).map_err(|_| "Y4M header is not text")?;
    let mut words = header.split(' ');
    if words.next() != Some("YUV4MPEG2") {
        return Err("not a YUV4MPEG2 file".into());
    }
    let (mut w, mut h, mut fps) = (0u32, 0u32, 25.0f64);
    for word in words {
        let (k, v) = word.split_at(1.min(word.len()));
        match k {
            "W" => w = v.parse().map_err(|_| format!("Y4M width {v:?}"))?,
            "H" => h = v.parse().map_err(|_| format!("Y4M height {v:?}"))?,
            "F" => {
                let (n, d) = v.split_once(':').ok_or(format!("Y4M rate {v:?}"))?;
                let (n, d): (f64, f64) = (n.parse().unwrap_or(25.0), d.parse().unwrap_or(1.0));
                if n > 0.0 && d > 0.0 {
                    fps = n / d;
                }
            }
            "C" if !v.starts_with("420") => {
                return Err(format!("Y4M colour space C{v}: only 4:2:0"));
            }
            _ => {}
        }
    }
    if !(1..=16384).contains(&w) || !(1..=16384).contains(&h) || w % 2 == 1 || h % 2 == 1 {
        return Err(format!("Y4M size {w}x{h}: even, 2..16384"));
    }
    let size = (w as usize) * (h as usize) * 3 / 2;
    let mut frames = Vec::new();
    let mut at = end + 1;
    while at < data.len() {
        let nl = data[at..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("Y4M frame header cut")?;
        if !data[at..].starts_with(b"FRAME") {
            return Err(format!("Y4M frame {} has no FRAME header", frames.len()));
        }
        let start = at + nl + 1;
        let stop = start.checked_add(size).filter(|&s| s <= data.len());
        let stop = stop.ok_or(format!("Y4M frame {} is cut", frames.len()))?;
        frames.push(data[start..stop].to_vec());
        at = stop;
    }
    Ok(Y4m {
        width: w,
        height: h,
        fps,
        frames,
    })
}

#[derive(Debug, clap::Args)]
pub(crate) struct VideoArgs {
    /// A VISION model.
    #[arg(long, default_value = "faces")]
    model: String,
    /// A YUV4MPEG2 (4:2:0) file.
    #[arg(long)]
    y4m: std::path::PathBuf,
    /// Frames in flight at most.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    window: u32,
    /// Frames the server queues for the stream, 1..64.
    #[arg(long, default_value_t = 4)]
    max_pending: u32,
    /// Pace at the video's rate and drop frames instead of waiting.
    #[arg(long)]
    live: bool,
}

pub(crate) async fn video(target: &str, call: &Call, a: VideoArgs) -> Result<(), String> {
    let data = tokio::fs::read(&a.y4m)
        .await
        .map_err(|e| format!("{}: {e}", a.y4m.display()))?;
    let video = parse_y4m(&data)?;
    let mode = if a.live { "live" } else { "file" };
    println!(
        "video: {}x{} at {:.0} fps, {} frames, {mode} mode, window {}",
        video.width,
        video.height,
        video.fps,
        video.frames.len(),
        a.window
    );
    let overflow = if a.live {
        OverflowPolicy::DropOldest
    } else {
        OverflowPolicy::Unspecified
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(config(&a.model, a.max_pending, overflow))
        .await
        .map_err(|e| e.to_string())?;
    let window = Arc::new(Semaphore::new(a.window as usize));
    let dropped_locally = Arc::new(AtomicU64::new(0));
    let (w, h, fps, live) = (video.width, video.height, video.fps, a.live);
    let total = video.frames.len() as u64;
    let producer = {
        let (window, dropped) = (window.clone(), dropped_locally.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut sent = 0u64;
            for (n, pixels) in video.frames.into_iter().enumerate() {
                let due = Duration::from_secs_f64(n as f64 / fps);
                if live {
                    tokio::time::sleep_until(started + due).await;
                    match window.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(_) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                } else {
                    match window.acquire().await {
                        Ok(p) => p.forget(), // back-pressure: wait for a result
                        Err(_) => break,
                    }
                }
                let raw = RawImage {
                    width: w,
                    height: h,
                    format: PixelFormat::I420 as i32,
                    data: pixels.into(),
                    ..Default::default()
                };
                let ts = due.as_micros() as i64;
                if tx
                    .send(frame_msg(sent, ts, frame::Data::Raw(raw)))
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            sent
        })
    };
    let mut client = VisionServiceClient::new(connect(target).await?)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let started = Instant::now();
    let req = call
        .request(ReceiverStream::new(rx))
        .map_err(|e| show(&e))?;
    let mut s = call
        .within(client.process(req))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let (mut results, mut processed, mut server_dropped, mut with_faces) = (0u64, 0u64, 0u64, 0u64);
    while let Some(r) = call.within(s.message()).await.map_err(|e| show(&e))? {
        window.add_permits(1);
        results += 1;
        if r.dropped {
            server_dropped += 1;
            continue;
        }
        processed += 1;
        with_faces += u64::from(!r.faces.is_empty());
        if processed <= 3 {
            let ms = r.timings.map_or(0.0, |t| t.total_us as f64 / 1000.0);
            println!(
                "frame {}: {}x{}, {} faces, {ms:.1} ms",
                r.frame_index,
                r.width,
                r.height,
                r.faces.len()
            );
        }
    }
    window.close();
    let sent = producer.await.map_err(|e| e.to_string())?;
    let local = dropped_locally.load(Ordering::Relaxed);
    println!(
        "frames read={total} sent={sent} results={results} processed={processed} dropped_by_server={server_dropped} dropped_locally={local} with_faces={with_faces} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if results != sent || sent + local != total || processed == 0 {
        return Err("the counts do not add up".into());
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct H264Args {
    /// A VISION model.
    #[arg(long, default_value = "faces")]
    model: String,
    /// An H.264 Annex-B file.
    #[arg(long)]
    file: std::path::PathBuf,
    /// Bytes per message.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=(4 << 20)))]
    chunk: u32,
}

pub(crate) async fn h264(target: &str, call: &Call, a: H264Args) -> Result<(), String> {
    let data = tokio::fs::read(&a.file)
        .await
        .map_err(|e| format!("{}: {e}", a.file.display()))?;
    let mut msgs = vec![config(&a.model, 8, OverflowPolicy::Unspecified)];
    let chunks = data.chunks(a.chunk as usize);
    let n = chunks.len();
    msgs.extend(chunks.map(|c| frame_msg(0, 0, frame::Data::H264(c.to_vec().into()))));
    msgs.push(ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            flush: true,
            ..Default::default()
        })),
    });
    let mut client = VisionServiceClient::new(connect(target).await?);
    let req = call
        .request(tokio_stream::iter(msgs))
        .map_err(|e| show(&e))?;
    let mut s = call
        .within(client.process(req))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let (mut indices, mut size) = (Vec::new(), (0, 0));
    while let Some(r) = call.within(s.message()).await.map_err(|e| show(&e))? {
        indices.push(r.frame_index);
        size = (r.width, r.height);
    }
    let in_order = indices.iter().copied().eq(0..indices.len() as u64);
    println!(
        "h264: {} bytes in {n} chunks of {}, pictures={} size={}x{} in order: {in_order}",
        data.len(),
        a.chunk,
        indices.len(),
        size.0,
        size.1
    );
    if indices.is_empty() || !in_order {
        return Err("no pictures, or out of order".into());
    }
    Ok(())
}
