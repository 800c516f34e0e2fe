//! The face mesh on the real models and photographs.

use opencv::core::Mat;
use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::{
    FaceMeshTask, PipelineModels, ProcessResponse, VisionOptions, vision_task,
};
use sidecar_proto::worker::{Load, load};
use worker_runtime::WorkerError;

use crate::serve::load_with;
use crate::tasks::{self, Prepared, Served};

const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

fn model(name: &str) -> String {
    format!("{MODELS}/mediapipe/{name}.tflite")
}

fn served(pipeline: PipelineModels) -> Result<Served, WorkerError> {
    let lib = format!("{MODELS}/../runtime/litert/libLiteRt.so");
    load_with(&Load {
        path: model("face_detection_short_range"),
        options: Some(load::Options::Vision(VisionOptions {
            threads: 1,
            pipeline: Some(pipeline),
            ..Default::default()
        })),
        ..Default::default()
    }, std::path::Path::new(&lib))
}

fn mesh_models() -> PipelineModels {
    PipelineModels {
        face_landmark: model("face_landmark"),
        ..Default::default()
    }
}

fn photo(name: &str) -> Mat {
    let path = format!("{MODELS}/testdata/{name}");
    let m = imgcodecs::imread(&path, imgcodecs::IMREAD_COLOR).expect("imread");
    assert!(m.cols() > 0, "{path} is missing (run scripts/setup.sh)");
    m
}

fn run(s: &mut Served, task: &FaceMeshTask, prepared: &mut Prepared, frame: &Mat) -> ProcessResponse {
    let t = vision_task::Task::FaceMesh(task.clone());
    let mut r = ProcessResponse::default();
    tasks::run(s, std::slice::from_ref(&t), prepared, frame, &mut r, "test", 0).expect("run");
    r
}

#[test]
fn explore_astronaut() {
    let mut s = served(mesh_models()).expect("load");
    let task = FaceMeshTask::default();
    let t = vision_task::Task::FaceMesh(task.clone());
    tasks::check(&t, &s).expect("check");
    let mut p = Prepared::new(std::slice::from_ref(&t), &s.limits).expect("prepare");
    let frame = photo("astronaut.png");
    let r = run(&mut s, &task, &mut p, &frame);
    for m in &r.face_meshes {
        println!("presence {} det {:?} region {:?}", m.presence, m.detection, m.region);
        for i in [0usize, 1, 33, 263, 152, 10] {
            println!("{i}: {:?}", m.landmarks[i]);
        }
    }
    println!("{:?}", r.stages);
    let e = served(PipelineModels {
        face_landmark: model("face_landmark_with_attention"),
        ..Default::default()
    })
    .expect_err("attention");
    println!("{e:?}");
}
