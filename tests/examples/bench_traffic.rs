//! The traffic benchmark (`scripts/bench.sh traffic`): a polite client's
//! Generate latency (p50/p99) on SmolLM2 alone, then while another client
//! floods the same model at 20x its class's rate, with and without the
//! `[traffic]` classes (without them, every caller shares one FIFO queue).
//! Prints a Markdown report.
//!
//! Environment: `BENCH_CALLS` polite calls per phase (default 40).
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{Sidecar, greedy, smollm2_config, store};
use sidecar_proto::v1::text_service_client::TextServiceClient;
use tonic::transport::Channel;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The flood class's rate, cost units per second: a call below costs
/// 3 ("Hello there", 11 bytes / 4 rounded up) + 8 (max_tokens) = 11,
/// so 3 calls a second.
const RATE: f64 = 33.0;
/// Calls per second of the flood: 20x what its class may spend.
const FLOOD_PER_SEC: u64 = 60;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn request(client: &str) -> tonic::Request<sidecar_proto::v1::GenerateRequest> {
    let mut req = tonic::Request::new(greedy("Hello there", 8));
    req.metadata_mut()
        .insert("x-client-id", client.parse().expect("client id"));
    req
}

/// What one phase measured.
struct Phase {
    /// Latency of each polite call that succeeded, ms.
    ms: Vec<f64>,
    /// Polite calls refused.
    polite_refused: u64,
    /// Flood calls served and refused.
    served: u64,
    refused: u64,
}

/// One phase: `calls` polite calls one after another, with a flood
/// running beside them when `flood` is set.
async fn phase(sc: &Sidecar, calls: usize, flood: bool) -> Res<Phase> {
    let mut polite = TextServiceClient::new(sc.channel().await);
    // Warm-up.
    for _ in 0..3 {
        polite.generate(request("polite")).await?;
    }
    let served = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooder = None;
    if flood {
        let client = TextServiceClient::new(sc.channel().await);
        let (served, refused, stop) = (served.clone(), refused.clone(), stop.clone());
        flooder = Some(tokio::spawn(async move {
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut c: TextServiceClient<Channel> = client.clone();
                let (served, refused) = (served.clone(), refused.clone());
                tasks.spawn(async move {
                    match c.generate(request("flood")).await {
                        Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                });
                let next = start + Duration::from_micros(n * 1_000_000 / FLOOD_PER_SEC);
                tokio::time::sleep_until(next.into()).await;
                while tasks.try_join_next().is_some() {}
            }
            tasks.abort_all();
        }));
        // Let the flood fill the queue first.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut ms = Vec::with_capacity(calls);
    let mut polite_refused = 0;
    for _ in 0..calls {
        let t = Instant::now();
        match polite.generate(request("polite")).await {
            Ok(_) => ms.push(t.elapsed().as_secs_f64() * 1e3),
            Err(_) => polite_refused += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flooder {
        f.await?;
    }
    Ok(Phase {
        ms,
        polite_refused,
        served: served.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let auth = "[auth]\nclient_ids = [\"polite\", \"flood\"]\n";
    let classes = format!(
        "[traffic.classes.flood]\nmatch = [\"client:flood\"]\nrate = {RATE:.1}\nburst = {}\nqueue = 16\n[traffic.classes.polite]\nmatch = [\"client:polite\"]\n",
        RATE as u32
    );
    println!("## Traffic: a polite client beside a 20x flood (SmolLM2 Generate, 8 tokens)\n");
    println!(
        "Polite: {calls} Generate calls one after another (prompt \"Hello there\", 8 tokens, greedy). \
         Flood: another client sending {FLOOD_PER_SEC} of the same calls a second, 20x its class's rate \
         ({RATE} cost units/s, 3 calls/s: each call costs 3 + 8). The flood's class may queue 16 \
         calls; default `workers` settings (max_in_flight 4, queue_size 64).\n"
    );
    println!(
        "| setup | polite p50 ms | polite p99 ms | polite refused | flood served | flood refused |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, traffic, flood) in [
        ("alone", classes.as_str(), false),
        ("20x flood, [traffic] classes", classes.as_str(), true),
        ("20x flood, no classes (one FIFO)", "", true),
    ] {
        let sc = Sidecar::start(store(), &format!("{auth}{traffic}{}", smollm2_config("")));
        sc.ready("smollm2").await;
        let mut p = phase(&sc, calls, flood).await?;
        let (p50, p99) = if p.ms.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (percentile(&mut p.ms, 0.5), percentile(&mut p.ms, 0.99))
        };
        println!(
            "| {name} | {p50:.1} | {p99:.1} | {} of {calls} | {} | {} |",
            p.polite_refused, p.served, p.refused
        );
    }
    Ok(())
}
