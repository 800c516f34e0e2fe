//! The colocated-clients benchmark (`scripts/bench.sh colocated`): a
//! client in the same pod as the sidecar reaching it three ways, side by
//! side in one run against the same in-process references as the LITE and
//! VISION benchmarks:
//!
//! - **TCP inline**: gRPC over loopback TCP, tensors and frames in the
//!   messages (what the LITE and VISION benchmarks measure);
//! - **Unix inline**: the same calls over the API's Unix socket (a second
//!   sidecar, the same config, started with `--listen unix:PATH`);
//! - **Unix + shared memory**: over the Unix socket, the input tensor,
//!   the output tensors and the frames in a POSIX shared-memory object of
//!   the client's (`shm_open`, registered with
//!   `SharedMemoryService.RegisterRegion`), the frames in a ring of
//!   `vision::SLOTS` slots reused as each result's `released` frees one.
//!
//! LITE: BlazeFace face detection (128x128 float32), 1 thread; per call,
//! the latency at the client (p50, p90) against the LiteRT Python
//! interpreter in-process (`scripts/bench_lite_reference.py`), and the
//! latency minus the worker's model run (`timings.invoke_us`). VISION: a
//! raw 1280x720 BGR face-detection stream; FPS against `vision_direct`'s
//! in-process loop, and the CPU time (`/proc/PID/stat`) the client, the
//! supervisor and the worker spend per frame.
//!
//! A row that cannot run (a sidecar that refuses `--listen unix:`, an RPC
//! not implemented, a check that fails) is printed with the reason, the
//! others still run; the exit status is then 2.
//!
//! Environment (set by `scripts/bench.sh`): `BENCH_PYTHON`,
//! `VISION_DIRECT`, `BENCH_REPS` (default 3), `BENCH_SECONDS` (default 3).
#![allow(clippy::print_stdout)] // The report is this tool's output.
#![allow(unsafe_code)] // The client maps its shared-memory object (shm.rs).

mod lite;
mod report;
mod shm;
mod transport;
mod vision;

use transport::{Listen, Sidecar};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The rows, in order; the last one uses shared memory.
pub const ROWS: [&str; 3] = ["TCP inline", "Unix inline", "Unix + shared memory"];

