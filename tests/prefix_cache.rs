//! Prompt-prefix reuse in worker-text, and the `min_tokens` / `ignore_eos`
//! sampling options, end to end: the real sidecar and SmolLM2, over gRPC.
//!
//! Two models serve the same file: `smollm2` with prompt-prefix reuse (the
//! default) and `nocache` with `prompt_cache = false`, whose slots are
//! cleared before every call, so each of its calls is what a fresh worker
//! answers. Every call sends `cache-control: no-cache`, so the supervisor's
//! result cache never answers a greedy call in the worker's place.

use e2e::{SMOLLM2, Sidecar, serial, store};
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{
    ChatMessage, ChatRequest, FinishReason, GenerateRequest, GenerateResponse, LoadModelRequest,
    ModelFamily, ModelState, OutputConstraint, SamplingParams, TextOptions, TokenizeRequest,
    generate_stream_response::Msg, load_model_request, output_constraint::Kind,
};
use tonic::Code;
use tonic::transport::Channel;

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

const SYSTEM: &str = "You are a concise geography tutor. Answer in one or two short sentences.";

/// Both models, one thread each, four slots each.
fn config() -> String {
    let model = |id: &str, extra: &str| {
        format!(
            "[[models]]\nid = \"{id}\"\nfamily = \"text\"\npath = \"{SMOLLM2}\"\ntext = {{ context_size = 1024, threads = 1, parallel = 4{extra} }}\n"
        )
    };
    format!(
        "{}{}",
        model("smollm2", ""),
        model("nocache", ", prompt_cache = false")
    )
}

fn greedy() -> Option<SamplingParams> {
    Some(SamplingParams {
        temperature: Some(0.0),
        ..Default::default()
    })
}

fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

fn chat_request(model: &str, messages: &[ChatMessage], max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model_id: model.into(),
        messages: messages.to_vec(),
        sampling: greedy(),
        max_tokens,
        ..Default::default()
    }
}

/// A request that bypasses the supervisor's result cache.
fn fresh<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("cache-control", "no-cache".parse().expect("value"));
    req
}

async fn chat(text: &mut TextServiceClient<Channel>, req: ChatRequest) -> GenerateResponse {
    text.chat(fresh(req)).await.expect("chat").into_inner()
}

async fn generate(text: &mut TextServiceClient<Channel>, req: GenerateRequest) -> GenerateResponse {
    text.generate(fresh(req))
        .await
        .expect("generate")
        .into_inner()
}

/// Reads a token stream into the response the unary call would give.
async fn collect(
    mut stream: tonic::Streaming<sidecar_proto::v1::GenerateStreamResponse>,
) -> GenerateResponse {
    let mut out = GenerateResponse::default();
    let mut done = false;
    while let Some(m) = stream.message().await.expect("the stream ends cleanly") {
        match m.msg.expect("message") {
            Msg::Delta(d) => out.text.push_str(&d.text),
            Msg::Done(d) => {
                out.text.push_str(&d.text);
                out.finish_reason = d.finish_reason;
                out.usage = d.usage;
                done = true;
            }
        }
    }
    assert!(done, "the stream ended with its final message");
    out
}

fn usage(r: &GenerateResponse) -> sidecar_proto::v1::Usage {
    r.usage.expect("usage")
}

/// The supervisor and both workers are the ones the test started with,
/// healthy.
async fn still_healthy(sc: &mut Sidecar, workers: &[(&str, u32)]) {
    assert!(
        sc.child.try_wait().expect("supervisor status").is_none(),
        "the supervisor still runs"
    );
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    for (id, pid) in workers {
        let m = sc.model(id).await;
        assert_eq!(m.state, ModelState::Ready as i32, "{id}: {m:?}");
        assert_eq!(
            m.worker_pid, *pid,
            "{id}: the same worker served every call"
        );
    }
}

