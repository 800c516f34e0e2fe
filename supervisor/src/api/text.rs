//! TextService: generation over the model's worker.

use std::pin::Pin;
use std::sync::Arc;

use sidecar_proto::v1::text_service_server::TextService;
use sidecar_proto::v1::{
    ChatRequest, EmbedRequest, EmbedResponse, GenerateRequest, GenerateResponse,
    GenerateStreamResponse, TokenizeRequest, TokenizeResponse, generate_stream_response,
};
use sidecar_proto::worker::{worker_request, worker_response};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::{Config, Family};
use crate::error::Error;
use crate::registry::Registry;
use crate::worker::CallStream;

/// The TextService implementation.
#[derive(Debug, Clone)]
pub struct TextApi {
    /// Loaded models.
    pub registry: Arc<Registry>,
    /// Config (default deadlines).
    pub config: Arc<Config>,
}

type TokenStream = Pin<Box<dyn Stream<Item = Result<GenerateStreamResponse, Status>> + Send>>;

impl TextApi {
    /// Checks the model and sends `body` to its worker.
    async fn call<T>(
        &self,
        req: Request<T>,
        stream: bool,
        into_body: impl FnOnce(T) -> (String, worker_request::Body),
    ) -> Result<CallStream, Error> {
        let default = if stream {
            self.config.deadlines.stream
        } else {
            self.config.deadlines.unary
        };
        super::call_worker(&self.registry, Family::Text, default, req, into_body).await
    }

    async fn start(
        &self,
        req: Request<GenerateRequest>,
        stream: bool,
    ) -> Result<CallStream, Error> {
        if req.get_ref().prompt.is_empty() {
            return Err(Error::InvalidArgument("prompt must not be empty".into()));
        }
        self.call(req, stream, |g| {
            (g.model_id.clone(), worker_request::Body::Generate(g))
        })
        .await
    }

    async fn start_chat(
        &self,
        req: Request<ChatRequest>,
        stream: bool,
    ) -> Result<CallStream, Error> {
        if req.get_ref().messages.is_empty() {
            return Err(Error::InvalidArgument(
                "messages must hold at least one message".into(),
            ));
        }
        self.call(req, stream, |c| {
            (c.model_id.clone(), worker_request::Body::Chat(c))
        })
        .await
    }
}

/// Collects a token stream into one answer.
pub(super) async fn collect(mut call: CallStream) -> Result<GenerateResponse, Error> {
    let mut text = String::new();
    while let Some(msg) = next_message(&mut call).await {
        match msg?.msg {
            Some(generate_stream_response::Msg::Delta(d)) => text.push_str(&d.text),
            Some(generate_stream_response::Msg::Done(done)) => {
                text.push_str(&done.text);
                return Ok(GenerateResponse {
                    text,
                    finish_reason: done.finish_reason,
                    usage: done.usage,
                    timings: done.timings,
                    seed: done.seed,
                });
            }
            None => {}
        }
    }
    Err(Error::Internal(
        "the worker ended the stream without a final message".into(),
    ))
}

/// Forwards a token stream to the client; a client that goes away drops
/// the call, which cancels the request in the worker, and so does one that
/// reads nothing for `stall` (see `outflow`).
fn forward(mut call: CallStream, stall: std::time::Duration) -> TokenStream {
    let (mut out, answers) = super::outflow::channel(32, stall);
    tokio::spawn(async move {
        while let Some(msg) = next_message(&mut call).await {
            let last = matches!(
                &msg,
                Ok(GenerateStreamResponse {
                    msg: Some(generate_stream_response::Msg::Done(_))
                }) | Err(_)
            );
            if !out.send(msg.map_err(Status::from)).await || last {
                return;
            }
        }
    });
    Box::pin(answers)
}

