//! `worker-text --model m.gguf (--prompt TEXT | --embed TEXT... |
//! --tokenize TEXT)`: the worker without the supervisor, for debugging a
//! model from `kubectl exec`. It runs the same serve loop over an
//! in-process channel (`worker_runtime::standalone`) and prints what it would have
//! answered.
#![allow(clippy::print_stdout)] // Printing the answer is the point.

use std::io::Write;

use sidecar_proto::v1::{
    EmbedRequest, GenerateRequest, ModelFamily, SamplingParams, TextOptions, TokenizeRequest,
    generate_stream_response,
};
use sidecar_proto::worker::{Load, load, worker_request, worker_response};
use worker_runtime::standalone::{flags, request, start, stream};

use crate::serve::Text;

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
    for f in flags(args) {
        match f.name {
            "--model" => a.model = f.value()?.to_owned(),
            "--prompt" => a.prompt = Some(f.value()?.to_owned()),
            "--max-tokens" => a.max_tokens = f.number()?,
            "--embed" => a.embed.push(f.value()?.to_owned()),
            "--tokenize" => a.tokenize = Some(f.value()?.to_owned()),
            "--context" => a.context = f.number()?,
            "--threads" => a.threads = f.number()?,
            _ => return Err(f.unknown()),
        }
    }
    if a.model.is_empty() {
        return Err("--model is required".into());
    }
    Ok(a)
}

/// Loads the model and runs the request; `Err` says what failed.
pub fn run(a: &Args) -> Result<(), String> {
    let path = std::path::absolute(&a.model).map_err(|e| format!("{}: {e}", a.model))?;
    let session = start("worker-text", Text::default)?;
    let load = request(worker_request::Body::Load(Load {
        path: path.display().to_string(),
        family: ModelFamily::Text as i32,
        model_id: "standalone".into(),
        name: String::new(),
        options: Some(load::Options::Text(TextOptions {
            context_size: a.context,
            threads: a.threads,
            parallel: 1,
            ..Default::default()
        })),
    }));
    stream(&session, &load, show)?;
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
    stream(&session, &request(body), show)
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

    /// `parse` of the words of `line`.
    fn parse_words(line: &str) -> Result<super::Args, String> {
        parse(&line.split(' ').map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn the_command_line_is_read_and_checked() {
        let a = parse_words("--model m.gguf --prompt Hi --max-tokens 5").unwrap();
        assert_eq!(
            (a.model.as_str(), a.prompt.as_deref(), a.max_tokens),
            ("m.gguf", Some("Hi"), 5)
        );
        let missing = parse_words("--prompt x").unwrap_err();
        assert_eq!(missing, "--model is required");
        assert_eq!(parse_words("--model").unwrap_err(), "--model needs a value");
        let bogus = parse_words("--model m --bogus").unwrap_err();
        assert_eq!(bogus, "unknown argument \"--bogus\"");
        let e = parse_words("--model m --embed a --embed b --context 64").unwrap();
        assert_eq!(
            (e.embed, e.context),
            (vec!["a".to_owned(), "b".to_owned()], 64)
        );
    }
}