/// Acceptance: a 4-turn chat; each turn's reported cached tokens grow and
/// cover the previous turn's prompt and reply; every reply equals the one
/// of the model without prompt-prefix reuse (which reports 0 cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_turn_chat_reuses_each_earlier_turn_and_answers_as_without_reuse() {
    let _serial = serial().await;
    let mut sc = Sidecar::start(store(), &config());
    let pids = [
        ("smollm2", sc.ready("smollm2").await.worker_pid),
        ("nocache", sc.ready("nocache").await.worker_pid),
    ];
    let mut text = sc.text().await;
    let questions = [
        "What is the capital of France?",
        "And what is the capital of Germany?",
        "Which river flows through that city?",
        "Thank you. Name one more city in that country.",
    ];
    let mut messages = vec![message("system", SYSTEM)];
    let mut previous: Option<sidecar_proto::v1::Usage> = None;
    for (turn, q) in questions.iter().enumerate() {
        messages.push(message("user", q));
        let with = chat(&mut text, chat_request("smollm2", &messages, 48)).await;
        let without = chat(&mut text, chat_request("nocache", &messages, 48)).await;
        let (u, w) = (usage(&with), usage(&without));
        eprintln!(
            "turn {turn}: prompt {} cached {} completion {} {:?}",
            u.prompt_tokens, u.cached_tokens, u.completion_tokens, with.text
        );
        assert_eq!(
            with.text, without.text,
            "turn {turn}: greedy text with and without reuse"
        );
        assert_eq!(with.finish_reason, without.finish_reason, "turn {turn}");
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens),
            (w.prompt_tokens, w.completion_tokens)
        );
        assert_eq!(
            w.cached_tokens, 0,
            "turn {turn}: prompt_cache = false reuses nothing"
        );
        assert!(!with.text.trim().is_empty(), "turn {turn}: a reply");
        assert!(
            u.cached_tokens < u.prompt_tokens,
            "turn {turn}: one token at least is decoded: {u:?}"
        );
        match previous {
            None => assert_eq!(u.cached_tokens, 0, "the first turn finds empty slots"),
            Some(p) => {
                // The reply's tokens were fed back into the slot, so the
                // next prompt (which contains the reply) reuses them too.
                assert!(
                    u.cached_tokens >= p.prompt_tokens + p.completion_tokens,
                    "turn {turn}: cached {} covers the previous prompt {} and reply {}",
                    u.cached_tokens,
                    p.prompt_tokens,
                    p.completion_tokens
                );
                assert!(u.cached_tokens > p.cached_tokens, "turn {turn}: growing");
            }
        }
        previous = Some(u);
        messages.push(message("assistant", &with.text));
    }
    still_healthy(&mut sc, &pids).await;
}