/// The next token-stream message of a call.
/// The final message's times then include the call's queueing in the
/// supervisor.
async fn next_message(call: &mut CallStream) -> Option<Result<GenerateStreamResponse, Error>> {
    match call.next().await? {
        Ok(r) => match r.body {
            Some(worker_response::Body::Text(mut t)) => {
                if let Some(generate_stream_response::Msg::Done(done)) = t.msg.as_mut()
                    && let Some(timings) = done.timings.as_mut()
                {
                    let queued = call.queued.as_micros() as u64;
                    timings.queue_us += queued;
                    timings.time_to_first_token_us += queued;
                    timings.total_us += queued;
                    record(
                        call.metrics(),
                        call.model_id(),
                        done.usage.as_ref(),
                        timings,
                    );
                }
                Some(Ok(t))
            }
            other => Some(Err(Error::Internal(format!(
                "unexpected worker answer {other:?}"
            )))),
        },
        Err(e) => Some(Err(e)),
    }
}

/// A finished generation's token counts and speeds, in the metrics.
fn record(
    m: &crate::metrics::Metrics,
    model: &str,
    usage: Option<&sidecar_proto::v1::Usage>,
    timings: &sidecar_proto::v1::TextTimings,
) {
    let label = crate::metrics::ModelLabel {
        model: model.to_owned(),
    };
    m.ttft
        .get_or_create(&label)
        .observe(timings.time_to_first_token_us as f64 / 1e6);
    if let Some(u) = usage {
        m.tokens_generated
            .get_or_create(&label)
            .inc_by(u64::from(u.completion_tokens));
        m.tokens_prompted
            .get_or_create(&label)
            .inc_by(u64::from(u.prompt_tokens));
        if timings.generation_us > 0 && u.completion_tokens > 0 {
            m.tokens_per_second
                .get_or_create(&label)
                .observe(f64::from(u.completion_tokens) * 1e6 / timings.generation_us as f64);
        }
    }
}

#[tonic::async_trait]
impl TextService for TextApi {
    async fn generate(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let req = super::charge(&self.registry, Family::Text, req, |g| {
            (&g.model_id, crate::traffic::generate_cost(g))
        })?;
        let g = req.get_ref();
        if !g.prompt.is_empty() && super::deterministic::greedy_or_seeded(g.sampling.as_ref()) {
            let default = self.config.deadlines.unary;
            return super::deterministic::methods::generate(&self.registry, default, req).await;
        }
        let call = self.start(req, false).await?;
        Ok(Response::new(collect(call).await?))
    }

    type GenerateStreamStream = TokenStream;

    async fn generate_stream(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let call = self.start(req, true).await?;
        Ok(Response::new(forward(
            call,
            self.config.connections.stream_stall,
        )))
    }

    async fn chat(&self, req: Request<ChatRequest>) -> Result<Response<GenerateResponse>, Status> {
        let req = super::charge(&self.registry, Family::Text, req, |c| {
            (&c.model_id, crate::traffic::chat_cost(c))
        })?;
        let c = req.get_ref();
        if !c.messages.is_empty() && super::deterministic::greedy_or_seeded(c.sampling.as_ref()) {
            let default = self.config.deadlines.unary;
            return super::deterministic::methods::chat(&self.registry, default, req).await;
        }
        let call = self.start_chat(req, false).await?;
        Ok(Response::new(collect(call).await?))
    }

    type ChatStreamStream = TokenStream;

    async fn chat_stream(
        &self,
        req: Request<ChatRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let call = self.start_chat(req, true).await?;
        Ok(Response::new(forward(
            call,
            self.config.connections.stream_stall,
        )))
    }

    async fn embed(&self, req: Request<EmbedRequest>) -> Result<Response<EmbedResponse>, Status> {
        let req = super::charge(&self.registry, Family::Text, req, |e| {
            (
                &e.model_id,
                u32::try_from(e.inputs.len()).unwrap_or(u32::MAX),
            )
        })?;
        let default = self.config.deadlines.unary;
        super::deterministic::methods::embed(&self.registry, default, req).await
    }

    async fn tokenize(
        &self,
        req: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        let req = super::charge(&self.registry, Family::Text, req, |t| (&t.model_id, 1))?;
        let default = self.config.deadlines.unary;
        super::deterministic::methods::tokenize(&self.registry, default, req).await
    }
}
