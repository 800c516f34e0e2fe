//! Chat with the model's own template, Tokenize, and output constrained by
//! a GBNF grammar or a JSON schema.

use e2e::{Sidecar, serial, smollm2_config, store};
use sidecar_proto::v1::{
    ChatMessage, ChatRequest, GenerateRequest, OutputConstraint, SamplingParams, TokenizeRequest,
    generate_stream_response::Msg, output_constraint::Kind,
};
use tonic::Code;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_uses_the_model_template_and_tokenize_matches_it() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let mut text = sc.text().await;

    let question = "What is the capital of France?";
    let chat = ChatRequest {
        model_id: "smollm2".into(),
        messages: vec![
            message("system", "You are a helpful assistant."),
            message("user", question),
        ],
        sampling: greedy(),
        max_tokens: 24,
        ..Default::default()
    };
    let mut stream = text
        .chat_stream(chat.clone())
        .await
        .expect("chat stream")
        .into_inner();
    let (mut streamed, mut done) = (String::new(), None);
    while let Some(m) = stream.message().await.expect("no error") {
        match m.msg.expect("message") {
            Msg::Delta(d) => streamed.push_str(&d.text),
            Msg::Done(d) => done = Some(d),
        }
    }
    let done = done.expect("final message");
    streamed.push_str(&done.text);
    assert!(streamed.contains("Paris"), "{streamed:?}");
    assert!(
        !streamed.contains("<|im_"),
        "template tokens are not text: {streamed:?}"
    );

    // The ChatML rendering of those two messages, tokenized, is the prompt.
    let rendered = format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    );
    let tokens = text
        .tokenize(TokenizeRequest {
            model_id: "smollm2".into(),
            text: rendered,
            add_special: None,
            with_pieces: true,
        })
        .await
        .expect("tokenize")
        .into_inner();
    assert_eq!(
        done.usage.expect("usage").prompt_tokens as usize,
        tokens.tokens.len()
    );
    assert_eq!(tokens.pieces.len(), tokens.tokens.len());
    assert_eq!(
        tokens.pieces.first().map(String::as_str),
        Some("<|im_start|>")
    );

    let whole = text.chat(chat).await.expect("unary chat").into_inner();
    assert_eq!(whole.text, streamed, "greedy: unary and stream agree");

    // A named template; one llama.cpp does not know; no messages.
    let named = ChatRequest {
        model_id: "smollm2".into(),
        messages: vec![message("user", "Hi")],
        chat_template: "chatml".into(),
        max_tokens: 4,
        sampling: greedy(),
        ..Default::default()
    };
    text.chat(named.clone())
        .await
        .expect("named built-in template");
    let err = text
        .chat(ChatRequest {
            chat_template: "{{ no such template }}".into(),
            ..named.clone()
        })
        .await
        .expect_err("unknown template");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("chat_template"), "{}", err.message());
    let err = text
        .chat(ChatRequest {
            messages: vec![],
            ..named
        })
        .await
        .expect_err("no messages");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grammars_and_json_schemas_constrain_the_output() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let constrained = |kind: Kind, prompt: &str| GenerateRequest {
        model_id: "smollm2".into(),
        prompt: prompt.into(),
        max_tokens: 48,
        sampling: Some(SamplingParams {
            seed: Some(7),
            ..Default::default()
        }),
        constraint: Some(OutputConstraint { kind: Some(kind) }),
        ..Default::default()
    };

    let answer = text
        .generate(constrained(
            Kind::Gbnf("root ::= \"yes\" | \"no\"".into()),
            "Is the sky blue? Answer:",
        ))
        .await
        .expect("grammar")
        .into_inner();
    assert!(
        answer.text == "yes" || answer.text == "no",
        "{:?}",
        answer.text
    );

    let schema = r#"{"type":"object","properties":{"name":{"type":"string","maxLength":12},"age":{"type":"integer","minimum":0,"maximum":150}},"required":["name","age"],"additionalProperties":false}"#;
    let answer = text
        .generate(constrained(
            Kind::JsonSchema(schema.into()),
            "A person as JSON:",
        ))
        .await
        .expect("json schema")
        .into_inner();
    let json = answer.text.trim();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json:?}");
    assert!(
        json.contains("\"name\"") && json.contains("\"age\""),
        "{json:?}"
    );

    let err = text
        .generate(constrained(
            Kind::Gbnf("root ::= \"unterminated".into()),
            "x",
        ))
        .await
        .expect_err("bad grammar");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = text
        .generate(constrained(Kind::JsonSchema("{not json".into()), "x"))
        .await
        .expect_err("bad schema");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_option_sets_the_default_chat_template() {
    let _serial = serial().await;
    let config =
        smollm2_config("").replace("threads = 1 }", "threads = 1, chat_template = \"zephyr\" }");
    let sc = Sidecar::start(store(), &config);
    sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let chat = |template: &str| ChatRequest {
        model_id: "smollm2".into(),
        messages: vec![message("user", "Hello there")],
        chat_template: template.into(),
        max_tokens: 1,
        sampling: greedy(),
        ..Default::default()
    };
    let prompt_tokens =
        |r: sidecar_proto::v1::GenerateResponse| r.usage.expect("usage").prompt_tokens;
    let zephyr = prompt_tokens(text.chat(chat("")).await.expect("default").into_inner());
    let chatml = prompt_tokens(
        text.chat(chat("chatml"))
            .await
            .expect("chatml")
            .into_inner(),
    );
    // "<|user|>\nHello there<|endoftext|>\n<|assistant|>\n" versus the ChatML form.
    let rendered = text
        .tokenize(TokenizeRequest {
            model_id: "smollm2".into(),
            text: "<|user|>\nHello there<|endoftext|>\n<|assistant|>\n".into(),
            add_special: None,
            with_pieces: false,
        })
        .await
        .expect("tokenize")
        .into_inner();
    assert_eq!(
        zephyr as usize,
        rendered.tokens.len(),
        "the configured template renders the prompt"
    );
    assert_ne!(zephyr, chatml);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_chat_template_needs_one_named() {
    let _serial = serial().await;
    // SmolLM2 with its template key renamed in place (same length, so the
    // file stays valid): llama.cpp finds no chat template in it.
    let store = store();
    let mut bytes = std::fs::read(store.path().join(e2e::SMOLLM2)).expect("read model");
    let key = b"tokenizer.chat_template";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("SmolLM2 carries a chat template");
    bytes[at + key.len() - 1] = b'X';
    std::fs::write(store.path().join("no-template.gguf"), bytes).expect("write");
    let config = "[[models]]\nid = \"plain\"\nfamily = \"text\"\npath = \"no-template.gguf\"\ntext = { context_size = 512, threads = 1 }\n";
    let sc = Sidecar::start(store, config);
    let info = sc.ready("plain").await;
    assert!(!info.text_details.expect("details").has_chat_template);
    let mut text = sc.text().await;
    let chat = |template: &str| ChatRequest {
        model_id: "plain".into(),
        messages: vec![message("user", "Hello there")],
        chat_template: template.into(),
        max_tokens: 2,
        sampling: greedy(),
        ..Default::default()
    };
    let err = text.chat(chat("")).await.expect_err("no template");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("no chat template"),
        "{}",
        err.message()
    );
    let named = text
        .chat(chat("chatml"))
        .await
        .expect("a named template works")
        .into_inner();
    assert!(named.usage.expect("usage").completion_tokens > 0);
}
