//! TextService: unary and streaming generation with cancellation, chat,
//! batched embeddings with a local cache and a cache-aware retry.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{
    ChatMessage, ChatRequest, EmbedRequest, FinishReason, GenerateRequest, SamplingParams,
    generate_stream_response::Msg,
};
use tonic::transport::Channel;

use crate::conn::{Call, code_name, connect, show};
use crate::retry::{Policy, with_retry};

fn greedy() -> Option<SamplingParams> {
    Some(SamplingParams {
        temperature: Some(0.0),
        ..Default::default()
    })
}

fn reason(r: i32) -> &'static str {
    FinishReason::try_from(r).map_or("?", |f| f.as_str_name())
}

async fn client(target: &str) -> Result<TextServiceClient<Channel>, String> {
    Ok(TextServiceClient::new(connect(target).await?))
}

#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[arg(long, default_value = "The three primary colors are")]
    prompt: String,
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Tokens after which the third call is cancelled.
    #[arg(long, default_value_t = 4)]
    cancel_after: u32,
}

pub(crate) async fn generate(target: &str, call: &Call, a: GenerateArgs) -> Result<(), String> {
    let mut text = client(target).await?;
    let req = GenerateRequest {
        model_id: a.model.clone(),
        prompt: a.prompt.clone(),
        max_tokens: a.max_tokens,
        sampling: greedy(),
        ..Default::default()
    };
    // 1. Unary.
    let r = call
        .within(text.generate(call.request(req.clone()).map_err(|e| show(&e))?))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let usage = r.usage.unwrap_or_default();
    println!(
        "unary: {:?} finish={} prompt_tokens={} completion_tokens={}",
        r.text,
        reason(r.finish_reason),
        usage.prompt_tokens,
        usage.completion_tokens
    );
    // 2. Streaming: one message per token, then the final one.
    let started = Instant::now();
    let mut s = text
        .generate_stream(call.request(req).map_err(|e| show(&e))?)
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let (mut tokens, mut first, mut done, mut all) = (0u32, None, None, String::new());
    print!("stream: ");
    while let Some(m) = call.within(s.message()).await.map_err(|e| show(&e))? {
        match m.msg {
            Some(Msg::Delta(d)) => {
                first.get_or_insert_with(|| started.elapsed());
                tokens += 1;
                all.push_str(&d.text);
                print!("{}", d.text);
                let _ = std::io::stdout().flush();
            }
            Some(Msg::Done(d)) => done = Some(d),
            None => {}
        }
    }
    let done = done.ok_or("stream cut before its final message")?;
    all.push_str(&done.text);
    println!(
        "\nstream: {tokens} tokens, finish={}, first token after {} ms, same as unary: {}",
        reason(done.finish_reason),
        first.unwrap_or_default().as_millis(),
        all == r.text
    );
    // 3. Cancellation: dropping the response stream resets the HTTP/2
    // stream; the server stops generating within one token.
    let long = GenerateRequest {
        model_id: a.model,
        prompt: a.prompt,
        max_tokens: 256,
        sampling: greedy(),
        ..Default::default()
    };
    let mut s = text
        .generate_stream(call.request(long).map_err(|e| show(&e))?)
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let mut got = 0;
    while let Some(m) = call.within(s.message()).await.map_err(|e| show(&e))? {
        if matches!(m.msg, Some(Msg::Delta(_))) {
            got += 1;
            if got == a.cancel_after {
                drop(s);
                println!("cancelled: after {got} tokens, stream dropped");
                return Ok(());
            }
        }
    }
    Err(format!(
        "the stream ended before it could be cancelled ({got} tokens)"
    ))
}

#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[arg(long, default_value_t = 24)]
    max_tokens: u32,
    #[arg(default_value = "What is the capital of France?")]
    question: String,
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

