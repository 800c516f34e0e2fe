//! The worker's side of the protocol: hello, load, then one call at a
//! time (LiteRT runs one inference at a time per compiled model). Infer
//! inputs go from the frame straight into LiteRT's input buffers, outputs
//! from LiteRT's output buffers straight into the answer frame.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipc::{BlockingChannel, Flags, Kind};
use prost::Message;
use sidecar_proto::v1::{Accelerator, LiteModelInfo, LiteOptions, ModelFamily};
use sidecar_proto::worker::{
    Heartbeat, Hello, Load, Loaded, WorkerResponse, worker_request, worker_response,
};

use crate::error::{CallError, Code};
use crate::litert::{Compiled, HW_CPU, HW_GPU, Runtime};
use crate::tensor::{check_servable, dtype_of, info, match_inputs};
use crate::wire::{self, Answer, InferRef, OutputHead, Request, Timings};

/// Heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Most input sets of one InferBatch.
const MAX_SETS: usize = 256;
/// Environment variable naming `libLiteRt.so` (the supervisor sets it).
pub const RUNTIME_ENV: &str = "SIDECAR_LITERT_LIB";

/// The model being served.
struct Served {
    model_id: String,
    compiled: Compiled,
    accelerator: &'static str,
}

/// Serves the channel until the supervisor goes away.
pub fn serve(chan: Arc<BlockingChannel>) -> Result<(), CallError> {
    send_hello(&chan)?;
    let in_flight = Arc::new(AtomicU32::new(0));
    start_heartbeats(chan.clone(), in_flight.clone());
    let mut served: Option<Served> = None;
    loop {
        let frame = match chan.recv() {
            Ok(f) => f,
            Err(ipc::Error::PeerGone) => gone(),
            Err(e) => return Err(e.into()),
        };
        let (id, kind) = (frame.request_id(), frame.kind());
        if kind != Kind::Request {
            continue;
        }
        let arrived = Instant::now();
        let request_id = wire::request_tag(frame.payload());
        in_flight.store(1, Ordering::Relaxed);
        // An Infer call is worked on while its frame is held: the tensor
        // bytes are read in place.
        let outcome = match wire::parse(frame.payload()) {
            Ok(Request::Infer(call, deadline)) => match served.as_mut() {
                Some(s) => infer(&chan, id, s, &call, deadline, arrived),
                None => Err(not_loaded()),
            },
            Ok(Request::Other(req)) => match req.body {
                Some(worker_request::Body::Load(load)) => load_model(&load).map(|s| {
                    let body = loaded(&s, arrived);
                    served = Some(s);
                    body
                }),
                Some(worker_request::Body::LiteInfo(_)) => match &served {
                    Some(s) => Ok(Some(worker_response::Body::LiteInfo(model_info(s)))),
                    None => Err(not_loaded()),
                },
                Some(_) => Err(CallError::new(
                    Code::Unimplemented,
                    "this call is not served by worker-lite",
                )),
                None => Err(CallError::invalid("empty request")),
            },
            Err(e) => Err(e),
        };
        drop(frame);
        in_flight.store(0, Ordering::Relaxed);
        let sent = match outcome {
            Ok(None) => Ok(()),
            Ok(Some(body)) => {
                let r = WorkerResponse {
                    body: Some(body),
                    ..Default::default()
                };
                chan.send(id, Kind::Response, Flags::END, &r.encode_to_vec())
            }
            Err(e) => {
                tracing::info!(request = id, request_id, code = ?e.code, "request failed: {}", e.message);
                chan.send(id, Kind::Error, Flags::END, &e.to_proto().encode_to_vec())
            }
        };
        match sent {
            Ok(()) => {}
            Err(ipc::Error::PeerGone) => gone(),
            Err(e) => return Err(e.into()),
        }
    }
}

