//! The MediaPipe benchmark (`scripts/bench.sh mediapipe [REPS]`): stream
//! frames per second of hands, pose and face mesh through the whole stack
//! (tonic client → sidecar → ipc → worker-vision's pipelines on LiteRT)
//! against MediaPipe's own legacy solutions in video mode in-process
//! (`scripts/bench_mediapipe_reference.py`), on the same frames in the same
//! run: per solution, the sidecar then MediaPipe, REPS times, medians.
//!
//! Frames: the 60 `track` frames of the moving-crop video
//! (`tests/fixtures/mediapipe/video.json`), each a crop of the photo decoded
//! by the reference's own OpenCV (the venv's `cv2.imread`, BGR), sent as raw
//! BGR inline over the local connection, looped with increasing timestamps
//! (33 333 µs apart, as MediaPipe's Python API stamps its frames). At most a
//! few frames are in flight (`BENCH_IN_FLIGHT`) and none is dropped (the
//! stream's overflow policy keeps every frame). As the reference, one
//! untimed pass over the 60 frames first (the first detection), then
//! BENCH_SECONDS timed.
//!
//! Threads: the worker runs every model with 1 LiteRT thread; the
//! reference's graph has `num_threads` 1 (inference is one XNNPACK thread
//! there too). Neither side is pinned; each side's CPU time per frame is
//! reported beside its rate, so what was really used is visible.
//!
//! Environment (set by `scripts/bench.sh mediapipe`): `MEDIAPIPE_PYTHON`
//! (the venv's python; default `~/.cache/sidecar/mediapipe-venv/bin/python`),
//! `BENCH_REPS` (default 3), `BENCH_SECONDS` (default 10),
//! `BENCH_SOLUTIONS` (default `hands,pose,face_mesh`), `BENCH_IN_FLIGHT`
//! (default 4, as the VISION benchmark's: the client's queue and the
//! stream's `max_pending_frames`). A row that cannot run says why, and the
//! exit status is then 2.
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{Sidecar, add_model, root, store};
use serde_json::Value;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    FaceMeshTask, Frame, HandsTask, PixelFormat, PoseTask, ProcessRequest, ProcessResponse,
    RawImage, StreamConfig, VisionTask, frame, process_request, vision_task,
};
use tonic::codegen::Bytes;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The model id of the one VISION model that serves every solution.
const MODEL_ID: &str = "mediapipe";

/// The VISION model's own file, and its companions (`[models.vision.pipeline]`
/// key, store path): MediaPipe's models for model_complexity 1, as the
/// reference runs them.
const MAIN_MODEL: &str = "mediapipe/face_detection_short_range.tflite";
const PIPELINE: [(&str, &str); 6] = [
    ("palm_detection", "mediapipe/palm_detection_full.tflite"),
    ("hand_landmark", "mediapipe/hand_landmark_full.tflite"),
    ("pose_detection", "mediapipe/pose_detection.tflite"),
    ("pose_landmark", "mediapipe/pose_landmark_full.tflite"),
    ("face_detection", MAIN_MODEL),
    ("face_landmark", "mediapipe/face_landmark.tflite"),
];

/// MediaPipe's Python API stamps frame k with k × 33 333 µs.
const FRAME_US: i64 = 33_333;

/// A solution as both sides run it.
struct Solution {
    /// Its name in `video.json` and for the reference.
    name: &'static str,
    /// The worker's detector stage (present only on frames it ran).
    detector: &'static str,
    /// The options, as the reference's.
    options: &'static str,
}

const SOLUTIONS: [Solution; 3] = [
    Solution {
        name: "hands",
        detector: "palm_detection",
        options: "max_hands 1 (the video has one hand), full models",
    },
    Solution {
        name: "pose",
        detector: "pose_detection",
        options: "pose_landmark_full, smoothing on, no segmentation",
    },
    Solution {
        name: "face_mesh",
        detector: "face_detection",
        options: "max_faces 1, refine_landmarks off",
    },
];

