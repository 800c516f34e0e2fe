//! `worker-vision --model DETECTOR --image FILE...`: the worker without
//! the supervisor, for debugging a detector from `kubectl exec`. It runs
//! the same serve loop over an in-process channel
//! (`worker_runtime::standalone`), detects faces in each image (JPEG or
//! PNG) and prints the boxes. A `.tflite` detector needs the LiteRT
//! runtime (`SIDECAR_LITERT_LIB`).
#![allow(clippy::print_stdout)] // Printing the answer is the point.

use sidecar_proto::v1::{
    FaceDetectionTask, Image, ModelFamily, ProcessBatchRequest, VisionOptions, VisionTask, image,
    vision_task,
};
use sidecar_proto::worker::{Load, load, worker_request, worker_response};
use worker_runtime::standalone::{exchange, flags, request, start};

use crate::serve::Vision;

/// The usage line.
pub const USAGE: &str = "usage: worker-vision --model DETECTOR(.tflite|.xml) --image FILE... [--min-score S]\n(started without arguments by the sidecar supervisor)";

/// What to do, from the command line.
#[derive(Debug, Default)]
pub struct Args {
    model: String,
    images: Vec<String>,
    min_score: f32,
}

/// Parses the command line (without the program name).
pub fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        min_score: 0.5,
        ..Default::default()
    };
    for f in flags(args) {
        match f.name {
            "--model" => a.model = f.value()?.to_owned(),
            "--image" => a.images.push(f.value()?.to_owned()),
            "--min-score" => a.min_score = f.number()?,
            _ => return Err(f.unknown()),
        }
    }
    if a.model.is_empty() || a.images.is_empty() {
        return Err("--model and at least one --image are required".into());
    }
    Ok(a)
}

/// Loads the detector, runs it on the images and prints the faces.
pub fn run(a: &Args) -> Result<(), String> {
    let path = std::path::absolute(&a.model).map_err(|e| format!("{}: {e}", a.model))?;
    let session = start("worker-vision", Vision::default)?;
    exchange(
        &session,
        &request(worker_request::Body::Load(Load {
            path: path.display().to_string(),
            family: ModelFamily::Vision as i32,
            model_id: "standalone".into(),
            name: String::new(),
            options: Some(load::Options::Vision(VisionOptions {
                threads: 1,
                ..Default::default()
            })),
        })),
    )?;
    let mut images = Vec::new();
    for file in &a.images {
        let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
        images.push(Image {
            data: Some(image::Data::Encoded(bytes.into())),
        });
    }
    let answer = exchange(
        &session,
        &request(worker_request::Body::VisionBatch(ProcessBatchRequest {
            model_id: "standalone".into(),
            task: Some(VisionTask {
                task: Some(vision_task::Task::Faces(FaceDetectionTask {
                    min_score: a.min_score,
                    ..Default::default()
                })),
            }),
            images,
        })),
    )?;
    let Some(worker_response::Body::VisionBatch(batch)) = answer else {
        return Err(format!("unexpected answer {answer:?}"));
    };
    for (file, r) in a.images.iter().zip(&batch.results) {
        let t = r.timings.unwrap_or_default();
        println!(
            "{file}: {}x{}, {} faces, decode {:.1} ms, detect {:.1} ms",
            r.width,
            r.height,
            r.faces.len(),
            t.decode_us as f64 / 1e3,
            t.process_us as f64 / 1e3
        );
        for f in &r.faces {
            let b = f.r#box.unwrap_or_default();
            println!(
                "  box x {:.0} y {:.0} w {:.0} h {:.0}, score {:.3}",
                b.x, b.y, b.width, b.height, f.score
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_command_line_is_read_and_checked() {
        let given = [
            "--model", "m.tflite", "--image", "a.png", "--image", "b.jpg",
        ];
        let a = parse(&given.map(String::from)).unwrap();
        assert_eq!(a.images, ["a.png", "b.jpg"]);
        assert_eq!(a.min_score, 0.5, "the default");
        assert!(parse(&["--model", "m.tflite"].map(String::from)).is_err());
        let score = ["--min-score", "high"].map(String::from);
        assert_eq!(parse(&score).unwrap_err(), "--min-score: not a number");
    }
}
