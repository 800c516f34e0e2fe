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

/// Most JSON values (array elements, object members, scalars) of one
/// body. Every value parsed into a `serde_json::Value` costs tens of bytes
/// beyond its text, so a body within the byte limit made of `[0,0,0,…]`
/// would take 16 times its size; the largest legitimate body (1024
/// messages of text parts, 1024 embedding inputs) holds a few thousand.
pub(super) const MAX_JSON_VALUES: usize = 65_536;

/// How a body is read: at most `bytes` (413 past them), all of it within
/// `patience` of the headers (408 past it: a body that stops arriving
/// would otherwise hold its connection and its handler for ever, the
/// connection's idle timeout not applying while a request is open).
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    /// `openai.max_body_bytes`.
    pub(super) bytes: usize,
    /// The smaller of `connections.idle_timeout` and 30 s.
    pub(super) patience: std::time::Duration,
}

/// Reads a JSON body within `limits`: 413 past its size, 408 past its
/// time, 400 past [`MAX_JSON_VALUES`] or naming the parse error (and the
/// field, for a wrong type).
pub(super) async fn read_json<T: DeserializeOwned>(
    body: axum::body::Body,
    limits: BodyLimits,
    declared: Option<u64>,
) -> Result<T, ApiError> {
    let data = tokio::time::timeout(limits.patience, read_body(body, limits.bytes, declared))
        .await
        .map_err(|_| {
            ApiError::invalid(
                "body",
                format!(
                    "the request body did not arrive within {:?} (the smaller of connections.idle_timeout and 30 s)",
                    limits.patience
                ),
            )
            .with_status(axum::http::StatusCode::REQUEST_TIMEOUT)
        })??;
    let values = count_values(&data);
    if values > MAX_JSON_VALUES {
        return Err(ApiError::invalid(
            "body",
            format!(
                "the request body holds {values} JSON values or more, more than the limit of {MAX_JSON_VALUES}"
            ),
        ));
    }
    parse_json(&data)
}

/// An upper bound of the values in a JSON text: its commas and opening
/// brackets outside strings, plus one.
fn count_values(data: &[u8]) -> usize {
    let (mut n, mut in_string, mut escaped) = (1usize, false, false);
    for &b in data {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => n += 1,
                _ => {}
            }
        }
    }
    n
}

async fn read_body(
    body: axum::body::Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<Vec<u8>, ApiError> {
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
    Ok(data)
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

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert_eq!(count_values(b"0"), 1);
        assert_eq!(count_values(b"[0,0,0]"), 4);
        assert_eq!(count_values(br#"{"a":"x,[{","b":[1,2]}"#), 5);
        assert_eq!(count_values(br#"["a\\",",","b\"[,"]"#), 4);
    }

    #[tokio::test]
    async fn a_body_of_many_small_values_a_slow_one_and_a_big_one_are_refused() {
        let limits = BodyLimits {
            bytes: 8 << 20,
            patience: std::time::Duration::from_millis(200),
        };
        // 4 MiB of zeros: 2 million values, well within the byte limit.
        let many = format!(r#"{{"model":"m","prompt":[{}0]}}"#, "0,".repeat(2 << 20));
        let e = read_json::<GenBody>(axum::body::Body::from(many), limits, None)
            .await
            .unwrap_err();
        assert!(e.message.contains("JSON values"), "{e:?}");
        assert_eq!(e.param.as_deref(), Some("body"));
        // A body that never ends: 408 after the patience.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        tx.send(Ok(bytes::Bytes::from_static(b"{\"model\"")))
            .await
            .unwrap();
        let slow = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let started = std::time::Instant::now();
        let e = read_json::<GenBody>(slow, limits, Some(1000))
            .await
            .unwrap_err();
        assert_eq!(
            e.status,
            Some(axum::http::StatusCode::REQUEST_TIMEOUT),
            "{e:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        drop(tx);
        // Past the byte limit, declared or not.
        let small = BodyLimits {
            bytes: 16,
            ..limits
        };
        let e = read_json::<GenBody>(axum::body::Body::from(vec![b' '; 17]), small, None)
            .await
            .unwrap_err();
        assert_eq!(
            e.status,
            Some(axum::http::StatusCode::PAYLOAD_TOO_LARGE),
            "{e:?}"
        );
    }
}
