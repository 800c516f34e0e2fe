//! Prompt-prefix reuse's benchmark (`scripts/bench.sh prefix`): a 4-turn
//! chat with a fixed ~200-token system prompt through the real sidecar
//! (ChatStream, greedy), time to first token per turn with
//! `prompt_cache` on (`smollm2`) and off (`nocache`, the same file) in the
//! same sidecar. The two alternate turn by turn; each repetition tags its
//! system prompt with its number so that its first turn starts cold on
//! both sides. Prints a Markdown table of medians.
//!
//! Environment: `BENCH_REPS` (default 5), `BENCH_THREADS` per model
//! (default 2).
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::time::Instant;

use e2e::{SMOLLM2, Sidecar, store};
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{ChatMessage, ChatRequest, SamplingParams, generate_stream_response::Msg};
use tonic::transport::Channel;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SYSTEM: &str = "You are Atlas, the help desk assistant of a city library. You answer questions about opening hours, borrowing rules, \
fees, events and the catalogue. The library opens from nine in the morning to eight in the evening on weekdays and from ten to four on \
Saturdays; it is closed on Sundays and public holidays. Members may borrow up to twelve items at once: books for three weeks, films and \
music for one week, and magazines for one week. Each item may be renewed twice online or at the desk unless another member reserved it. \
Late returns cost twenty cents a day per item, capped at five euros per item; children's cards pay no fees. Lost items are charged at \
their replacement price. Membership is free for residents and costs fifteen euros a year for others. The reading room is quiet; group \
rooms can be booked for two hours a day. Be friendly and brief: answer in at most two sentences, and never invent rules that are not listed here.";

const QUESTIONS: [&str; 4] = [
    "How many books can I borrow at once?",
    "And for how long can I keep a film?",
    "What happens if I return it three days late?",
    "Is the library open on Sunday?",
];

const TURNS: usize = QUESTIONS.len();

/// One turn: client-side time to the first token (ms), the worker's
/// figure (ms), prompt and cached tokens, the reply.
struct Turn {
    ttft_ms: f64,
    worker_ttft_ms: f64,
    prompt: u32,
    cached: u32,
    text: String,
}

async fn turn(
    text: &mut TextServiceClient<Channel>,
    model: &str,
    messages: &[ChatMessage],
) -> Res<Turn> {
    let mut req = tonic::Request::new(ChatRequest {
        model_id: model.into(),
        messages: messages.to_vec(),
        sampling: Some(SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        }),
        max_tokens: 48,
        ..Default::default()
    });
    // Every call reaches the worker, never the result cache.
    req.metadata_mut()
        .insert("cache-control", "no-cache".parse()?);
    let start = Instant::now();
    let mut stream = text.chat_stream(req).await?.into_inner();
    let mut first = None;
    let mut out = String::new();
    while let Some(m) = stream.message().await? {
        first.get_or_insert_with(|| start.elapsed().as_secs_f64() * 1e3);
        match m.msg {
            Some(Msg::Delta(d)) => out.push_str(&d.text),
            Some(Msg::Done(d)) => {
                out.push_str(&d.text);
                let u = d.usage.unwrap_or_default();
                let t = d.timings.unwrap_or_default();
                return Ok(Turn {
                    ttft_ms: first.unwrap_or_default(),
                    worker_ttft_ms: t.time_to_first_token_us as f64 / 1e3,
                    prompt: u.prompt_tokens,
                    cached: u.cached_tokens,
                    text: out,
                });
            }
            None => {}
        }
    }
    Err("the stream ended without its final message".into())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let reps: usize = std::env::var("BENCH_REPS").map_or(Ok(5), |v| v.parse())?;
    let threads: u32 = std::env::var("BENCH_THREADS").map_or(Ok(2), |v| v.parse())?;
    let model = |id: &str, extra: &str| {
        format!(
            "[[models]]\nid = \"{id}\"\nfamily = \"text\"\npath = \"{SMOLLM2}\"\ntext = {{ context_size = 2048, threads = {threads}, parallel = 4{extra} }}\n"
        )
    };
    let config = format!(
        "{}{}",
        model("smollm2", ""),
        model("nocache", ", prompt_cache = false")
    );
    let sc = Sidecar::start(store(), &config);
    sc.ready("smollm2").await;
    sc.ready("nocache").await;
    let mut text = sc.text().await;

    // [model][turn] -> samples
    let mut ttft = [
        [(); TURNS].map(|_| Vec::new()),
        [(); TURNS].map(|_| Vec::new()),
    ];
    let mut worker = [
        [(); TURNS].map(|_| Vec::new()),
        [(); TURNS].map(|_| Vec::new()),
    ];
    let mut prompt = [0u32; TURNS];
    let mut cached = [[0u32; TURNS]; 2];
    let mut same_text = true;
    for rep in 0..reps {
        let system = format!("Session {rep}. {SYSTEM}");
        let mut convs = [vec![system_message(&system)], vec![system_message(&system)]];
        for (t, q) in QUESTIONS.iter().enumerate() {
            let mut replies = Vec::new();
            // Alternate which side goes first, so neither always runs on a
            // warmer machine.
            let order = if (rep + t) % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                convs[side].push(ChatMessage {
                    role: "user".into(),
                    content: (*q).into(),
                });
                let id = if side == 0 { "nocache" } else { "smollm2" };
                let r = turn(&mut text, id, &convs[side]).await?;
                eprintln!(
                    "bench: conversation {rep} turn {} {id}: TTFT {:.1} ms, {} prompt tokens, {} cached",
                    t + 1,
                    r.ttft_ms,
                    r.prompt,
                    r.cached
                );
                ttft[side][t].push(r.ttft_ms);
                worker[side][t].push(r.worker_ttft_ms);
                prompt[t] = r.prompt;
                cached[side][t] = r.cached;
                convs[side].push(ChatMessage {
                    role: "assistant".into(),
                    content: r.text.clone(),
                });
                replies.push(r.text);
            }
            same_text &= replies[0] == replies[1];
        }
    }

    println!(
        "## Prompt-prefix reuse: a 4-turn chat, time to first token with prompt_cache on and off\n"
    );
    println!(
        "SmolLM2-135M Q4_1, {threads} threads per model, ChatStream, greedy, 48 tokens at most, system prompt of ~200 tokens; median of {reps} conversations. Greedy replies identical on and off: {same_text}.\n"
    );
    println!(
        "| turn | prompt tokens | cached (on) | TTFT off, ms | TTFT on, ms | off / on | worker TTFT off, ms | worker TTFT on, ms |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for t in 0..TURNS {
        let (off, on) = (median(&mut ttft[0][t]), median(&mut ttft[1][t]));
        let (woff, won) = (median(&mut worker[0][t]), median(&mut worker[1][t]));
        println!(
            "| {} | {} | {} | {off:.1} | {on:.1} | {:.2}x | {woff:.1} | {won:.1} |",
            t + 1,
            prompt[t],
            cached[1][t],
            off / on
        );
    }
    assert!(
        cached[0].iter().all(|c| *c == 0),
        "prompt_cache = false reused tokens"
    );
    Ok(())
}

fn system_message(text: &str) -> ChatMessage {
    ChatMessage {
        role: "system".into(),
        content: text.into(),
    }
}
