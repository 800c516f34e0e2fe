//! The OpenAI-API benchmark (`scripts/bench.sh openai`): the same streaming
//! load through `/v1/chat/completions` of the sidecar and of llama-server,
//! side by side in one run on the same machine, each server idle while the
//! other is measured (their rounds alternate, the first side swapping every
//! round, so that a noisy neighbour slows both alike).
//!
//! Load: N concurrent clients (1, 4, 8), each one streaming request per
//! round (`stream: true`, `max_tokens: 128`, `temperature: 0`,
//! `ignore_eos: true`, `stream_options.include_usage`), every prompt its
//! own (the round and the client open the system message), so neither the
//! sidecar's result cache and deduplication nor either side's prompt-prefix
//! reuse serves one request from another; `cache-control: no-cache` goes
//! with every request. The client is raw HTTP/1.1 over a tokio socket, one
//! connection per request, the same bytes to both servers.
//!
//! Figures: time to first token (request sent → first non-empty
//! `choices[0].delta.content`) p50/p99 over every request of every round;
//! aggregate completion tokens/s (the `usage` chunk's `completion_tokens`
//! of the round's requests over the round's wall time), median of the
//! rounds. Every request must stream exactly 128 tokens by its usage, and
//! both sides' totals must be equal, or the run fails.
//!
//! Servers: the sidecar (this build, `[openai] address`) with SmolLM2,
//! `parallel = 8`, `max_in_flight = 8`, 2 threads, 512 tokens of context
//! per sequence; llama-server (`LLAMA_SERVER`) on the same file with
//! `-t 2 -np 8 -c 4096 --cont-batching --no-kv-unified` (a KV stream per
//! slot, as the sidecar's context has) and the sidecar's batch (512).
//!
//! Environment (set by `scripts/bench.sh openai`): `LLAMA_SERVER`,
//! `LLAMA_SERVER_REVISION`, `SIDECAR_LLAMA_REVISION`, `BENCH_ROUNDS`
//! (default 3), `BENCH_THREADS` (default 2, both sides), `BENCH_CLIENTS`
//! (default `1,4,8`), `BENCH_SIDES` (default `sidecar,llama-server`; one
//! side alone measures only that side, with no ratio).

#![allow(clippy::print_stdout, clippy::print_stderr)] // The report is this tool's output.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{SMOLLM2, Sidecar, root, store};
use serde_json::json;

#[path = "openai/sse.rs"]
mod sse;
use sse::{Res, chat, http};

const MAX_TOKENS: u64 = 128;
const PARALLEL: u32 = 8;
/// Context per sequence, tokens (llama-server: `-c` = this × `-np`).
const CONTEXT: u32 = 512;
/// The sidecar's default prompt batch; llama-server gets the same.
const BATCH: u32 = 512;
const MODEL: &str = "smollm2";
const STARTUP: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Sidecar,
    LlamaServer,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Sidecar => "sidecar",
            Side::LlamaServer => "llama-server",
        }
    }
}

/// One side's figures for one client count.
#[derive(Default)]
struct Figures {
    /// Aggregate tokens/s of each round.
    rates: Vec<f64>,
    /// Every request's time to first token, ms.
    ttft: Vec<f64>,
    completion_tokens: u64,
    prompt_tokens: u64,
    deltas: u64,
}

fn env_path(name: &str) -> Res<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{name} is not set (run scripts/bench.sh openai)").into())
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The request body, the same bytes for both servers. The tag opens the
/// prompt, so that no two requests share more than the template's first
/// tokens.
fn body(tag: &str) -> String {
    let numbers: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": format!("Request {tag}. You are a careful assistant who answers at length.")},
            {"role": "user", "content": format!("Continue this list of numbers, one by one, without stopping: {}", numbers.join(", "))},
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": true,
    })
    .to_string()
}