fn gone() -> ! {
    tracing::info!("supervisor gone; exiting");
    std::process::exit(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn not_loaded() -> CallError {
    CallError::new(Code::FailedPrecondition, "no model loaded")
}

fn check_deadline(deadline_ms: i64) -> Result<(), CallError> {
    if deadline_ms > 0 && now_ms() >= deadline_ms {
        return Err(CallError::new(
            Code::DeadlineExceeded,
            "deadline passed in the worker",
        ));
    }
    Ok(())
}

/// Runs an Infer / InferBatch call and sends its answer (Ok(None)).
fn infer(
    chan: &BlockingChannel,
    id: u64,
    s: &mut Served,
    call: &InferRef<'_>,
    deadline_ms: i64,
    arrived: Instant,
) -> Result<Option<worker_response::Body>, CallError> {
    if call.batch && (call.sets.is_empty() || call.sets.len() > MAX_SETS) {
        return Err(CallError::invalid(format!(
            "sets holds {} input sets; 1..{MAX_SETS} are allowed",
            call.sets.len()
        )));
    }
    let wanted = wanted_outputs(&s.compiled, &call.outputs)?;
    // Validate every set before running any.
    let mut matched = Vec::with_capacity(call.sets.len());
    for (k, set) in call.sets.iter().enumerate() {
        let at = if call.batch {
            format!("sets[{k}].")
        } else {
            String::new()
        };
        matched.push(match_inputs(&s.compiled.input_desc, set, &at)?);
    }
    check_deadline(deadline_ms)?;
    let queued = arrived.elapsed();
    let mut invoke = Duration::ZERO;
    // A batch keeps each set's outputs; a single call reads them from
    // LiteRT's buffers while writing the answer.
    let mut kept: Vec<Vec<Vec<u8>>> = Vec::new();
    for inputs in &matched {
        check_deadline(deadline_ms)?;
        for (i, input) in inputs.iter().enumerate() {
            s.compiled
                .write_input(i, |buf| buf.copy_from_slice(input.data))?;
        }
        let started = Instant::now();
        s.compiled.run()?;
        invoke += started.elapsed();
        if call.batch {
            let mut outs = Vec::with_capacity(wanted.len());
            for &i in &wanted {
                outs.push(s.compiled.read_output(i, <[u8]>::to_vec)?);
            }
            kept.push(outs);
        }
    }
    let heads: Vec<OutputHead<'_>> = wanted
        .iter()
        .map(|&i| {
            let d = &s.compiled.output_desc[i];
            let len = s.compiled.output_bytes(i)?;
            Ok(OutputHead {
                name: &d.name,
                dtype: dtype_of(d.element_type).map_or(0, |t| t.0 as i32),
                shape: d.shape.iter().map(|&x| i64::from(x)).collect(),
                len,
            })
        })
        .collect::<Result<_, CallError>>()?;
    let answer = Answer {
        sets: vec![heads; call.sets.len()],
        timings: Timings {
            queue_us: queued.as_micros() as u64,
            invoke_us: invoke.as_micros() as u64,
            total_us: arrived.elapsed().as_micros() as u64,
        },
        batch: call.batch,
    };
    let compiled = &s.compiled;
    let mut failed = None;
    let sent = chan.send_with(id, Kind::Response, Flags::END, answer.len(), |buf| {
        answer.write(buf, |set, i, out| {
            if let Some(outs) = kept.get(set) {
                out.copy_from_slice(&outs[i]);
            } else if let Err(e) = compiled.read_output(wanted[i], |b| out.copy_from_slice(b)) {
                failed = Some(e);
            }
        })
    });
    match sent {
        Err(ipc::Error::PeerGone) => gone(),
        Err(e) => Err(e.into()),
        Ok(()) => match failed {
            // The frame is out already; the failure is logged.
            Some(e) => {
                tracing::error!(
                    request = id,
                    "reading an output failed after the answer: {e}"
                );
                Ok(None)
            }
            None => Ok(None),
        },
    }
}

/// Indices of the outputs asked for, in model order (all when none named).
fn wanted_outputs(c: &Compiled, names: &[&str]) -> Result<Vec<usize>, CallError> {
    for n in names {
        if !c.output_desc.iter().any(|d| d.name == *n) {
            let all: Vec<&str> = c.output_desc.iter().map(|d| d.name.as_str()).collect();
            return Err(CallError::invalid(format!(
                "outputs: unknown tensor {n:?}; the model's outputs are {all:?}"
            )));
        }
    }
    Ok((0..c.output_desc.len())
        .filter(|&i| names.is_empty() || names.contains(&c.output_desc[i].name.as_str()))
        .collect())
}

/// Where `libLiteRt.so` is: the supervisor's setting, else next to the
/// worker binary's `runtime/litert/`.
fn runtime_path() -> PathBuf {
    std::env::var_os(RUNTIME_ENV).map_or_else(
        || PathBuf::from("runtime/litert/libLiteRt.so"),
        PathBuf::from,
    )
}

/// Runs `f` with the process's stderr captured (LiteRT reports why a load
/// failed only in its log), then copies what it wrote to the real stderr.
fn with_captured_stderr<T>(f: impl FnOnce() -> T) -> (T, String) {
    let capture = || -> nix::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        let saved = nix::unistd::dup(std::io::stderr())?;
        let mem =
            nix::sys::memfd::memfd_create(c"litert-log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::dup2_stderr(&mem)?;
        Ok((saved, mem))
    };
    let Ok((saved, mem)) = capture() else {
        return (f(), String::new());
    };
    let out = f();
    let _ = nix::unistd::dup2_stderr(&saved);
    let mut file = std::fs::File::from(mem);
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    let _ = std::io::stderr().write_all(text.as_bytes());
    (out, text)
}

/// The runtime's error lines, for a failed load's message.
fn reason(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::trim)
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(" ({})", lines.join("; "))
    }
}

