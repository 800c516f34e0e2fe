//! The Python `grpcio` client (stubs generated from the project's protos
//! at test time) streams a completion from the real sidecar, embeds texts
//! with MiniLM and runs a LITE face detector.

use std::process::Command;

use e2e::{
    MINILM, Sidecar, add_model, lite_config, minilm_config, root, serial, smollm2_config, store,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_streams_embeds_and_infers() {
    let _serial = serial().await;
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let store = store();
    add_model(&store, MINILM);
    let face = "mediapipe/face_detection_short_range.tflite";
    add_model(&store, face);
    let config = format!(
        "{}{}{}",
        smollm2_config(""),
        minilm_config(""),
        lite_config("face-detector", face, "")
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("smollm2").await;
    sc.ready("minilm").await;
    sc.ready("face-detector").await;
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::task::spawn_blocking({
        let api = sc.api.to_string();
        let out_dir = out_dir.path().to_path_buf();
        move || {
            Command::new(python)
                .arg(root().join("tests/python/smoke.py"))
                .arg(&api)
                .arg(root().join("proto"))
                .arg(&out_dir)
                .output()
                .expect("run python")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK generate"), "{stdout}");
    assert!(stdout.contains("OK embed"), "{stdout}");
    assert!(stdout.contains("OK lite"), "{stdout}");
}
