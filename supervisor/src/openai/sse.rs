//! A token stream as OpenAI's server-sent events: `data: {chunk}` lines
//! separated by a blank line, `data: [DONE]` last. The stream is polled
//! by the response body itself (no task in between): a client that goes
//! away drops it, which drops the call as a gRPC client's cancel does.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use sidecar_proto::v1::generate_stream_response::Msg;
use sidecar_proto::v1::text_service_server::TextService;
use tokio_stream::Stream;

use super::errors::ApiError;
use super::params::{finish_reason, usage};
use crate::api::text::TextApi;
use crate::metrics::Record;

type Tokens = <TextApi as TextService>::ChatStreamStream;

/// Which API's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `chat.completion.chunk`.
    Chat,
    /// `text_completion`.
    Completion,
}

/// What every chunk of one answer repeats.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    /// Chat or completion.
    pub(super) kind: Kind,
    /// `chatcmpl-…` or `cmpl-…`.
    pub(super) id: String,
    /// Unix seconds.
    pub(super) created: u64,
    /// The model id.
    pub(super) model: String,
    /// `system_fingerprint`.
    pub(super) fingerprint: String,
    /// A usage chunk before `[DONE]` (and `usage: null` on the others).
    pub(super) include_usage: bool,
}

impl Shape {
    /// The shape of answer `call_id` of `model`: ids `chatcmpl-…` or
    /// `cmpl-…`, created now.
    pub(super) fn new(
        kind: Kind,
        call_id: &str,
        model: String,
        fingerprint: &str,
        include_usage: bool,
    ) -> Shape {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        Shape {
            kind,
            id: format!("{prefix}-{call_id}"),
            created: super::unix_now(),
            model,
            fingerprint: fingerprint.to_owned(),
            include_usage,
        }
    }

    /// The whole (unary) answer: `chat.completion` with the assistant's
    /// message, or `text_completion` with the text.
    pub(super) fn whole(&self, answer: &sidecar_proto::v1::GenerateResponse) -> Response {
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "logprobs": null,
                    "finish_reason": finish_reason(answer.finish_reason),
                }),
            ),
            Kind::Completion => (
                "text_completion",
                json!({
                    "index": 0,
                    "text": answer.text,
                    "logprobs": null,
                    "finish_reason": finish_reason(answer.finish_reason),
                }),
            ),
        };
        super::errors::json(
            StatusCode::OK,
            &json!({
                "id": self.id,
                "object": object,
                "created": self.created,
                "model": self.model,
                "system_fingerprint": self.fingerprint,
                "choices": [choice],
                "usage": usage(answer.usage.as_ref()),
            }),
        )
    }

    /// One chunk: `text` as a content delta (or the role's first delta),
    /// `finish` on the last choice chunk.
    fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": ""})
                } else if let Some(t) = text {
                    json!({"content": t})
                } else {
                    json!({})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        self.wrap(vec![choice])
    }

    fn wrap(&self, choices: Vec<Value>) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

/// One `data:` event.
fn event(v: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// See the module.
struct Sse {
    tokens: Option<Tokens>,
    pending: VecDeque<Bytes>,
    shape: Shape,
    record: Option<Record>,
}

impl Sse {
    fn end(&mut self, code: tonic::Code) {
        self.tokens = None;
        self.pending.push_back(Bytes::from_static(DONE));
        if let Some(mut r) = self.record.take() {
            r.finish(code as i32);
        }
    }
}

impl Stream for Sse {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            let Some(tokens) = this.tokens.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(tokens).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(m))) => match m.msg {
                    Some(Msg::Delta(d)) if !d.text.is_empty() => {
                        let c = this.shape.chunk(Some(&d.text), false, None);
                        this.pending.push_back(event(&c));
                    }
                    Some(Msg::Done(done)) => {
                        if !done.text.is_empty() {
                            let c = this.shape.chunk(Some(&done.text), false, None);
                            this.pending.push_back(event(&c));
                        }
                        let reason = finish_reason(done.finish_reason);
                        let c = this.shape.chunk(None, false, Some(reason));
                        this.pending.push_back(event(&c));
                        if this.shape.include_usage {
                            let mut c = this.shape.wrap(Vec::new());
                            c["usage"] = usage(done.usage.as_ref());
                            this.pending.push_back(event(&c));
                        }
                        this.end(tonic::Code::Ok);
                    }
                    _ => {}
                },
                Poll::Ready(Some(Err(status))) => {
                    // Mid-stream: the error as an event, as OpenAI's and
                    // vLLM's servers send it, then the end.
                    let code = status.code();
                    let e = ApiError::from(status);
                    this.pending.push_back(event(&e.body()));
                    this.end(code);
                }
                Poll::Ready(None) => {
                    let e = ApiError::from(crate::error::Error::Internal(
                        "the worker ended the stream without a final message".into(),
                    ));
                    this.pending.push_back(event(&e.body()));
                    this.end(tonic::Code::Internal);
                }
            }
        }
    }
}

/// The SSE answer of `tokens`; the first chunk (the role's, for chat)
/// is sent at once.
pub(super) fn response(tokens: Tokens, shape: Shape, record: Option<Record>) -> Response {
    let mut pending = VecDeque::new();
    if shape.kind == Kind::Chat {
        pending.push_back(event(&shape.chunk(None, true, None)));
    }
    let body = axum::body::Body::from_stream(Sse {
        tokens: Some(tokens),
        pending,
        shape,
        record,
    });
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
