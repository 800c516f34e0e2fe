//! `worker-text --model m.gguf (--prompt TEXT | --embed TEXT... |
//! --tokenize TEXT)`: the worker without the supervisor, for debugging a
//! model from `kubectl exec`. It runs the same serve loop over an
//! in-process channel (`ipc::loopback`) and prints what it would have
//! answered.
#![allow(clippy::print_stdout)] // Printing the answer is the point.

use std::io::Write;

use prost::Message;
use sidecar_proto::v1::{
    EmbedRequest, GenerateRequest, ModelFamily, SamplingParams, TextOptions, TokenizeRequest,
    generate_stream_response,
};
use sidecar_proto::worker::{
    Load, WorkerError, WorkerRequest, WorkerResponse, load, worker_request, worker_response,
};

/// What to do, from the command line.
#[derive(Debug, Default)]
pub struct Args {
    model: String,
    prompt: Option<String>,
    max_tokens: u32,
    embed: Vec<String>,
    tokenize: Option<String>,
    context: u32,
    threads: u32,
}

/// The usage line.
pub const USAGE: &str = "usage: worker-text --model FILE.gguf (--prompt TEXT [--max-tokens N] | --embed TEXT... | --tokenize TEXT) [--context N] [--threads N]\n(started without arguments by the sidecar supervisor)";

/// Parses the command line (without the program name).
pub fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        max_tokens: 32,
        ..Default::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| {
            v.parse::<u32>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--prompt" => a.prompt = Some(value()?),
            "--max-tokens" => a.max_tokens = number(value()?)?,
            "--embed" => a.embed.push(value()?),
            "--tokenize" => a.tokenize = Some(value()?),
            "--context" => a.context = number(value()?)?,
            "--threads" => a.threads = number(value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.model.is_empty() {
        return Err("--model is required".into());
    }
    Ok(a)
}

fn request(body: worker_request::Body) -> Vec<u8> {
    WorkerRequest {
        request_tag: "standalone".into(),
        deadline_unix_ms: 0,
        body: Some(body),
    }
    .encode_to_vec()
}

/// Loads the model and runs the request; `Err` says what failed.
pub fn run(a: &Args) -> Result<(), String> {
    let path = std::path::absolute(&a.model).map_err(|e| format!("{}: {e}", a.model))?;
    let session = ipc::loopback::Session::start(64 << 20, |chan| {
        if let Err(e) = crate::serve::serve(chan) {
            eprintln!("worker-text: {e}");
        }
    })
    .map_err(|e| e.to_string())?;
    let load = request(worker_request::Body::Load(Load {
        path: path.display().to_string(),
        family: ModelFamily::Text as i32,
        model_id: "standalone".into(),
        options: Some(load::Options::Text(TextOptions {
            context_size: a.context,
            threads: a.threads,
            parallel: 1,
            ..Default::default()
        })),
    }));
    exchange(&session, &load)?;
    let body = if let Some(prompt) = &a.prompt {
        worker_request::Body::Generate(GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: a.max_tokens,
            sampling: Some(SamplingParams {
                temperature: Some(0.0),
                ..Default::default()
            }),
            ..Default::default()
        })
    } else if !a.embed.is_empty() {
        worker_request::Body::Embed(EmbedRequest {
            inputs: a.embed.clone(),
            ..Default::default()
        })
    } else if let Some(text) = &a.tokenize {
        worker_request::Body::Tokenize(TokenizeRequest {
            text: text.clone(),
            ..Default::default()
        })
    } else {
        return Ok(());
    };
    exchange(&session, &request(body))
}

/// Sends one request and prints each answer as it comes.
fn exchange(session: &ipc::loopback::Session, req: &[u8]) -> Result<(), String> {
    let mut failed = None;
    session
        .call(req, |frame| match frame.kind {
            ipc::Kind::Response => match WorkerResponse::decode(frame.payload.clone()) {
                Ok(r) => show(r.body),
                Err(e) => failed = Some(format!("undecodable answer: {e}")),
            },
            ipc::Kind::Error => {
                failed = Some(match WorkerError::decode(frame.payload.clone()) {
                    Ok(e) => format!("error (gRPC code {}): {}", e.code, e.message),
                    Err(e) => format!("undecodable error: {e}"),
                });
            }
            _ => {}
        })
        .map_err(|e| e.to_string())?;
    failed.map_or(Ok(()), Err)
}

fn show(body: Option<worker_response::Body>) {
    match body {
        Some(worker_response::Body::Loaded(l)) => {
            let d = l.text.unwrap_or_default();
            println!(
                "loaded in {:.1} ms: {} ({} parameters), context {} of {} trained, vocabulary {}, embeddings {}",
                l.load_us as f64 / 1e3,
                d.architecture,
                d.parameters,
                d.context_size,
                d.training_context,
                d.vocab_size,
                d.embeddings
            );
        }
        Some(worker_response::Body::Text(t)) => match t.msg {
            Some(generate_stream_response::Msg::Delta(d)) => {
                print!("{}", d.text);
                let _ = std::io::stdout().flush();
            }
            Some(generate_stream_response::Msg::Done(d)) => {
                let u = d.usage.unwrap_or_default();
                let t = d.timings.unwrap_or_default();
                println!(
                    "{}\n[{} prompt tokens, {} generated, finish {}, first token {:.1} ms, {:.1} ms in all]",
                    d.text,
                    u.prompt_tokens,
                    u.completion_tokens,
                    d.finish_reason().as_str_name(),
                    t.time_to_first_token_us as f64 / 1e3,
                    t.total_us as f64 / 1e3
                );
            }
            None => {}
        },
        Some(worker_response::Body::Embed(e)) => {
            for (i, v) in e.embeddings.iter().enumerate() {
                let head: Vec<String> =
                    v.values.iter().take(6).map(|x| format!("{x:.5}")).collect();
                println!(
                    "[{i}] {} dimensions, {} tokens{}: [{}, ...]",
                    v.values.len(),
                    v.tokens,
                    if v.truncated { ", truncated" } else { "" },
                    head.join(", ")
                );
            }
        }
        Some(worker_response::Body::Tokenize(t)) => {
            println!("{} tokens: {:?}", t.tokens.len(), t.tokens);
            println!("pieces: {:?}", t.pieces);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_line_is_read_and_checked() {
        let a = parse(&args(&[
            "--model",
            "m.gguf",
            "--prompt",
            "Hi",
            "--max-tokens",
            "5",
        ]))
        .unwrap();
        assert_eq!(
            (a.model.as_str(), a.prompt.as_deref(), a.max_tokens),
            ("m.gguf", Some("Hi"), 5)
        );
        assert!(
            parse(&args(&["--prompt", "x"]))
                .unwrap_err()
                .contains("--model")
        );
        assert!(
            parse(&args(&["--model"]))
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse(&args(&["--model", "m", "--bogus"]))
                .unwrap_err()
                .contains("unknown")
        );
        let e = parse(&args(&["--model", "m", "--embed", "a", "--embed", "b"])).unwrap();
        assert_eq!(e.embed, ["a", "b"]);
    }
}
