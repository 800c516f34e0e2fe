//! The result cache's benchmark (`scripts/bench.sh cache`): latency of a
//! cache hit against a miss through the whole stack, for Embed of 64
//! texts (MiniLM) and LITE Infer (BlazeFace's 128x128 input). A miss sends
//! distinct inputs each call (a counter in the texts, bytes of the
//! tensor); a hit repeats one call; the two alternate. Prints a Markdown
//! table.
//!
//! Environment: `BENCH_CALLS` per measurement (default 200).
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::time::Instant;

use e2e::{MINILM, Sidecar, add_model, float_pattern, lite_config, minilm_config, store};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{DType, EmbedRequest, InferRequest, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const FACE: &str = "mediapipe/face_detection_short_range.tflite";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn texts(round: usize) -> Vec<String> {
    (0..64)
        .map(|i| format!("call {round}: sentence {i} of a benchmark of the result cache"))
        .collect()
}

fn infer(round: usize) -> InferRequest {
    let mut data = float_pattern(128 * 128 * 3);
    data[..4].copy_from_slice(&(round as f32 / 1000.0).to_le_bytes());
    InferRequest {
        output_placements: Default::default(),
        model_id: "faces".into(),
        inputs: vec![Tensor {
            shm: Default::default(),
            name: "input".into(),
            dtype: DType::DtypeFloat32 as i32,
            shape: vec![1, 128, 128, 3],
            data: data.into(),
        }],
        outputs: vec![],
    }
}

fn row(name: &str, mut miss: Vec<f64>, mut hit: Vec<f64>) {
    let (m50, m99) = (percentile(&mut miss, 0.5), percentile(&mut miss, 0.99));
    let (h50, h99) = (percentile(&mut hit, 0.5), percentile(&mut hit, 0.99));
    println!(
        "| {name} | {m50:.0} | {m99:.0} | {h50:.0} | {h99:.0} | {:.1}x |",
        m50 / h50
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let calls: usize = std::env::var("BENCH_CALLS").map_or(Ok(200), |v| v.parse())?;
    let store = store();
    add_model(&store, MINILM);
    add_model(&store, FACE);
    let config = format!("{}{}", minilm_config(""), lite_config("faces", FACE, ""));
    let sc = Sidecar::start(store, &config);
    sc.ready("minilm").await;
    sc.ready("faces").await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", sc.api))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut text = TextServiceClient::new(channel.clone());
    let mut lite = LiteServiceClient::new(channel);
    // The digests, and a warm worker: until hits come back.
    for _ in 0..100 {
        let a = text.embed(EmbedRequest {
            model_id: "minilm".into(),
            inputs: texts(0),
            ..Default::default()
        });
        let hits = a.await?.metadata().get("x-sidecar-cache-hits").cloned();
        let b = lite
            .infer(infer(0))
            .await?
            .metadata()
            .get("x-sidecar-cache-hits")
            .cloned();
        if hits.is_some_and(|h| h == "64") && b.is_some_and(|h| h == "1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!(
        "Machine: {} cores; {calls} sequential calls each, latency seen by the client in µs.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| call | miss p50 | miss p99 | hit p50 | hit p99 | miss/hit p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for i in 1..=calls {
        for (round, times) in [(i, &mut miss), (0, &mut hit)] {
            let req = EmbedRequest {
                model_id: "minilm".into(),
                inputs: texts(round),
                ..Default::default()
            };
            let t = Instant::now();
            text.embed(req).await?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    row("Embed, 64 texts (MiniLM, 1 thread)", miss, hit);
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for i in 1..=calls {
        for (round, times) in [(i, &mut miss), (0, &mut hit)] {
            let req = infer(round);
            let t = Instant::now();
            lite.infer(req).await?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    row("LITE Infer (BlazeFace 128x128, 1 thread)", miss, hit);
    let c = sc.model("minilm").await.cache.unwrap_or_default();
    println!(
        "\nMiniLM's cache after the run: {} hits, {} misses, {} entries, {} bytes.",
        c.hits, c.misses, c.entries, c.bytes
    );
    Ok(())
}
