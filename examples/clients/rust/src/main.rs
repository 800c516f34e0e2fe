//! Client examples for sidecar's gRPC API with tonic, one subcommand per
//! pattern: each prints what it did in a few lines (the README shows them)
//! and exits 0 when the server answered as the example expects.
//!
//! Owns: examples only. Must not: depend on the supervisor or a worker
//! crate, or on anything native (only `sidecar-proto`, tonic, tokio).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod conn;
mod files;
mod health;
mod lite;
mod retry;
mod text;
mod vision;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use conn::Call;

/// sidecar's gRPC API, pattern by pattern.
#[derive(Debug, Parser)]
#[command(name = "sidecar-examples", version)]
struct Cli {
    /// API address: HOST:PORT or unix:/PATH.
    #[arg(
        long,
        env = "SIDECAR_TARGET",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    target: String,
    /// Seconds the whole example may take, retries included.
    #[arg(long, default_value_t = 60.0, global = true)]
    deadline: f64,
    /// Bearer token (a server with a tokens file).
    #[arg(long, env = "SIDECAR_TOKEN", global = true)]
    token: Option<String>,
    /// x-client-id: a class name from `auth.client_ids` (no tokens).
    #[arg(long, global = true)]
    client_id: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Unary and streaming generation, and a cancelled stream.
    Generate(text::GenerateArgs),
    /// A two-turn chat, streamed then unary.
    Chat(text::ChatArgs),
    /// Batched embeddings with a local cache and a cache-aware retry.
    Embed(text::EmbedArgs),
    /// LITE inference: tensors from the model's own shapes.
    Lite(lite::LiteArgs),
    /// LITE inference through a shared-memory region.
    Shm(lite::ShmArgs),
    /// A Y4M video's frames over one stream, with back-pressure or drops.
    Video(vision::VideoArgs),
    /// An H.264 Annex-B file in chunks, then a flush.
    H264(vision::H264Args),
    /// gRPC health and /readyz.
    Health(health::HealthArgs),
    /// Upload a model file with progress, load it, watch it get READY.
    Upload(files::UploadArgs),
    /// The error-handling table, one live call per row.
    Errors(retry::ErrorsArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.deadline > 0.0 && cli.deadline < 86_400.0) {
        eprintln!("--deadline {} must be in 0..86400 seconds", cli.deadline);
        return ExitCode::from(2);
    }
    let call = Call::new(
        Duration::from_secs_f64(cli.deadline),
        cli.token.clone(),
        cli.client_id.clone(),
    );
    let target = cli.target.as_str();
    let result = match cli.command {
        Cmd::Generate(a) => text::generate(target, &call, a).await,
        Cmd::Chat(a) => text::chat(target, &call, a).await,
        Cmd::Embed(a) => text::embed(target, &call, a).await,
        Cmd::Lite(a) => lite::run(target, &call, a).await,
        Cmd::Shm(a) => lite::shm(target, &call, a).await,
        Cmd::Video(a) => vision::video(target, &call, a).await,
        Cmd::H264(a) => vision::h264(target, &call, a).await,
        Cmd::Health(a) => health::run(target, &call, a).await,
        Cmd::Upload(a) => files::upload(target, &call, a).await,
        Cmd::Errors(a) => retry::errors(target, &call, a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecar-examples: {e}");
            ExitCode::FAILURE
        }
    }
}
