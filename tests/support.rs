//! Starting the real `sidecar` (with the real worker binaries and models)
//! for end-to-end tests, and talking to it.
//!
//! The binaries are found next to the test executable's `deps/` folder, so
//! run these tests through `cargo test --workspace` (which builds every
//! binary of the workspace); the models come from `scripts/setup.sh`.
#![forbid(unsafe_code)]
#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sidecar_proto::v1::admin_service_client::AdminServiceClient;
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{
    GetModelRequest, ModelInfo, ModelState, PutFileHeader, PutFileRequest, put_file_request,
};
use tonic::transport::Channel;

/// The SmolLM2 file, relative to the model store.
pub const SMOLLM2: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The all-MiniLM-L6-v2 file setup converts, relative to the model store.
pub const MINILM: &str = "minilm/all-MiniLM-L6-v2.f16.gguf";

/// Restarts within a test's patience: short backoff and grace periods.
pub const QUICK_RESTARTS: &str = "[workers]\nbackoff_initial = 0.05\nbackoff_max = 0.5\nkill_grace = 1\n[deadlines]\ncancel_grace = 1\n";

#[path = "vision_support.rs"]
pub mod vision;

#[path = "names_support.rs"]
pub mod names;

#[path = "mediapipe_support.rs"]
pub mod mediapipe;

#[path = "chaos_support.rs"]
pub mod chaos;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// End-to-end tests start processes and measure deadlines: on a 2-core
/// machine they run one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the project venv's Python on `tests/python/<script>` with `args`;
/// its stdout, after asserting it exited 0 (the failure shows both
/// streams).
pub async fn python_script(script: &str, args: Vec<String>) -> String {
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let path = root().join("tests/python").join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(path)
            .args(args)
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}

/// [`python_script`] for a script that prints one JSON object.
pub async fn python_json(script: &str, args: Vec<String>) -> serde_json::Value {
    let stdout = python_script(script, args).await;
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script}: {e}: {stdout}"))
}

/// A binary built by this workspace.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile folder");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// A model store in a temporary folder holding SmolLM2 (hard-linked from
/// `models/`, or copied) and whatever else a test adds.
pub fn store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    add_model(&dir, SMOLLM2);
    dir
}

