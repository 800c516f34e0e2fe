//! A worker binary driven without the supervisor: this test plays the
//! supervisor on a real channel (`ipc::create`, `Ends::spawn_with_files`,
//! `AsyncChannel`), hands the model's descriptor over as the supervisor
//! does, passes region descriptors with `AsyncChannel::send_fd`, and
//! sends `WorkerRequest`s. The worker enters its full sandbox (seccomp in
//! enforce mode: a call off the allow-list kills it with SIGSYS).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ipc::{AsyncChannel, ChannelConfig, Flags, Kind, ResponseStream};
use nix::sys::memfd::{MFdFlags, memfd_create};
use prost::Message;
use sidecar_proto::v1::{ModelFamily, SharedMemoryRef};
use sidecar_proto::worker::{
    Hello, Load, RegionUse, WorkerRequest, WorkerResponse, load, worker_request, worker_response,
};

/// A worker process and its channel.
pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) chan: AsyncChannel,
    pub(crate) pid: u32,
    _model: File,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An error answer: (gRPC code, message).
pub(crate) type Failure = (u32, String);

impl Worker {
    /// Starts `binary` with credit windows of `window` frames and loads
    /// `model` (relative to `models/`) with `options`.
    pub(crate) async fn start(
        binary: &str,
        family: ModelFamily,
        model: &str,
        options: load::Options,
        window: u32,
    ) -> Worker {
        let mut config = ChannelConfig::with_ring_bytes(16 << 20);
        config.credit_window = window;
        let (mine, theirs) = ipc::create(config).expect("channel");
        let path = e2e::root().join("models").join(model);
        let file = File::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
        let lib = e2e::root()
            .join("runtime/litert/libLiteRt.so")
            .canonicalize()
            .expect("runtime/litert/libLiteRt.so (run scripts/setup.sh)");
        let mut cmd = Command::new(e2e::binary(binary));
        cmd.env("SIDECAR_WORKER_SECCOMP", "enforce")
            .env("SIDECAR_LITERT_LIB", lib)
            .stdin(Stdio::null());
        let child = theirs
            .spawn_with_files(&mut cmd, Some(libc::SIGKILL), &[file.as_fd()])
            .expect("spawn the worker");
        let pid = child.id();
        let chan = AsyncChannel::new(mine).expect("supervisor end");
        let hello = tokio::time::timeout(Duration::from_secs(30), chan.recv_control())
            .await
            .expect("hello in time")
            .expect("hello");
        assert_eq!(hello.kind, Kind::Hello);
        let hello = Hello::decode(&hello.payload[..]).expect("hello");
        assert_eq!(
            hello.protocol_version,
            sidecar_proto::WORKER_PROTOCOL_VERSION
        );
        assert_eq!(hello.family, family as i32);
        let sandbox = hello.sandbox.expect("a sandbox report");
        assert!(
            sandbox
                .applied
                .iter()
                .any(|a| a.starts_with("seccomp: the")),
            "seccomp must be in force for this test: {sandbox:?}"
        );
        let w = Worker {
            child,
            chan,
            pid,
            _model: file,
        };
        let req = WorkerRequest {
            body: Some(worker_request::Body::Load(Load {
                path: format!("/proc/self/fd/{}", w._model.as_raw_fd()),
                name: model.into(),
                family: family as i32,
                model_id: "m".into(),
                options: Some(options),
            })),
            ..Default::default()
        };
        match w.ask(&req).await {
            Ok(worker_response::Body::Loaded(_)) => {}
            other => panic!("load: {other:?}"),
        }
        w
    }

    /// A unary call: its one answer's body, or its error.
    pub(crate) async fn ask(&self, req: &WorkerRequest) -> Result<worker_response::Body, Failure> {
        let mut s = self.chan.request(&req.encode_to_vec()).await.expect("send");
        let f = tokio::time::timeout(Duration::from_secs(60), s.next())
            .await
            .expect("an answer in time")
            .expect("a frame")
            .expect("the channel");
        assert!(f.flags.is_end(), "one frame");
        answer(f.kind, &f.payload)
    }

