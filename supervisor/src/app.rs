//! Wiring: store, spawner, registry, the API server, the admin port, and
//! shutdown.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sidecar_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use sidecar_proto::v1::model_service_server::ModelServiceServer;
use sidecar_proto::v1::text_service_server::TextServiceServer;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::api::admin::AdminApi;
use crate::api::lite::LiteApi;
use crate::api::model::ModelApi;
use crate::api::oip::OipApi;
use crate::api::text::TextApi;
use crate::api::vision::VisionApi;
use crate::config::Config;
use crate::error::Error;
use crate::lifecycle::KillReason;
use crate::memory::Guard;
use crate::registry::{Models, Registry};
use crate::shared::Shared;
use crate::store::Store;
use crate::worker::Spawner;

/// HTTP/2 flow-control window per stream on the API port, bytes.
const STREAM_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 frame the API port accepts (the protocol's maximum is
/// 16 MiB - 1; the 16 KiB default splits a tensor into many frames).
const MAX_FRAME: u32 = 1 << 20;

const SERVICES: [&str; 6] = [
    "sidecar.v1.ModelService",
    "sidecar.v1.TextService",
    "sidecar.v1.LiteService",
    "sidecar.v1.VisionService",
    "sidecar.v1.SharedMemoryService",
    "inference.GRPCInferenceService",
];

/// Runs the supervisor until `shutdown` completes, then drains and stops
/// every worker. Prints one line to stdout once listening:
/// `sidecar listening api=ADDR admin=ADDR openai=ADDR api_socket=PATH`
/// (`api=off` when `api_socket.tcp` is false, `openai=off` when the HTTP
/// API is disabled, `api_socket=off` without a Unix socket).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // A process of the same uid (a worker a model file took over) cannot
    // read this one's memory or open its descriptors (the workers' shared
    // memory) through /proc. Workers are dumpable again after their exec.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("could not mark the supervisor non-dumpable: {e}");
    }
    config
        .workers
        .check_identity(nix::unistd::geteuid().as_raw())?;
    if config.api_socket.tcp
        && let Some(warning) = config.exposure()
    {
        tracing::warn!("{warning}");
    }
    // The files were checked with the config; read again here, so a
    // change since then still stops the start before any worker.
    let tls = config
        .tls
        .as_ref()
        .map(crate::net::tls::Acceptor::start)
        .transpose()?;
    // Built once here and passed down: nothing below is a global.
    let shared = Shared::new(config);
    let config = shared.config.clone();
    // The tokens file is read before anything starts: a bad one stops the
    // start, naming its line.
    let auth = Arc::new(crate::auth::Auth::new(&config)?);
    tokio::spawn(auth.clone().watch());
    let store = Store::open(&config.model_store)?;
    // First, so a refused control socket stops the start before any worker.
    let control = crate::ctl::socket::bind(&config.control_socket)?;
    // So is a refused API socket (a live one: another sidecar there).
    let api_socket = bind_api_socket(&config)?;
    let spawner = Spawner::start()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let models = Arc::new(Models::default());
    let guard = Guard::new(config.clone(), models.clone());
    let registry = Arc::new(Registry::new(
        models,
        store,
        shared.clone(),
        spawner,
        health.clone(),
        guard.clone(),
    ));
    tokio::spawn(guard.run(health.clone()));
    for spec in &config.models {
        registry.add(spec.clone())?;
    }
    for (alias, target) in &config.aliases {
        let target = crate::registry::Target::parse(target)?;
        registry
            .set_alias(alias, target)
            .map_err(|e| Error::Config(format!("[aliases] {alias:?}: {e}")))?;
    }
    let reloader = Arc::new(crate::reload::Reloader::new(
        config.clone(),
        registry.clone(),
    ));
    crate::reload::on_sighup(reloader.clone())?;
    let accepting = Arc::new(AtomicBool::new(true));
    let pulse = crate::pulse::Pulse::default();
    pulse.beat();
    tokio::spawn(pulse.clone().run());
    let admin = crate::admin::start(
        config.admin_listen,
        registry.clone(),
        accepting.clone(),
        pulse.clone(),
    )?;

    health.set_service_status("", ServingStatus::Serving).await;
    for s in SERVICES {
        health.set_service_status(s, ServingStatus::Serving).await;
    }
    // Reflection (v1 and v1alpha) lists on each listener what it serves:
    // the names below are the services added to that listener's router.
    let (reflection, reflection_alpha) = crate::api::reflection::services(&[
        tonic_health::pb::health_server::SERVICE_NAME,
        sidecar_proto::v1::text_service_server::SERVICE_NAME,
        sidecar_proto::v1::lite_service_server::SERVICE_NAME,
        sidecar_proto::v1::vision_service_server::SERVICE_NAME,
        sidecar_proto::v1::shared_memory_service_server::SERVICE_NAME,
        sidecar_proto::v1::model_service_server::SERVICE_NAME,
        sidecar_proto::inference::grpc_inference_service_server::SERVICE_NAME,
    ])?;
    let (control_reflection, control_reflection_alpha) = crate::api::reflection::services(&[
        sidecar_proto::v1::admin_service_server::SERVICE_NAME,
        sidecar_proto::v1::model_service_server::SERVICE_NAME,
    ])?;

    let listener = if config.api_socket.tcp {
        Some(
            tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| Error::Config(format!("listen {}: {e}", config.listen)))?,
        )
    } else {
        None
    };
    let api = match &listener {
        Some(l) => l
            .local_addr()
            .map_err(|e| Error::Internal(format!("API socket: {e}")))?
            .to_string(),
        None => "off".to_owned(),
    };
    let api_socket_shown = config
        .api_socket
        .path
        .as_ref()
        .map_or_else(|| "off".to_owned(), |p| format!("unix:{}", p.display()));
    // The OpenAI-compatible HTTP API: its own listener, the same call path.
    let http_tls = match (&config.tls, config.openai.enabled) {
        (Some(t), true) => Some(crate::net::tls::Acceptor::start_http(t)?),
        _ => None,
    };
    let openai = crate::openai::start(registry.clone(), auth.clone(), http_tls).await?;
    let openai_addr = openai
        .as_ref()
        .map_or_else(|| "off".to_owned(), |s| s.address.clone());
    tracing::info!(%api, api_socket = %api_socket_shown, %admin, openai = %openai_addr, tls = tls.is_some(), control = %config.control_socket.display(), store = %registry.store.root().display(), "sidecar listening");
    let _ = writeln!(
        std::io::stdout(),
        "sidecar listening api={api} admin={admin} openai={openai_addr} api_socket={api_socket_shown}"
    );

    let limit = config.max_message_bytes;
    let text = TextServiceServer::new(TextApi {
        registry: registry.clone(),
        config: config.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let lite_api = LiteApi {
        registry: registry.clone(),
        config: config.clone(),
    };
    let oip = GrpcInferenceServiceServer::new(OipApi {
        lite: lite_api.clone(),
        accepting: accepting.clone(),
        pulse,
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let lite = sidecar_proto::v1::lite_service_server::LiteServiceServer::new(lite_api)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let vision = sidecar_proto::v1::vision_service_server::VisionServiceServer::new(VisionApi {
        registry: registry.clone(),
        config: config.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let shm = sidecar_proto::v1::shared_memory_service_server::SharedMemoryServiceServer::new(
        crate::api::shm::ShmApi {
            regions: shared.shm.clone(),
        },
    )
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let model = ModelServiceServer::new(ModelApi {
        registry: registry.clone(),
        config: config.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);

    let admin_api = sidecar_proto::v1::admin_service_server::AdminServiceServer::new(AdminApi {
        registry: registry.clone(),
        config: config.clone(),
        started: std::time::Instant::now(),
        reloader,
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let control_models = ModelServiceServer::new(ModelApi {
        registry: registry.clone(),
        config: config.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let (control_stop, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_server = tokio::spawn(
        crate::net::server(&config.connections)
            .layer(crate::net::ActiveLayer)
            .layer(crate::auth::AuthLayer::new(
                auth.clone(),
                crate::auth::Listener::Control,
            ))
            .add_service(admin_api)
            // LoadModel and UnloadModel for `sidecarctl`, off the network.
            .add_service(control_models)
            .add_service(control_reflection)
            .add_service(control_reflection_alpha)
            .serve_with_incoming_shutdown(
                crate::net::incoming(
                    tokio_stream::wrappers::UnixListenerStream::new(control),
                    &config.connections,
                    "control",
                ),
                async {
                    let _ = control_stopped.await;
                },
            ),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let router = crate::net::server(&config.connections)
        // Tensors and images are large messages: HTTP/2's default
        // 64 KiB windows would cost a round trip per 64 KiB.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(2 * STREAM_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .layer(crate::net::ActiveLayer)
        .layer(crate::metrics::CallLayer::new(shared.metrics.clone()))
        // Inside the metrics layer, so refused calls are counted with
        // their client; before every service.
        .layer(crate::auth::AuthLayer::new(
            auth,
            crate::auth::Listener::Api,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(text)
        .add_service(lite)
        .add_service(vision)
        .add_service(shm)
        .add_service(model)
        .add_service(oip);
    // The same services and layers on both listeners.
    let mut servers = Vec::new();
    if let Some(listener) = listener {
        // Connections we accept ourselves do not get tonic's socket
        // options: without TCP_NODELAY a small message (a token, a unary
        // answer's trailers) can wait 40 ms for the client's delayed ACK.
        let accepted = TcpListenerStream::new(listener).map(|conn| {
            if let Ok(c) = &conn
                && let Err(e) = c.set_nodelay(true)
            {
                tracing::warn!("TCP_NODELAY: {e}");
            }
            conn
        });
        let incoming = crate::net::api(accepted, &config.connections, tls);
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(router.clone().serve_with_incoming_shutdown(
            incoming,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    if let Some(listener) = api_socket {
        let incoming = crate::net::incoming(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            &config.connections,
            "api_socket",
        );
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(router.serve_with_incoming_shutdown(
            incoming,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    let server = async {
        for s in servers {
            let _ = s.await;
        }
    };

    shutdown.await;
    tracing::info!(
        "shutting down: not serving, draining calls for up to {:?}",
        config.shutdown_grace
    );
    accepting.store(false, Ordering::SeqCst);
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for s in SERVICES {
        health
            .set_service_status(s, ServingStatus::NotServing)
            .await;
    }
    let _ = stop_tx.send(true);
    let http = async {
        if let Some(s) = openai {
            s.stop(config.shutdown_grace).await;
        }
    };
    let (grpc, ()) = tokio::join!(tokio::time::timeout(config.shutdown_grace, server), http);
    if grpc.is_err() {
        tracing::warn!(
            "calls still running after {:?}; stopping anyway",
            config.shutdown_grace
        );
    }
    // A swap's versions aside (loading or draining) too.
    for handle in registry.list().into_iter().chain(registry.aside()) {
        handle.unload(KillReason::Shutdown).await;
    }
    let _ = control_stop.send(());
    let _ = control_server.await;
    crate::ctl::socket::remove(&config.control_socket);
    if let Some(path) = &config.api_socket.path {
        crate::ctl::socket::remove(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Where `dir` really is, through links, though it (or some of its
/// ancestors) may not exist yet: the nearest existing ancestor made
/// canonical, the missing rest appended (a `..` in it taken back
/// lexically, as those parts are directories made later, not links).
fn real_dir(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::path::{Component, Path};
    let mut missing = Vec::new();
    let mut at = dir;
    let mut real = loop {
        let probe = if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            at
        };
        if let Ok(real) = std::fs::canonicalize(probe) {
            break real;
        }
        let mut parts = at.components();
        missing.push(parts.next_back()?);
        at = parts.as_path();
    };
    for part in missing.iter().rev() {
        match part {
            Component::ParentDir => {
                real.pop();
            }
            Component::Normal(name) => real.push(name),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(real)
}

/// Binds `[api_socket]`'s socket, when one is configured: its directory
/// created with the mode's directory equivalent, never the control
/// socket's (checked again here on the real paths, through links), a
/// live socket refused, a stale one replaced, the mode and owner set.
fn bind_api_socket(config: &Config) -> Result<Option<tokio::net::UnixListener>, Error> {
    let s = &config.api_socket;
    let Some(path) = &s.path else {
        return Ok(None);
    };
    let real = |p: &std::path::Path| p.parent().and_then(real_dir);
    if let (Some(dir), Some(control)) = (real(path), real(&config.control_socket))
        && dir.starts_with(&control)
    {
        return Err(Error::Config(format!(
            "api_socket.path {}: its directory {} is (or is inside) the control socket's \
             directory {} (control_socket {}); put the API socket in a directory of its own",
            path.display(),
            dir.display(),
            control.display(),
            config.control_socket.display()
        )));
    }
    let access = crate::ctl::socket::Access {
        dir_mode: s.dir_mode(),
        private_dir: false,
        mode: s.mode,
        owner: s.owner,
        group: s.group,
    };
    crate::ctl::socket::bind_with(path, "api_socket.path", &access).map(Some)
}
