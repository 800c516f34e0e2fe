//! `worker-lite --model m.tflite [--input NAME=FILE ...]`: the worker
//! without the supervisor, for debugging a model from `kubectl exec`. It
//! runs the same serve loop over an in-process channel
//! (`worker_runtime::standalone`), prints the model's tensors, runs one
//! inference (on the given raw input files, or on zeros) and prints the
//! outputs. The LiteRT runtime comes from `SIDECAR_LITERT_LIB` as when the
//! supervisor starts it.
#![allow(clippy::print_stdout)] // Printing the answer is the point.

use sidecar_proto::v1::{
    DType, InferRequest, LiteModelInfo, LiteOptions, ModelFamily, Tensor, TensorInfo,
};
use sidecar_proto::worker::{Load, load, worker_request, worker_response};
use worker_runtime::standalone::{exchange, flags, request, start};

use crate::serve::Lite;

/// The usage line.
pub const USAGE: &str = "usage: worker-lite --model FILE.tflite [--input NAME=RAWFILE ...] [--threads N]\n(the LiteRT runtime: SIDECAR_LITERT_LIB, default runtime/litert/libLiteRt.so; started without arguments by the sidecar supervisor)";

/// What to do, from the command line.
#[derive(Debug, Default)]
pub struct Args {
    model: String,
    inputs: Vec<(String, String)>,
    threads: u32,
}

/// Parses the command line (without the program name).
pub fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    for f in flags(args) {
        match f.name {
            "--model" => a.model = f.value()?.to_owned(),
            "--threads" => a.threads = f.number()?,
            "--input" => {
                let v = f.value()?;
                let (name, file) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--input {v:?}: NAME=RAWFILE"))?;
                a.inputs.push((name.to_owned(), file.to_owned()));
            }
            _ => return Err(f.unknown()),
        }
    }
    if a.model.is_empty() {
        return Err("--model is required".into());
    }
    Ok(a)
}

fn describe(t: &TensorInfo) -> String {
    format!(
        "{} {} {:?} ({} bytes)",
        t.name,
        t.dtype().as_str_name().trim_start_matches("DTYPE_"),
        t.shape,
        t.byte_size
    )
}

/// Loads the model, runs one inference and prints it all.
pub fn run(a: &Args) -> Result<(), String> {
    let path = std::path::absolute(&a.model).map_err(|e| format!("{}: {e}", a.model))?;
    let session = start("worker-lite", Lite::default)?;
    let loaded = exchange(
        &session,
        &request(worker_request::Body::Load(Load {
            path: path.display().to_string(),
            family: ModelFamily::Lite as i32,
            model_id: "standalone".into(),
            name: String::new(),
            options: Some(load::Options::Lite(LiteOptions {
                threads: a.threads.max(1),
                ..Default::default()
            })),
        })),
    )?;
    let Some(worker_response::Body::Loaded(loaded)) = loaded else {
        return Err(format!("unexpected load answer {loaded:?}"));
    };
    let info: LiteModelInfo = loaded.lite.unwrap_or_default();
    println!(
        "loaded in {:.1} ms on {}",
        loaded.load_us as f64 / 1e3,
        info.accelerator
    );
    for t in &info.inputs {
        println!("input  {}", describe(t));
    }
    for t in &info.outputs {
        println!("output {}", describe(t));
    }
    let mut inputs = Vec::new();
    for t in &info.inputs {
        let data = match a.inputs.iter().find(|(n, _)| *n == t.name) {
            Some((_, file)) => std::fs::read(file).map_err(|e| format!("{file}: {e}"))?,
            None => vec![0u8; t.byte_size as usize],
        };
        inputs.push(Tensor {
            shm: Default::default(),
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: data.into(),
        });
    }
    if a.inputs.is_empty() {
        println!("running on zeros (give --input NAME=RAWFILE for real data)");
    }
    let answer = exchange(
        &session,
        &request(worker_request::Body::Infer(InferRequest {
            output_placements: Default::default(),
            model_id: "standalone".into(),
            inputs,
            outputs: Vec::new(),
        })),
    )?;
    let Some(worker_response::Body::Infer(r)) = answer else {
        return Err(format!("unexpected answer {answer:?}"));
    };
    for t in &r.outputs {
        let head = if t.dtype() == DType::DtypeFloat32 {
            let v: Vec<String> = t
                .data
                .chunks_exact(4)
                .take(6)
                .map(|b| format!("{:.5}", f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect();
            format!(": [{}, ...]", v.join(", "))
        } else {
            String::new()
        };
        println!(
            "{} {} {:?}{head}",
            t.name,
            t.dtype().as_str_name().trim_start_matches("DTYPE_"),
            t.shape
        );
    }
    let t = r.timings.unwrap_or_default();
    println!("[inference {:.2} ms]", t.invoke_us as f64 / 1e3);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_command_line_is_read_and_checked() {
        let a = parse(&["--model", "m.tflite", "--input", "x=in.bin"].map(String::from)).unwrap();
        assert_eq!(a.inputs, [("x".to_owned(), "in.bin".to_owned())]);
        assert_eq!(
            parse(&["--input", "x"].map(String::from)).unwrap_err(),
            "--input \"x\": NAME=RAWFILE"
        );
        assert!(parse(&[]).unwrap_err().contains("--model"));
    }
}