impl Solution {
    fn task(&self) -> vision_task::Task {
        match self.name {
            "hands" => vision_task::Task::Hands(HandsTask {
                max_hands: 1,
                ..Default::default()
            }),
            "pose" => vision_task::Task::Pose(PoseTask::default()),
            _ => vision_task::Task::FaceMesh(FaceMeshTask {
                max_faces: 1,
                ..Default::default()
            }),
        }
    }

    /// Whether a result holds this solution's subject.
    fn found(&self, r: &ProcessResponse) -> bool {
        match self.name {
            "hands" => !r.hands.is_empty(),
            "pose" => r.pose.as_ref().is_some_and(|p| !p.landmarks.is_empty()),
            _ => !r.face_meshes.is_empty(),
        }
    }
}

/// The frames of one solution: raw BGR crops of its photo.
struct Frames {
    photo: String,
    width: u32,
    height: u32,
    data: Vec<Bytes>,
}

/// The photo decoded by the reference's own OpenCV: (width, height, BGR).
fn decode(python: &PathBuf, photo: &PathBuf) -> Res<(usize, usize, Vec<u8>)> {
    if !python.is_file() {
        return Err(format!(
            "{} is missing (run scripts/mediapipe_venv.sh): its OpenCV decodes the photo",
            python.display()
        )
        .into());
    }
    const SCRIPT: &str = "import sys, cv2\n\
        im = cv2.imread(sys.argv[1], cv2.IMREAD_COLOR)\n\
        if im is None: sys.exit(sys.argv[1] + ': missing or unreadable (run scripts/setup.sh)')\n\
        sys.stdout.buffer.write(b'%d %d\\n' % (im.shape[1], im.shape[0]) + im.tobytes())\n";
    let out = Command::new(python)
        .args(["-c", SCRIPT])
        .arg(photo)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "decoding {} with OpenCV: {}",
            photo.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let nl = out
        .stdout
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header")?;
    let head = std::str::from_utf8(&out.stdout[..nl])?;
    let (w, h) = head.split_once(' ').ok_or("bad header")?;
    let (w, h): (usize, usize) = (w.parse()?, h.parse()?);
    let pixels = out.stdout[nl + 1..].to_vec();
    if pixels.len() != w * h * 3 {
        return Err(format!(
            "{}: {} bytes for {w}x{h} BGR",
            photo.display(),
            pixels.len()
        )
        .into());
    }
    Ok((w, h, pixels))
}

fn field(v: &Value, key: &str) -> Res<u64> {
    v[key]
        .as_u64()
        .ok_or_else(|| format!("video.json: `{key}` missing in {v}").into())
}

/// The `track` frames of `name` in `video.json`, cut as the reference cuts
/// them (`photo[y:y+h, x:x+w]`).
fn frames(python: &PathBuf, video: &Value, name: &str) -> Res<Frames> {
    let sol = &video["solutions"][name];
    let photo = sol["photo"].as_str().ok_or("video.json: no photo")?;
    let (pw, ph, bgr) = decode(python, &root().join("models/testdata").join(photo))?;
    if (pw as u64, ph as u64) != (field(sol, "photo_width")?, field(sol, "photo_height")?) {
        return Err(format!("{photo}: decoded {pw}x{ph}, video.json says otherwise").into());
    }
    let phase = video["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "track"))
        .ok_or("video.json: no `track` phase")?;
    let (first, count) = (
        field(phase, "first")? as usize,
        field(phase, "count")? as usize,
    );
    let list = sol["frames"].as_array().ok_or("video.json: no frames")?;
    let (cw, ch) = (field(sol, "crop_width")?, field(sol, "crop_height")?);
    let mut data = Vec::new();
    for f in list
        .get(first..first + count)
        .ok_or("video.json: too few frames")?
    {
        let (x, y, w, h) = (
            field(f, "x")?,
            field(f, "y")?,
            field(f, "w")?,
            field(f, "h")?,
        );
        let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
        if (w as u64, h as u64) != (cw, ch) || x + w > pw || y + h > ph {
            return Err(format!("video.json: crop {f} does not fit {photo} ({pw}x{ph})").into());
        }
        let mut crop = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            crop.extend_from_slice(&bgr[(row * pw + x) * 3..(row * pw + x + w) * 3]);
        }
        data.push(Bytes::from(crop));
    }
    Ok(Frames {
        photo: photo.into(),
        width: cw as u32,
        height: ch as u32,
        data,
    })
}

