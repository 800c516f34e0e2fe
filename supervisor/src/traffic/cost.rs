//! What a call costs against its class's rate limit, by family.

use sidecar_proto::worker::worker_request::Body;

/// Tokens a Generate or Chat call is charged when it sets no `max_tokens`
/// (the worker's default).
pub const DEFAULT_MAX_TOKENS: u64 = 256;

/// The estimate of a prompt's tokens: its bytes / 4, rounded up (no
/// tokenizer in the supervisor; English text runs about 4 bytes a token).
pub fn prompt_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

fn max_tokens(n: u32) -> u64 {
    match n {
        0 => DEFAULT_MAX_TOKENS,
        n => u64::from(n),
    }
}

/// The cost of a call: Generate and Chat, the prompt's estimated tokens
/// plus `max_tokens`; Embed, its inputs; ProcessBatch, its images;
/// InferBatch, its sets; a vision stream's opening nothing (each frame
/// costs 1, see `FrameLimit`); anything else (Tokenize, Infer, GetModelInfo)
/// 1. Saturates at `u32::MAX`.
pub fn cost(body: &Body) -> u32 {
    let c: u64 = match body {
        Body::Generate(g) => return generate_cost(g),
        Body::Chat(c) => return chat_cost(c),
        Body::Embed(e) => e.inputs.len() as u64,
        Body::VisionBatch(b) => b.images.len() as u64,
        Body::InferBatch(b) => b.sets.len() as u64,
        Body::VisionOpen(_) => 0,
        Body::Tokenize(_)
        | Body::Infer(_)
        | Body::LiteInfo(_)
        | Body::VisionFrame(_)
        | Body::VisionClose(_)
        | Body::Load(_)
        | Body::SandboxProbe(_)
        | Body::RegionDetach(_) => 1,
    };
    saturate(c)
}

/// A Generate call's cost: its prompt's estimated tokens plus
/// `max_tokens`.
pub fn generate_cost(g: &sidecar_proto::v1::GenerateRequest) -> u32 {
    saturate(prompt_tokens(g.prompt.len()) + max_tokens(g.max_tokens))
}

/// A Chat call's cost: its messages' estimated tokens plus `max_tokens`.
pub fn chat_cost(c: &sidecar_proto::v1::ChatRequest) -> u32 {
    let bytes = c.messages.iter().fold(0usize, |n, m| {
        n.saturating_add(m.role.len() + m.content.len())
    });
    saturate(prompt_tokens(bytes) + max_tokens(c.max_tokens))
}

fn saturate(c: u64) -> u32 {
    u32::try_from(c).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use sidecar_proto::v1::{
        ChatMessage, ChatRequest, EmbedRequest, GenerateRequest, InferBatchRequest,
        ProcessBatchRequest, StreamConfig, TokenizeRequest,
    };

    use super::*;

    #[test]
    fn costs_fit_the_family() {
        let g = GenerateRequest {
            prompt: "12345".into(),
            max_tokens: 10,
            ..Default::default()
        };
        assert_eq!(cost(&Body::Generate(g)), 2 + 10);
        let g = GenerateRequest {
            prompt: "1234".into(),
            ..Default::default()
        };
        assert_eq!(cost(&Body::Generate(g)), 1 + 256);
        let c = ChatRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hello".into(),
            }],
            max_tokens: 4,
            ..Default::default()
        };
        assert_eq!(cost(&Body::Chat(c)), 3 + 4);
        let e = EmbedRequest {
            inputs: vec!["a".into(); 7],
            ..Default::default()
        };
        assert_eq!(cost(&Body::Embed(e)), 7);
        assert_eq!(cost(&Body::Tokenize(TokenizeRequest::default())), 1);
        let b = ProcessBatchRequest {
            images: vec![Default::default(); 3],
            ..Default::default()
        };
        assert_eq!(cost(&Body::VisionBatch(b)), 3);
        let b = InferBatchRequest {
            sets: vec![Default::default(); 5],
            ..Default::default()
        };
        assert_eq!(cost(&Body::InferBatch(b)), 5);
        assert_eq!(cost(&Body::VisionOpen(StreamConfig::default())), 0);
        let huge = GenerateRequest {
            prompt: "x".repeat(64 << 20),
            max_tokens: u32::MAX,
            ..Default::default()
        };
        assert_eq!(cost(&Body::Generate(huge)), u32::MAX, "saturates");
    }
}
