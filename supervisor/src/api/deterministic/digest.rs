//! The digest in a model's cache keys: what the model's answers depend on
//! beyond its id, path and options. A VISION pipeline's answers depend on
//! its companion models (`vision.pipeline`) as much as on its own file, so
//! a changed companion file must change every key, as a changed model
//! file does.

use crate::config::PipelineSpec;
use crate::error::Error;
use crate::store::Store;

/// The model file's sha256 (hex), followed by ` role=sha256` for each
/// companion model `pipeline` names, in role order. A model without
/// companions keeps its file's digest alone (its keys are unchanged).
pub(super) fn model_digest(
    store: &Store,
    path: &str,
    pipeline: &PipelineSpec,
) -> Result<String, Error> {
    let mut digest = store.digests.sha256(&store.resolve(path)?)?;
    for (role, companion) in pipeline.roles() {
        if companion.is_empty() {
            continue;
        }
        let sha = store.digests.sha256(&store.resolve(companion)?)?;
        digest.push_str(&format!(" {role}={sha}"));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_companion_changes_the_digest_and_nothing_else_does() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("mediapipe")).expect("mkdir");
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.path().join("mediapipe").join(name), bytes).expect("write")
        };
        write("face.tflite", b"face");
        write("palm.tflite", b"palm");
        write("hand.tflite", b"hand v1");
        let store = Store::open(dir.path()).expect("store");
        let alone = model_digest(&store, "mediapipe/face.tflite", &PipelineSpec::default())
            .expect("digest");
        // sha256("face"): the file's digest alone, as before companions
        // counted.
        assert_eq!(
            alone,
            "0282d9b79f42c74c1550b20ff2dd16aafc3fe5d8ae9a00b2f66996d0ae882775"
        );
        let spec = PipelineSpec {
            palm_detection: "mediapipe/palm.tflite".into(),
            hand_landmark: "mediapipe/hand.tflite".into(),
            ..Default::default()
        };
        let before = model_digest(&store, "mediapipe/face.tflite", &spec).expect("digest");
        assert!(
            before.starts_with(&format!("{alone} palm_detection=")),
            "{before}"
        );
        assert!(before.contains(" hand_landmark="), "{before}");
        assert_eq!(
            model_digest(&store, "mediapipe/face.tflite", &spec).expect("again"),
            before,
            "stable while nothing changes"
        );
        // The companion's bytes change (another length, so the digest
        // cache's size-and-mtime check sees it at once).
        write("hand.tflite", b"hand v2, retrained");
        let after = model_digest(&store, "mediapipe/face.tflite", &spec).expect("digest");
        assert_ne!(after, before, "a changed companion changes the key");
        assert!(after.starts_with(&alone), "the model file did not change");
        // A companion gone: the digest cannot be made (the call then goes
        // uncached), never one without it.
        std::fs::remove_file(dir.path().join("mediapipe/palm.tflite")).expect("rm");
        let e = model_digest(&store, "mediapipe/face.tflite", &spec).expect_err("gone");
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    }
}
