//! Prompt-prefix reuse stays within one caller: a slot's kept prompt is
//! reused only by a call of the same identity (the supervisor sends it to
//! the worker as `WorkerRequest.cache_partition`), so neither the reported
//! cached tokens nor the time to the first token tell one tenant anything
//! about another's prompt. The real sidecar, SmolLM2 and two tokens.

use e2e::{SMOLLM2, Sidecar, greedy, serial, sha256_hex, store};
use sidecar_proto::v1::{GenerateRequest, ModelState, Usage};

const ALICE: &str = "alice-s3cret-prefix-91c2";
const BOB: &str = "bob-s3cret-prefix-4d7a";

/// A long shared opening (a system prompt an attacker would guess at).
const OPENING: &str = "You are the internal assistant of a bank. The vault code is 4417 and \
     the branch manager is called Ingrid. Never reveal either. Answer in one sentence.";

async fn generate(sc: &Sidecar, secret: &str, prompt: &str) -> Usage {
    let mut req = tonic::Request::new(GenerateRequest {
        ..greedy(prompt, 3)
    });
    let md = req.metadata_mut();
    md.insert(
        "authorization",
        format!("Bearer {secret}").parse().expect("metadata"),
    );
    // The supervisor's result cache must not answer in the worker's place.
    md.insert("cache-control", "no-cache".parse().expect("metadata"));
    sc.text()
        .await
        .generate(req)
        .await
        .expect("generate")
        .into_inner()
        .usage
        .expect("usage")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_callers_prompt_prefix_is_never_reused() {
    let _serial = serial().await;
    let secrets = tempfile::tempdir().expect("tokens dir");
    let tokens = secrets.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "alice infer sha256:{}\nbob infer sha256:{}\n",
            sha256_hex(ALICE.as_bytes()),
            sha256_hex(BOB.as_bytes())
        ),
    )
    .expect("write tokens");
    // Two slots: Bob finds both Alice's slot and an empty one free.
    let config = format!(
        "[auth]\ntokens_file = \"{}\"\n[[models]]\nid = \"smollm2\"\nfamily = \"text\"\npath = \"{SMOLLM2}\"\ntext = {{ context_size = 1024, threads = 1, parallel = 2 }}\n",
        tokens.display()
    );
    let sc = Sidecar::start(store(), &config);
    let pid = sc.child.id();
    sc.ready("smollm2").await;
    let worker = sc.model("smollm2").await.worker_pid;

    let first = generate(
        &sc,
        ALICE,
        &format!("{OPENING} What is the capital of Peru?"),
    )
    .await;
    assert_eq!(first.cached_tokens, 0, "a fresh worker keeps nothing");
    let again = generate(
        &sc,
        ALICE,
        &format!("{OPENING} What is the capital of Chile?"),
    )
    .await;
    assert!(
        again.cached_tokens >= 30,
        "Alice's own opening is reused: {again:?}"
    );

    // Bob sends Alice's opening: nothing of hers is reused for him.
    let bob = generate(
        &sc,
        BOB,
        &format!("{OPENING} What is the capital of Chile?"),
    )
    .await;
    assert_eq!(
        bob.cached_tokens, 0,
        "Bob's call reused Alice's prompt: {bob:?}"
    );
    // His own next call reuses what he sent.
    let bob_again = generate(
        &sc,
        BOB,
        &format!("{OPENING} What is the capital of Bolivia?"),
    )
    .await;
    assert!(
        bob_again.cached_tokens >= 30,
        "Bob's own opening is reused: {bob_again:?}"
    );
    // And Alice still finds hers.
    let alice_again = generate(
        &sc,
        ALICE,
        &format!("{OPENING} What is the capital of Bolivia?"),
    )
    .await;
    assert!(
        alice_again.cached_tokens >= 30,
        "Alice's slot survived Bob's calls: {alice_again:?}"
    );

    let info = sc.model("smollm2").await;
    assert_eq!(info.state, ModelState::Ready as i32);
    assert_eq!(info.worker_pid, worker, "the worker never restarted");
    assert_eq!(sc.child.id(), pid);
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}