    /// Opens a stream request (its frames follow on the same id).
    pub(crate) async fn open(&self, req: &WorkerRequest) -> ResponseStream {
        self.chan.request(&req.encode_to_vec()).await.expect("send")
    }

    /// The worker is the same live process (never killed by a signal).
    pub(crate) fn alive(&mut self) {
        assert!(
            self.child.try_wait().expect("wait").is_none(),
            "the worker {} exited: {:?}",
            self.pid,
            self.child.try_wait()
        );
        assert!(e2e::alive(self.pid), "worker {} is alive", self.pid);
    }
}

/// Sends a stream's next frame.
pub(crate) async fn send_more(s: &ResponseStream, req: &WorkerRequest) {
    s.send(Kind::Request, Flags::NONE, &req.encode_to_vec())
        .await
        .expect("send a frame");
}

/// The next answer of a stream (None after its END).
pub(crate) async fn next_answer(
    s: &mut ResponseStream,
) -> Option<(Flags, Result<WorkerResponse, Failure>)> {
    let f = tokio::time::timeout(Duration::from_secs(60), s.next())
        .await
        .expect("in time")?;
    let f = f.expect("the channel");
    let r = match f.kind {
        Kind::Response => Ok(WorkerResponse::decode(&f.payload[..]).expect("a response")),
        _ => answer(f.kind, &f.payload).map(|_| unreachable!()),
    };
    Some((f.flags, r))
}

fn answer(kind: Kind, payload: &[u8]) -> Result<worker_response::Body, Failure> {
    match kind {
        Kind::Response => Ok(WorkerResponse::decode(payload)
            .expect("a response")
            .body
            .expect("a body")),
        Kind::Error => {
            let e = sidecar_proto::worker::WorkerError::decode(payload).expect("an error");
            Err((e.code, e.message))
        }
        k => panic!("answered with a {k:?} frame"),
    }
}

/// A shared-memory object (memfd) of `len` bytes of zeros.
pub(crate) fn object(len: u64) -> OwnedFd {
    let fd = memfd_create("worker-regions", MFdFlags::MFD_CLOEXEC).expect("memfd");
    nix::unistd::ftruncate(&fd, len as i64).expect("size");
    fd
}

pub(crate) fn put(fd: &OwnedFd, at: u64, bytes: &[u8]) {
    File::from(fd.try_clone().expect("dup"))
        .write_all_at(bytes, at)
        .expect("write");
}

pub(crate) fn get(fd: &OwnedFd, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    File::from(fd.try_clone().expect("dup"))
        .read_exact_at(&mut b, at)
        .expect("read");
    b
}

pub(crate) fn region(
    name: &str,
    id: u64,
    byte_size: u64,
    writable: bool,
    attach: bool,
) -> RegionUse {
    RegionUse {
        name: name.into(),
        id,
        offset: 0,
        byte_size,
        writable,
        attach,
    }
}

pub(crate) fn at(region: &str, offset: u64, byte_size: u64) -> SharedMemoryRef {
    SharedMemoryRef {
        region: region.into(),
        offset,
        byte_size,
    }
}

/// 1280x720 RGB8: astronaut.png (with a face) scaled to 1280x1280 and its
/// top 720 rows kept (the face within), made by ffmpeg.
pub(crate) fn astronaut_1280x720_rgb() -> Vec<u8> {
    let rgb = astronaut_1280x720("rgb24");
    assert_eq!(rgb.len(), 1280 * 720 * 3);
    rgb
}

/// The same picture in ffmpeg's `pix_fmt`.
pub(crate) fn astronaut_1280x720(pix_fmt: &str) -> Vec<u8> {
    let png = e2e::root().join("models/testdata/astronaut.png");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(&png)
        .args(["-vf", "scale=1280:1280,crop=1280:720:0:0", "-f", "rawvideo"])
        .args(["-pix_fmt", pix_fmt, "-"])
        .output()
        .expect("ffmpeg (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A request of `body` naming `regions`.
pub(crate) fn call(body: worker_request::Body, regions: Vec<RegionUse>) -> WorkerRequest {
    WorkerRequest {
        regions,
        body: Some(body),
        ..Default::default()
    }
}