/// The processes of the sidecar side, by pid.
#[derive(Clone, Copy)]
struct Pids {
    client: u32,
    supervisor: u32,
    worker: u32,
}

impl Pids {
    fn cpu(&self) -> Res<[f64; 3]> {
        let one = |pid| e2e::cpu_seconds(pid).ok_or_else(|| format!("no CPU time for pid {pid}"));
        Ok([one(self.client)?, one(self.supervisor)?, one(self.worker)?])
    }
}

/// One timed stream of the sidecar side.
struct Run {
    fps: f64,
    frames: usize,
    detector_runs: usize,
    found: usize,
    /// Per stage: (frames it ran on, total µs).
    stages: BTreeMap<String, (usize, u64)>,
    /// Mean of the worker's `process_us` and `total_us` (arrival to result).
    process_us: u64,
    total_us: u64,
    /// CPU ms per frame: client, supervisor, worker.
    cpu: [f64; 3],
}

async fn sidecar_run(
    client: &mut VisionServiceClient<tonic::transport::Channel>,
    pids: Pids,
    sol: &Solution,
    frames: &Frames,
    seconds: f64,
) -> Res<Run> {
    // Frames in flight: at most this many wait in the client's channel and
    // as many in the sidecar (the stream's max_pending_frames).
    let in_flight: u32 = std::env::var("BENCH_IN_FLIGHT").map_or(Ok(4), |v| v.parse())?;
    let (tx, rx) = tokio::sync::mpsc::channel(in_flight as usize);
    tx.send(ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: MODEL_ID.into(),
            tasks: vec![VisionTask {
                task: Some(sol.task()),
            }],
            max_pending_frames: in_flight,
            ..Default::default()
        })),
    })
    .await?;
    let mut results = client
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let (stop, data, w, h) = (
            stop.clone(),
            frames.data.clone(),
            frames.width,
            frames.height,
        );
        async move {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let raw = RawImage {
                    width: w,
                    height: h,
                    format: PixelFormat::Bgr8 as i32,
                    data: data[k % data.len()].clone(),
                    ..Default::default()
                };
                let f = ProcessRequest {
                    msg: Some(process_request::Msg::Frame(Frame {
                        index: k as u64,
                        timestamp_us: k as i64 * FRAME_US,
                        data: Some(frame::Data::Raw(raw)),
                        ..Default::default()
                    })),
                };
                if tx.send(f).await.is_err() {
                    break;
                }
                k += 1;
            }
        }
    });
    let mut run = Run {
        fps: 0.0,
        frames: 0,
        detector_runs: 0,
        found: 0,
        stages: BTreeMap::new(),
        process_us: 0,
        total_us: 0,
        cpu: [0.0; 3],
    };
    let (mut seen, mut start, mut cpu0) = (0usize, None::<Instant>, [0.0; 3]);
    let (mut process_us, mut total_us) = (0u64, 0u64);
    let limit = Duration::from_secs_f64(seconds);
    loop {
        let r = results
            .message()
            .await?
            .ok_or("the stream ended before the run did")?;
        if r.dropped {
            return Err(format!("frame {} was dropped", r.frame_index).into());
        }
        seen += 1;
        let Some(t0) = start else {
            // The untimed pass over the frames, as the reference's.
            if seen == frames.data.len() {
                start = Some(Instant::now());
                cpu0 = pids.cpu()?;
            }
            continue;
        };
        run.frames += 1;
        run.found += usize::from(sol.found(&r));
        for s in &r.stages {
            let e = run.stages.entry(s.stage.clone()).or_default();
            e.0 += 1;
            e.1 += s.us;
        }
        run.detector_runs += usize::from(r.stages.iter().any(|s| s.stage == sol.detector));
        let t = r.timings.unwrap_or_default();
        process_us += t.process_us;
        total_us += t.total_us;
        let elapsed = t0.elapsed();
        if elapsed >= limit {
            let cpu1 = pids.cpu()?;
            run.fps = run.frames as f64 / elapsed.as_secs_f64();
            run.cpu = [0, 1, 2].map(|i| 1000.0 * (cpu1[i] - cpu0[i]) / run.frames as f64);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    while results.message().await?.is_some() {}
    sender.await?;
    run.process_us = process_us / run.frames as u64;
    run.total_us = total_us / run.frames as u64;
    Ok(run)
}

/// One run of MediaPipe's reference on `sol`: its JSON object.
async fn reference_run(python: &PathBuf, sol: &Solution, seconds: f64) -> Res<Value> {
    let mut cmd = Command::new(python);
    cmd.arg(root().join("scripts/bench_mediapipe_reference.py"))
        .args([
            "--solutions",
            sol.name,
            "--threads",
            "1",
            "--max-hands",
            "1",
        ])
        .args(["--seconds", &seconds.to_string()]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_owned();
        return Err(format!("bench_mediapipe_reference.py: {}: {last}", out.status).into());
    }
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .map_err(|e| format!("bench_mediapipe_reference.py printed no JSON ({e}): {stdout}"))?;
    if v["solution"] != sol.name || !v["fps"].is_f64() {
        return Err(format!("bench_mediapipe_reference.py: unexpected {v}").into());
    }
    Ok(v)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

/// This process's scheduling policy (`/proc/self/stat` field 41), which
/// the sidecar and the reference inherit (`BENCH_FIFO=1` in bench.sh).
fn policy() -> &'static str {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let field = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(38).map(str::to_owned));
    match field.as_deref() {
        Some("0") => "SCHED_OTHER",
        Some("1") => "SCHED_FIFO",
        Some("2") => "SCHED_RR",
        Some("3") => "SCHED_BATCH",
        Some("5") => "SCHED_IDLE",
        _ => "unknown",
    }
}

/// Starts the sidecar with the one VISION model and its companions; the
/// sidecar, a client and the pids.
async fn start_sidecar() -> Res<(
    Arc<Sidecar>,
    VisionServiceClient<tonic::transport::Channel>,
    Pids,
)> {
    let mut config = format!(
        "[[models]]\nid = \"{MODEL_ID}\"\nfamily = \"vision\"\npath = \"{MAIN_MODEL}\"\n\
         [models.vision]\nthreads = 1\n[models.vision.pipeline]\n"
    );
    for (key, path) in PIPELINE {
        config += &format!("{key} = \"{path}\"\n");
    }
    // The e2e helpers assert (panic) on what they cannot do: caught here
    // so the report can say why nothing ran.
    let sc = std::panic::catch_unwind(|| {
        let store = store();
        add_model(&store, MAIN_MODEL);
        for (_, path) in PIPELINE.iter().filter(|(_, p)| *p != MAIN_MODEL) {
            add_model(&store, path);
        }
        Sidecar::start(store, &config)
    })
    .map_err(|_| "the sidecar did not start (see the message above)")?;
    let sc = Arc::new(sc);
    let ready = tokio::spawn({
        let sc = sc.clone();
        async move { sc.ready(MODEL_ID).await.worker_pid }
    });
    let worker = ready
        .await
        .map_err(|_| "the VISION model with its companions did not become READY")?;
    let pids = Pids {
        client: std::process::id(),
        supervisor: sc.child.id(),
        worker,
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", sc.api))?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await?;
    let client = VisionServiceClient::new(channel).max_decoding_message_size(64 << 20);
    Ok((sc, client, pids))
}

/// What one solution's REPS runs gave on each side (or why they did not).
struct Outcome {
    sidecar: Result<Vec<Run>, String>,
    mediapipe: Result<Vec<Value>, String>,
}

/// Runs one solution, interleaved: the sidecar then MediaPipe, `reps`
/// times. A side that fails once stops there, with its reason.
async fn bench(
    sidecar: &mut Result<
        (
            Arc<Sidecar>,
            VisionServiceClient<tonic::transport::Channel>,
            Pids,
        ),
        String,
    >,
    python: &PathBuf,
    video: &Value,
    sol: &Solution,
    reps: usize,
    seconds: f64,
) -> (Option<Frames>, Outcome) {
    let frames = frames(python, video, sol.name).map_err(|e| format!("no frames: {e}"));
    let mut out = Outcome {
        sidecar: match (&frames, &sidecar) {
            (Err(e), _) => Err(e.clone()),
            (_, Err(e)) => Err(e.clone()),
            _ => Ok(Vec::new()),
        },
        mediapipe: if python.is_file() {
            Ok(Vec::new())
        } else {
            Err(format!(
                "{} is missing (run scripts/mediapipe_venv.sh)",
                python.display()
            ))
        },
    };
    for rep in 0..reps {
        if let (Ok(runs), Ok(f), Ok((_, client, pids))) = (&mut out.sidecar, &frames, &mut *sidecar)
        {
            match sidecar_run(client, *pids, sol, f, seconds).await {
                Ok(r) => runs.push(r),
                Err(e) => out.sidecar = Err(format!("run {}: {e}", rep + 1)),
            }
        }
        if let Ok(refs) = &mut out.mediapipe {
            match reference_run(python, sol, seconds).await {
                Ok(v) => refs.push(v),
                Err(e) => out.mediapipe = Err(format!("run {}: {e}", rep + 1)),
            }
        }
        eprintln!("bench: {} run {}/{reps} done", sol.name, rep + 1);
    }
    (frames.ok(), out)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// Prints one solution's table; whether both sides ran.
fn report(sol: &Solution, frames: Option<&Frames>, out: Outcome, reps: usize) -> bool {
    match frames {
        Some(f) => println!(
            "### {}: {}, {} crops of {}x{} BGR; {}\n",
            sol.name,
            f.photo,
            f.data.len(),
            f.width,
            f.height,
            sol.options
        ),
        None => println!("### {}: {}\n", sol.name, sol.options),
    }
    println!(
        "| side | FPS (median of {reps}) | FPS of each run | detector runs / timed frames | frames with a result | CPU ms per frame |"
    );
    println!("|---|---:|---|---:|---:|---|");
    let sidecar = out.sidecar.map(|mut runs| {
        let each: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.fps)).collect();
        runs.sort_by(|a, b| a.fps.total_cmp(&b.fps));
        let mid = runs.swap_remove(runs.len() / 2);
        let c = mid.cpu;
        println!(
            "| sidecar | {:.1} | {} | {} / {} | {} | worker {:.2} + supervisor {:.2} (client {:.2}) |",
            mid.fps,
            each.join(", "),
            mid.detector_runs,
            mid.frames,
            mid.found,
            c[2],
            c[1],
            c[0]
        );
        mid
    });
    if let Err(e) = &sidecar {
        println!("| sidecar | did not run: {e} | | | | |");
    }
    let mediapipe = out.mediapipe.map(|mut refs| {
        let each: Vec<String> = refs.iter().map(|v| format!("{:.1}", num(v, "fps"))).collect();
        refs.sort_by(|a, b| num(a, "fps").total_cmp(&num(b, "fps")));
        let mid = refs.swap_remove(refs.len() / 2);
        println!(
            "| MediaPipe {} | {:.1} | {} | {} / {} | {} | {:.2} (CPU / wall {:.2}, {} OS threads) |",
            mid["mediapipe_version"].as_str().unwrap_or("?"),
            num(&mid, "fps"),
            each.join(", "),
            mid["detector_runs"],
            mid["frames"],
            mid["frames_with_result"],
            num(&mid, "cpu_over_wall") * num(&mid, "mean_ms"),
            num(&mid, "cpu_over_wall"),
            mid["os_threads"],
        );
        mid
    });
    if let Err(e) = &mediapipe {
        println!("| MediaPipe | did not run: {e} | | | | |");
    }
    let (Ok(run), Ok(mp)) = (sidecar, mediapipe) else {
        println!("| **ratio** | not computed: a side did not run | | | | |\n");
        return false;
    };
    println!(
        "| **ratio sidecar / MediaPipe** | **{:.2}** (goal ≥ 1.0) | | | | |\n",
        run.fps / num(&mp, "fps")
    );
    println!("| worker stage (median sidecar run) | mean µs | frames it ran on |");
    println!("|---|---:|---:|");
    if !run.stages.contains_key(sol.detector) {
        println!("| {} (detector) | — | 0 |", sol.detector);
    }
    for (name, (n, us)) in &run.stages {
        let tag = if name == sol.detector {
            " (detector)"
        } else {
            ""
        };
        println!("| {name}{tag} | {} | {n} |", us / *n as u64);
    }
    println!(
        "| all of the frame's processing (`timings.process_us`) | {} | {} |",
        run.process_us, run.frames
    );
    println!(
        "| frame arrival to result in the worker (`timings.total_us`) | {} | {} |",
        run.total_us, run.frames
    );
    println!(
        "| MediaPipe's whole `process()` (1000 / FPS) | {:.0} | {} |\n",
        1000.0 * num(&mp, "mean_ms"),
        mp["frames"]
    );
    true
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    // The client keeps freed memory as the sidecar's processes do.
    ipc::malloc::keep_freed_memory();
    let reps: usize = std::env::var("BENCH_REPS").map_or(Ok(3), |v| v.parse())?;
    let seconds: f64 = std::env::var("BENCH_SECONDS").map_or(Ok(10.0), |v| v.parse())?;
    if reps == 0 || seconds.is_nan() || seconds <= 0.0 {
        return Err(
            format!("BENCH_REPS {reps} and BENCH_SECONDS {seconds}: at least 1 and > 0").into(),
        );
    }
    let python = std::env::var_os("MEDIAPIPE_PYTHON").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/sidecar/mediapipe-venv/bin/python")
        },
        PathBuf::from,
    );
    let wanted = std::env::var("BENCH_SOLUTIONS").unwrap_or_else(|_| "hands,pose,face_mesh".into());
    let mut chosen = Vec::new();
    for name in wanted.split(',').map(str::trim) {
        let sol = SOLUTIONS.iter().find(|s| s.name == name).ok_or_else(|| {
            format!("BENCH_SOLUTIONS: unknown solution {name:?} (hands, pose, face_mesh)")
        })?;
        chosen.push(sol);
    }
    let video: Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("tests/fixtures/mediapipe/video.json"),
    )?)?;
    let load_before = loadavg();
    let mut sidecar = start_sidecar().await.map_err(|e| e.to_string());
    println!(
        "Machine: {} cores, no GPU; load average before: {load_before}. Median over {reps} \
         interleaved runs of {seconds} s per side (sidecar, then MediaPipe in-process, video \
         mode). Sidecar: 1 LiteRT thread per model; MediaPipe: graph num_threads 1; neither \
         pinned; both under {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        policy()
    );
    let mut all_ran = true;
    for sol in chosen {
        let (frames, out) = bench(&mut sidecar, &python, &video, sol, reps, seconds).await;
        all_ran &= report(sol, frames.as_ref(), out, reps);
    }
    println!(
        "Load average after: {}. FPS: timed frames over the time they took, after one untimed \
         pass over the 60 frames on each side. CPU per frame: user + system time of each \
         process over the median run, divided by its frames (MediaPipe: the whole Python \
         process). Detector runs: frames whose result carries the detector's stage (sidecar) \
         or a packet on the graph's detection stream (MediaPipe).",
        loadavg()
    );
    drop(sidecar);
    if !all_ran {
        std::process::exit(2);
    }
    Ok(())
}
