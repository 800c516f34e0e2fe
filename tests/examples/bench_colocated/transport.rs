//! The sidecars under test and the channels to them: one sidecar whose
//! API listens on TCP (`listen` in its config), one started with
//! `--listen unix:PATH` (the Unix-socket API), both with the same config
//! and models, each with its own store and control socket.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{add_model, binary, root, store};
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::{GetModelRequest, ModelState};
use tonic::transport::{Channel, Endpoint};

use crate::Res;

/// The LITE model's id in both sidecars.
pub(crate) const LITE_ID: &str = "face-detector";
/// The VISION model's id in both sidecars.
pub(crate) const VISION_ID: &str = "faces";
pub(crate) const LITE_MODEL: &str = "mediapipe/face_detection_short_range.tflite";

/// Where a sidecar's API listens.
#[derive(Debug, Clone)]
pub(crate) enum Listen {
    Tcp,
    Unix(PathBuf),
}

/// A running sidecar, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Sidecar {
    child: Child,
    store: tempfile::TempDir,
    stderr: PathBuf,
    channel: Option<Channel>,
    /// Its pid (the supervisor).
    pub(crate) pid: u32,
}

/// HTTP/2 windows as large as a production client of big messages sets
/// them (the existing LITE and VISION benchmarks' client).
fn tuned(e: Endpoint) -> Endpoint {
    e.initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
}

/// A channel over TCP.
async fn tcp(addr: &str) -> Res<Channel> {
    Ok(tuned(Endpoint::from_shared(format!("http://{addr}"))?)
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// A channel over the Unix socket `path` (the authority is a placeholder:
/// every connection goes to the socket).
pub(crate) async fn unix(path: &Path) -> Res<Channel> {
    let path = path.to_owned();
    Ok(tuned(Endpoint::try_from("http://api.sock")?)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?)
}

/// The config both sidecars run: the LITE and the VISION model, one
/// thread each (as the existing benchmarks).
fn config(store: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodel_store = \"{store}\"\n\
         control_socket = \"{store}/control.sock\"\nlite_runtime = \"{runtime}\"\n\
         [workers]\nmax_in_flight = 4\n\
         [[models]]\nid = \"{LITE_ID}\"\nfamily = \"lite\"\npath = \"{LITE_MODEL}\"\nlite = {{ threads = 1 }}\n\
         [[models]]\nid = \"{VISION_ID}\"\nfamily = \"vision\"\npath = \"{LITE_MODEL}\"\nvision = {{ threads = 1 }}\n\
         [openai]\naddress = \"127.0.0.1:0\"\n",
        store = store.display(),
        runtime = root().join("runtime/litert/libLiteRt.so").display()
    )
}

impl Sidecar {
    /// Starts a sidecar listening as `listen` says and waits (60 s at
    /// most) until its API answers and both models are READY. The error
    /// says why it could not: the supervisor's own words when it exited
    /// (e.g. it refuses `--listen unix:...`).
    pub(crate) async fn start(listen: &Listen) -> Res<Sidecar> {
        let store = store();
        std::fs::set_permissions(
            store.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        add_model(&store, LITE_MODEL);
        let file = store.path().join("sidecar.toml");
        std::fs::write(&file, config(store.path()))?;
        // Next to the store, not in it: the log is no file of the store.
        let stderr = store.path().with_extension("stderr");
        let mut cmd = Command::new(binary("sidecar"));
        cmd.arg("--config").arg(&file);
        if let Listen::Unix(path) = listen {
            cmd.arg("--listen").arg(format!("unix:{}", path.display()));
        }
        let mut child = cmd
            .env(
                "SIDECAR_LOG",
                std::env::var("SIDECAR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        let pid = child.id();
        // The first stdout line names the TCP addresses; the rest is
        // drained so the supervisor never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut sc = Sidecar {
            child,
            store,
            stderr,
            channel: None,
            pid,
        };
        let start = Instant::now();
        let limit = Duration::from_secs(60);
        sc.channel = Some(loop {
            sc.exited()?;
            if start.elapsed() > limit {
                return Err(
                    format!("the sidecar ({listen:?}) did not listen within {limit:?}").into(),
                );
            }
            let attempt = match listen {
                Listen::Tcp => match rx.try_recv().ok().and_then(|l| api_addr(&l)) {
                    Some(addr) => Some(tcp(&addr).await),
                    None => None,
                },
                Listen::Unix(path) if path.exists() => Some(unix(path).await),
                Listen::Unix(_) => None,
            };
            match attempt {
                Some(Ok(channel)) => break channel,
                Some(Err(e)) if matches!(listen, Listen::Tcp) => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        });
        for id in [LITE_ID, VISION_ID] {
            loop {
                sc.exited()?;
                let m = sc.model(id).await?;
                if m.0 == ModelState::Ready as i32 {
                    break;
                }
                if start.elapsed() > limit {
                    return Err(
                        format!("model {id} not READY within {limit:?} (state {})", m.0).into(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(sc)
    }

    /// An error with the supervisor's stderr when it has exited.
    fn exited(&mut self) -> Res<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            let words: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(4)
                .collect();
            return Err(format!("the sidecar exited ({status}): {}", words.join(" / ")).into());
        }
        Ok(())
    }

    /// The model's (state, worker pid), over the control socket.
    pub(crate) async fn model(&self, id: &str) -> Res<(i32, u32)> {
        let channel = supervisor::ctl::connect(&self.store.path().join("control.sock")).await?;
        let m = ModelServiceClient::new(channel)
            .get_model(GetModelRequest {
                model_id: id.into(),
            })
            .await?
            .into_inner();
        Ok((m.state, m.worker_pid))
    }

    /// The API channel.
    pub(crate) fn channel(&self) -> Res<Channel> {
        Ok(self
            .channel
            .clone()
            .ok_or("the sidecar's API is not connected")?)
    }
}

/// `api=HOST:PORT` of the supervisor's first stdout line.
fn api_addr(line: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .map(str::to_owned)
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
