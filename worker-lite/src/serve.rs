//! The LITE family in the runtime's serve loop: one call at a time
//! (LiteRT runs one inference at a time per compiled model). An Infer
//! frame is read in place (`wire::parse`) while the loop holds it: its
//! inputs go from the frame straight into LiteRT's input buffers, its
//! outputs from LiteRT's output buffers straight into the answer frame
//! (`send_with`). Hello, heartbeats and the loop itself are
//! `worker_runtime`'s.
//!
//! A batch's cost is bounded before any work: at most [`MAX_SETS`] input
//! sets, every set checked, and the answer's size (known from the
//! compiled model's output buffers) checked against the response ring's
//! frame limit. While it runs, the deadline and the supervisor's CANCEL
//! are checked before every invoke (`Context::check_interrupted`), so a
//! batch past its deadline answers DEADLINE_EXCEEDED, and a cancelled one
//! CANCELLED, one invoke later: its worker is never killed for it.

use std::time::{Duration, Instant};

use ipc::{Flags, Kind, Received};
use litert::Compiled;
use sidecar_proto::v1::{LiteModelInfo, ModelFamily, SharedMemoryRef};
use sidecar_proto::worker::{Load, Loaded, worker_request, worker_response};
use worker_runtime::{Call, Code, Context, Family, Read, Resolved, WorkerError, not_loaded};

use crate::load::{Served, lite_error, load_model};
use crate::tensor::{dtype_of, info, match_inputs};
use crate::wire::{self, Answer, InferRef, OutputHead, Placement, Request, Timings};

/// Most input sets of one InferBatch.
pub const MAX_SETS: usize = 256;

/// A LITE worker: the model it serves, once loaded.
#[derive(Debug, Default)]
pub struct Lite {
    served: Option<Served>,
}

