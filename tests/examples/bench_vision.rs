//! The VISION benchmark (`scripts/bench.sh vision`): end-to-end frames per
//! second of a face-detection stream (tonic client → sidecar → ipc →
//! worker-vision, BlazeFace through LiteRT) against the same processing
//! in-process (`worker-vision/examples/vision_direct.rs`), interleaved,
//! at 640x480 and 1280x720. Prints a Markdown report.
//!
//! Environment (set by `scripts/bench.sh`): `VISION_DIRECT`, `BENCH_REPS`
//! (default 3), `BENCH_SECONDS` (default 3).
#![allow(clippy::print_stdout)] // The report is this tool's output.

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

/// The same frames as `vision_direct`'s.
fn frame_bytes(w: usize, h: usize, k: usize) -> Vec<u8> {
    (0..w * h * 3)
        .map(|i| ((i / 3 % w + i / 3 / w + 7 * k + (i % 3) * 50) % 256) as u8)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One stream run: its FPS and the worker's mean per-frame timings.
struct Run {
    fps: f64,
    decode_us: u64,
    process_us: u64,
    total_us: u64,
}

async fn stream_fps(
    client: &mut VisionServiceClient<tonic::transport::Channel>,
    w: usize,
    h: usize,
    seconds: f64,
) -> Res<Run> {
    let frames: Vec<tonic::codegen::Bytes> = (0..8).map(|k| frame_bytes(w, h, k).into()).collect();
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
    let end = start + Duration::from_secs_f64(seconds);
    let sender = tokio::spawn(async move {
        let mut k = 0usize;
        while Instant::now() < end {
            let f = ProcessRequest {
                msg: Some(process_request::Msg::Frame(Frame {
                    index: k as u64,
                    data: Some(frame::Data::Raw(RawImage {
                        width: w as u32,
                        height: h as u32,
                        format: PixelFormat::Bgr8 as i32,
                        stride: 0,
                        data: frames[k % frames.len()].clone(),
                    })),
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
    let n64 = n.max(1) as u64;
    Ok(Run {
        fps: n as f64 / start.elapsed().as_secs_f64(),
        decode_us: dec / n64,
        process_us: pro / n64,
        total_us: tot / n64,
    })
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
            "[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{MODEL}\"\nvision = {{ threads = 1 }}\n"
        ),
    );
    sc.ready("faces").await;
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
    println!(
        "| stream | sidecar FPS | in-process FPS | ratio | worker decode / process / arrival-to-result (µs) |"
    );
    println!("|---|---:|---:|---:|---|");
    for (w, h) in [(640usize, 480usize), (1280, 720)] {
        let (mut ours, mut refs, mut last) = (Vec::new(), Vec::new(), None);
        for _ in 0..reps {
            let out = Command::new(&direct)
                .arg(root().join("runtime/litert/libLiteRt.so"))
                .arg(root().join("models").join(MODEL))
                .args([w.to_string(), h.to_string(), seconds.to_string()])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let fps: f64 = text
                .trim()
                .strip_prefix("fps=")
                .ok_or_else(|| {
                    format!(
                        "vision_direct: {text} {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?
                .parse()?;
            refs.push(fps);
            let run = stream_fps(&mut client, w, h, seconds).await?;
            ours.push(run.fps);
            last = Some(run);
        }
        let (o, r) = (median(ours), median(refs));
        let t = last.ok_or("no runs")?;
        println!(
            "| {w}x{h} BGR, BlazeFace | {o:.1} | {r:.1} | {:.0}% | {} / {} / {} |",
            100.0 * o / r,
            t.decode_us,
            t.process_us,
            t.total_us
        );
    }
    println!("\nRatio: sidecar FPS / in-process FPS.");
    Ok(())
}
