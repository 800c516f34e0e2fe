//! Embeddings end to end: the real sidecar and worker-text serving
//! all-MiniLM-L6-v2 as setup converted it, compared with the vectors the
//! `sentence-transformers` package computes for the original model
//! (`fixtures/minilm_reference.json`, made by
//! `fixtures/make_minilm_reference.py`).

use e2e::{MINILM, Sidecar, add_model, minilm_config, serial, smollm2_config, store};
use sidecar_proto::v1::{EmbedRequest, TokenizeRequest, Truncation};
use tonic::Code;

struct Case {
    text: String,
    tokens: Vec<i32>,
    full_tokens: usize,
    embedding: Vec<f32>,
}

fn reference() -> (usize, Vec<Case>) {
    let path = e2e::root().join("tests/fixtures/minilm_reference.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read the reference")).expect("json");
    let ints = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_i64().expect("int"))
            .collect()
    };
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_owned(),
            tokens: ints(&c["tokens"]).into_iter().map(|t| t as i32).collect(),
            full_tokens: c["full_tokens"].as_u64().expect("full_tokens") as usize,
            embedding: c["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect(),
        })
        .collect();
    (
        json["max_seq_length"].as_u64().expect("max") as usize,
        cases,
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dimensions");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn embed(inputs: &[&str]) -> EmbedRequest {
    EmbedRequest {
        model_id: "minilm".into(),
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn minilm_sidecar(extra_config: &str) -> Sidecar {
    let store = store();
    add_model(&store, MINILM);
    Sidecar::start(store, &format!("{}{extra_config}", minilm_config("")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_matches_sentence_transformers() {
    let _serial = serial().await;
    let sc = minilm_sidecar("");
    let info = sc.ready("minilm").await;
    let details = info.text_details.expect("text details");
    assert!(details.embeddings, "{details:?}");
    assert_eq!(details.architecture, "bert");
    assert_eq!(details.embedding_size, 384);
    let (max, cases) = reference();
    assert_eq!(
        details.max_input_tokens as usize, max,
        "sentence-transformers' maximum"
    );

    let mut text = sc.text().await;
    // Token ids: the same as the Hugging Face tokenizer's.
    for c in cases.iter().filter(|c| c.full_tokens <= max) {
        let t = text
            .tokenize(TokenizeRequest {
                model_id: "minilm".into(),
                text: c.text.clone(),
                ..Default::default()
            })
            .await
            .expect("tokenize")
            .into_inner();
        assert_eq!(t.tokens, c.tokens, "token ids of {:?}", c.text);
    }

    // All the sentences in one call, the long one truncated as
    // sentence-transformers truncates it.
    let inputs: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let r = text
        .embed(EmbedRequest {
            truncation: Truncation::End as i32,
            ..embed(&inputs)
        })
        .await
        .expect("embed")
        .into_inner();
    assert_eq!(r.dimensions, 384);
    assert_eq!(r.embeddings.len(), cases.len(), "one vector per input");
    let mut worst = (1.0f64, "");
    for (c, e) in cases.iter().zip(&r.embeddings) {
        let cos = cosine(&e.values, &c.embedding);
        if cos < worst.0 {
            worst = (cos, &c.text);
        }
        assert!(cos >= 0.999, "cosine {cos} for {:?}", c.text);
        assert_eq!(e.tokens as usize, c.tokens.len(), "tokens of {:?}", c.text);
        assert_eq!(
            e.truncated,
            c.full_tokens > max,
            "truncated flag of {:?}",
            c.text
        );
        let norm = e.values.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "normalised by default: {norm}");
    }
    eprintln!("lowest cosine {:.6} ({:?})", worst.0, worst.1);
    let usage = r.usage.expect("usage");
    let total: usize = cases.iter().map(|c| c.tokens.len()).sum();
    assert_eq!(usage.prompt_tokens as usize, total);
    let timings = r.timings.expect("timings");
    assert!(
        timings.prompt_us > 0 && timings.total_us >= timings.prompt_us,
        "{timings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_is_the_same_alone_or_batched_and_calls_share_the_worker() {
    let _serial = serial().await;
    let sc = minilm_sidecar("");
    sc.ready("minilm").await;
    let mut text = sc.text().await;
    let sentence = "Shared memory makes the hop to the worker cheap.";
    let alone = text
        .embed(embed(&[sentence]))
        .await
        .expect("embed")
        .into_inner();
    let alone = &alone.embeddings[0].values;

    // 64 inputs: the sentence at several places between others.
    let fillers: Vec<String> = (0..64)
        .map(|i| format!("filler sentence number {i}"))
        .collect();
    let mut inputs: Vec<&str> = fillers.iter().map(String::as_str).collect();
    for at in [0, 17, 63] {
        inputs[at] = sentence;
    }
    let many = text
        .embed(embed(&inputs))
        .await
        .expect("embed 64")
        .into_inner();
    assert_eq!(many.embeddings.len(), 64);
    for at in [0, 17, 63] {
        let cos = cosine(&many.embeddings[at].values, alone);
        assert!(cos > 0.99999, "input {at}: cosine {cos} with the lone call");
    }
    let other = cosine(&many.embeddings[1].values, alone);
    assert!(other < 0.99, "a different sentence differs: {other}");

    // Raw vectors: not unit length, the same direction.
    let raw = text
        .embed(EmbedRequest {
            normalize: Some(false),
            ..embed(&[sentence])
        })
        .await
        .expect("raw")
        .into_inner();
    let raw = &raw.embeddings[0].values;
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 0.01, "raw vector norm {norm}");
    assert!(cosine(raw, alone) > 0.99999);

    // Concurrent calls each get their own vectors, in their input order.
    let calls = (0..8).map(|i| {
        let mut client = text.clone();
        async move {
            let a = format!("concurrent call {i}");
            let r = client
                .embed(embed(&[&a, sentence]))
                .await
                .expect("concurrent embed")
                .into_inner();
            (a, r)
        }
    });
    let results = join_all(calls).await;
    for (a, r) in results {
        assert_eq!(r.embeddings.len(), 2);
        assert!(cosine(&r.embeddings[1].values, alone) > 0.99999, "{a}");
        let single = text.embed(embed(&[&a])).await.expect("embed").into_inner();
        assert!(
            cosine(&r.embeddings[0].values, &single.embeddings[0].values) > 0.99999,
            "{a}"
        );
    }
}

/// Runs the futures as tasks and returns their outputs in order.
async fn join_all<F>(calls: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_embed_input_gets_a_clear_error_and_the_next_call_succeeds() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, MINILM);
    let config = format!("{}{}", minilm_config(""), smollm2_config(""));
    let sc = Sidecar::start(store, &config);
    sc.ready("minilm").await;
    sc.ready("smollm2").await;
    let mut text = sc.text().await;
    let long = "word ".repeat(300);

    let cases: Vec<(EmbedRequest, Code, Vec<String>)> = vec![
        (
            embed(&["fine", &long]),
            Code::InvalidArgument,
            vec!["inputs[1]".into(), "302 tokens".into(), "256".into()],
        ),
        (
            embed(&[]),
            Code::InvalidArgument,
            vec!["at least one".into()],
        ),
        (
            EmbedRequest {
                inputs: vec![String::new(); 1025],
                ..embed(&[])
            },
            Code::InvalidArgument,
            vec!["1025".into(), "1024".into()],
        ),
        (
            EmbedRequest {
                truncation: 7,
                ..embed(&["x"])
            },
            Code::InvalidArgument,
            vec!["truncation 7".into()],
        ),
        (
            EmbedRequest {
                model_id: "smollm2".into(),
                ..embed(&["x"])
            },
            Code::FailedPrecondition,
            vec!["embedding model".into()],
        ),
        (
            EmbedRequest {
                model_id: "nope".into(),
                ..embed(&["x"])
            },
            Code::NotFound,
            vec!["nope".into()],
        ),
    ];
    for (req, code, words) in cases {
        let err = text.embed(req).await.expect_err("must fail");
        assert_eq!(err.code(), code, "{err:?}");
        for w in words {
            assert!(
                err.message().contains(&w),
                "{w:?} not in {:?}",
                err.message()
            );
        }
    }
    let err = text
        .generate(sidecar_proto::v1::GenerateRequest {
            model_id: "minilm".into(),
            prompt: "hello".into(),
            max_tokens: 4,
            ..Default::default()
        })
        .await
        .expect_err("an embedding model does not generate");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("use Embed"), "{err:?}");

    // Truncation on request; the worker is the same one and still serves.
    let r = text
        .embed(EmbedRequest {
            truncation: Truncation::End as i32,
            ..embed(&["", &long])
        })
        .await
        .expect("truncated embed")
        .into_inner();
    assert_eq!(
        r.embeddings[0].tokens, 2,
        "[CLS] [SEP] for the empty string"
    );
    assert!(!r.embeddings[0].truncated);
    assert_eq!(r.embeddings[1].tokens, 256);
    assert!(r.embeddings[1].truncated);
    assert_eq!(sc.model("minilm").await.restarts, 0, "no worker restart");
}
