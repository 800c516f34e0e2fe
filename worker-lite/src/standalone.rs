//! `worker-lite --model m.tflite [--input NAME=FILE ...]`: the worker
//! without the supervisor, for debugging a model from `kubectl exec`. It
//! runs the same serve loop over an in-process channel (`ipc::loopback`),
//! prints the model's tensors, runs one inference (on the given raw input
//! files, or on zeros) and prints the outputs. The LiteRT runtime comes
//! from `SIDECAR_LITERT_LIB` as when the supervisor starts it.
#![allow(clippy::print_stdout)] // Printing the answer is the point.

use prost::Message;
use sidecar_proto::v1::{
    DType, InferRequest, LiteModelInfo, LiteOptions, ModelFamily, Tensor, TensorInfo,
};
use sidecar_proto::worker::{
    Load, WorkerError, WorkerRequest, WorkerResponse, load, worker_request, worker_response,
};

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
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = value?.clone(),
            "--threads" => {
                a.threads = value?
                    .parse()
                    .map_err(|_| "--threads: not a number".to_owned())?;
            }
            "--input" => {
                let v = value?;
                let (name, file) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--input {v:?}: NAME=RAWFILE"))?;
                a.inputs.push((name.to_owned(), file.to_owned()));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.model.is_empty() {
        return Err("--model is required".into());
    }
    Ok(a)
}

/// A request frame's payload (tagged "standalone" in the logs).
pub fn request(body: worker_request::Body) -> Vec<u8> {
    WorkerRequest {
        request_tag: "standalone".into(),
        deadline_unix_ms: 0,
        body: Some(body),
    }
    .encode_to_vec()
}

/// Sends one request; its answer body, or what failed (also used by
/// `worker-vision`'s standalone mode).
pub fn exchange(
    session: &ipc::loopback::Session,
    req: &[u8],
) -> Result<Option<worker_response::Body>, String> {
    let mut out = Err("no answer".to_owned());
    session
        .call(req, |frame| {
            out = match frame.kind {
                ipc::Kind::Response => WorkerResponse::decode(frame.payload.clone())
                    .map(|r| r.body)
                    .map_err(|e| format!("undecodable answer: {e}")),
                ipc::Kind::Error => Err(match WorkerError::decode(frame.payload.clone()) {
                    Ok(e) => format!("error (gRPC code {}): {}", e.code, e.message),
                    Err(e) => format!("undecodable error: {e}"),
                }),
                _ => return,
            };
        })
        .map_err(|e| e.to_string())?;
    out
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
    let session = ipc::loopback::Session::start(64 << 20, |chan| {
        if let Err(e) = crate::serve::serve(chan) {
            eprintln!("worker-lite: {e}");
        }
    })
    .map_err(|e| e.to_string())?;
    let loaded = exchange(
        &session,
        &request(worker_request::Body::Load(Load {
            path: path.display().to_string(),
            family: ModelFamily::Lite as i32,
            model_id: "standalone".into(),
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
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = parse(&args(&["--model", "m.tflite", "--input", "x=in.bin"])).unwrap();
        assert_eq!(a.inputs, [("x".to_owned(), "in.bin".to_owned())]);
        assert!(parse(&args(&["--input", "x"])).is_err());
        assert!(parse(&args(&[])).unwrap_err().contains("--model"));
    }
}
