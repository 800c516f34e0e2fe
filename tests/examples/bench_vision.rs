//! The VISION benchmark (`scripts/bench.sh vision`): end-to-end frames per
//! second of a face-detection stream (tonic client → sidecar → ipc →
//! worker-vision, BlazeFace through LiteRT) against the same processing
//! in-process (`worker-vision/examples/vision_direct.rs`), interleaved:
//! raw BGR frames at 640x480 and 1280x720, and a 1280x720 H.264 stream made
//! by ffmpeg. Reports the CPU time each process spent per frame beside the
//! rates, and what the machine's cores allow at that cost. Prints a
//! Markdown report.
//!
//! Environment (set by `scripts/bench.sh`): `VISION_DIRECT`, `BENCH_REPS`
//! (default 3), `BENCH_SECONDS` (default 3), `BENCH_SIZES` (default
//! `640x480,1280x720,1280x720/h264`), `BENCH_CONFIG` (TOML put before the
//! model in the sidecar's config, e.g. a `[workers]` table).
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Sidecar, add_model, root, store};
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    FaceDetectionTask, Frame, PixelFormat, ProcessRequest, RawImage, StreamConfig, VisionTask,
    frame, process_request, vision_task,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MODEL: &str = "mediapipe/face_detection_short_range.tflite";

/// Bytes per H.264 message (`vision_direct` is told the same).
const H264_CHUNK: usize = 64 << 10;

/// The same frames as `vision_direct`'s.
fn frame_bytes(w: usize, h: usize, k: usize) -> Vec<u8> {
    (0..w * h * 3)
        .map(|i| ((i / 3 % w + i / 3 / w + 7 * k + (i % 3) * 50) % 256) as u8)
        .collect()
}

/// One run of the in-process reference: its FPS.
fn in_process_fps(direct: &str, source: &Source, seconds: f64) -> Res<f64> {
    let out = Command::new(direct)
        .arg(root().join("runtime/litert/libLiteRt.so"))
        .arg(root().join("models").join(MODEL))
        .args([
            source.w.to_string(),
            source.h.to_string(),
            seconds.to_string(),
        ])
        .args(
            source
                .h264
                .iter()
                .flat_map(|f| [f.as_os_str().to_owned(), H264_CHUNK.to_string().into()]),
        )
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fps = text.trim().strip_prefix("fps=").ok_or_else(|| {
        format!(
            "vision_direct: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(fps.parse()?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One stream run: its FPS, the worker's mean per-frame timings and the
/// CPU time each process spent per frame.
struct Run {
    fps: f64,
    decode_us: u64,
    process_us: u64,
    total_us: u64,
    cpu: Cpu,
}

/// The processes of a run, by pid.
#[derive(Clone, Copy)]
struct Pids {
    client: u32,
    supervisor: u32,
    worker: u32,
}

/// CPU time (user + system) in milliseconds per processed frame.
#[derive(Default, Clone, Copy)]
struct Cpu {
    client: f64,
    supervisor: f64,
    worker: f64,
}

fn cpu(pid: u32) -> Res<f64> {
    Ok(e2e::cpu_seconds(pid).ok_or_else(|| format!("no CPU time for pid {pid}"))?)
}

impl Pids {
    fn cpu(&self) -> Res<[f64; 3]> {
        Ok([cpu(self.client)?, cpu(self.supervisor)?, cpu(self.worker)?])
    }
}

/// What a run streams: raw BGR frames of a size, or an H.264 file in the
/// chunks `vision_direct` feeds its decoder, over and over.
#[derive(Debug, Clone)]
struct Source {
    w: usize,
    h: usize,
    h264: Option<PathBuf>,
}

impl Source {
    fn label(&self) -> String {
        let kind = if self.h264.is_some() { "H.264" } else { "BGR" };
        format!("{}x{} {kind}", self.w, self.h)
    }

    /// The messages' data, sent in turn.
    fn data(&self) -> Res<Vec<frame::Data>> {
        let Some(file) = &self.h264 else {
            return Ok((0..8)
                .map(|k| {
                    frame::Data::Raw(RawImage {
                        shm: Default::default(),
                        width: self.w as u32,
                        height: self.h as u32,
                        format: PixelFormat::Bgr8 as i32,
                        stride: 0,
                        data: frame_bytes(self.w, self.h, k).into(),
                    })
                })
                .collect());
        };
        let stream = tonic::codegen::Bytes::from(std::fs::read(file)?);
        Ok((0..stream.len())
            .step_by(H264_CHUNK)
            .map(|at| frame::Data::H264(stream.slice(at..(at + H264_CHUNK).min(stream.len()))))
            .collect())
    }
}

/// An H.264 stream of `w`x`h` made by ffmpeg: x264 as a camera streams
/// (no B-frames), one IDR at its start, so it can be sent over and over.
fn camera_h264(dir: &Path, w: usize, h: usize) -> Res<PathBuf> {
    let path = dir.join(format!("{w}x{h}.264"));
    let x264 = ["-preset", "veryfast", "-tune", "zerolatency", "-g", "120"];
    e2e::vision::ffmpeg_h264(&path, w, h, 120, &x264)?;
    Ok(path)
}

async fn stream_fps(
    client: &mut VisionServiceClient<tonic::transport::Channel>,
    pids: Pids,
    source: &Source,
    seconds: f64,
) -> Res<Run> {
    let data = source.data()?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![VisionTask {
                task: Some(vision_task::Task::Faces(FaceDetectionTask::default())),
            }],
            max_pending_frames: 4,
            ..Default::default()
        })),
    })
    .await?;
    let mut results = client
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let start = Instant::now();
    let cpu_before = pids.cpu()?;
    let end = start + Duration::from_secs_f64(seconds);
    let sender = tokio::spawn(async move {
        let mut k = 0usize;
        while Instant::now() < end {
            let f = ProcessRequest {
                msg: Some(process_request::Msg::Frame(Frame {
                    data: Some(data[k % data.len()].clone()),
                    ..Default::default()
                })),
            };
            if tx.send(f).await.is_err() {
                break;
            }
            k += 1;
        }
    });
    let mut n = 0usize;
    let (mut dec, mut pro, mut tot) = (0u64, 0u64, 0u64);
    while let Some(r) = results.message().await? {
        assert!(!r.dropped);
        n += 1;
        let t = r.timings.unwrap_or_default();
        dec += t.decode_us;
        pro += t.process_us;
        tot += t.total_us;
    }
    sender.await?;
    let cpu_after = pids.cpu()?;
    let per_frame = |i: usize| 1000.0 * (cpu_after[i] - cpu_before[i]) / n.max(1) as f64;
    let n64 = n.max(1) as u64;
    Ok(Run {
        cpu: Cpu {
            client: per_frame(0),
            supervisor: per_frame(1),
            worker: per_frame(2),
        },
        fps: n as f64 / start.elapsed().as_secs_f64(),
        decode_us: dec / n64,
        process_us: pro / n64,
        total_us: tot / n64,
    })
}

