//! The text benchmark (`scripts/bench.sh`): the whole stack (tonic client
//! → sidecar → ipc → worker-text) side by side with llama.cpp's own tools
//! on the same GGUF files, the same thread count, in one run, interleaved,
//! so that a noisy machine slows both sides alike. Prints a Markdown
//! report: each figure, the reference's figure beside it, the ratio.
//!
//! Environment (set by `scripts/bench.sh`): `LLAMA_BENCH`,
//! `LLAMA_BATCHED_BENCH`, `EMBED_DIRECT` (paths of the reference tools),
//! `BENCH_THREADS` (default 2), `BENCH_REPS` (default 3).

#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{MINILM, SMOLLM2, Sidecar, add_model, root, store};
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{
    EmbedRequest, GenerateRequest, SamplingParams, TokenizeRequest, generate_stream_response::Msg,
};
use tonic::transport::Channel;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const GEN_TOKENS: u32 = 64;
const PROMPT_TOKENS: usize = 128;
const STREAMS: [usize; 3] = [1, 4, 8];
const EMBED_BATCHES: [usize; 3] = [1, 8, 64];
const EMBED_SECONDS: f64 = 3.0;

fn env_path(name: &str) -> Res<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{name} is not set (run scripts/bench.sh)").into())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn greedy(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        model_id: "smollm2".into(),
        prompt: prompt.into(),
        max_tokens,
        sampling: Some(SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A counting prompt of exactly `n` tokens (so that greedy decoding goes
/// on counting and never stops early).
async fn prompt_of(text: &mut TextServiceClient<Channel>, n: usize, salt: usize) -> Res<String> {
    let mut prompt = format!("Sequence {salt}. Count from 1 to 1000: 1,");
    let mut i = 2;
    loop {
        let tokens = text
            .tokenize(TokenizeRequest {
                model_id: "smollm2".into(),
                text: prompt.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .tokens
            .len();
        if tokens >= n {
            return Ok(prompt);
        }
        prompt.push_str(&format!(" {i},"));
        i += 1;
    }
}

/// One stream: (time to first token, time of the last token, tokens).
async fn stream(
    mut text: TextServiceClient<Channel>,
    prompt: String,
    start: Instant,
) -> Res<(Duration, Duration, u32, u32)> {
    let mut s = text
        .generate_stream(greedy(&prompt, GEN_TOKENS))
        .await?
        .into_inner();
    let (mut first, mut last, mut n) = (None, Duration::ZERO, 0u32);
    while let Some(m) = s.message().await? {
        match m.msg {
            Some(Msg::Delta(_)) => {
                last = start.elapsed();
                first.get_or_insert(last);
                n += 1;
            }
            Some(Msg::Done(d)) => {
                let prompt_tokens = d.usage.map_or(0, |u| u.prompt_tokens);
                return Ok((first.unwrap_or(last), last, n, prompt_tokens));
            }
            None => {}
        }
    }
    Err("stream ended without its final message".into())
}

/// llama-bench: (prompt t/s from an empty context, generation t/s after
/// the prompt, as the sidecar's stream generates after its prompt).
fn llama_bench(model: &str, threads: u32, prompt: usize) -> Res<(f64, f64)> {
    let out = Command::new(env_path("LLAMA_BENCH")?)
        .args([
            "-m",
            model,
            "-t",
            &threads.to_string(),
            "-r",
            "1",
            "-o",
            "json",
        ])
        .args(["-p", &prompt.to_string(), "-n", &GEN_TOKENS.to_string()])
        .args(["-d", &format!("0,{prompt}")])
        .output()?;
    if !out.status.success() {
        return Err(format!("llama-bench: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut pp = 0.0;
    let mut tg = 0.0;
    for r in runs.as_array().ok_or("llama-bench json")? {
        let ts = r["avg_ts"].as_f64().unwrap_or(0.0);
        match (r["n_gen"].as_u64(), r["n_depth"].as_u64()) {
            (Some(0), Some(0)) => pp = ts,
            (Some(n), Some(d)) if n > 0 && d > 0 => tg = ts,
            _ => {}
        }
    }
    Ok((pp, tg))
}

/// llama-batched-bench for N parallel sequences: (total t/s, prompt time s).
fn batched_bench(model: &str, threads: u32, prompt: usize, n: usize) -> Res<(f64, f64)> {
    let out = Command::new(env_path("LLAMA_BATCHED_BENCH")?)
        .args(["-m", model, "-t", &threads.to_string(), "-c", "4096"])
        .args(["-b", "512", "-ub", "512", "--output-format", "jsonl"])
        .args(["-npp", &prompt.to_string(), "-ntg", &GEN_TOKENS.to_string()])
        .args(["-npl", &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "llama-batched-bench: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rfind(|l| l.starts_with('{'))
        .ok_or("llama-batched-bench printed no result")?
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&line)?;
    Ok((
        v["speed"].as_f64().unwrap_or(0.0),
        v["t_pp"].as_f64().unwrap_or(0.0),
    ))
}

fn embed_texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("short benchmark sentence number {i} about shared memory"))
        .collect()
}

struct Row {
    figure: String,
    ours: f64,
    reference: f64,
    reference_name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let threads: u32 = std::env::var("BENCH_THREADS").map_or(Ok(2), |v| v.parse())?;
    let reps: usize = std::env::var("BENCH_REPS").map_or(Ok(3), |v| v.parse())?;
    let models = root().join("models");
    let smollm = models.join(SMOLLM2).display().to_string();
    let minilm = models.join(MINILM).display().to_string();

    let store = store();
    add_model(&store, MINILM);
    let config = format!(
        "[workers]\nmax_in_flight = 16\n\
         [[models]]\nid = \"smollm2\"\nfamily = \"text\"\npath = \"{SMOLLM2}\"\n\
         text = {{ context_size = 512, parallel = 8, threads = {threads} }}\n\
         [[models]]\nid = \"minilm\"\nfamily = \"text\"\npath = \"{MINILM}\"\n\
         text = {{ threads = {threads} }}\n"
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("smollm2").await;
    sc.ready("minilm").await;
    let mut text = sc.text().await;
    let prompt = prompt_of(&mut text, PROMPT_TOKENS, 0).await?;
    let prompt_tokens = text
        .tokenize(TokenizeRequest {
            model_id: "smollm2".into(),
            text: prompt.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .tokens
        .len();
    let mut rows = Vec::new();

    // Single stream: prompt and generation speed, interleaved with
    // llama-bench.
    let (mut our_pp, mut our_tg, mut ref_pp, mut ref_tg) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let (pp, tg) = llama_bench(&smollm, threads, prompt_tokens)?;
        ref_pp.push(pp);
        ref_tg.push(tg);
        // Prompt: a one-token completion is the prompt's decode plus one
        // sample.
        let start = Instant::now();
        text.generate(greedy(&prompt, 1)).await?;
        our_pp.push(prompt_tokens as f64 / start.elapsed().as_secs_f64());
        // Generation: tokens after the first, over the time between the
        // first and the last, as the client sees them.
        let (first, last, n, _) = stream(text.clone(), prompt.clone(), Instant::now()).await?;
        our_tg.push(f64::from(n - 1) / (last - first).as_secs_f64());
    }
    rows.push(Row {
        figure: format!("prompt processing, {prompt_tokens} tokens, 1 stream"),
        ours: median(&mut our_pp),
        reference: median(&mut ref_pp),
        reference_name: "llama-bench pp",
        unit: "tokens/s",
        higher_is_better: true,
    });
    rows.push(Row {
        figure: format!("generation, {GEN_TOKENS} tokens, 1 stream"),
        ours: median(&mut our_tg),
        reference: median(&mut ref_tg),
        reference_name: "llama-bench tg at depth = prompt",
        unit: "tokens/s",
        higher_is_better: true,
    });

    // Concurrent streams: aggregate throughput (prompt and generated
    // tokens over the wall time) and time to first token.
    for n in STREAMS {
        let prompts: Vec<String> = {
            let mut v = Vec::new();
            for i in 0..n {
                v.push(prompt_of(&mut text, PROMPT_TOKENS, i + 1).await?);
            }
            v
        };
        let (mut ours, mut refs, mut ttft, mut ref_pp) = (vec![], vec![], vec![], vec![]);
        let mut p_tokens = PROMPT_TOKENS;
        for _ in 0..reps {
            let start = Instant::now();
            let handles: Vec<_> = prompts
                .iter()
                .map(|p| tokio::spawn(stream(text.clone(), p.clone(), start)))
                .collect();
            let mut tokens = 0u64;
            for h in handles {
                let (first, _, generated, prompt) = h.await?.map_err(|e| e.to_string())?;
                ttft.push(first.as_secs_f64() * 1000.0);
                tokens += u64::from(generated) + u64::from(prompt);
                p_tokens = prompt as usize;
            }
            ours.push(tokens as f64 / start.elapsed().as_secs_f64());
            let (speed, t_pp) = batched_bench(&smollm, threads, p_tokens, n)?;
            refs.push(speed);
            ref_pp.push(t_pp * 1000.0);
        }
        rows.push(Row {
            figure: format!(
                "aggregate, {n} streams x ({p_tokens} prompt + {GEN_TOKENS} generated)"
            ),
            ours: median(&mut ours),
            reference: median(&mut refs),
            reference_name: "llama-batched-bench",
            unit: "tokens/s",
            higher_is_better: true,
        });
        let prompt_ms = median(&mut ref_pp);
        rows.push(Row {
            figure: format!("time to first token p50, {n} streams"),
            ours: percentile(&mut ttft, 0.5),
            reference: prompt_ms,
            reference_name: "batched-bench prompt time",
            unit: "ms",
            higher_is_better: false,
        });
        rows.push(Row {
            figure: format!("time to first token p99, {n} streams"),
            ours: percentile(&mut ttft, 0.99),
            reference: prompt_ms,
            reference_name: "batched-bench prompt time",
            unit: "ms",
            higher_is_better: false,
        });
    }

    // Embeddings per second: gRPC Embed against the same embedding context
    // called in-process.
    for batch in EMBED_BATCHES {
        let req = EmbedRequest {
            model_id: "minilm".into(),
            inputs: embed_texts(batch),
            ..Default::default()
        };
        text.embed(req.clone()).await?;
        let (start, mut calls) = (Instant::now(), 0u64);
        while start.elapsed().as_secs_f64() < EMBED_SECONDS {
            text.embed(req.clone()).await?;
            calls += 1;
        }
        let ours = (calls * batch as u64) as f64 / start.elapsed().as_secs_f64();
        let out = Command::new(env_path("EMBED_DIRECT")?)
            .args([&minilm, &threads.to_string(), &EMBED_SECONDS.to_string()])
            .arg(batch.to_string())
            .output()?;
        let reference: f64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("embeddings_per_s="))
            .ok_or_else(|| format!("embed_direct: {}", String::from_utf8_lossy(&out.stderr)))?
            .parse()?;
        rows.push(Row {
            figure: format!("embeddings, batches of {batch} short texts"),
            ours,
            reference,
            reference_name: "in-process llama.cpp",
            unit: "embeddings/s",
            higher_is_better: true,
        });
    }

    println!(
        "Machine: {} cores; threads {threads}; median of {reps} interleaved runs.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| figure | sidecar | reference | ratio |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        let ratio = if r.higher_is_better {
            r.ours / r.reference
        } else {
            r.reference / r.ours
        };
        println!(
            "| {} | {:.1} {} | {:.1} ({}) | {:.0}% |",
            r.figure,
            r.ours,
            r.unit,
            r.reference,
            r.reference_name,
            ratio * 100.0
        );
    }
    println!(
        "\nRatio: sidecar / reference for speeds, reference / sidecar for times (100% = parity)."
    );
    Ok(())
}
