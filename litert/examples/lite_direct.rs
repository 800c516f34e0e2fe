//! Times a model's runs through the LiteRT wrapper in-process (no gRPC,
//! no ipc): the floor under the sidecar's LITE latency.
//!
//! Usage: lite_direct LIBLITERT MODEL THREADS SECONDS
//! Prints `run_p50_us=.. run_p99_us=.. n=..`.
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::path::Path;
use std::time::{Duration, Instant};

use litert::{HW_CPU, Runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err("usage: lite_direct LIBLITERT MODEL THREADS SECONDS".into());
    }
    let rt = Runtime::load(Path::new(&args[1]))?;
    let mut c = rt
        .model(Path::new(&args[2]))?
        .compile(HW_CPU, args[3].parse()?)?;
    let seconds: f64 = args[4].parse()?;
    for i in 0..c.input_desc.len() {
        c.write_input(i, |b| {
            for (k, x) in b.iter_mut().enumerate() {
                *x = (k % 7) as u8;
            }
        })?;
    }
    for _ in 0..5 {
        c.run()?;
    }
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        c.run()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "run_p50_us={:.1} run_p99_us={:.1} n={}",
        p(0.5),
        p(0.99),
        times.len()
    );
    Ok(())
}
