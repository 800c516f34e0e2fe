//! The chaos run (`scripts/chaos.sh`): 8 client tasks calling Embed,
//! Tokenize, LITE Infer and VISION ProcessBatch without pause, first
//! without kills, then while every worker is `kill -9`ed in turn every
//! 5 s (the harness is `tests/chaos_support.rs`, shared with
//! `tests/chaos.rs`). Prints a Markdown report; exits 1 when a call failed,
//! an answer differed from its no-chaos answer, a model is not READY at
//! the end, or the supervisor changed.
//!
//! Usage: `chaos [CHAOS_SECONDS [CALM_SECONDS [KILL_EVERY_SECONDS]]]`
//! (defaults 120, 30, 5).
#![allow(clippy::print_stdout, clippy::print_stderr)] // The report is this tool's output.

use std::time::Duration;

use e2e::chaos::{self, Plan};
use sidecar_proto::v1::ModelState;

fn seconds(arg: Option<String>, default: f64) -> Duration {
    let s = arg.map_or(default, |a| {
        a.parse()
            .unwrap_or_else(|_| panic!("{a:?}: expected seconds"))
    });
    Duration::from_secs_f64(s)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let plan = Plan {
        threads: 8,
        chaos: seconds(args.next(), 120.0),
        calm: seconds(args.next(), 30.0),
        kill_every: seconds(args.next(), 5.0),
        deadline: Duration::from_secs(30),
    };
    let sc = chaos::start().await;
    let report = chaos::run(&sc, &plan).await;
    let (livez, readyz) = (sc.admin_get("/livez").0, sc.admin_get("/readyz").0);
    println!("{report}");
    println!("/livez {livez}, /readyz {readyz}.");
    let ok = report.chaos.error_count() == 0
        && report.calm.error_count() == 0
        && report.chaos.mismatch_count() + report.calm.mismatch_count() == 0
        && report.models.iter().all(|m| m.state == ModelState::Ready)
        && report.supervisor.0 == report.supervisor.1
        && (livez, readyz) == (200, 200);
    if !ok {
        eprintln!("chaos: FAILED (see the report)");
        std::process::exit(1);
    }
}
