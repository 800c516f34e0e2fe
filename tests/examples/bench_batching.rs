//! The batching benchmark (`scripts/bench.sh batching`): what batching
//! across calls gives, through the whole stack.
//!
//! - Embed (MiniLM, 1 thread): N concurrent callers of one text each against one
//!   call of N texts, N = 1, 8, 32, 64. The worker fills each decode with
//!   the queued calls' inputs in arrival order (up to 512 tokens and 64
//!   inputs), so concurrent callers share decodes, as many as the
//!   supervisor lets through at once (`workers.max_in_flight`): measured
//!   with the default (4) and with 64.
//! - LITE: the input shapes of every shipped `.tflite` model as
//!   GetModelInfo reads them (a batch dimension fixed at 1 cannot take
//!   coalesced calls), then N concurrent Infer callers against one
//!   InferBatch of N sets on BlazeFace (what coalescing could still save:
//!   the per-call gRPC and ipc round trips).
//!
//! Environment (set by `scripts/bench.sh`): `BENCH_REPS` (default 3).
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::time::Instant;

use e2e::{MINILM, Sidecar, add_model, float_pattern, lite_config, root, store};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{
    DType, EmbedRequest, GetModelInfoRequest, InferBatchRequest, InferRequest, InputSet,
    LoadModelRequest, ModelFamily, Tensor, UnloadModelRequest,
};
use tonic::transport::Channel;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const FACE: &str = "mediapipe/face_detection_short_range.tflite";
const SIZES: [usize; 4] = [1, 8, 32, 64];

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

fn text(i: usize) -> String {
    format!("Sentence {i}: a sidecar embeds this text for the application next to it.")
}

fn face_input() -> Tensor {
    Tensor {
        shm: Default::default(),
        name: "input".into(),
        dtype: DType::DtypeFloat32 as i32,
        shape: vec![1, 128, 128, 3],
        data: float_pattern(128 * 128 * 3).into(),
    }
}

/// One row: (one call's ms, N callers' total ms, callers' p50 ms, callers'
/// max ms), medians over the reps.
type Row = (f64, f64, f64, f64);

/// `n` concurrent one-item calls made by `one`, against `all` (one call of
/// `n` items); `reps` times, interleaved.
async fn measure<F, G, A, B>(n: usize, reps: usize, one: F, all: G) -> Res<Row>
where
    F: Fn(usize) -> A,
    A: std::future::Future<Output = Res<()>> + Send + 'static,
    G: Fn() -> B,
    B: std::future::Future<Output = Res<()>>,
{
    let (mut single, mut total, mut p50, mut max) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let started = Instant::now();
        all().await?;
        single.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let call = one(i);
                tokio::spawn(async move {
                    let t = Instant::now();
                    call.await.map(|()| t.elapsed().as_secs_f64() * 1e3)
                })
            })
            .collect();
        let mut each = Vec::new();
        for t in tasks {
            each.push(t.await??);
        }
        total.push(started.elapsed().as_secs_f64() * 1e3);
        p50.push(percentile(&mut each, 0.5));
        max.push(percentile(&mut each, 1.0));
    }
    Ok((median(single), median(total), median(p50), median(max)))
}

async fn embed_rows(text_client: &TextServiceClient<Channel>, reps: usize) -> Res<Vec<String>> {
    let mut rows = Vec::new();
    for n in SIZES {
        let c = text_client.clone();
        let one = move |i: usize| {
            let mut c = c.clone();
            async move {
                c.embed(EmbedRequest {
                    model_id: "minilm".into(),
                    inputs: vec![text(i)],
                    ..Default::default()
                })
                .await?;
                Ok(())
            }
        };
        let c = text_client.clone();
        let all = move || {
            let mut c = c.clone();
            async move {
                c.embed(EmbedRequest {
                    model_id: "minilm".into(),
                    inputs: (0..n).map(text).collect(),
                    ..Default::default()
                })
                .await?;
                Ok(())
            }
        };
        let (single, total, p50, max) = measure(n, reps, one, all).await?;
        rows.push(format!(
            "| {n} | {single:.1} ms | {total:.1} ms | {:.2}× | {p50:.1} ms | {max:.1} ms |",
            total / single
        ));
    }
    Ok(rows)
}

async fn lite_rows(lite: &LiteServiceClient<Channel>, reps: usize) -> Res<Vec<String>> {
    let mut rows = Vec::new();
    for n in SIZES {
        let c = lite.clone();
        let one = move |_: usize| {
            let mut c = c.clone();
            async move {
                c.infer(InferRequest {
                    output_placements: Default::default(),
                    model_id: "face".into(),
                    inputs: vec![face_input()],
                    outputs: vec![],
                })
                .await?;
                Ok(())
            }
        };
        let c = lite.clone();
        let all = move || {
            let mut c = c.clone();
            async move {
                c.infer_batch(InferBatchRequest {
                    model_id: "face".into(),
                    sets: (0..n)
                        .map(|_| InputSet {
                            output_placements: Default::default(),
                            inputs: vec![face_input()],
                        })
                        .collect(),
                    outputs: vec![],
                })
                .await?;
                Ok(())
            }
        };
        let (single, total, p50, max) = measure(n, reps, one, all).await?;
        rows.push(format!(
            "| {n} | {single:.1} ms | {total:.1} ms | {:.2}× | {p50:.1} ms | {max:.1} ms |",
            total / single
        ));
    }
    Ok(rows)
}

