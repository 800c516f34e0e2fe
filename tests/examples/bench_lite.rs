//! The LITE benchmark (`scripts/bench.sh lite`): per-inference latency
//! through the whole stack (tonic client → sidecar → ipc → worker-lite)
//! side by side with the official LiteRT Python interpreter running the
//! same model in-process (`scripts/bench_lite_reference.py`), interleaved
//! in one run, for a small and a larger model at 1 and 2 threads. Prints
//! a Markdown report with the ratios.
//!
//! Environment (set by `scripts/bench.sh`): `BENCH_PYTHON` (the venv's
//! python), `BENCH_REPS` (default 3), `BENCH_SECONDS` per measurement
//! (default 3).
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Sidecar, add_model, float_pattern, lite_config, root, store};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{DType, InferRequest, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MODELS: [(&str, &str, [i64; 4]); 2] = [
    (
        "mediapipe/face_detection_short_range.tflite",
        "input",
        [1, 128, 128, 3],
    ),
    (
        "mediapipe/pose_landmark_full.tflite",
        "input_1",
        [1, 256, 256, 3],
    ),
];
const THREADS: [u32; 2] = [1, 2];

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// The Python interpreter's (p50, p99) in µs.
fn reference(python: &str, model: &str, threads: u32, seconds: f64) -> Res<(f64, f64)> {
    let out = Command::new(python)
        .arg(root().join("scripts/bench_lite_reference.py"))
        .arg(root().join("models").join(model))
        .arg(threads.to_string())
        .arg(seconds.to_string())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Res<f64> {
        Ok(text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .ok_or_else(|| {
                format!(
                    "reference printed no {name}: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?
            .parse()?)
    };
    Ok((field("p50_us=")?, field("p99_us=")?))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let python = std::env::var("BENCH_PYTHON")
        .unwrap_or_else(|_| root().join(".venv/bin/python").display().to_string());
    let reps: usize = std::env::var("BENCH_REPS").map_or(Ok(3), |v| v.parse())?;
    let seconds: f64 = std::env::var("BENCH_SECONDS").map_or(Ok(3.0), |v| v.parse())?;

    let store = store();
    let mut config = String::from("[workers]\nmax_in_flight = 4\n");
    for (model, _, _) in MODELS {
        add_model(&store, model);
        for t in THREADS {
            let extra = format!("lite = {{ threads = {t} }}");
            let id = format!("{}-t{t}", id_of(model));
            config.push_str(&lite_config(&id, model, "").replace("lite = { threads = 1 }", &extra));
        }
    }
    let sc = Sidecar::start(store, &config);
    // A client tuned for large messages, as a production one would be.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", sc.api))?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = LiteServiceClient::new(channel).max_decoding_message_size(64 << 20);

    println!(
        "Machine: {} cores; median over {reps} interleaved runs of {seconds} s each.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| model | threads | sidecar p50 | reference p50 | ratio | sidecar p99 | reference p99 | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut breakdown = Vec::new();
    for (model, input, shape) in MODELS {
        for t in THREADS {
            let id = format!("{}-t{t}", id_of(model));
            sc.ready(&id).await;
            let req = InferRequest {
                output_placements: Default::default(),
                model_id: id.clone(),
                inputs: vec![Tensor {
                    shm: Default::default(),
                    name: input.into(),
                    dtype: DType::DtypeFloat32 as i32,
                    shape: shape.to_vec(),
                    data: float_pattern(shape.iter().product::<i64>() as usize).into(),
                }],
                outputs: vec![],
            };
            for _ in 0..5 {
                client.infer(req.clone()).await?;
            }
            let (mut ours50, mut ours99, mut ref50, mut ref99) = (vec![], vec![], vec![], vec![]);
            // Where the time goes: the model's run, and the sidecar's own
            // accounting (queue + worker) against what the client saw.
            let (mut invoke, mut inside) = (vec![], vec![]);
            for _ in 0..reps {
                let (p50, p99) = reference(&python, model, t, seconds)?;
                ref50.push(p50);
                ref99.push(p99);
                let mut times = Vec::new();
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                while Instant::now() < end {
                    let started = Instant::now();
                    let r = client.infer(req.clone()).await?.into_inner();
                    times.push(started.elapsed().as_secs_f64() * 1e6);
                    if let Some(t) = r.timings {
                        invoke.push(t.invoke_us as f64);
                        inside.push(t.total_us as f64);
                    }
                }
                ours50.push(percentile(&mut times, 0.5));
                ours99.push(percentile(&mut times, 0.99));
            }
            // The gRPC hop alone: the same request to an unknown model is
            // decoded by the supervisor and refused without touching ipc.
            let mut grpc = Vec::new();
            let nope = InferRequest {
                model_id: "no-such-model".into(),
                ..req.clone()
            };
            for _ in 0..200 {
                let started = Instant::now();
                let _ = client.infer(nope.clone()).await;
                grpc.push(started.elapsed().as_secs_f64() * 1e6);
            }
            let (o50, o99, r50, r99) =
                (median(ours50), median(ours99), median(ref50), median(ref99));
            breakdown.push(format!(
                "| {} | {t} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
                id_of(model),
                o50,
                median(grpc),
                median(inside),
                median(invoke)
            ));
            println!(
                "| {} | {t} | {:.0} µs | {:.0} µs | {:.0}% | {:.0} µs | {:.0} µs | {:.0}% |",
                id_of(model),
                o50,
                r50,
                100.0 * r50 / o50,
                o99,
                r99,
                100.0 * r99 / o99
            );
        }
    }
    println!(
        "\nRatio: reference latency / sidecar latency (100% = parity; the gap is gRPC + ipc)."
    );
    println!(
        "\nWhere a call's time goes (medians): latency at the client; the same request \
         refused at once for an unknown model (the gRPC hop alone, input sent, no output); \
         the sidecar's own total (supervisor queue, ipc, worker); the model's run in the worker.\n"
    );
    println!("| model | threads | client | gRPC hop | sidecar total | model run |");
    println!("|---|---:|---:|---:|---:|---:|");
    for line in breakdown {
        println!("{line}");
    }
    Ok(())
}

fn id_of(model: &str) -> String {
    model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .trim_end_matches(".tflite")
        .replace('_', "-")
}
