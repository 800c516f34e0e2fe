//! The embeddings reference for `scripts/bench.sh`: the worker's own
//! llama.cpp embedding context called in-process (no gRPC, no ipc), so
//! that the benchmark's ratio is the cost of the whole stack.
//!
//! Usage: embed_direct MODEL.gguf THREADS SECONDS BATCH...
//! Prints one line per batch size: `batch=N embeddings_per_s=X`.

#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use sidecar_proto::v1::{EmbedRequest, TextOptions};
use worker_text::embed::Embedder;
use worker_text::model::Model;

/// The short texts the benchmark embeds (the same as the gRPC side's).
fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("short benchmark sentence number {i} about shared memory"))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: embed_direct MODEL.gguf THREADS SECONDS BATCH...".into());
    }
    let options = TextOptions {
        threads: args[2].parse()?,
        ..Default::default()
    };
    let seconds: f64 = args[3].parse()?;
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
    let model = Model::load(Path::new(&args[1]), &args[1], &options)?;
    let mut embedder = Embedder::new(model, &options)?;
    for batch in &args[4..] {
        let n: usize = batch.parse()?;
        let req = EmbedRequest {
            inputs: texts(n),
            ..Default::default()
        };
        let run = |e: &mut Embedder| -> Result<(), Box<dyn std::error::Error>> {
            let mut jobs = VecDeque::from([e.job(0, 0, &req, usize::MAX)?]);
            while !jobs.is_empty() {
                for (_, r) in e.step(&mut jobs) {
                    r?;
                }
            }
            Ok(())
        };
        run(&mut embedder)?; // warm
        let (start, mut calls) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            run(&mut embedder)?;
            calls += 1;
        }
        let per_s = (calls * n as u64) as f64 / start.elapsed().as_secs_f64();
        println!("batch={n} embeddings_per_s={per_s:.1}");
    }
    Ok(())
}