/// Every shipped LITE model's inputs, as GetModelInfo reads them: one
/// table row each (or why it does not load).
async fn shapes(sc: &Sidecar, lite: &mut LiteServiceClient<Channel>) -> Res<Vec<String>> {
    let mut files = Vec::new();
    for dir in ["mediapipe", "int8"] {
        for e in std::fs::read_dir(root().join("models").join(dir))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tflite") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    let mut manage: ModelServiceClient<Channel> = sc.manage().await;
    let mut rows = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if file != FACE {
            add_model(&sc.store, file);
        }
        let id = format!("shape-{i}");
        let loaded = manage
            .load_model(LoadModelRequest {
                model_id: id.clone(),
                family: ModelFamily::Lite as i32,
                path: file.clone(),
                ..Default::default()
            })
            .await;
        if let Err(e) = loaded {
            rows.push(format!("| {file} | not loaded: {} | |", e.message()));
            continue;
        }
        let info = lite
            .get_model_info(GetModelInfoRequest {
                model_id: id.clone(),
            })
            .await?
            .into_inner();
        let inputs: Vec<String> = info
            .inputs
            .iter()
            .map(|t| format!("`{}` {:?}", t.name, t.shape))
            .collect();
        let batch: Vec<String> = info
            .inputs
            .iter()
            .map(|t| match t.shape.first() {
                Some(-1) => "dynamic".to_owned(),
                Some(d) => format!("fixed {d}"),
                None => "scalar".to_owned(),
            })
            .collect();
        rows.push(format!(
            "| {file} | {} | {} |",
            inputs.join(", "),
            batch.join(", ")
        ));
        manage
            .unload_model(UnloadModelRequest {
                model_id: id,
                ..Default::default()
            })
            .await?;
    }
    Ok(rows)
}

/// `/proc/loadavg`'s three averages: how shared the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let reps: usize = std::env::var("BENCH_REPS").map_or(Ok(3), |v| v.parse())?;
    println!(
        "Machine: {} cores (shared); medians over {reps} interleaved runs. MiniLM and BlazeFace (LITE) with 1 thread each; load average at the start: {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let mut shape_rows = None;
    for max_in_flight in [4, 64] {
        let store = store();
        add_model(&store, MINILM);
        add_model(&store, FACE);
        let config = format!(
            "[workers]\nmax_in_flight = {max_in_flight}\nqueue_size = 256\n{}{}",
            e2e::minilm_config(""),
            lite_config("face", FACE, "")
        );
        let sc = Sidecar::start(store, &config);
        sc.ready("minilm").await;
        sc.ready("face").await;
        let channel = Channel::from_shared(format!("http://{}", sc.api))?
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tcp_nodelay(true)
            .connect()
            .await?;
        let text_client = TextServiceClient::new(channel.clone());
        let mut lite = LiteServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        // Warm both up.
        for _ in 0..3 {
            text_client
                .clone()
                .embed(EmbedRequest {
                    model_id: "minilm".into(),
                    inputs: vec![text(0)],
                    ..Default::default()
                })
                .await?;
            lite.infer(InferRequest {
                output_placements: Default::default(),
                model_id: "face".into(),
                inputs: vec![face_input()],
                outputs: vec![],
            })
            .await?;
        }
        let embed = embed_rows(&text_client, reps).await?;
        let infer = lite_rows(&lite, reps).await?;
        let head = "| N | one call of N | N concurrent callers (total) | callers / one call | callers' p50 | callers' max |\n|---:|---:|---:|---:|---:|---:|";
        println!("### Embed, `workers.max_in_flight = {max_in_flight}`\n\n{head}");
        for r in embed {
            println!("{r}");
        }
        println!(
            "\n### LITE BlazeFace: one InferBatch of N sets vs N concurrent Infer callers, `workers.max_in_flight = {max_in_flight}`\n\n{head}"
        );
        for r in infer {
            println!("{r}");
        }
        println!();
        if shape_rows.is_none() {
            shape_rows = Some(shapes(&sc, &mut lite).await?);
        }
        drop(sc);
    }
    println!("Load average at the end: {}.\n", load_average());
    println!("### Shipped LITE models' inputs (GetModelInfo)\n");
    println!("| model | inputs (name, shape) | batch dimension |\n|---|---|---|");
    for r in shape_rows.unwrap_or_default() {
        println!("{r}");
    }
    Ok(())
}
