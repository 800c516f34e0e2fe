//! `sidecarctl call MODEL ...`: one request straight to the worker.

use clap::Args;
use serde_json::json;
use sidecar_proto::v1::admin_service_client::AdminServiceClient;
use sidecar_proto::v1::{
    CallWorkerRequest, DType, EmbedRequest, FaceDetectionTask, GenerateRequest, Image,
    InferRequest, ProcessBatchRequest, SamplingParams, Tensor, TokenizeRequest, VisionTask,
    call_worker_request, call_worker_response, generate_stream_response, image, vision_task,
};
use tonic::Status;
use tonic::transport::Channel;

/// What to send.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// Model id.
    pub model: String,
    /// Generate from this prompt (greedy unless --temperature).
    #[arg(long, group = "what")]
    pub prompt: Option<String>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Embed these texts.
    #[arg(long, group = "what", num_args = 1..)]
    pub embed: Vec<String>,
    /// Tokenize this text.
    #[arg(long, group = "what")]
    pub tokenize: Option<String>,
    /// Detect faces in this image file (JPEG or PNG).
    #[arg(long, group = "what")]
    pub image: Option<std::path::PathBuf>,
    /// Run a LITE model on a raw tensor file: NAME=FILE:DTYPE:SHAPE
    /// ("input=in.bin:float32:1,128,128,3"); repeat for more inputs.
    #[arg(long, group = "what")]
    pub tensor: Vec<String>,
}

fn dtype(name: &str) -> Result<DType, Status> {
    DType::from_str_name(&format!("DTYPE_{}", name.to_ascii_uppercase())).ok_or_else(|| {
        Status::invalid_argument(format!(
            "dtype {name:?}: float32, float16, int8, uint8, int32, int64, ..."
        ))
    })
}

