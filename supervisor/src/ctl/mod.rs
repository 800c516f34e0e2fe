//! `sidecarctl`: the operator's tool inside the pod. It talks to the
//! supervisor over the control Unix socket only (owner-only; nothing that
//! changes state is on the network) and prints tables, or JSON with
//! `--json`.
//!
//! Exit codes: 0 done; 1 the supervisor answered with an error (its gRPC
//! code and message are printed); 2 bad usage; 3 the control socket
//! cannot be reached.
#![allow(clippy::print_stdout)] // Printing is what this module is for.

pub mod call;
mod print;
pub mod socket;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use sidecar_proto::v1::admin_service_client::AdminServiceClient;
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::{
    DeleteAliasRequest, DrainModelRequest, GetStatusRequest, ListModelsRequest, ListWorkersRequest,
    LoadModelRequest, ModelFamily, ReloadConfigRequest, RestartWorkerRequest, SetAliasRequest,
    StreamLogsRequest, UnloadModelRequest,
};
use tonic::transport::Channel;

/// Exit code: the supervisor answered with an error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: the control socket cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "sidecarctl",
    version,
    about = "Operate a running sidecar through its control socket"
)]
pub struct Cli {
    /// The control socket.
    #[arg(
        long,
        env = "SIDECAR_CONTROL_SOCKET",
        default_value = "/run/sidecar/control.sock"
    )]
    pub socket: PathBuf,
    /// JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The supervisor, host memory, GPUs and every model.
    Status,
    /// Every worker process.
    Workers,
    /// A model's worker logs ("all": every worker).
    Logs {
        /// Model id, or "all".
        model: String,
        /// Keep following new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines of history first.
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Kill a model's worker and start a new one (fresh restart budget).
    Restart {
        /// Model id.
        model: String,
    },
    /// Stop admitting calls to a model (or admit them again).
    Drain {
        /// Model id.
        model: String,
        /// Wait until its calls in flight are done.
        #[arg(long)]
        wait: bool,
        /// Admit calls again.
        #[arg(long, conflicts_with = "wait")]
        resume: bool,
    },
    /// Load a model from the store.
    Load {
        /// Model id.
        model: String,
        /// text, lite or vision.
        family: String,
        /// File, relative to the model store.
        path: String,
        /// Never unloaded to make room.
        #[arg(long)]
        pinned: bool,
        /// Readiness does not wait for it.
        #[arg(long)]
        optional: bool,
        /// Private memory budget, bytes or with a unit ("512MiB").
        #[arg(long)]
        budget: Option<String>,
        /// Swap: when the id is loaded with another file, load this one
        /// beside it, switch the id once it is READY, drain the old one.
        #[arg(long)]
        replace: bool,
        /// With --replace: when both do not fit, unload the old one first.
        #[arg(long, requires = "replace")]
        allow_cold_swap: bool,
        /// With --replace: seconds the old version's calls may run after
        /// the switch (default 30).
        #[arg(long, requires = "replace")]
        drain_timeout: Option<u32>,
        /// With --replace: keep the old version loaded, reached as
        /// "MODEL@VERSION", instead of draining and unloading it.
        #[arg(long, requires = "replace")]
        keep_previous: bool,
    },
    /// Point an alias at a model id (its current version, following
    /// swaps) or at one version ("minilm@2"), in one step.
    Alias {
        /// The alias.
        alias: String,
        /// A model id, or "MODEL@VERSION".
        target: String,
    },
    /// Remove an alias (the model it names is untouched).
    Unalias {
        /// The alias.
        alias: String,
    },
    /// Every alias and what it names.
    Aliases,
    /// Unload a model, every version of it (after draining its calls
    /// unless --force); "MODEL@VERSION": one version kept beside the
    /// current one.
    Unload {
        /// Model id, or "MODEL@VERSION".
        model: String,
        /// Do not wait for calls in flight.
        #[arg(long)]
        force: bool,
    },
    /// Read the config file again and apply its [[models]] (as SIGHUP):
    /// added ones load, removed ones unload, changed ones swap. Exits 1
    /// when the file is invalid (every error printed, nothing changed) or
    /// a change could not be made.
    Reload,
    /// Read a token's secret from stdin (one line) and print the form the
    /// tokens file holds (`sha256:HEX`); the control socket is not used.
    /// A line of the file: `NAME SCOPES HASH`, e.g.
    /// `app infer,read sha256:…`.
    HashToken,
    /// Send one request straight to a model's worker, bypassing queues,
    /// and print the answer and the timings.
    Call(call::CallArgs),
}

/// Connects to the control socket.
pub async fn connect(path: &std::path::Path) -> Result<Channel, String> {
    let path = path.to_owned();
    let shown = path.display().to_string();
    tonic::transport::Endpoint::try_from("http://control.sock")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("cannot reach the control socket {shown}: {e}"))
}

