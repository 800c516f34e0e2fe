//! TextService: generation over the model's worker.

use std::pin::Pin;
use std::sync::Arc;

use sidecar_proto::v1::text_service_server::TextService;
use sidecar_proto::v1::{
    ChatRequest, EmbedRequest, EmbedResponse, GenerateRequest, GenerateResponse,
    GenerateStreamResponse, TokenizeRequest, TokenizeResponse, generate_stream_response,
};
use sidecar_proto::worker::{WorkerRequest, worker_request, worker_response};
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
    async fn start(
        &self,
        req: Request<GenerateRequest>,
        stream: bool,
    ) -> Result<CallStream, Error> {
        let default = if stream {
            self.config.deadlines.stream
        } else {
            self.config.deadlines.unary
        };
        let deadline = super::deadline(&req, default);
        let request_id = super::request_id(&req);
        let g = req.into_inner();
        let handle = self.registry.get(&g.model_id)?;
        if handle.spec.family != Family::Text {
            return Err(Error::FailedPrecondition(format!(
                "model {:?} is not a TEXT model",
                g.model_id
            )));
        }
        if g.prompt.is_empty() {
            return Err(Error::InvalidArgument("prompt must not be empty".into()));
        }
        tracing::debug!(request_id, model = %g.model_id, "generate");
        let req = WorkerRequest {
            request_tag: request_id,
            deadline_unix_ms: 0,
            body: Some(worker_request::Body::Generate(g)),
        };
        handle.call(req, deadline).await
    }
}

/// The next token-stream message of a call.
async fn next_message(call: &mut CallStream) -> Option<Result<GenerateStreamResponse, Error>> {
    match call.next().await? {
        Ok(r) => match r.body {
            Some(worker_response::Body::Text(t)) => Some(Ok(t)),
            other => Some(Err(Error::Internal(format!(
                "unexpected worker answer {other:?}"
            )))),
        },
        Err(e) => Some(Err(e)),
    }
}

fn unimplemented(what: &str) -> Status {
    Error::Unimplemented(format!(
        "{what} is not served yet: this sidecar serves Generate and GenerateStream"
    ))
    .into()
}

#[tonic::async_trait]
impl TextService for TextApi {
    async fn generate(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let mut call = self.start(req, false).await?;
        let mut text = String::new();
        while let Some(msg) = next_message(&mut call).await {
            match msg?.msg {
                Some(generate_stream_response::Msg::Delta(d)) => text.push_str(&d.text),
                Some(generate_stream_response::Msg::Done(done)) => {
                    text.push_str(&done.text);
                    return Ok(Response::new(GenerateResponse {
                        text,
                        finish_reason: done.finish_reason,
                        usage: done.usage,
                        timings: done.timings,
                        seed: done.seed,
                    }));
                }
                None => {}
            }
        }
        Err(Error::Internal("the worker ended the stream without a final message".into()).into())
    }

    type GenerateStreamStream = TokenStream;

    async fn generate_stream(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let mut call = self.start(req, true).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        tokio::spawn(async move {
            while let Some(msg) = next_message(&mut call).await {
                let last = matches!(
                    &msg,
                    Ok(GenerateStreamResponse {
                        msg: Some(generate_stream_response::Msg::Done(_))
                    }) | Err(_)
                );
                // A send error means the client went away: dropping the
                // call cancels the request in the worker.
                if tx.send(msg.map_err(Status::from)).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn chat(&self, _: Request<ChatRequest>) -> Result<Response<GenerateResponse>, Status> {
        Err(unimplemented("Chat"))
    }

    type ChatStreamStream = TokenStream;

    async fn chat_stream(
        &self,
        _: Request<ChatRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        Err(unimplemented("ChatStream"))
    }

    async fn embed(&self, _: Request<EmbedRequest>) -> Result<Response<EmbedResponse>, Status> {
        Err(unimplemented("Embed"))
    }

    async fn tokenize(
        &self,
        _: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        Err(unimplemented("Tokenize"))
    }
}
