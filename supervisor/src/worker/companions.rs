//! A VISION model's companion models (`vision.pipeline`): resolved in the
//! store when the model is added, opened at every start like the model
//! file (`ModelFile`: no link at the last component, a regular file, the
//! path the store resolved) and handed to the worker as descriptors. The
//! worker opens each by `/proc/self/fd/N`, never by a store path.

use std::path::PathBuf;

use sidecar_proto::v1::PipelineModels;

use super::model_file::ModelFile;
use crate::config::{PipelineSpec, set_role};
use crate::error::Error;
use crate::store::Store;

/// The resolved companion files of one model, by role.
#[derive(Debug, Clone, Default)]
pub struct Companions {
    files: Vec<(&'static str, PathBuf)>,
}

/// The companions opened for one start.
#[derive(Debug)]
pub struct Opened {
    /// The open files, in role order.
    pub files: Vec<ModelFile>,
    /// What the worker's `Load` carries: `/proc/self/fd/N` per role.
    pub worker_paths: Option<PipelineModels>,
}

impl Companions {
    /// Resolves every role set in `spec` inside the store. A path the
    /// store refuses, or no file there, is INVALID_ARGUMENT naming the
    /// role (`vision.pipeline.hand_landmark: ...`).
    pub fn resolve(store: &Store, spec: &PipelineSpec) -> Result<Companions, Error> {
        let mut files = Vec::new();
        for (role, path) in spec.roles() {
            if path.is_empty() {
                continue;
            }
            let real = store
                .resolve(path)
                .map_err(|e| Error::InvalidArgument(format!("vision.pipeline.{role}: {e}")))?;
            files.push((role, real));
        }
        Ok(Companions { files })
    }

    /// Opens every companion for one start; errors name the role.
    pub fn open(&self) -> Result<Opened, String> {
        let mut files = Vec::with_capacity(self.files.len());
        let mut paths = PipelineModels::default();
        for (role, path) in &self.files {
            let file = ModelFile::open(path).map_err(|e| format!("vision.pipeline.{role}: {e}"))?;
            set_role(&mut paths, role, file.worker_path());
            files.push(file);
        }
        Ok(Opened {
            worker_paths: (!files.is_empty()).then_some(paths),
            files,
        })
    }

    /// Their total size on disk now (0 for a file gone since).
    pub fn size(&self) -> u64 {
        self.files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_resolve_in_the_store_and_open_as_descriptors() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("mediapipe")).expect("mkdir");
        std::fs::write(dir.path().join("mediapipe/palm.tflite"), b"palm").expect("write");
        std::fs::write(dir.path().join("mediapipe/hand.tflite"), b"hand").expect("write");
        let store = Store::open(dir.path()).expect("store");
        let spec = PipelineSpec {
            palm_detection: "mediapipe/palm.tflite".into(),
            hand_landmark: "mediapipe/hand.tflite".into(),
            ..Default::default()
        };
        let c = Companions::resolve(&store, &spec).expect("resolves");
        assert_eq!(c.size(), 8);
        let opened = c.open().expect("opens");
        assert_eq!(opened.files.len(), 2);
        let paths = opened.worker_paths.expect("paths");
        assert!(
            paths.palm_detection.starts_with("/proc/self/fd/"),
            "{paths:?}"
        );
        assert!(
            paths.hand_landmark.starts_with("/proc/self/fd/"),
            "{paths:?}"
        );
        assert_ne!(paths.palm_detection, paths.hand_landmark);
        assert_eq!(paths.pose_landmark, "");
        let none = Companions::resolve(&store, &PipelineSpec::default()).expect("empty");
        assert!(none.open().expect("opens").worker_paths.is_none());
    }

    #[test]
    fn a_missing_or_escaping_companion_is_invalid_argument_naming_the_role() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        for (path, says) in [
            ("mediapipe/none.tflite", "no such file"),
            ("../etc/passwd", ".."),
            ("/etc/passwd", "absolute"),
        ] {
            let spec = PipelineSpec {
                hand_landmark: path.into(),
                ..Default::default()
            };
            match Companions::resolve(&store, &spec) {
                Err(Error::InvalidArgument(m)) => {
                    assert!(m.starts_with("vision.pipeline.hand_landmark: "), "{m}");
                    assert!(m.contains(says), "{path}: {m}");
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    }
}