pub(crate) async fn chat(target: &str, call: &Call, a: ChatArgs) -> Result<(), String> {
    let mut text = client(target).await?;
    let mut history = vec![
        msg(
            "system",
            "You are a helpful assistant. Answer in one short sentence.",
        ),
        msg("user", &a.question),
    ];
    let req = |messages: Vec<ChatMessage>| ChatRequest {
        model_id: a.model.clone(),
        messages,
        max_tokens: a.max_tokens,
        sampling: greedy(),
        ..Default::default()
    };
    let mut s = text
        .chat_stream(call.request(req(history.clone())).map_err(|e| show(&e))?)
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let (mut reply, mut done) = (String::new(), None);
    print!("assistant: ");
    while let Some(m) = call.within(s.message()).await.map_err(|e| show(&e))? {
        match m.msg {
            Some(Msg::Delta(d)) => {
                reply.push_str(&d.text);
                print!("{}", d.text);
                let _ = std::io::stdout().flush();
            }
            Some(Msg::Done(d)) => done = Some(d),
            None => {}
        }
    }
    let done = done.ok_or("stream cut before its final message")?;
    reply.push_str(&done.text);
    let u = done.usage.unwrap_or_default();
    println!(
        "\nturn 1: {} tokens, prompt {} tokens (template applied), finish={}",
        u.completion_tokens,
        u.prompt_tokens,
        reason(done.finish_reason)
    );
    history.push(msg("assistant", &reply));
    history.push(msg("user", "And of Italy?"));
    let n = history.len();
    let r = call
        .within(text.chat(call.request(req(history)).map_err(|e| show(&e))?))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let u = r.usage.unwrap_or_default();
    println!("assistant: {}", r.text);
    println!(
        "turn 2: {} tokens, prompt {} tokens, {n} messages sent",
        u.completion_tokens, u.prompt_tokens
    );
    if r.text.trim().is_empty() || reply.trim().is_empty() {
        return Err("an empty reply".into());
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct EmbedArgs {
    #[arg(long, default_value = "minilm")]
    model: String,
    /// Inputs per Embed call, 1..1024.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
}

const TEXTS: [&str; 10] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A man is eating food.",
    "Das Wetter ist schön.",
];

/// Vectors by text: what a batch brought back survives a later failure.
#[derive(Debug, Default)]
struct Cache {
    vectors: HashMap<String, Vec<f32>>,
    hits: usize,
}

#[derive(Debug, Default)]
struct Pass {
    sent: usize,
    batches: usize,
    retries: usize,
    dimensions: u32,
}

async fn embed_all(
    text: &TextServiceClient<Channel>,
    call: &Call,
    cache: &mut Cache,
    texts: &[&str],
    a: &EmbedArgs,
) -> Result<Pass, String> {
    let mut todo: Vec<String> = Vec::new();
    for t in texts {
        if cache.vectors.contains_key(*t) {
            cache.hits += 1;
        } else if !todo.iter().any(|x| x == t) {
            todo.push((*t).to_owned());
        }
    }
    let mut pass = Pass::default();
    for chunk in todo.chunks(a.batch as usize) {
        let req = EmbedRequest {
            model_id: a.model.clone(),
            inputs: chunk.to_vec(),
            ..Default::default()
        };
        let mut retries = 0;
        let r = with_retry(
            Policy::default(),
            call.end(),
            || {
                let mut c = text.clone();
                let r = call.request(req.clone());
                call.within(async move { c.embed(r?).await })
            },
            |at| {
                retries += 1;
                let why = at.retry_after.map_or("backoff".into(), |d| {
                    format!("retry-after-ms {}", d.as_millis())
                });
                println!(
                    "retry {}: {} ({why}), waiting {} ms: {}",
                    at.number,
                    code_name(at.code),
                    at.wait.as_millis(),
                    at.message
                );
            },
        )
        .await
        .map_err(|e| show(&e))?
        .into_inner();
        for (t, e) in chunk.iter().zip(r.embeddings) {
            cache.vectors.insert(t.clone(), e.values);
        }
        pass.retries += retries;
        pass.sent += chunk.len();
        pass.batches += 1;
        pass.dimensions = r.dimensions;
    }
    Ok(pass)
}

pub(crate) async fn embed(target: &str, call: &Call, a: EmbedArgs) -> Result<(), String> {
    let text = client(target).await?;
    let mut cache = Cache::default();
    let p1 = embed_all(&text, call, &mut cache, &TEXTS, &a).await?;
    let unique = cache.vectors.len();
    println!(
        "pass 1: {} texts ({unique} unique) sent in {} batches, dimension {}, retries {}",
        TEXTS.len(),
        p1.batches,
        p1.dimensions,
        p1.retries
    );
    let mut again = TEXTS.to_vec();
    again.push("A cheetah is running behind its prey.");
    let p2 = embed_all(&text, call, &mut cache, &again, &a).await?;
    println!(
        "pass 2: {} texts, {} sent, {} from the local cache",
        again.len(),
        p2.sent,
        cache.hits
    );
    let v = |t: &str| cache.vectors.get(t).cloned().unwrap_or_default();
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    println!(
        "cosine(eating food, eating bread) = {:.3}; cosine(eating food, weather) = {:.3}",
        dot(&v(TEXTS[0]), &v(TEXTS[1])),
        dot(&v(TEXTS[0]), &v(TEXTS[9]))
    );
    if p1.dimensions == 0 || p2.sent != 1 {
        return Err(format!("unexpected: {p1:?} {p2:?}"));
    }
    Ok(())
}
