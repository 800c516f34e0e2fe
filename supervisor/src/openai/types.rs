//! The request bodies, as OpenAI's clients send them. Fields the server
//! does not know are ignored, as OpenAI's own servers do; those that would
//! change the answer and cannot be honoured are refused by the routes.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_stream::StreamExt;

use super::errors::ApiError;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// The body of `POST /v1/chat/completions` and `POST /v1/completions`:
/// one struct (no `#[serde(flatten)]`, which would lose the path of a
/// field with the wrong type), each route reading its own fields. The
/// sampling options are OpenAI's, and the `min_tokens`, `ignore_eos`,
/// `top_k`, `min_p`, `repeat_penalty` that vLLM and llama-server accept.
#[derive(Debug, Default, Deserialize)]
pub(super) struct GenBody {
    /// The model id.
    #[serde(default)]
    pub(super) model: String,
    /// Chat: the conversation.
    pub(super) messages: Option<Vec<Message>>,
    /// Completions: a string, or a list of one string.
    pub(super) prompt: Option<Value>,
    /// Most tokens to generate.
    pub(super) max_tokens: Option<u32>,
    /// Chat: replaces `max_tokens` when both are given.
    pub(super) max_completion_tokens: Option<u32>,
    /// 0..=2; 0 is greedy.
    pub(super) temperature: Option<f32>,
    /// Nucleus sampling, (0, 1].
    pub(super) top_p: Option<f32>,
    /// Seed of the sampler.
    pub(super) seed: Option<i64>,
    /// Stop strings.
    pub(super) stop: Option<Stop>,
    /// Choices: 1 only.
    pub(super) n: Option<u32>,
    /// SSE answer.
    pub(super) stream: Option<bool>,
    /// `include_usage`.
    pub(super) stream_options: Option<StreamOptions>,
    /// Fewest tokens before EOS or a stop string may end the answer.
    pub(super) min_tokens: Option<u32>,
    /// Generate past EOS, to `max_tokens`.
    pub(super) ignore_eos: Option<bool>,
    /// Top-k (llama-server, vLLM).
    pub(super) top_k: Option<u32>,
    /// Min-p (llama-server, vLLM).
    pub(super) min_p: Option<f32>,
    /// Repetition penalty (llama-server's `repeat_penalty`).
    pub(super) repeat_penalty: Option<f32>,
    /// OpenAI's penalties: only 0 is served.
    pub(super) presence_penalty: Option<f32>,
    /// See `presence_penalty`.
    pub(super) frequency_penalty: Option<f32>,
    /// Not served: refused unless empty.
    pub(super) logit_bias: Option<serde_json::Map<String, Value>>,
    /// Chat: `text`, `json_object` or `json_schema`.
    pub(super) response_format: Option<ResponseFormat>,
    /// Log probabilities (chat: a bool, completions: a number): not
    /// served; refused unless false or null.
    pub(super) logprobs: Option<Value>,
    /// Not served.
    pub(super) top_logprobs: Option<u32>,
    /// Tool calls: not served (a non-empty list is refused).
    pub(super) tools: Option<Vec<Value>>,
    /// The old name of `tools`.
    pub(super) functions: Option<Vec<Value>>,
    /// Completions: not served (true is refused).
    pub(super) echo: Option<bool>,
    /// Completions: not served (a non-empty suffix is refused).
    pub(super) suffix: Option<String>,
    /// Completions: not served past 1.
    pub(super) best_of: Option<u32>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamOptions {
    /// A last chunk with `usage` and no choices.
    pub(super) include_usage: Option<bool>,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub(super) struct Message {
    /// `system`, `developer`, `user` or `assistant`.
    pub(super) role: String,
    /// A string or text parts; null for an assistant turn.
    pub(super) content: Option<Content>,
}

/// A message's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Content {
    /// Plain text.
    Text(String),
    /// Parts; only `{"type": "text", "text": ...}` are served.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub(super) struct Part {
    /// `text`, `image_url`, ...
    #[serde(rename = "type")]
    pub(super) kind: String,
    /// The text of a `text` part.
    pub(super) text: Option<String>,
}

/// `response_format`.
#[derive(Debug, Deserialize)]
pub(super) struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub(super) kind: String,
    /// For `json_schema`.
    pub(super) json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`.
#[derive(Debug, Deserialize)]
pub(super) struct JsonSchemaFormat {
    /// The JSON schema the answer follows.
    pub(super) schema: Option<Value>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub(super) struct EmbedBody {
    /// The model id.
    pub(super) model: String,
    /// A string, a list of strings, or token ids.
    pub(super) input: Value,
    /// `float` (default) or `base64`.
    pub(super) encoding_format: Option<String>,
    /// Must equal the model's dimensions when given.
    pub(super) dimensions: Option<u32>,
}

/// Reads a JSON body of at most `limit` bytes: 413 past it, 400 naming
/// the parse error (and the field, for a wrong type).
pub(super) async fn read_json<T: DeserializeOwned>(
    body: axum::body::Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<T, ApiError> {
    let too_big = |size: String| {
        ApiError::invalid(
            "body",
            format!(
                "the request body is {size} bytes, more than the limit of {limit} (openai.max_body_bytes)"
            ),
        )
        .with_status(axum::http::StatusCode::PAYLOAD_TOO_LARGE)
    };
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        return Err(too_big(n.to_string()));
    }
    let mut data = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::invalid("body", format!("the request body could not be read: {e}"))
        })?;
        if data.len() + chunk.len() > limit {
            return Err(too_big(format!("over {limit}")));
        }
        data.extend_from_slice(&chunk);
    }
    parse_json(&data)
}

/// Parses a body: a syntax error is "malformed JSON ...", a wrong type
/// names its path ("messages[0].content").
pub(super) fn parse_json<T: DeserializeOwned>(data: &[u8]) -> Result<T, ApiError> {
    let malformed = |e: serde_json::Error| {
        ApiError::invalid("body", format!("malformed JSON in the request body: {e}"))
    };
    let mut de = serde_json::Deserializer::from_slice(data);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() && path != "." {
            ApiError::invalid(&path, format!("invalid request body: {path}: {inner}"))
        } else {
            malformed(inner)
        }
    })?;
    de.end().map_err(malformed)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_and_errors_name_the_field() {
        let c: GenBody = parse_json(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stop":"x","temperature":0,"unknown_field":{"a":1}}"#,
        )
        .expect("parses");
        assert_eq!(c.model, "m");
        assert!(matches!(c.stop, Some(Stop::One(ref s)) if s == "x"));
        let e = parse_json::<GenBody>(br#"{"model":"m","messages":[{"role":"user","content":5}]}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
        let e = parse_json::<GenBody>(br#"{"model":"m","messages":[], "max_tokens":"ten"}"#)
            .unwrap_err();
        assert!(e.message.contains("max_tokens"), "{e:?}");
        let e = parse_json::<GenBody>(b"{\"model\": ").unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{e:?}");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_json::<GenBody>(
            format!(r#"{{"model":"m","messages":[],"tools":{deep}}}"#).as_bytes(),
        )
        .unwrap_err();
        assert!(e.message.contains("recursion limit"), "{e:?}");
    }
}
