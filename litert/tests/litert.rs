//! The LiteRT wrapper against the real `libLiteRt.so` and MediaPipe models
//! that `scripts/setup.sh` installs.

use std::path::{Path, PathBuf};

use litert::{HW_CPU, Runtime};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn runtime() -> std::sync::Arc<Runtime> {
    let lib = root().join("runtime/litert/libLiteRt.so");
    assert!(
        lib.is_file(),
        "{} is missing: run scripts/setup.sh",
        lib.display()
    );
    Runtime::load(&lib).expect("load libLiteRt.so")
}

#[test]
fn the_face_detector_describes_itself_and_runs() {
    let rt = runtime();
    let model = rt
        .model(&root().join("models/mediapipe/face_detection_short_range.tflite"))
        .expect("read the model");
    let mut c = model.compile(HW_CPU, 1).expect("compile");
    let (inputs, outputs) = (&c.input_desc, &c.output_desc);
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    assert_eq!(inputs[0].shape, vec![1, 128, 128, 3]);
    assert_eq!(inputs[0].element_type, 1, "float32");
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    let shapes: Vec<&[i32]> = outputs.iter().map(|o| o.shape.as_slice()).collect();
    assert!(
        shapes.contains(&&[1, 896, 16][..]) && shapes.contains(&&[1, 896, 1][..]),
        "{shapes:?}"
    );
    assert_eq!(c.input_bytes(0).expect("size"), 128 * 128 * 3 * 4);
    assert_eq!(c.output_bytes(0).expect("size") % (896 * 4), 0);

    c.write_input(0, |b| b.fill(0)).expect("write");
    c.run().expect("run");
    let zeros = c.read_output(0, <[u8]>::to_vec).expect("read");
    c.write_input(0, |b| {
        for (i, x) in b.chunks_exact_mut(4).enumerate() {
            x.copy_from_slice(&(((i % 255) as f32 / 127.5) - 1.0).to_le_bytes());
        }
    })
    .expect("write");
    c.run().expect("run");
    let pattern = c.read_output(0, <[u8]>::to_vec).expect("read");
    assert_eq!(zeros.len(), pattern.len());
    assert_ne!(zeros, pattern, "the output depends on the input");
}

#[test]
fn a_file_that_is_not_a_model_is_refused_with_the_runtime_status() {
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("litert-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bogus = dir.join("bogus.tflite");
    std::fs::write(&bogus, b"definitely not a flatbuffer").expect("write");
    let err = rt.model(&bogus).expect_err("refused");
    assert!(err.to_string().contains("LiteRT status"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
