//! A worker's serve loop and a stand-in supervisor in one process, over a
//! real channel: how each worker binary runs standalone for debugging
//! (`worker-text --model m.gguf --prompt "..."`) with the very code that
//! serves the supervisor. Payloads stay opaque bytes here; the worker
//! runtime's standalone driver (`worker_runtime::standalone`) encodes the
//! requests and decodes the answers.

use std::sync::Arc;

use crate::{AsyncChannel, BlockingChannel, ChannelConfig, Error, Frame, Kind, Result};

/// The stand-in supervisor's end. It is never closed: a worker exits its
/// process (with status 0) when its supervisor goes away, and the
/// standalone run must end with its own exit status instead.
#[derive(Debug)]
pub struct Session {
    rt: std::mem::ManuallyDrop<tokio::runtime::Runtime>,
    chan: std::mem::ManuallyDrop<AsyncChannel>,
    /// The worker's HELLO payload.
    pub hello: Vec<u8>,
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}

impl Session {
    /// Runs `serve` on a thread with the worker's end of a new channel
    /// and waits for its HELLO.
    pub fn start(
        ring_bytes: usize,
        serve: impl FnOnce(Arc<BlockingChannel>) + Send + 'static,
    ) -> Result<Session> {
        let (supervisor_end, worker_end) =
            crate::create(ChannelConfig::with_ring_bytes(ring_bytes))?;
        let worker = Arc::new(BlockingChannel::new(worker_end)?);
        std::thread::Builder::new()
            .name("serve".into())
            .spawn(move || serve(worker))
            .map_err(io("spawn the serve thread"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("start a runtime"))?;
        let (chan, hello) = rt.block_on(async move {
            let chan = AsyncChannel::new(supervisor_end)?;
            let hello = chan.recv_control().await?;
            if hello.kind != Kind::Hello {
                return Err(Error::Config(format!(
                    "expected the worker's HELLO, got {:?}",
                    hello.kind
                )));
            }
            Ok((chan, hello.payload.to_vec()))
        })?;
        Ok(Session {
            rt: std::mem::ManuallyDrop::new(rt),
            chan: std::mem::ManuallyDrop::new(chan),
            hello,
        })
    }

    /// Sends one request and hands each answer frame to `answer` as it
    /// comes, up to the request's last.
    pub fn call(&self, request: &[u8], mut answer: impl FnMut(&Frame)) -> Result<()> {
        self.rt.block_on(async {
            let mut answers = self.chan.request(request).await?;
            while let Some(frame) = answers.next().await {
                answer(&frame?);
            }
            Ok(())
        })
    }
}