impl Family for Lite {
    const FAMILY: ModelFamily = ModelFamily::Lite;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [&'static str] = &["infer", "infer_batch", "model_info"];

    fn load(&mut self, load: &Load) -> Result<Loaded, WorkerError> {
        let served = load_model(load)?;
        let info = model_info(&served);
        self.served = Some(served);
        Ok(Loaded {
            lite: Some(info),
            ..Default::default()
        })
    }

    /// An Infer call is worked on while its frame is held: the tensor
    /// bytes are read in place, and the answer is written into the ring.
    fn read(&mut self, cx: &mut Context, frame: Received<'_>) -> Result<Read, WorkerError> {
        let arrived = Instant::now();
        match wire::parse(frame.payload())? {
            Request::Infer(call, deadline_ms) => {
                let s = self.served.as_mut().ok_or_else(not_loaded)?;
                infer(cx, frame.request_id(), s, &call, deadline_ms, arrived)?;
                Ok(Read::Answered)
            }
            Request::Other(req) => Ok(Read::Request(*req)),
        }
    }

    fn request(&mut self, cx: &mut Context, call: Call) -> Result<(), WorkerError> {
        match call.body {
            worker_request::Body::LiteInfo(_) => {
                let s = self.served.as_ref().ok_or_else(not_loaded)?;
                cx.answer(call.id, worker_response::Body::LiteInfo(model_info(s)));
                Ok(())
            }
            _ => Err(WorkerError::unimplemented(
                "this call is not served by worker-lite",
            )),
        }
    }
}

/// Runs an Infer / InferBatch call and writes its answer straight from
/// LiteRT's output buffers into the ring.
fn infer(
    cx: &Context,
    id: u64,
    s: &mut Served,
    call: &InferRef<'_>,
    deadline_ms: i64,
    arrived: Instant,
) -> Result<(), WorkerError> {
    if call.batch && (call.sets.is_empty() || call.sets.len() > MAX_SETS) {
        return Err(WorkerError::invalid(format!(
            "sets holds {} input sets; a batch holds 1 to {MAX_SETS}",
            call.sets.len()
        )));
    }
    let wanted = wanted_outputs(&s.compiled, &call.outputs)?;
    let regions = cx.frame_regions();
    // Validate every set before running any.
    let mut matched = Vec::with_capacity(call.sets.len());
    let mut placed = Vec::with_capacity(call.sets.len());
    for (k, set) in call.sets.iter().enumerate() {
        let at = if call.batch {
            format!("sets[{k}].")
        } else {
            String::new()
        };
        let inputs = match_inputs(&s.compiled.input_desc, set, &at)?;
        for input in &inputs {
            if let Some(r) = &input.shm {
                regions.check(r, &input_field(&at, input.name), r.byte_size, false)?;
            }
        }
        matched.push(inputs);
        let placements = call.placements.get(k).map_or(&[][..], Vec::as_slice);
        placed.push(placements_of(
            &s.compiled,
            &wanted,
            placements,
            regions,
            &at,
        )?);
    }
    // The answer's size is known before the work: the output buffers'
    // sizes are fixed when the model is compiled.
    let sets = placed
        .iter()
        .map(|p| output_heads(&s.compiled, &wanted, p))
        .collect::<Result<Vec<_>, _>>()?;
    check_answer(
        cx,
        &Answer {
            sets,
            timings: Timings {
                queue_us: u64::MAX,
                invoke_us: u64::MAX,
                total_us: u64::MAX,
            },
            batch: call.batch,
        },
    )?;
    let queued = arrived.elapsed();
    let mut invoke = Duration::ZERO;
    // A batch keeps each set's inline outputs; a single call reads them
    // from LiteRT's buffers while writing the answer. Outputs placed in a
    // region are written there (one copy, from LiteRT's output buffer)
    // right after their set's run, before the answer goes out.
    let mut kept: Vec<Vec<Vec<u8>>> = Vec::new();
    for (k, inputs) in matched.iter().enumerate() {
        cx.check_interrupted(id, deadline_ms)?;
        let at = if call.batch {
            format!("sets[{k}].")
        } else {
            String::new()
        };
        for (i, input) in inputs.iter().enumerate() {
            let mut read = Ok(());
            s.compiled
                .write_input(i, |buf| match &input.shm {
                    // One copy: from the region straight into LiteRT's
                    // input buffer.
                    Some(r) => read = regions.read_into(r, &input_field(&at, input.name), buf),
                    None => buf.copy_from_slice(input.data),
                })
                .map_err(lite_error)?;
            read?;
        }
        let started = Instant::now();
        s.compiled.run().map_err(lite_error)?;
        invoke += started.elapsed();
        for (j, &i) in wanted.iter().enumerate() {
            if let Some(r) = placed[k][j] {
                let field = format!(
                    "{at}output_placements[{:?}].shm",
                    s.compiled.output_desc[i].name
                );
                s.compiled
                    .read_output(i, |b| regions.write(r, &field, b))
                    .map_err(lite_error)??;
            }
        }
        if call.batch {
            let mut outs = Vec::with_capacity(wanted.len());
            for (j, &i) in wanted.iter().enumerate() {
                outs.push(if placed[k][j].is_some() {
                    Vec::new()
                } else {
                    s.compiled
                        .read_output(i, <[u8]>::to_vec)
                        .map_err(lite_error)?
                });
            }
            kept.push(outs);
        }
    }
    let sets = placed
        .iter()
        .map(|p| output_heads(&s.compiled, &wanted, p))
        .collect::<Result<Vec<_>, _>>()?;
    let answer = Answer {
        sets,
        timings: Timings {
            queue_us: queued.as_micros() as u64,
            invoke_us: invoke.as_micros() as u64,
            total_us: arrived.elapsed().as_micros() as u64,
        },
        batch: call.batch,
    };
    let compiled = &s.compiled;
    let mut failed = None;
    let sent = cx
        .chan()
        .send_with(id, Kind::Response, Flags::END, answer.len(), |buf| {
            answer.write(buf, |set, i, out| {
                if let Some(outs) = kept.get(set) {
                    out.copy_from_slice(&outs[i]);
                } else if let Err(e) = compiled.read_output(wanted[i], |b| out.copy_from_slice(b)) {
                    failed = Some(e);
                }
            })
        });
    sent?;
    if let Some(e) = failed {
        // The frame is out already; the failure is logged.
        tracing::error!(
            request = id,
            "reading an output failed after the answer: {e}"
        );
    }
    Ok(())
}

/// How messages name an input's region ref.
fn input_field(at: &str, name: &str) -> String {
    format!("{at}inputs[{name:?}].shm")
}

/// A set's output placements by wanted output (`None`: inline), checked
/// before any work: each names an output this call returns, once, and a
/// writable window of the request's regions large enough for it.
fn placements_of<'p>(
    c: &Compiled,
    wanted: &[usize],
    placements: &'p [Placement<'_>],
    regions: &Resolved,
    at: &str,
) -> Result<Vec<Option<&'p SharedMemoryRef>>, WorkerError> {
    let mut placed = vec![None; wanted.len()];
    for (p_i, p) in placements.iter().enumerate() {
        let field = format!("{at}output_placements[{p_i}]");
        let Some(j) = wanted.iter().position(|&i| c.output_desc[i].name == p.name) else {
            let returned: Vec<&str> = wanted
                .iter()
                .map(|&i| c.output_desc[i].name.as_str())
                .collect();
            return Err(WorkerError::invalid(format!(
                "{field}.name: {:?} is not an output this call returns; it returns {returned:?}",
                p.name
            )));
        };
        if placed[j].is_some() {
            return Err(WorkerError::invalid(format!(
                "{field}.name: output {:?} is placed more than once",
                p.name
            )));
        }
        let len = c.output_bytes(wanted[j]).map_err(lite_error)?;
        regions.check(&p.shm, &format!("{field}.shm"), len as u64, true)?;
        placed[j] = Some(&p.shm);
    }
    Ok(placed)
}