fn main() -> std::process::ExitCode {
    // The client keeps freed memory as the sidecar's processes do, so its
    // own allocations do not skew the machine's two cores.
    ipc::malloc::keep_freed_memory();
    // One thread, as a latency-bound client runs its calls: on two cores,
    // a multi-thread runtime's hand-offs between its own threads added
    // about 0.1 ms to each LITE call (0.40 against 0.28 ms over the model
    // run, measured through the Unix socket and shared memory).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: no tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("bench: {failed} row(s) could not run; the report says which and why");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs every row; the number of rows that could not run.
async fn run() -> Res<usize> {
    let root = e2e::root();
    let python = std::env::var("BENCH_PYTHON")
        .unwrap_or_else(|_| root.join(".venv/bin/python").display().to_string());
    let direct = std::env::var("VISION_DIRECT")
        .map_err(|_| "VISION_DIRECT is not set (run scripts/bench.sh colocated)")?;
    let reps: usize = std::env::var("BENCH_REPS").map_or(Ok(3), |v| v.parse())?;
    let seconds: f64 = std::env::var("BENCH_SECONDS").map_or(Ok(3.0), |v| v.parse())?;
    if reps == 0 {
        return Err("BENCH_REPS must be at least 1".into());
    }

    // The Unix socket's folder: its own, not the control socket's.
    let sockets = tempfile::tempdir()?;
    let socket = sockets.path().join("api.sock");
    let tcp = Sidecar::start(&Listen::Tcp).await;
    let unix = Sidecar::start(&Listen::Unix(socket.clone())).await;
    let tcp = tcp.map_err(|e| format!("the TCP sidecar did not start: {e}"));
    let unix = unix.map_err(|e| {
        format!(
            "the sidecar did not start with `--listen unix:{}`: {e}",
            socket.display()
        )
    });
    let sidecar = |row: usize| if row == 0 { &tcp } else { &unix };

    println!(
        "Machine: {} cores; 1 thread per model; median over {reps} interleaved runs of {seconds} s.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // `BENCH_ONLY=lite` or `vision` runs one half (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if !["", "lite", "vision"].contains(&only.as_str()) {
        return Err(format!("BENCH_ONLY is {only:?}: lite, vision or unset").into());
    }
    let skipped = || Err::<lite::Row, String>("skipped (BENCH_ONLY)".into());
    // LITE.
    let mut lite_rows = Vec::new();
    for (i, _) in ROWS.iter().enumerate() {
        if only == "vision" {
            lite_rows.push(skipped());
            continue;
        }
        lite_rows.push(match sidecar(i) {
            Ok(sc) => match sc.channel() {
                Ok(ch) => lite::Row::prepare(ch, i == 2)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.clone()),
        });
    }
    let mut lite_runs = vec![Vec::new(); ROWS.len()];
    let mut lite_ref = Vec::new();
    for _ in 0..reps {
        if only == "vision" {
            break;
        }
        lite_ref.push(report::lite_reference(&python, seconds)?);
        for (i, row) in lite_rows.iter_mut().enumerate() {
            let outcome = match row {
                Ok(r) => Some(r.run(seconds).await),
                Err(_) => None,
            };
            match outcome {
                Some(Ok(s)) => lite_runs[i].push(report::LiteFigures::of(s)),
                Some(Err(e)) => *row = Err(e.to_string()),
                None => {}
            }
        }
    }
    let lite_errors: Vec<Option<String>> = lite_rows
        .iter()
        .map(|r| r.as_ref().err().cloned())
        .collect();
    for row in lite_rows.into_iter().flatten() {
        row.finish().await;
    }
    if only != "vision" {
        report::lite(&lite_errors, &lite_runs, &lite_ref);
    }

    // VISION.
    let mut vision_rows = Vec::new();
    for (i, _) in ROWS.iter().enumerate() {
        if only == "lite" {
            vision_rows.push(Err("skipped (BENCH_ONLY)".to_string()));
            continue;
        }
        vision_rows.push(match sidecar(i) {
            Ok(sc) => prepare_vision(sc, i == 2).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        });
    }
    let mut vision_runs = vec![Vec::new(); ROWS.len()];
    let mut vision_ref = Vec::new();
    for _ in 0..reps {
        if only == "lite" {
            break;
        }
        vision_ref.push(report::vision_reference(&direct, seconds)?);
        for (i, row) in vision_rows.iter_mut().enumerate() {
            let outcome = match row {
                Ok(r) => Some(r.run(seconds).await),
                Err(_) => None,
            };
            match outcome {
                Some(Ok(run)) => vision_runs[i].push(run),
                Some(Err(e)) => *row = Err(e.to_string()),
                None => {}
            }
        }
    }
    let vision_errors: Vec<Option<String>> = vision_rows
        .iter()
        .map(|r| r.as_ref().err().cloned())
        .collect();
    for row in vision_rows.into_iter().flatten() {
        row.finish().await;
    }
    if only != "lite" {
        report::vision(&vision_errors, &vision_runs, &vision_ref);
    }
    report::acceptance(
        &lite_errors[2],
        &lite_runs[2],
        &vision_errors[2],
        &vision_runs[2],
    );

    let failed = lite_errors
        .iter()
        .chain(&vision_errors)
        .filter(|e| e.as_deref().is_some_and(|e| !e.starts_with("skipped")))
        .count();
    drop((tcp, unix));
    Ok(failed)
}

async fn prepare_vision(sc: &Sidecar, shm: bool) -> Res<vision::Row> {
    let pids = vision::Pids {
        client: std::process::id(),
        supervisor: sc.pid,
        worker: sc.model(transport::VISION_ID).await?.1,
    };
    vision::Row::prepare(sc.channel()?, pids, shm).await
}