/// Loads `id` (SmolLM2, one slot) with prompt batches of `batch` tokens.
async fn load_exact(sc: &Sidecar, id: &str, batch: u32, prompt_cache: bool) -> u32 {
    sc.manage()
        .await
        .load_model(LoadModelRequest {
            model_id: id.into(),
            family: ModelFamily::Text as i32,
            path: SMOLLM2.into(),
            options: Some(load_model_request::Options::Text(TextOptions {
                context_size: 512,
                threads: 1,
                parallel: 1,
                batch_size: batch,
                prompt_cache: Some(prompt_cache),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("LoadModel");
    sc.ready(id).await.worker_pid
}

async fn tokens(text: &mut TextServiceClient<Channel>, prompt: &str) -> Vec<i32> {
    text.tokenize(TokenizeRequest {
        model_id: "smollm2".into(),
        text: prompt.into(),
        add_special: None,
        with_pieces: false,
    })
    .await
    .expect("tokenize")
    .into_inner()
    .tokens
}

/// A prompt that diverges from a long one kept in a slot reuses only the
/// shared prefix, and its answer is the fresh worker's token for token (no
/// KV of the long prompt past the divergence leaks into it). To compare
/// bit for bit, both models decode prompts in batches as long as the
/// shared prefix, so the fresh worker computes the same batches the
/// reusing one does (llama.cpp's results depend on a token's batch).
/// Concurrent conversations on several slots each find their own slot
/// again and answer as without reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergent_prompt_reuses_only_the_shared_prefix_and_concurrent_slots_stay_apart() {
    let _serial = serial().await;
    let mut sc = Sidecar::start(store(), &config());
    let mut pids = vec![
        ("smollm2", sc.ready("smollm2").await.worker_pid),
        ("nocache", sc.ready("nocache").await.worker_pid),
    ];
    let mut text = sc.text().await;
    let shared = "The following is a short history of bread. Bread was first baked thousands of years ago, when people ground grain into flour and mixed it with water. ";
    let long_prompt = format!(
        "{shared}Over the centuries bakers in Egypt discovered yeast, the Romans built large public bakeries, and medieval guilds set the weight and price of every loaf. Today the most popular bread in the world is"
    );
    let divergent_prompt = format!(
        "{shared}The simplest flatbread needs only three ingredients, and the first of them is"
    );
    let common = common_prefix(
        &tokens(&mut text, &long_prompt).await,
        &tokens(&mut text, &divergent_prompt).await,
    );
    assert!(common > 10, "the prompts share a prefix: {common} tokens");
    pids.push(("exact", load_exact(&sc, "exact", common as u32, true).await));
    pids.push((
        "exact-fresh",
        load_exact(&sc, "exact-fresh", common as u32, false).await,
    ));
    let long = GenerateRequest {
        model_id: "exact".into(),
        prompt: long_prompt,
        sampling: greedy(),
        max_tokens: 24,
        ..Default::default()
    };
    let divergent = GenerateRequest {
        prompt: divergent_prompt,
        ..long.clone()
    };
    let first = generate(&mut text, long.clone()).await;
    let reused = generate(&mut text, divergent.clone()).await;
    let expected = generate(
        &mut text,
        GenerateRequest {
            model_id: "exact-fresh".into(),
            ..divergent.clone()
        },
    )
    .await;
    let (u, l) = (usage(&reused), usage(&first));
    eprintln!(
        "long {l:?}; divergent {u:?} {:?}; fresh {:?}",
        reused.text, expected.text
    );
    assert_eq!(
        reused.text, expected.text,
        "the divergent prompt answers as on a fresh worker"
    );
    assert_eq!(usage(&expected).cached_tokens, 0);
    assert_eq!(
        u.cached_tokens as usize, common,
        "exactly the shared prefix is reused: {u:?} after {l:?}"
    );
    // The long prompt again: its slot now holds the divergent one, so it
    // too reuses only the shared prefix, and answers as the first time.
    let again = generate(&mut text, long.clone()).await;
    assert_eq!(again.text, first.text);
    assert_eq!(
        usage(&again).cached_tokens as usize,
        common,
        "the shared prefix, once more"
    );

    // Four conversations at once, two turns each: each second turn finds
    // its own first turn in a slot (it reuses exactly the tokens that turn
    // decoded; a neighbour's slot shares only the system prompt's first
    // words), and talks about its own topic as the model without reuse
    // does alone. Whole replies are not compared: which sequences share a
    // llama.cpp batch changes logits in the last bits, enough to tip a
    // near tie after a few tokens (seen: "the moon" at its tenth token).
    let topics = ["volcanoes", "the moon", "honey bees", "glaciers"];
    let turn = |topic: &str, reply: Option<&str>| {
        let mut m = vec![
            message(
                "system",
                &format!("You are an expert on {topic}. Answer briefly."),
            ),
            message("user", &format!("Tell me one fact about {topic}.")),
        ];
        if let Some(r) = reply {
            m.push(message("assistant", r));
            m.push(message("user", "Tell me another one."));
        }
        m
    };
    let together = |replies: Vec<Option<String>>| {
        let sc_text = text.clone();
        async move {
            let calls = topics.iter().zip(replies).map(|(topic, reply)| {
                let mut t = sc_text.clone();
                let req = chat_request("smollm2", &turn(topic, reply.as_deref()), 16);
                async move { chat(&mut t, req).await }
            });
            futures_join(calls).await
        }
    };
    let alone = |replies: Vec<Option<String>>| {
        let mut t = text.clone();
        async move {
            let mut out = Vec::new();
            for (topic, reply) in topics.iter().zip(replies) {
                out.push(
                    chat(
                        &mut t,
                        chat_request("nocache", &turn(topic, reply.as_deref()), 16),
                    )
                    .await,
                );
            }
            out
        }
    };
    let first_with = together(vec![None; 4]).await;
    let first_without = alone(vec![None; 4]).await;
    let replies: Vec<Option<String>> = first_with.iter().map(|r| Some(r.text.clone())).collect();
    let second_with = together(replies.clone()).await;
    let second_without = alone(replies).await;
    let opening = |t: &str| t.split_whitespace().take(5).collect::<Vec<_>>().join(" ");
    for i in 0..topics.len() {
        let (a, b) = (&first_with[i], &first_without[i]);
        let (a2, b2) = (&second_with[i], &second_without[i]);
        let (u1, u2) = (usage(a), usage(a2));
        eprintln!(
            "{}: first {u1:?}, second {u2:?} {:?} / alone {:?}",
            topics[i], a2.text, b2.text
        );
        assert_eq!(
            opening(&a.text),
            opening(&b.text),
            "{}: first turn",
            topics[i]
        );
        assert_eq!(
            opening(&a2.text),
            opening(&b2.text),
            "{}: second turn",
            topics[i]
        );
        assert!(
            opening(&a2.text).contains(topics[i]),
            "{}: {:?}",
            topics[i],
            a2.text
        );
        // The first turn's last token was sampled but never decoded when
        // it ended on max_tokens.
        let decoded = u1.prompt_tokens + u1.completion_tokens
            - u32::from(a.finish_reason == FinishReason::Length as i32);
        assert_eq!(
            u2.cached_tokens, decoded,
            "{}: the second turn found its first turn's slot: {u2:?} after {u1:?}",
            topics[i]
        );
        assert_eq!((u1.cached_tokens, usage(b2).cached_tokens), (0, 0));
    }
    still_healthy(&mut sc, &pids).await;
}

/// Runs futures concurrently, results in order.
async fn futures_join<F: std::future::Future<Output = GenerateResponse> + Send + 'static>(
    calls: impl Iterator<Item = F>,
) -> Vec<GenerateResponse> {
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("call task"));
    }
    out
}

const QUESTION: &str = "Is water wet? Reply with only yes or no.";

fn rendered(question: &str) -> String {
    format!(
        "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// The same call through Generate, GenerateStream, Chat and ChatStream.
async fn four_ways(
    text: &mut TextServiceClient<Channel>,
    sampling: SamplingParams,
    max_tokens: u32,
    stop: &[&str],
) -> Vec<(&'static str, GenerateResponse)> {
    let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
    let generate_req = GenerateRequest {
        model_id: "smollm2".into(),
        prompt: rendered(QUESTION),
        sampling: Some(sampling),
        max_tokens,
        stop: stop.clone(),
        ..Default::default()
    };
    let chat_req = ChatRequest {
        model_id: "smollm2".into(),
        messages: vec![message("system", SYSTEM), message("user", QUESTION)],
        sampling: Some(sampling),
        max_tokens,
        stop,
        ..Default::default()
    };
    let g = generate(text, generate_req.clone()).await;
    let gs = collect(
        text.generate_stream(fresh(generate_req))
            .await
            .expect("generate stream")
            .into_inner(),
    )
    .await;
    let c = chat(text, chat_req.clone()).await;
    let cs = collect(
        text.chat_stream(fresh(chat_req))
            .await
            .expect("chat stream")
            .into_inner(),
    )
    .await;
    vec![
        ("Generate", g),
        ("GenerateStream", gs),
        ("Chat", c),
        ("ChatStream", cs),
    ]
}

/// Acceptance: a prompt that ends early on its own runs to max_tokens
/// with `ignore_eos` (finish LENGTH, no end-of-generation text);
/// `min_tokens` pushes the natural end past N tokens and turns an early
/// stop string into text; min_tokens > max_tokens is INVALID_ARGUMENT
/// naming both; all through Generate, GenerateStream, Chat and ChatStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_eos_and_min_tokens_move_the_natural_end() {
    let _serial = serial().await;
    let mut sc = Sidecar::start(store(), &config());
    let pids = [("smollm2", sc.ready("smollm2").await.worker_pid)];
    let mut text = sc.text().await;
    let plain = SamplingParams {
        temperature: Some(0.0),
        ..Default::default()
    };

    // The precondition: this prompt ends on its own well before 40 tokens.
    let natural = four_ways(&mut text, plain, 40, &[]).await;
    let (_, base) = &natural[0];
    let n = usage(base).completion_tokens;
    eprintln!("natural: {n} tokens {:?}", base.text);
    for (way, r) in &natural {
        assert_eq!(r.finish_reason, FinishReason::Eos as i32, "{way}: {r:?}");
        assert_eq!(r.text, base.text, "{way}");
        assert!(
            usage(r).completion_tokens < 10,
            "{way}: an early natural end: {r:?}"
        );
    }

    let ignore = SamplingParams {
        ignore_eos: Some(true),
        ..plain
    };
    for (way, r) in four_ways(&mut text, ignore, 40, &[]).await {
        assert_eq!(r.finish_reason, FinishReason::Length as i32, "{way}: {r:?}");
        assert_eq!(usage(&r).completion_tokens, 40, "{way}");
        assert!(r.text.starts_with(&base.text), "{way}: {:?}", r.text);
        assert!(
            !r.text.contains("<|im_end|>") && !r.text.contains("<|endoftext|>"),
            "{way}: {:?}",
            r.text
        );
    }

    let min = n + 6;
    let at_least = SamplingParams {
        min_tokens: Some(min),
        ..plain
    };
    for (way, r) in four_ways(&mut text, at_least, 40, &[]).await {
        let u = usage(&r);
        assert!(u.completion_tokens >= min, "{way}: {u:?} {:?}", r.text);
        assert!(r.text.starts_with(&base.text), "{way}: {:?}", r.text);
        assert!(!r.text.contains("<|im_end|>"), "{way}: {:?}", r.text);
        assert!(
            [FinishReason::Eos as i32, FinishReason::Length as i32].contains(&r.finish_reason),
            "{way}: {r:?}"
        );
    }

    // A stop string in the first token ends the call at once, unless
    // min_tokens says otherwise: then it is text.
    let first_char: String = base.text.trim_start().chars().take(2).collect();
    assert!(
        !first_char.is_empty(),
        "a reply to stop on: {:?}",
        base.text
    );
    for (way, r) in four_ways(&mut text, plain, 40, &[&first_char]).await {
        assert_eq!(r.finish_reason, FinishReason::Stop as i32, "{way}: {r:?}");
        assert!(usage(&r).completion_tokens < n, "{way}: {r:?}");
    }
    for (way, r) in four_ways(
        &mut text,
        SamplingParams {
            min_tokens: Some(min),
            ..plain
        },
        40,
        &[&first_char],
    )
    .await
    {
        let u = usage(&r);
        assert!(u.completion_tokens >= min, "{way}: {u:?} {:?}", r.text);
        assert!(
            r.text.contains(&first_char),
            "{way}: the stop string is text: {:?}",
            r.text
        );
    }

    // min_tokens > max_tokens, on each call.
    let too_many = SamplingParams {
        min_tokens: Some(50),
        ..plain
    };
    let check = |e: tonic::Status, way: &str| {
        assert_eq!(e.code(), Code::InvalidArgument, "{way}: {e:?}");
        assert!(
            e.message().contains("min_tokens 50") && e.message().contains("max_tokens 20"),
            "{way}: {}",
            e.message()
        );
    };
    let g = GenerateRequest {
        model_id: "smollm2".into(),
        prompt: rendered(QUESTION),
        sampling: Some(too_many),
        max_tokens: 20,
        ..Default::default()
    };
    let c = ChatRequest {
        model_id: "smollm2".into(),
        messages: vec![message("user", QUESTION)],
        sampling: Some(too_many),
        max_tokens: 20,
        ..Default::default()
    };
    check(
        text.generate(fresh(g.clone())).await.expect_err("generate"),
        "Generate",
    );
    check(text.chat(fresh(c.clone())).await.expect_err("chat"), "Chat");
    match text.generate_stream(fresh(g.clone())).await {
        Err(e) => check(e, "GenerateStream"),
        Ok(s) => check(
            s.into_inner().message().await.expect_err("stream error"),
            "GenerateStream",
        ),
    }
    match text.chat_stream(fresh(c)).await {
        Err(e) => check(e, "ChatStream"),
        Ok(s) => check(
            s.into_inner().message().await.expect_err("stream error"),
            "ChatStream",
        ),
    }
    // With a grammar, masking the end would leave nothing it allows.
    let e = text
        .generate(fresh(GenerateRequest {
            sampling: Some(ignore),
            constraint: Some(OutputConstraint {
                kind: Some(Kind::Gbnf("root ::= \"yes\" | \"no\"".into())),
            }),
            ..g
        }))
        .await
        .expect_err("ignore_eos with a grammar");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("ignore_eos") && e.message().contains("constraint"),
        "{}",
        e.message()
    );
    still_healthy(&mut sc, &pids).await;
}

/// Embedding models keep no prompt cache: asking for one is refused by
/// name, by the supervisor when the options say `embeddings = true`, by
/// the worker when the file is an embedding model; the same model loads
/// and embeds without the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_on_an_embedding_model_is_refused_by_name() {
    let _serial = serial().await;
    let store = store();
    e2e::add_model(&store, e2e::MINILM);
    let mut sc = Sidecar::start(store, &config());
    let pids = [("smollm2", sc.ready("smollm2").await.worker_pid)];
    let load = |options: TextOptions| LoadModelRequest {
        model_id: "minilm".into(),
        family: ModelFamily::Text as i32,
        path: e2e::MINILM.into(),
        options: Some(load_model_request::Options::Text(TextOptions {
            threads: 1,
            prompt_cache: Some(true),
            ..options
        })),
        ..Default::default()
    };
    let mut manage = sc.manage().await;
    for options in [
        TextOptions {
            embeddings: Some(true),
            ..Default::default()
        },
        TextOptions::default(),
    ] {
        let err = manage
            .load_model(load(options.clone()))
            .await
            .expect_err("prompt_cache on an embedding model");
        assert_eq!(err.code(), Code::InvalidArgument, "{options:?}: {err:?}");
        assert!(
            err.message().contains("text.prompt_cache")
                && err.message().contains("generation model"),
            "{options:?}: {}",
            err.message()
        );
    }
    manage
        .load_model(LoadModelRequest {
            options: Some(load_model_request::Options::Text(TextOptions {
                threads: 1,
                ..Default::default()
            })),
            ..load(TextOptions::default())
        })
        .await
        .expect("the same model without the option");
    sc.ready("minilm").await;
    let e = sc
        .text()
        .await
        .embed(sidecar_proto::v1::EmbedRequest {
            model_id: "minilm".into(),
            inputs: vec!["a kept prompt".into()],
            ..Default::default()
        })
        .await
        .expect("embed")
        .into_inner();
    assert_eq!(e.embeddings.len(), 1);
    assert_eq!(e.usage.expect("usage").cached_tokens, 0);
    still_healthy(&mut sc, &pids).await;
}
