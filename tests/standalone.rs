//! Each worker binary run standalone, without the supervisor, as an
//! operator would from `kubectl exec`.

use std::process::Command;

use e2e::binary;

#[test]
fn the_worker_binaries_run_standalone() {
    let models = e2e::root().join("models");
    let run = |bin: &str, args: &[&str]| {
        let out = Command::new(binary(bin))
            .args(args)
            .env(
                "SIDECAR_LITERT_LIB",
                e2e::root().join("runtime/litert/libLiteRt.so"),
            )
            .output()
            .expect("run worker");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{bin}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let smollm2 = models.join(e2e::SMOLLM2);
    let out = run(
        "worker-text",
        &[
            "--model",
            smollm2.to_str().expect("utf8"),
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "4",
        ],
    );
    assert!(
        out.contains("Paris") && out.contains("4 generated"),
        "{out}"
    );
    let face = models.join("mediapipe/face_detection_short_range.tflite");
    let out = run("worker-lite", &["--model", face.to_str().expect("utf8")]);
    assert!(
        out.contains("input  input FLOAT32 [1, 128, 128, 3]")
            && out.contains("classificators FLOAT32 [1, 896, 1]:"),
        "{out}"
    );
    let image = models.join("testdata/astronaut.png");
    let out = run(
        "worker-vision",
        &[
            "--model",
            face.to_str().expect("utf8"),
            "--image",
            image.to_str().expect("utf8"),
        ],
    );
    assert!(out.contains("1 faces"), "{out}");
    // Bad usage: exit code 2 and the usage line.
    let out = Command::new(binary("worker-text"))
        .arg("--prompt")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: worker-text"));
}