/// Links (or copies) `models/<rel>` into a test store.
pub fn add_model(store: &tempfile::TempDir, rel: &str) {
    let src = root().join("models").join(rel);
    assert!(
        src.is_file(),
        "{} is missing: run scripts/setup.sh",
        src.display()
    );
    let dest = store.path().join(rel);
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    // Never copy onto a file already there: it may be a hard link to the
    // shared model itself, which the copy would truncate.
    assert!(
        !dest.exists(),
        "{} is already in the test store (store() adds SmolLM2)",
        dest.display()
    );
    if std::fs::hard_link(&src, &dest).is_err() {
        std::fs::copy(&src, &dest).expect("copy model");
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// The supervisor process.
    pub child: Child,
    /// gRPC API address.
    pub api: SocketAddr,
    /// HTTP admin address.
    pub admin: SocketAddr,
    /// The OpenAI-compatible HTTP API's TCP address (`None`: disabled or
    /// on a Unix socket). Every sidecar started here binds it to a free
    /// port unless its config has an `[openai]` section of its own.
    pub openai: Option<SocketAddr>,
    /// Its model store.
    pub store: tempfile::TempDir,
    /// Where its stderr and stdout go ([`Sidecar::start_logged`]); `None`:
    /// stderr is the test's, stdout after the first line is dropped.
    pub log: Option<PathBuf>,
}

impl Sidecar {
    /// Starts `sidecar` with `config` (TOML; `listen`, `admin_listen` and
    /// `model_store` are set here) and waits until it listens.
    pub fn start(store: tempfile::TempDir, config: &str) -> Sidecar {
        Self::launch(store, config, false)
    }

    /// [`Sidecar::start`], with its stderr and every stdout line after the
    /// first written to `sidecar.log` next to the store (read it with
    /// [`Sidecar::log_text`]).
    pub fn start_logged(store: tempfile::TempDir, config: &str) -> Sidecar {
        Self::launch(store, config, true)
    }

    /// What the supervisor wrote to stderr and stdout so far
    /// ([`Sidecar::start_logged`] only).
    pub fn log_text(&self) -> String {
        let path = self.log.as_ref().expect("started with start_logged");
        String::from_utf8_lossy(&std::fs::read(path).expect("read the log")).into_owned()
    }

    fn launch(store: tempfile::TempDir, config: &str, logged: bool) -> Sidecar {
        // The control socket's directory must be ours with mode 0700.
        std::fs::set_permissions(
            store.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod 0700 the store");
        let file = store.path().join("sidecar.toml");
        // Never the default 127.0.0.1:8080: tests run side by side.
        let openai = if config.contains("[openai]") {
            ""
        } else {
            "\n[openai]\naddress = \"127.0.0.1:0\"\n"
        };
        let full = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodel_store = \"{}\"\ncontrol_socket = \"{}\"\nlite_runtime = \"{}\"\n{config}{openai}",
            store.path().display(),
            store.path().join("control.sock").display(),
            root().join("runtime/litert/libLiteRt.so").display()
        );
        std::fs::write(&file, full).expect("write config");
        // Next to the store, not in it: the log is no file of the store.
        let log = logged.then(|| {
            let name = store.path().file_name().expect("store name").to_owned();
            store
                .path()
                .with_file_name(format!("{}.log", name.to_string_lossy()))
        });
        let stderr = match &log {
            // Both streams append, so neither writes over the other.
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(path)
                    .and_then(|_| std::fs::OpenOptions::new().append(true).open(path))
                    .expect("create the log"),
            ),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(binary("sidecar"))
            .arg("--config")
            .arg(&file)
            .env("SIDECAR_LOG", "info,worker=warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start sidecar");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let rest = log.as_ref().map(|p| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .expect("open the log")
        });
        std::thread::spawn(move || {
            use std::io::Write;
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            let mut rest = rest;
            for line in lines.map_while(Result::ok) {
                if let Some(f) = rest.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sidecar printed its addresses");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        let openai = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("openai="))
            .and_then(|a| a.parse().ok());
        Sidecar {
            api: field("api="),
            admin: field("admin="),
            openai,
            child,
            store,
            log,
        }
    }

    /// A channel to the API port.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.api))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the API")
    }

    /// A TextService client.
    pub async fn text(&self) -> TextServiceClient<Channel> {
        TextServiceClient::new(self.channel().await)
    }

    /// An AdminService client over the control socket.
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        let channel = supervisor::ctl::connect(&self.store.path().join("control.sock"))
            .await
            .expect("connect to the control socket");
        AdminServiceClient::new(channel)
    }

    /// Runs `sidecarctl` against this sidecar's control socket: (exit
    /// code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(binary("sidecarctl"))
            .arg("--socket")
            .arg(self.store.path().join("control.sock"))
            .args(args)
            .output()
            .expect("run sidecarctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A ModelService client over the control socket: what changes the
    /// catalog or the store (LoadModel, UnloadModel, PutFile, DeleteFile)
    /// is refused on the network API without a tokens file.
    pub async fn manage(&self) -> ModelServiceClient<Channel> {
        let channel = supervisor::ctl::connect(&self.store.path().join("control.sock"))
            .await
            .expect("connect to the control socket");
        ModelServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// A ModelService client on the API port.
    pub async fn models(&self) -> ModelServiceClient<Channel> {
        ModelServiceClient::new(self.channel().await)
    }

    /// GetModel, over the control socket (so it works whatever the API's
    /// tokens).
    pub async fn model(&self, id: &str) -> ModelInfo {
        self.manage()
            .await
            .get_model(GetModelRequest {
                model_id: id.into(),
            })
            .await
            .expect("GetModel")
            .into_inner()
    }

    /// Waits until `check` holds for the model, or panics after `limit`.
    pub async fn eventually(
        &self,
        id: &str,
        limit: Duration,
        check: impl Fn(&ModelInfo) -> bool,
    ) -> ModelInfo {
        let start = Instant::now();
        loop {
            let m = self.model(id).await;
            if check(&m) {
                return m;
            }
            assert!(
                start.elapsed() < limit,
                "model {id} did not get there within {limit:?}: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the model is READY.
    pub async fn ready(&self, id: &str) -> ModelInfo {
        self.eventually(id, Duration::from_secs(60), |m| {
            m.state == ModelState::Ready as i32
        })
        .await
    }

    /// The value of the `/metrics` line that starts with `head` (0 when
    /// absent).
    pub fn metric(&self, head: &str) -> u64 {
        let (code, body) = self.admin_get("/metrics");
        assert_eq!(code, 200);
        body.lines()
            .find(|l| l.starts_with(head))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// HTTP GET on the admin port: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.admin).expect("admin connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    /// Sends a signal to the supervisor.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("signal sidecar");
    }
}

impl Drop for Sidecar {
    /// SIGTERM, then waits for the exit (SIGKILL after 15 s). The wait
    /// leaves the runtime's other thread free, so that the test's gRPC
    /// connections can answer the server's graceful shutdown at once.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGTERM);
            let child = &mut self.child;
            let mut wait = move || {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(15) {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            };
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
                _ => wait(),
            }
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// CPU seconds (user + system, all threads) a process has used so far;
/// `None` when it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(ticks / hz as f64)
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal");
}

/// The default config for one SmolLM2 model with one thread (tests share
/// 2 cores).
pub fn smollm2_config(extra_model_keys: &str) -> String {
    format!(
        "[[models]]\nid = \"smollm2\"\nfamily = \"text\"\npath = \"{SMOLLM2}\"\ntext = {{ context_size = 1024, threads = 1 }}\n{extra_model_keys}\n"
    )
}

/// Config for the MiniLM embedding model, one thread.
pub fn minilm_config(extra_model_keys: &str) -> String {
    format!(
        "[[models]]\nid = \"minilm\"\nfamily = \"text\"\npath = \"{MINILM}\"\ntext = {{ threads = 1 }}\n{extra_model_keys}\n"
    )
}

/// Config for a LITE model `id` at `path` (relative to the store), one
/// thread; the caller adds the file to the store with `add_model`.
pub fn lite_config(id: &str, path: &str, extra_model_keys: &str) -> String {
    format!(
        "[[models]]\nid = \"{id}\"\nfamily = \"lite\"\npath = \"{path}\"\nlite = {{ threads = 1 }}\n{extra_model_keys}\n"
    )
}

/// The deterministic input pattern of the LITE reference fixture, as
/// little-endian bytes: element i of a float tensor is
/// `((i * 7919) % 1000) / 500 - 1`.
pub fn float_pattern(elements: usize) -> Vec<u8> {
    (0..elements)
        .flat_map(|i| (((i * 7919) % 1000) as f32 / 500.0 - 1.0).to_le_bytes())
        .collect()
}

/// The same pattern for an int8 tensor: `(i * 31) % 256 - 128`.
pub fn int8_pattern(elements: usize) -> Vec<u8> {
    (0..elements)
        .map(|i| (((i * 31) % 256) as i32 - 128) as i8 as u8)
        .collect()
}

/// A greedy (temperature 0) request to `smollm2`.
pub fn greedy(prompt: &str, max_tokens: u32) -> sidecar_proto::v1::GenerateRequest {
    sidecar_proto::v1::GenerateRequest {
        model_id: "smollm2".into(),
        prompt: prompt.into(),
        max_tokens,
        sampling: Some(sidecar_proto::v1::SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Waits until process `pid` is gone, or panics after `limit` naming `what`.
pub async fn wait_gone(pid: u32, limit: Duration, what: &str) {
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < limit,
            "{what}: process {pid} still runs after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a token stream to its end; true when it ended with the final
/// message.
pub async fn finish_stream(
    stream: &mut tonic::Streaming<sidecar_proto::v1::GenerateStreamResponse>,
) -> bool {
    let mut done = false;
    while let Some(m) = stream.message().await.expect("the stream finishes cleanly") {
        done |= matches!(
            m.msg,
            Some(sidecar_proto::v1::generate_stream_response::Msg::Done(_))
        );
    }
    done
}

/// The sha256 of `data` in hex, by `sha256sum`.
pub fn sha256_hex(data: &[u8]) -> String {
    // sha256 via the system tool keeps the test independent of the
    // supervisor's own implementation.
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// PutFile's messages for `data` at `path`: the header (with `sha`), then
/// 64 KiB chunks, all of them or the first `cut_after`.
pub fn upload(
    path: &str,
    data: &[u8],
    sha: &str,
    overwrite: bool,
    cut_after: Option<usize>,
) -> Vec<PutFileRequest> {
    let mut msgs = vec![PutFileRequest {
        msg: Some(put_file_request::Msg::Header(PutFileHeader {
            path: path.into(),
            size_bytes: data.len() as u64,
            sha256: sha.into(),
            overwrite,
        })),
    }];
    let chunks: Vec<&[u8]> = data.chunks(64 << 10).collect();
    let n = cut_after.unwrap_or(chunks.len());
    for c in chunks.into_iter().take(n) {
        msgs.push(PutFileRequest {
            msg: Some(put_file_request::Msg::Chunk(c.to_vec().into())),
        });
    }
    msgs
}

/// A `/proc/PID/status` memory figure ("VmRSS", "VmHWM"), bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    procmem_field(&status, field).unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

fn procmem_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// A GGUF header the supervisor refuses: `llama.block_count` past any
/// model (the same refusal as `tests/hostile.rs`).
pub fn impossible_gguf() -> Vec<u8> {
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(2u64.to_le_bytes());
    let key = |f: &mut Vec<u8>, k: &str, typ: u32| {
        f.extend((k.len() as u64).to_le_bytes());
        f.extend(k.as_bytes());
        f.extend(typ.to_le_bytes());
    };
    key(&mut f, "general.architecture", 8);
    f.extend(5u64.to_le_bytes());
    f.extend(b"llama");
    key(&mut f, "llama.block_count", 10);
    f.extend(u64::MAX.to_le_bytes());
    f
}
