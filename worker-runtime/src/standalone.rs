//! The driver of a worker's standalone mode (`worker-text --model m.gguf
//! --prompt ...`, for debugging a model from `kubectl exec`): the family's
//! own serve loop on a thread over a real in-process channel
//! (`ipc::loopback`), and the requests a stand-in supervisor sends it.
//! Each worker's `standalone` module parses its flags and prints answers.

use std::str::FromStr;

use ipc::loopback::Session;
use prost::Message;
use sidecar_proto::worker::{
    WorkerError, WorkerRequest, WorkerResponse, worker_request, worker_response,
};

use crate::family::Family;
use crate::serve::serve;

/// One `--flag value` pair of a standalone command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag<'a> {
    /// The flag as given ("--model").
    pub name: &'a str,
    value: Option<&'a str>,
}

impl<'a> Flag<'a> {
    /// Its value; "--model needs a value" when the command line ends first.
    pub fn value(&self) -> Result<&'a str, String> {
        self.value
            .ok_or_else(|| format!("{} needs a value", self.name))
    }

    /// Its value as a number; "--threads: not a number" when it is not.
    pub fn number<T: FromStr>(&self) -> Result<T, String> {
        self.value()?
            .parse()
            .map_err(|_| format!("{}: not a number", self.name))
    }

    /// The error for a flag the worker does not know.
    pub fn unknown(&self) -> String {
        format!("unknown argument {:?}", self.name)
    }
}

/// A standalone command line (without the program name) as flags, each
/// followed by its value.
pub fn flags(args: &[String]) -> impl Iterator<Item = Flag<'_>> {
    args.chunks(2).map(|pair| Flag {
        name: &pair[0],
        value: pair.get(1).map(String::as_str),
    })
}

/// The in-process channel's rings: room for a large image or tensor set.
pub const RING_BYTES: usize = 64 << 20;

/// The request tag standalone requests carry in the worker's log lines.
pub const TAG: &str = "standalone";

/// Starts `make()`'s serve loop on a thread and waits for its HELLO. A
/// loop that ends in an error prints it after `name` ("worker-text: ...").
pub fn start<F: Family + 'static>(
    name: &'static str,
    make: impl FnOnce() -> F + Send + 'static,
) -> Result<Session, String> {
    Session::start(RING_BYTES, move |chan| {
        if let Err(e) = serve(chan, make()) {
            eprintln!("{name}: {e}");
        }
    })
    .map_err(|e| e.to_string())
}

/// A request frame's payload (tagged "standalone" in the logs, no deadline).
pub fn request(body: worker_request::Body) -> Vec<u8> {
    WorkerRequest {
        request_tag: TAG.into(),
        cache_partition: String::new(),
        regions: Vec::new(),
        deadline_unix_ms: 0,
        body: Some(body),
    }
    .encode_to_vec()
}

/// Sends one request and hands each answer's body to `each` as it comes;
/// `Err` says what failed: the worker's error (with its gRPC code), an
/// undecodable answer, or the channel.
pub fn stream(
    session: &Session,
    req: &[u8],
    mut each: impl FnMut(Option<worker_response::Body>),
) -> Result<(), String> {
    let mut failed = None;
    session
        .call(req, |frame| match frame.kind {
            ipc::Kind::Response => match WorkerResponse::decode(frame.payload.clone()) {
                Ok(r) => each(r.body),
                Err(e) => failed = Some(format!("undecodable answer: {e}")),
            },
            ipc::Kind::Error => {
                failed = Some(match WorkerError::decode(frame.payload.clone()) {
                    Ok(e) => format!("error (gRPC code {}): {}", e.code, e.message),
                    Err(e) => format!("undecodable error: {e}"),
                });
            }
            _ => {}
        })
        .map_err(|e| e.to_string())?;
    failed.map_or(Ok(()), Err)
}

/// Sends one request; its last answer's body, or what failed.
pub fn exchange(session: &Session, req: &[u8]) -> Result<Option<worker_response::Body>, String> {
    let mut last = None;
    stream(session, req, |body| last = Some(body))?;
    last.ok_or_else(|| "no answer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_come_in_pairs_and_name_what_is_wrong() {
        let args = ["--model", "m.gguf", "--threads", "x", "--bogus"].map(String::from);
        let f: Vec<Flag<'_>> = flags(&args).collect();
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].name, f[0].value()), ("--model", Ok("m.gguf")));
        assert_eq!(f[1].number::<u32>(), Err("--threads: not a number".into()));
        assert_eq!(f[2].value(), Err("--bogus needs a value".into()));
        assert_eq!(f[2].unknown(), "unknown argument \"--bogus\"");
        let n = ["--max-tokens", "32"].map(String::from);
        assert_eq!(flags(&n).next().map(|f| f.number::<u32>()), Some(Ok(32)));
        assert_eq!(flags(&[]).count(), 0);
    }
}
