//! What the pose and selfie segmentation tests share: the repository's
//! models and runtime, the photographs, MediaPipe's fixtures and mask
//! comparisons.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use opencv::core::Mat;
use opencv::imgcodecs;
use opencv::prelude::*;

pub(crate) fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The photographs `scripts/setup.sh` extracts (`SIDECAR_TESTDATA`
/// overrides the folder).
pub(crate) fn testdata(name: &str) -> PathBuf {
    std::env::var_os("SIDECAR_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/testdata"))
        .join(name)
}

pub(crate) fn runtime() -> Arc<litert::Runtime> {
    litert::Runtime::load(&root().join("runtime/litert/libLiteRt.so"))
        .expect("the LiteRT runtime loads (run scripts/setup.sh)")
}

pub(crate) fn model(name: &str) -> PathBuf {
    let p = root().join("models/mediapipe").join(name);
    assert!(
        p.is_file(),
        "{} is missing (run scripts/setup.sh)",
        p.display()
    );
    p
}

pub(crate) fn photo(path: &Path) -> Mat {
    let m = imgcodecs::imread(path.to_str().unwrap(), imgcodecs::IMREAD_COLOR).unwrap();
    assert!(
        !m.empty(),
        "{} is missing (run scripts/setup.sh)",
        path.display()
    );
    m
}

/// MediaPipe's results on the photographs, as
/// `scripts/mediapipe_fixtures.py` wrote them.
pub(crate) fn fixtures(suffix: &str) -> Vec<(PathBuf, serde_json::Value)> {
    let dir = root().join("tests/fixtures/mediapipe");
    let mut out: Vec<(PathBuf, serde_json::Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        // Photographs only: `video.*` are the moving-crop video's.
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(suffix) && !name.starts_with("video.")
        })
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, serde_json::from_str(&text).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no {suffix} fixtures in {}", dir.display());
    out
}

pub(crate) fn f(v: &serde_json::Value) -> f32 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number")) as f32
}

/// A fixture's mask at 0.5: its rows' run lengths, background first.
pub(crate) fn fixture_mask(seg: &serde_json::Value) -> Vec<bool> {
    let (w, h) = (
        seg["width"].as_u64().unwrap(),
        seg["height"].as_u64().unwrap(),
    );
    let mut out = Vec::with_capacity((w * h) as usize);
    for row in seg["rle_rows"].as_array().unwrap() {
        let start = out.len();
        for (k, run) in row.as_array().unwrap().iter().enumerate() {
            out.extend(std::iter::repeat_n(
                k % 2 == 1,
                run.as_u64().unwrap() as usize,
            ));
        }
        assert_eq!((out.len() - start) as u64, w, "a row of {w} pixels");
    }
    assert_eq!(out.len() as u64, w * h);
    out
}

/// Intersection over union of two masks at 0.5.
pub(crate) fn iou(a: &[bool], b: &[bool]) -> f64 {
    assert_eq!(a.len(), b.len(), "masks of different sizes");
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

pub(crate) fn at_half(mask: &Mat) -> Vec<bool> {
    (0..mask.rows())
        .flat_map(|y| {
            mask.at_row::<f32>(y)
                .unwrap()
                .iter()
                .map(|&p| p >= 0.5)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Mean and max distance (pixels) between our landmarks and MediaPipe's,
/// over all of them, and the mean over those MediaPipe sees (visibility
/// at least 0.5).
pub(crate) fn distances(
    ours: &[sidecar_proto::v1::Landmark],
    theirs: &serde_json::Value,
) -> (f32, f32, f32) {
    let theirs = theirs.as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "landmark counts");
    let d: Vec<(f32, bool)> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| {
            let dist = ((a.x - f(&b[0])).powi(2) + (a.y - f(&b[1])).powi(2)).sqrt();
            (dist, b[3].as_f64().is_some_and(|v| v >= 0.5))
        })
        .collect();
    let mean = d.iter().map(|x| x.0).sum::<f32>() / d.len() as f32;
    let max = d.iter().map(|x| x.0).fold(0.0, f32::max);
    let seen: Vec<f32> = d.iter().filter(|x| x.1).map(|x| x.0).collect();
    let seen_mean = seen.iter().sum::<f32>() / seen.len().max(1) as f32;
    (mean, max, seen_mean)
}

/// The share of a mask's pixels at or above 0.5.
pub(crate) fn person_share(mask: &Mat) -> f64 {
    let on: usize = (0..mask.rows())
        .map(|y| {
            mask.at_row::<f32>(y)
                .unwrap()
                .iter()
                .filter(|&&p| p >= 0.5)
                .count()
        })
        .sum();
    on as f64 / (mask.rows() * mask.cols()) as f64
}