/// The outputs asked for, as the answer describes them: a placed one
/// carries its ref (`byte_size` = the bytes written) and no data.
fn output_heads<'c>(
    c: &'c Compiled,
    wanted: &[usize],
    placed: &[Option<&SharedMemoryRef>],
) -> Result<Vec<OutputHead<'c>>, WorkerError> {
    wanted
        .iter()
        .zip(placed)
        .map(|(&i, place)| {
            let d = &c.output_desc[i];
            let len = c.output_bytes(i).map_err(lite_error)?;
            let shm = place.map(|r| SharedMemoryRef {
                byte_size: len as u64,
                ..r.clone()
            });
            Ok(OutputHead {
                name: &d.name,
                dtype: dtype_of(d.element_type).map_or(0, |t| t.0 as i32),
                shape: d.shape.iter().map(|&x| i64::from(x)).collect(),
                len: if shm.is_some() { 0 } else { len },
                shm,
            })
        })
        .collect()
}

/// RESOURCE_EXHAUSTED, before any work, for an answer (its timings at
/// their longest) that the response ring cannot carry; a batch's message
/// says how many of its sets would fit.
fn check_answer(cx: &Context, answer: &Answer<'_>) -> Result<(), WorkerError> {
    let len = answer.len();
    let max = cx.max_answer_bytes();
    if len <= max {
        return Ok(());
    }
    if !answer.batch {
        return cx.check_answer_len(len);
    }
    let sets = answer.sets.len();
    let per_set = len.div_ceil(sets.max(1));
    let advice = match max / per_set.max(1) {
        0 => "name fewer outputs".to_owned(),
        fit => format!("send at most {fit} sets per call, or name fewer outputs"),
    };
    Err(WorkerError::new(
        Code::ResourceExhausted,
        format!(
            "answer of {len} bytes ({sets} sets of about {per_set} bytes of outputs) exceeds the response ring's frame limit of {max} bytes; {advice}"
        ),
    ))
}

/// Indices of the outputs asked for, in model order (all when none named).
fn wanted_outputs(c: &Compiled, names: &[&str]) -> Result<Vec<usize>, WorkerError> {
    for n in names {
        if !c.output_desc.iter().any(|d| d.name == *n) {
            let all: Vec<&str> = c.output_desc.iter().map(|d| d.name.as_str()).collect();
            return Err(WorkerError::invalid(format!(
                "outputs: unknown tensor {n:?}; the model's outputs are {all:?}"
            )));
        }
    }
    Ok((0..c.output_desc.len())
        .filter(|&i| names.is_empty() || names.contains(&c.output_desc[i].name.as_str()))
        .collect())
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