/// Parses NAME=FILE:DTYPE:SHAPE and reads the file.
fn tensor(spec: &str) -> Result<Tensor, Status> {
    let bad = || Status::invalid_argument(format!("--tensor {spec:?}: NAME=FILE:DTYPE:SHAPE"));
    let (name, rest) = spec.split_once('=').ok_or_else(bad)?;
    let mut parts = rest.rsplitn(3, ':');
    let (shape, dt, file) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    let shape = shape
        .split(',')
        .map(|d| d.trim().parse::<i64>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    let data = std::fs::read(file)
        .map_err(|e| Status::invalid_argument(format!("--tensor {file}: {e}")))?;
    Ok(Tensor {
        name: name.to_owned(),
        dtype: dtype(dt)? as i32,
        shape,
        data: data.into(),
        shm: None,
    })
}

fn request(a: &CallArgs) -> Result<call_worker_request::Call, Status> {
    use call_worker_request::Call;
    if let Some(prompt) = &a.prompt {
        return Ok(Call::Generate(GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: a.max_tokens,
            sampling: Some(SamplingParams {
                temperature: Some(a.temperature),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
    if !a.embed.is_empty() {
        return Ok(Call::Embed(EmbedRequest {
            inputs: a.embed.clone(),
            ..Default::default()
        }));
    }
    if let Some(text) = &a.tokenize {
        return Ok(Call::Tokenize(TokenizeRequest {
            text: text.clone(),
            ..Default::default()
        }));
    }
    if let Some(path) = &a.image {
        let bytes = std::fs::read(path)
            .map_err(|e| Status::invalid_argument(format!("--image {}: {e}", path.display())))?;
        return Ok(Call::Vision(ProcessBatchRequest {
            task: Some(VisionTask {
                task: Some(vision_task::Task::Faces(FaceDetectionTask::default())),
            }),
            images: vec![Image {
                data: Some(image::Data::Encoded(bytes.into())),
            }],
            ..Default::default()
        }));
    }
    if !a.tensor.is_empty() {
        return Ok(Call::Infer(InferRequest {
            inputs: a
                .tensor
                .iter()
                .map(|t| tensor(t))
                .collect::<Result<_, _>>()?,
            ..Default::default()
        }));
    }
    Err(Status::invalid_argument(
        "say what to send: --prompt, --embed, --tokenize, --image or --tensor",
    ))
}

/// Sends the call and prints what comes back.
pub(super) async fn run(
    admin: &mut AdminServiceClient<Channel>,
    a: &CallArgs,
    json_out: bool,
) -> Result<(), Status> {
    let call = request(a)?;
    let mut answers = admin
        .call_worker(CallWorkerRequest {
            model_id: a.model.clone(),
            call: Some(call),
        })
        .await?
        .into_inner();
    use call_worker_response::Msg;
    while let Some(m) = answers.message().await? {
        let Some(msg) = m.msg else { continue };
        let (text, value) = match msg {
            Msg::Text(t) => match t.msg {
                Some(generate_stream_response::Msg::Delta(d)) => {
                    if !json_out {
                        print!("{}", d.text);
                        continue;
                    }
                    (String::new(), json!({"delta": d.text}))
                }
                Some(generate_stream_response::Msg::Done(d)) => {
                    let usage = d.usage.unwrap_or_default();
                    (
                        format!(
                            "{}\n[{} prompt tokens, {} generated, finish {}]",
                            d.text,
                            usage.prompt_tokens,
                            usage.completion_tokens,
                            d.finish_reason().as_str_name()
                        ),
                        json!({"done": {"text": d.text, "prompt_tokens": usage.prompt_tokens,
                            "completion_tokens": usage.completion_tokens,
                            "finish_reason": d.finish_reason().as_str_name()}}),
                    )
                }
                None => continue,
            },
            Msg::Embed(e) => {
                let vectors: Vec<&Vec<f32>> = e.embeddings.iter().map(|v| &v.values).collect();
                let lines: Vec<String> = e
                    .embeddings
                    .iter()
                    .map(|v| {
                        let head: Vec<String> =
                            v.values.iter().take(4).map(|x| format!("{x:.4}")).collect();
                        format!(
                            "{} dims, {} tokens: [{}, ...]",
                            v.values.len(),
                            v.tokens,
                            head.join(", ")
                        )
                    })
                    .collect();
                (lines.join("\n"), json!({"embeddings": vectors}))
            }
            Msg::Tokenize(t) => (
                format!("{:?}\n{:?}", t.tokens, t.pieces),
                json!({"tokens": t.tokens, "pieces": t.pieces}),
            ),
            Msg::Vision(v) => {
                let faces: Vec<serde_json::Value> = v
                    .results
                    .iter()
                    .flat_map(|r| r.faces.iter())
                    .map(|f| {
                        let b = f.r#box.unwrap_or_default();
                        json!({"x": b.x, "y": b.y, "width": b.width, "height": b.height, "score": f.score})
                    })
                    .collect();
                let text = faces
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("\n");
                (
                    format!("{} faces\n{text}", faces.len()),
                    json!({"faces": faces}),
                )
            }
            Msg::Infer(i) => {
                let outs: Vec<serde_json::Value> = i
                    .outputs
                    .iter()
                    .map(|t| {
                        json!({"name": t.name, "dtype": t.dtype().as_str_name(),
                            "shape": t.shape, "bytes": t.data.len()})
                    })
                    .collect();
                let text = outs
                    .iter()
                    .map(|o| o.to_string())
                    .collect::<Vec<_>>()
                    .join("\n");
                (text, json!({"outputs": outs}))
            }
            // sidecarctl never sends the probe; shown if a worker answers one.
            Msg::SandboxProbe(p) => (
                format!(
                    "exec {}, socket {}, connect {}, write {}, off-list call {}",
                    p.exec, p.socket, p.connect, p.write, p.off_list
                ),
                json!({"sandbox_probe": {"pid": p.pid, "exec": p.exec, "socket": p.socket,
                    "connect": p.connect, "write": p.write, "off_list": p.off_list}}),
            ),
            Msg::Done(t) => (
                format!(
                    "[worker: first answer {:.1} ms, total {:.1} ms, {} frames]",
                    t.first_response_us as f64 / 1e3,
                    t.total_us as f64 / 1e3,
                    t.frames
                ),
                json!({"timings": {"first_response_us": t.first_response_us,
                    "total_us": t.total_us, "frames": t.frames}}),
            ),
        };
        if json_out {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }
    Ok(())
}
