//! The references run in-process, and the Markdown report.

use std::process::Command;

use crate::vision::{H, Run, W};
use crate::{ROWS, Res};

/// `p` quantile of `v` (sorted here).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// The LiteRT Python interpreter in-process, same model, 1 thread: p50 µs.
pub(crate) fn lite_reference(python: &str, seconds: f64) -> Res<f64> {
    let out = Command::new(python)
        .arg(e2e::root().join("scripts/bench_lite_reference.py"))
        .arg(
            e2e::root()
                .join("models")
                .join(crate::transport::LITE_MODEL),
        )
        .arg("1")
        .arg(seconds.to_string())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("p50_us="))
        .ok_or_else(|| {
            format!(
                "bench_lite_reference.py printed no p50_us: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?
        .parse()?)
}

/// `vision_direct` on the same raw frames: its FPS.
pub(crate) fn vision_reference(direct: &str, seconds: f64) -> Res<f64> {
    let out = Command::new(direct)
        .arg(e2e::root().join("runtime/litert/libLiteRt.so"))
        .arg(
            e2e::root()
                .join("models")
                .join(crate::transport::LITE_MODEL),
        )
        .args([W.to_string(), H.to_string(), seconds.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fps = text.trim().strip_prefix("fps=").ok_or_else(|| {
        format!(
            "vision_direct: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(fps.parse()?)
}

/// One LITE run's figures, µs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiteFigures {
    p50: f64,
    p90: f64,
    invoke: f64,
    over: f64,
    /// Latency at the client minus the supervisor's arrival-to-answer
    /// time: the client's side and the transport (HTTP/2 both ways).
    transport: f64,
    /// The supervisor's arrival-to-answer time minus the model run: the
    /// supervisor, the ring, and the worker's own handling.
    inside: f64,
}

impl LiteFigures {
    pub(crate) fn of(mut s: crate::lite::Samples) -> LiteFigures {
        let mut over: Vec<f64> = s
            .latency
            .iter()
            .zip(&s.invoke)
            .map(|(l, i)| l - i)
            .collect();
        let mut transport: Vec<f64> = s
            .latency
            .iter()
            .zip(&s.served)
            .map(|(l, v)| l - v)
            .collect();
        let mut inside: Vec<f64> = s.served.iter().zip(&s.invoke).map(|(v, i)| v - i).collect();
        LiteFigures {
            transport: percentile(&mut transport, 0.5),
            inside: percentile(&mut inside, 0.5),
            p50: percentile(&mut s.latency, 0.5),
            p90: percentile(&mut s.latency, 0.9),
            invoke: percentile(&mut s.invoke, 0.5),
            over: percentile(&mut over, 0.5),
        }
    }

    /// The median of each figure over the runs.
    fn median(runs: &[LiteFigures]) -> LiteFigures {
        let m = |f: fn(&LiteFigures) -> f64| median(runs.iter().map(f).collect());
        LiteFigures {
            p50: m(|r| r.p50),
            p90: m(|r| r.p90),
            invoke: m(|r| r.invoke),
            over: m(|r| r.over),
            transport: m(|r| r.transport),
            inside: m(|r| r.inside),
        }
    }
}

/// Why each row that could not run did not.
fn not_run(errors: &[Option<String>]) {
    let mut first = true;
    for (name, e) in ROWS.iter().zip(errors) {
        if let Some(e) = e {
            if first {
                println!("\nRows not run:");
                first = false;
            }
            println!("- {name}: {}", e.replace('\n', " "));
        }
    }
}

pub(crate) fn lite(errors: &[Option<String>], runs: &[Vec<LiteFigures>], reference: &[f64]) {
    let r = median(reference.to_vec());
    println!("### LITE: BlazeFace face detection (128x128 float32), 1 thread\n");
    println!(
        "| transport | client p50 | client p90 | in-process p50 | ratio (goal ≤ 1.15×) | model run p50 | client − model run p50 | of which client + HTTP/2 / supervisor + worker |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, name) in ROWS.iter().enumerate() {
        match &errors[i] {
            Some(_) => println!("| {name} | not run (below) | | {r:.0} µs | | | | |"),
            None => {
                let f = LiteFigures::median(&runs[i]);
                println!(
                    "| {name} | {:.0} µs | {:.0} µs | {r:.0} µs | {:.2}× | {:.0} µs | {:.0} µs | {:.0} / {:.0} µs |",
                    f.p50,
                    f.p90,
                    f.p50 / r,
                    f.invoke,
                    f.over,
                    f.transport,
                    f.inside
                );
            }
        }
    }
    not_run(errors);
    println!(
        "\nRatio: client p50 / in-process p50. Client − model run: per call, the latency at the \
         client minus the worker's `timings.invoke_us`, p50, split at the supervisor's \
         `timings.total_us` (its arrival-to-answer time): the client and HTTP/2 on one side, the \
         supervisor, the ring and the worker's handling on the other (each a p50 of its own). Each call carries \
         `cache-control: no-store`, so each runs the model. With shared memory the timed call \
         includes writing the input into the region and copying the outputs out of it (as the \
         in-process interpreter's `set_tensor` and `get_tensor` copy them).\n"
    );
}

fn median_run(runs: &[Run]) -> Run {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.fps.total_cmp(&b.fps));
    v[v.len() / 2]
}

pub(crate) fn vision(errors: &[Option<String>], runs: &[Vec<Run>], reference: &[f64]) {
    let r = median(reference.to_vec());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("### VISION: face detection on a raw {W}x{H} BGR stream, 1 thread\n");
    println!(
        "| transport | FPS | in-process FPS | ratio (goal ≥ 0.95×) | CPU ms per frame: client / supervisor / worker (in-process) | client + supervisor | writing a frame into its slot | CPU-bound FPS on {cores} cores |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|");
    for (i, name) in ROWS.iter().enumerate() {
        match &errors[i] {
            Some(_) => println!("| {name} | not run (below) | {r:.1} | | | | | |"),
            None => {
                let t = median_run(&runs[i]);
                let [c, s, w] = t.cpu;
                let write = if i == 2 {
                    format!("{:.0} µs", t.write_us)
                } else {
                    "(inline)".into()
                };
                println!(
                    "| {name} | {:.1} | {r:.1} | {:.2}× | {c:.2} / {s:.2} / {w:.2} ({:.2}) | {:.2} ms | {write} | {:.0} |",
                    t.fps,
                    t.fps / r,
                    1000.0 / r,
                    c + s,
                    1000.0 * cores as f64 / (c + s + w)
                );
            }
        }
    }
    not_run(errors);
    println!(
        "\nRatio: FPS / in-process FPS (medians). Every row keeps at most {} frames in flight \
         (`max_pending_frames`). CPU per frame: user + system time of each process over the \
         median run (by FPS), divided by the frames processed; in-process, one busy thread, \
         1000 / FPS. The shared-memory client made each of its {} frames in a slot of its own \
         once, as a capture or a decoder writing into the slot does (the in-process loop too \
         has its frames ready), and names slot k mod {} for frame k only after that slot's \
         `released` came back; what writing a frame into its slot costs is shown alone (µs per \
         frame, not in the client's CPU). CPU-bound FPS: the most the machine's cores could \
         process at that CPU cost per frame, client, supervisor and worker all on them (an \
         upper bound of FPS when nothing else runs).\n",
        crate::vision::PENDING,
        crate::vision::SLOTS,
        crate::vision::SLOTS
    );
}

/// The two acceptance figures, from the shared-memory row.
pub(crate) fn acceptance(
    lite_error: &Option<String>,
    lite_runs: &[LiteFigures],
    vision_error: &Option<String>,
    vision_runs: &[Run],
) {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("Acceptance, Unix + shared memory:\n");
    match lite_error {
        Some(_) => println!("- LITE client − model run p50 ≤ 0.15 ms: not measured (row not run)"),
        None => {
            let f = LiteFigures::median(lite_runs);
            println!(
                "- LITE client − model run p50 ≤ 0.15 ms: {:.3} ms, {}",
                f.over / 1000.0,
                verdict(f.over <= 150.0)
            );
        }
    }
    match vision_error {
        Some(_) => {
            println!(
                "- VISION client + supervisor CPU ≤ 0.2 ms per frame: not measured (row not run)"
            )
        }
        None => {
            let t = median_run(vision_runs);
            let cs = t.cpu[0] + t.cpu[1];
            println!(
                "- VISION client + supervisor CPU ≤ 0.2 ms per frame: {cs:.3} ms, {}",
                verdict(cs <= 0.2)
            );
        }
    }
}