/// llama-server, killed when dropped (an error's early return too).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts llama-server and waits until `/health` answers 200.
async fn llama_server(model: &str, port: u16, threads: u32, log: &std::path::Path) -> Res<Server> {
    let n_ctx = CONTEXT * PARALLEL;
    let child = Command::new(env_path("LLAMA_SERVER")?)
        .args([
            "-m",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
        .args(["-np", &PARALLEL.to_string(), "-c", &n_ctx.to_string()])
        .args(["-b", &BATCH.to_string(), "-ub", &BATCH.to_string()])
        .args(["--cont-batching", "--no-kv-unified", "--alias", MODEL])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let mut server = Server(child);
    let start = Instant::now();
    loop {
        if let Some(exit) = server.0.try_wait()? {
            return Err(format!("llama-server exited ({exit}): {}", tail(log)).into());
        }
        if let Ok((200, _)) = http(port, "GET", "/health", "").await {
            return Ok(server);
        }
        if start.elapsed() > STARTUP {
            return Err(format!("llama-server not healthy in {STARTUP:?}: {}", tail(log)).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts the sidecar with its OpenAI listener on `port` and waits until the
/// model is READY and `/v1/models` answers 200.
async fn sidecar(port: u16, threads: u32) -> Res<Sidecar> {
    let config = format!(
        "[workers]\nmax_in_flight = {PARALLEL}\n\
         [openai]\naddress = \"127.0.0.1:{port}\"\n\
         [[models]]\nid = \"{MODEL}\"\nfamily = \"text\"\npath = \"{SMOLLM2}\"\n\
         max_in_flight = {PARALLEL}\n\
         text = {{ context_size = {CONTEXT}, parallel = {PARALLEL}, threads = {threads}, batch_size = {BATCH} }}\n"
    );
    let sc = Sidecar::start(store(), &config);
    sc.ready(MODEL).await;
    let start = Instant::now();
    loop {
        match http(port, "GET", "/v1/models", "").await {
            Ok((200, _)) => return Ok(sc),
            Ok((status, body)) if start.elapsed() > STARTUP => {
                return Err(format!("GET /v1/models: HTTP {status}: {}", body.text().await).into());
            }
            Err(e) if start.elapsed() > STARTUP => {
                return Err(format!("the OpenAI listener on port {port}: {e}").into());
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One round: `clients` concurrent streams; adds to `f`.
async fn round(port: u16, clients: usize, tag: &str, f: &mut Figures) -> Res<()> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let tag = format!("{tag}.{c}");
            tokio::spawn(async move { chat(port, &body(&tag)).await })
        })
        .collect();
    let mut tokens = 0;
    for t in tasks {
        let s = t.await?.map_err(|e| e.to_string())?;
        if s.completion_tokens != MAX_TOKENS {
            return Err(format!(
                "a request streamed {} completion tokens by its usage ({} deltas), not {MAX_TOKENS}: is ignore_eos honoured?",
                s.completion_tokens, s.deltas
            )
            .into());
        }
        f.ttft.push(s.ttft.as_secs_f64() * 1000.0);
        f.completion_tokens += s.completion_tokens;
        f.prompt_tokens += s.prompt_tokens;
        f.deltas += s.deltas;
        tokens += s.completion_tokens;
    }
    f.rates.push(tokens as f64 / start.elapsed().as_secs_f64());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let rounds: usize = std::env::var("BENCH_ROUNDS").map_or(Ok(3), |v| v.parse())?;
    // Both sides; the figures are for 2.
    let threads: u32 = std::env::var("BENCH_THREADS").map_or(Ok(2), |v| v.parse())?;
    let clients: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,4,8".into())
        .split(',')
        .map(|n| match n.trim().parse() {
            Ok(n @ 1..=64) => Ok(n),
            _ => Err(format!("BENCH_CLIENTS: {n:?} is no client count in 1..=64")),
        })
        .collect::<Result<_, _>>()?;
    let sides: Vec<Side> = std::env::var("BENCH_SIDES")
        .unwrap_or_else(|_| "sidecar,llama-server".into())
        .split(',')
        .map(|s| match s.trim() {
            "sidecar" => Ok(Side::Sidecar),
            "llama-server" => Ok(Side::LlamaServer),
            other => Err(format!(
                "BENCH_SIDES: {other:?} is neither sidecar nor llama-server"
            )),
        })
        .collect::<Result<_, _>>()?;
    if rounds == 0 || sides.is_empty() {
        return Err("BENCH_ROUNDS must be at least 1 and BENCH_SIDES name a side".into());
    }
    let model = root().join("models").join(SMOLLM2);
    let logs = tempfile::tempdir()?;

    // Both servers up, then a warm-up request each.
    let mut ports = Vec::new();
    let (mut _sidecar, mut llama) = (None, None);
    for &side in &sides {
        let port = free_port()?;
        match side {
            Side::Sidecar => _sidecar = Some(sidecar(port, threads).await?),
            Side::LlamaServer => {
                let log = logs.path().join("llama-server.log");
                llama =
                    Some(llama_server(&model.display().to_string(), port, threads, &log).await?);
            }
        }
        chat(port, &body("warm-up"))
            .await
            .map_err(|e| format!("{} warm-up: {e}", side.name()))?;
        ports.push((side, port));
    }

    let mut table = Vec::new();
    for &n in &clients {
        let mut figures: Vec<Figures> = sides.iter().map(|_| Figures::default()).collect();
        for r in 0..rounds {
            for k in 0..ports.len() {
                // The first side swaps every round.
                let i = if r % 2 == 0 { k } else { ports.len() - 1 - k };
                let (side, port) = ports[i];
                round(port, n, &format!("{n}.{r}"), &mut figures[i])
                    .await
                    .map_err(|e| format!("{}, {n} clients, round {r}: {e}", side.name()))?;
                let f = &figures[i];
                let ttft = &f.ttft[f.ttft.len() - n..];
                eprintln!(
                    "bench: {}, {n} clients, round {r}: {:.1} tokens/s, TTFT p50 {:.0} ms, max {:.0} ms",
                    side.name(),
                    f.rates.last().copied().unwrap_or(0.0),
                    percentile(ttft, 0.5),
                    percentile(ttft, 1.0)
                );
            }
        }
        if let [a, b] = &figures[..]
            && a.completion_tokens != b.completion_tokens
        {
            return Err(format!(
                "{n} clients: completion tokens differ: {} {} against {} {}",
                sides[0].name(),
                a.completion_tokens,
                sides[1].name(),
                b.completion_tokens
            )
            .into());
        }
        table.push((n, figures));
    }
    drop(llama);

    println!(
        "Machine: {} cores; {threads} threads and {PARALLEL} slots a side; {rounds} rounds; \
         {MAX_TOKENS} tokens a request (`ignore_eos`), greedy.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (side, var) in [
        (Side::Sidecar, "SIDECAR_LLAMA_REVISION"),
        (Side::LlamaServer, "LLAMA_SERVER_REVISION"),
    ] {
        if sides.contains(&side) {
            let rev = std::env::var(var).unwrap_or_else(|_| "an unknown llama.cpp".into());
            println!("{} runs {rev}", side.name());
        }
    }
    println!();
    println!(
        "| clients | side | aggregate tokens/s | TTFT p50 ms | TTFT p99 ms | completion tokens (deltas) | prompt tokens a request | ratio sidecar/llama-server |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|");
    for (n, figures) in &table {
        let agg = |f: &Figures| percentile(&f.rates, 0.5);
        let ratio = match &figures[..] {
            [_, _] => {
                let s = sides.iter().position(|&s| s == Side::Sidecar).unwrap_or(0);
                let (ours, theirs) = (&figures[s], &figures[1 - s]);
                format!(
                    "aggregate {:.2}x, TTFT p99 {:.2}x",
                    agg(ours) / agg(theirs),
                    percentile(&ours.ttft, 0.99) / percentile(&theirs.ttft, 0.99)
                )
            }
            _ => "-".into(),
        };
        for (side, f) in sides.iter().zip(figures) {
            println!(
                "| {n} | {} | {:.1} | {:.0} | {:.0} | {} ({}) | {} | {} |",
                side.name(),
                agg(f),
                percentile(&f.ttft, 0.5),
                percentile(&f.ttft, 0.99),
                f.completion_tokens,
                f.deltas,
                f.prompt_tokens / f.ttft.len() as u64,
                if *side == Side::Sidecar { &ratio } else { "" },
            );
        }
    }
    println!(
        "\nAggregate: the median round's completion tokens over its wall time. TTFT over every \
         request of every round. Ratio: sidecar / llama-server (aggregate: higher is better; \
         TTFT: lower is better)."
    );
    Ok(())
}
