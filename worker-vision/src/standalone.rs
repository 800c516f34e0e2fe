//! `worker-vision --model DETECTOR --image FILE...`: the worker without
//! the supervisor, for debugging a detector from `kubectl exec`. It runs
//! the same serve loop over an in-process channel (`ipc::loopback`),
//! detects faces in each image (JPEG or PNG) and prints the boxes. A
//! `.tflite` detector needs the LiteRT runtime (`SIDECAR_LITERT_LIB`).
#![allow(clippy::print_stdout)] // Printing the answer is the point.

use sidecar_proto::v1::{
    FaceDetectionTask, Image, ModelFamily, ProcessBatchRequest, VisionOptions, VisionTask, image,
    vision_task,
};
use sidecar_proto::worker::{Load, load, worker_request, worker_response};
use worker_lite::standalone::{exchange, request};

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
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = value?.clone(),
            "--image" => a.images.push(value?.clone()),
            "--min-score" => {
                a.min_score = value?
                    .parse()
                    .map_err(|_| "--min-score: not a number".to_owned())?;
            }
            other => return Err(format!("unknown argument {other:?}")),
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
    let session = ipc::loopback::Session::start(64 << 20, |chan| {
        if let Err(e) = crate::serve::serve(chan) {
            eprintln!("worker-vision: {e}");
        }
    })
    .map_err(|e| e.to_string())?;
    exchange(
        &session,
        &request(worker_request::Body::Load(Load {
            path: path.display().to_string(),
            family: ModelFamily::Vision as i32,
            model_id: "standalone".into(),
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
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = parse(&args(&[
            "--model", "m.tflite", "--image", "a.png", "--image", "b.jpg",
        ]))
        .unwrap();
        assert_eq!(a.images, ["a.png", "b.jpg"]);
        assert!(parse(&args(&["--model", "m.tflite"])).is_err());
    }
}