/// The streams to run: `BENCH_SIZES` ("640x480,1280x720,1280x720/h264":
/// raw BGR frames of a size, or an H.264 stream of it), else those three.
fn sources(dir: &Path) -> Res<Vec<Source>> {
    let list =
        std::env::var("BENCH_SIZES").unwrap_or_else(|_| "640x480,1280x720,1280x720/h264".into());
    list.split(',')
        .map(|s| {
            let (size, h264) = match s.trim().split_once('/') {
                Some((size, "h264")) => (size, true),
                None => (s.trim(), false),
                Some(_) => return Err("BENCH_SIZES: WIDTHxHEIGHT[/h264],...".into()),
            };
            let (w, h) = size
                .split_once('x')
                .ok_or("BENCH_SIZES: WIDTHxHEIGHT[/h264],...")?;
            let (w, h) = (w.parse()?, h.parse()?);
            let h264 = if h264 {
                Some(camera_h264(dir, w, h)?)
            } else {
                None
            };
            Ok(Source { w, h, h264 })
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    // The client keeps freed memory as the sidecar's processes do, so its
    // own allocations do not skew the machine's two cores.
    ipc::malloc::keep_freed_memory();
    let direct = std::env::var("VISION_DIRECT")
        .map_err(|_| "VISION_DIRECT is not set (run scripts/bench.sh vision)")?;
    let reps: usize = std::env::var("BENCH_REPS").map_or(Ok(3), |v| v.parse())?;
    let seconds: f64 = std::env::var("BENCH_SECONDS").map_or(Ok(3.0), |v| v.parse())?;
    let store = store();
    add_model(&store, MODEL);
    let sc = Sidecar::start(
        store,
        &format!(
            "{}[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{MODEL}\"\nvision = {{ threads = 1 }}\n",
            std::env::var("BENCH_CONFIG").unwrap_or_default()
        ),
    );
    let pids = Pids {
        client: std::process::id(),
        supervisor: sc.child.id(),
        worker: sc.ready("faces").await.worker_pid,
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", sc.api))?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await?;
    let mut client = VisionServiceClient::new(channel).max_decoding_message_size(64 << 20);
    println!(
        "Machine: {} cores; 1 thread; median over {reps} interleaved runs of {seconds} s.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "| stream | sidecar FPS | in-process FPS | ratio | worker decode / process / arrival-to-result (µs) | CPU ms per frame: client / supervisor / worker (in-process) | CPU-bound FPS on {cores} cores |"
    );
    println!("|---|---:|---:|---:|---|---|---:|");
    let dir = tempfile::tempdir()?;
    for source in sources(dir.path())? {
        let (mut runs, mut refs) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            refs.push(in_process_fps(&direct, &source, seconds)?);
            runs.push(stream_fps(&mut client, pids, &source, seconds).await?);
        }
        runs.sort_by(|a, b| a.fps.total_cmp(&b.fps));
        let (t, r) = (&runs[runs.len() / 2], median(refs));
        let c = t.cpu;
        println!(
            "| {}, BlazeFace | {:.1} | {r:.1} | {:.0}% | {} / {} / {} | {:.2} / {:.2} / {:.2} ({:.2}) | {:.0} |",
            source.label(),
            t.fps,
            100.0 * t.fps / r,
            t.decode_us,
            t.process_us,
            t.total_us,
            c.client,
            c.supervisor,
            c.worker,
            1000.0 / r,
            1000.0 * cores as f64 / (c.client + c.supervisor + c.worker),
        );
    }
    println!(
        "\nRatio: sidecar FPS / in-process FPS (medians). CPU per frame: user + system time of \
         each process over the median run, divided by the frames processed; in-process, one \
         busy thread, 1000 / FPS. CPU-bound FPS: the most this machine's cores could process \
         at that CPU cost per frame, with client, supervisor and worker all on them."
    );
    Ok(())
}