/// Runs the command; the process's exit code.
pub async fn run(cli: Cli) -> ExitCode {
    if let Cmd::HashToken = cli.command {
        return hash_token(std::io::stdin().lock());
    }
    let channel = match connect(&cli.socket).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidecarctl: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    match execute(&cli, channel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) => {
            let code = crate::metrics::code_name(status.code() as i32);
            if cli.json {
                println!(
                    "{}",
                    json!({"error": {"code": code, "message": status.message()}})
                );
            } else {
                eprintln!("sidecarctl: {code}: {}", status.message());
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Longest secret `hash-token` reads, bytes (the API reads no longer
/// `authorization` header).
const MAX_SECRET: usize = crate::auth::MAX_AUTHORIZATION - "Bearer ".len();

/// `sidecarctl hash-token`: one line from `input`, its hash on stdout.
/// The secret must be what a client can send: visible ASCII, no spaces.
pub fn hash_token(input: impl std::io::BufRead) -> ExitCode {
    match read_secret(input) {
        Ok(secret) => {
            println!("{}", crate::auth::hash_line(&secret));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sidecarctl: hash-token: {e}");
            ExitCode::from(2)
        }
    }
}

fn read_secret(input: impl std::io::BufRead) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let mut input = input.take(MAX_SECRET as u64 + 2);
    std::io::BufRead::read_until(&mut input, b'\n', &mut line)
        .map_err(|e| format!("reading stdin: {e}"))?;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    if line.is_empty() {
        return Err("no secret on stdin".into());
    }
    if line.len() > MAX_SECRET {
        return Err(format!("the secret is longer than {MAX_SECRET} bytes"));
    }
    if !line.iter().all(u8::is_ascii_graphic) {
        return Err(
            "the secret must be visible ASCII without spaces (what a client can send after \"Bearer \")".into(),
        );
    }
    Ok(line)
}

async fn execute(cli: &Cli, channel: Channel) -> Result<(), tonic::Status> {
    let mut admin = AdminServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut models = ModelServiceClient::new(channel.clone());
    match &cli.command {
        Cmd::Status => {
            let s = admin.get_status(GetStatusRequest {}).await?.into_inner();
            print::status(&s, cli.json);
        }
        Cmd::Workers => {
            let w = admin
                .list_workers(ListWorkersRequest {})
                .await?
                .into_inner();
            print::workers(&w.workers, cli.json);
        }
        Cmd::Logs {
            model,
            follow,
            tail,
        } => {
            let model_id = if model == "all" {
                String::new()
            } else {
                model.clone()
            };
            let mut lines = admin
                .stream_logs(StreamLogsRequest {
                    model_id,
                    tail: *tail,
                    follow: *follow,
                })
                .await?
                .into_inner();
            while let Some(line) = lines.message().await? {
                print::log_line(&line, cli.json);
            }
        }
        Cmd::Restart { model } => {
            let r = admin
                .restart_worker(RestartWorkerRequest {
                    model_id: model.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            print::model(r.model.as_ref(), cli.json);
        }
        Cmd::Drain {
            model,
            wait,
            resume,
        } => {
            let r = admin
                .drain_model(DrainModelRequest {
                    model_id: model.clone(),
                    wait: *wait,
                    resume: *resume,
                })
                .await?
                .into_inner();
            print::model(r.model.as_ref(), cli.json);
        }
        Cmd::Load {
            model,
            family,
            path,
            pinned,
            optional,
            budget,
            replace,
            allow_cold_swap,
            drain_timeout,
            keep_previous,
        } => {
            let family = match family.as_str() {
                "text" => ModelFamily::Text,
                "lite" => ModelFamily::Lite,
                "vision" => ModelFamily::Vision,
                other => {
                    return Err(tonic::Status::invalid_argument(format!(
                        "family {other:?}: text, lite or vision"
                    )));
                }
            };
            let budget = match budget {
                Some(b) => {
                    crate::config::bytes::parse(b).map_err(tonic::Status::invalid_argument)?
                }
                None => 0,
            };
            let r = models
                .load_model(LoadModelRequest {
                    model_id: model.clone(),
                    family: family as i32,
                    path: path.clone(),
                    pinned: *pinned,
                    required: !optional,
                    memory_budget_bytes: budget,
                    max_in_flight: 0,
                    options: None,
                    replace: *replace,
                    allow_cold_swap: *allow_cold_swap,
                    keep_previous: *keep_previous,
                    drain_timeout_ms: drain_timeout.map_or(0, |s| s.saturating_mul(1000)),
                })
                .await?
                .into_inner();
            print::model(r.model.as_ref(), cli.json);
        }
        Cmd::Unload { model, force } => {
            models
                .unload_model(UnloadModelRequest {
                    model_id: model.clone(),
                    force: *force,
                    ..Default::default()
                })
                .await?;
            if cli.json {
                println!("{}", json!({"unloaded": model}));
            } else {
                println!("unloaded {model}");
            }
        }
        Cmd::Alias { alias, target } => {
            let r = models
                .set_alias(SetAliasRequest {
                    alias: alias.clone(),
                    model_id: target.clone(),
                    version: 0,
                })
                .await?
                .into_inner();
            print::alias_set(&r, cli.json);
        }
        Cmd::Unalias { alias } => {
            models
                .delete_alias(DeleteAliasRequest {
                    alias: alias.clone(),
                })
                .await?;
            if cli.json {
                println!("{}", json!({"deleted": alias}));
            } else {
                println!("alias {alias} deleted");
            }
        }
        Cmd::Aliases => {
            let r = models
                .list_models(ListModelsRequest::default())
                .await?
                .into_inner();
            print::aliases(&r.aliases, cli.json);
        }
        Cmd::Reload => {
            let r = admin
                .reload_config(ReloadConfigRequest {})
                .await?
                .into_inner()
                .outcome
                .unwrap_or_default();
            print::reload(&r, cli.json);
            if !r.ok {
                return Err(tonic::Status::aborted(format!(
                    "the reload was not applied whole: {}",
                    r.refused.join("; ")
                )));
            }
        }
        Cmd::Call(args) => call::run(&mut admin, args, cli.json).await?,
        Cmd::HashToken => {}
    }
    Ok(())
}