fn load_model(load: &Load) -> Result<Served, CallError> {
    let options = match &load.options {
        Some(sidecar_proto::worker::load::Options::Lite(o)) => *o,
        _ => LiteOptions::default(),
    };
    let lib = runtime_path();
    if !lib.is_file() {
        return Err(CallError::new(
            Code::FailedPrecondition,
            format!(
                "the LiteRT runtime {} is missing (run scripts/setup.sh)",
                lib.display()
            ),
        ));
    }
    let gpu = matches!(
        Accelerator::try_from(options.accelerator),
        Ok(Accelerator::Gpu)
    );
    let gpu_plugin = gpu_accelerator(&lib);
    let (hw, accelerator) = match (gpu, gpu_plugin.is_some(), options.allow_fallback) {
        (false, _, _) => (HW_CPU, "cpu"),
        (true, true, _) => (HW_GPU, "gpu"),
        (true, false, true) => {
            tracing::warn!("no LiteRT GPU accelerator on this host; running on the CPU as allowed");
            (HW_CPU, "cpu")
        }
        (true, false, false) => {
            return Err(CallError::new(
                Code::FailedPrecondition,
                format!(
                    "accelerator GPU: no LiteRT GPU accelerator next to {} on this host; load with accelerator CPU, or set allow_fallback",
                    lib.display()
                ),
            ));
        }
    };
    let threads = options.threads.max(1);
    let path = Path::new(&load.path);
    tracing::info!(model = %load.model_id, path = %load.path, threads, accelerator, "loading");
    // Everything LiteRT does at load time (read, compile, the first run
    // that allocates the tensors) reports its reasons only in its log.
    let (compiled, log) = with_captured_stderr(|| -> Result<Compiled, CallError> {
        let rt = Runtime::load(&lib)?;
        let mut compiled = rt.model(path)?.compile(hw, threads)?;
        for d in &compiled.input_desc {
            check_servable(d, "input").map_err(CallError::invalid)?;
        }
        for d in &compiled.output_desc {
            check_servable(d, "output").map_err(CallError::invalid)?;
        }
        warm_up(&mut compiled)?;
        Ok(compiled)
    });
    let compiled = compiled.map_err(|e| {
        let code = match e.code {
            _ if gpu => Code::FailedPrecondition,
            Code::InvalidArgument => Code::InvalidArgument,
            _ => Code::Unavailable,
        };
        CallError::new(
            code,
            format!(
                "LiteRT could not load {}: {}{}",
                load.path,
                e.message,
                reason(&log)
            ),
        )
    })?;
    Ok(Served {
        model_id: load.model_id.clone(),
        compiled,
        accelerator,
    })
}

/// A GPU accelerator library shipped next to `libLiteRt.so`, if any.
fn gpu_accelerator(lib: &Path) -> Option<PathBuf> {
    let dir = lib.parent()?;
    [
        "libLiteRtGpuAccelerator.so",
        "libLiteRtWebGpuAccelerator.so",
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

/// One inference on zeros, so that READY means the model has run once
/// (LiteRT allocates the tensors, and finds missing ops, on the first run).
fn warm_up(c: &mut Compiled) -> Result<(), CallError> {
    for i in 0..c.input_desc.len() {
        c.write_input(i, |b| b.fill(0))?;
    }
    c.run().map_err(|e| {
        CallError::new(
            Code::Unavailable,
            format!("the model failed its first run: {e}"),
        )
    })
}

fn model_info(s: &Served) -> LiteModelInfo {
    LiteModelInfo {
        model_id: s.model_id.clone(),
        inputs: s.compiled.input_desc.iter().map(info).collect(),
        outputs: s.compiled.output_desc.iter().map(info).collect(),
        signature: s.compiled.signature.clone(),
        accelerator: s.accelerator.into(),
    }
}

fn loaded(s: &Served, started: Instant) -> Option<worker_response::Body> {
    Some(worker_response::Body::Loaded(Loaded {
        text: None,
        lite: Some(model_info(s)),
        memory: Some(crate::memory::report()),
        load_us: started.elapsed().as_micros() as u64,
    }))
}

fn send_hello(chan: &BlockingChannel) -> Result<(), CallError> {
    let hello = Hello {
        protocol_version: sidecar_proto::WORKER_PROTOCOL_VERSION,
        family: ModelFamily::Lite as i32,
        worker_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        capabilities: vec!["infer".into(), "infer_batch".into(), "model_info".into()],
        memory: Some(crate::memory::report()),
    };
    chan.send(0, Kind::Hello, Flags::NONE, &hello.encode_to_vec())
        .map_err(CallError::from)
}

/// Starts the heartbeat thread: memory, requests in flight, uptime
/// (`worker-vision` uses it too).
pub fn start_heartbeats(chan: Arc<BlockingChannel>, in_flight: Arc<AtomicU32>) {
    let started = Instant::now();
    let beats = ipc::spawn_heartbeats(chan, HEARTBEAT, move |seq| {
        Heartbeat {
            seq,
            memory: Some(crate::memory::report()),
            in_flight: in_flight.load(Ordering::Relaxed),
            uptime_ms: started.elapsed().as_millis() as u64,
            tokens_generated: 0,
        }
        .encode_to_vec()
    });
    if let Err(e) = beats {
        tracing::error!("cannot start the heartbeat thread: {e}");
    }
}
