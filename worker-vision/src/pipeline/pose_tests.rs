//! Pose and selfie segmentation on the real models and photographs,
//! against MediaPipe's own results.

use std::path::{Path, PathBuf};

use opencv::core::Mat;
use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::{PoseTask, StageTiming};

use super::pose::{self, Models, State};
use super::segmentation::Selfie;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// The LiteRT runtime in the repository (tests run in the crate's folder).
fn lib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/litert/libLiteRt.so")
}

fn runtime() -> std::sync::Arc<litert::Runtime> {
    litert::Runtime::load(&lib()).expect("the LiteRT runtime loads")
}

fn load_pose() -> Models {
    let m = models().join("mediapipe");
    Models::load(
        &runtime(),
        &m.join("pose_detection.tflite"),
        &m.join("pose_landmark_full.tflite"),
        1,
    )
    .expect("the pose models load")
}

fn photo(path: &Path) -> Mat {
    let m = imgcodecs::imread(path.to_str().unwrap(), imgcodecs::IMREAD_COLOR).unwrap();
    assert!(!m.empty(), "{} is missing or unreadable", path.display());
    m
}

#[test]
fn debug_astronaut() {
    let mut m = load_pose();
    let frame = photo(&models().join("testdata/astronaut.png"));
    let mut st = State::new(&PoseTask {
        segmentation: true,
        ..Default::default()
    })
    .unwrap();
    let mut stages: Vec<StageTiming> = vec![];
    if std::env::var("MPRECT").is_ok() {
        st.track(super::roi::Region { x_center: 0.3100179433822632, y_center: 1.0234607458114624, width: 2.4510183334350586, height: 2.4510183334350586, rotation: 0.16009271144866943 });
    }
    let p = pose::run(&mut m, &mut st, &frame, 0, 0, &mut stages).unwrap().unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("/tmp/astro-ref.json").unwrap()).unwrap();
    let lm = r["lm"].as_array().unwrap();
    let mut d = vec![];
    for (a, b) in p.landmarks.iter().zip(lm) {
        let (x, y) = (b[0].as_f64().unwrap() as f32, b[1].as_f64().unwrap() as f32);
        d.push(((a.x - x).powi(2) + (a.y - y).powi(2)).sqrt());
        println!("{:8.2} {:8.2} {:8.2} vis {:.3} | mp {:8.2} {:8.2} {:8.2} {:.3}", a.x, a.y, a.z, a.visibility, x, y, b[2], b[3]);
    }
    println!("score {} mean {} max {:?} stages {stages:?}", p.score, d.iter().sum::<f32>() / d.len() as f32, d.iter().cloned().fold(0.0, f32::max));
    println!("det {:?}", p.detection);
    let mut s = Selfie::load(&runtime(), &models().join("mediapipe/selfie_segmentation.tflite"), 1).unwrap();
    let mask = s.run(&frame).unwrap();
    let pos = (0..mask.rows()).map(|y| mask.at_row::<f32>(y).unwrap().iter().filter(|&&v| v >= 0.5).count()).sum::<usize>();
    println!("selfie pos {} mp {}", pos as f64 / (mask.rows()*mask.cols()) as f64, r["selfie0_pos"]);
    let seg = p.segmentation.unwrap();
    let pos = seg.data.iter().filter(|&&v| v >= 128).count();
    println!("pose mask pos {} mp {}", pos as f64 / seg.data.len() as f64, r["pose_mask_pos"]);
}
