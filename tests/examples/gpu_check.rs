//! The memory guard's GPU check, for a machine with an NVIDIA GPU, NVML
//! and PyTorch (`scripts/gpu-check`). It starts the sidecar with a GPU
//! reserve that the device meets now but not after 2 GiB more are taken,
//! then starts a PyTorch process that takes 2 GiB of device 0, and checks:
//!
//! - NVML is on (`GetStatus.gpu_monitoring`) and device 0's figures agree
//!   with `nvidia-smi` (within 64 MiB: they are sampled at other times);
//! - the supervisor's used figure moves by at least the 2 GiB taken;
//! - health `gpu/0` goes from SERVING to NOT_SERVING (under its reserve)
//!   and back once the memory is released.
//!
//! Prints what it saw; exits non-zero on the first failed check.
#![allow(clippy::print_stdout)] // The report is this tool's output.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::Sidecar;
use sidecar_proto::v1::{GetStatusRequest, GpuDevice};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: u64 = 1 << 20;
const TAKE: u64 = 2 << 30;

/// Device 0 as nvidia-smi reports it: (used, total), bytes.
fn nvidia_smi() -> Res<(u64, u64)> {
    let out = Command::new("nvidia-smi")
        .args([
            "--id=0",
            "--query-gpu=memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let mut fields = text.trim().split(',').map(|f| f.trim().parse::<u64>());
    match (fields.next(), fields.next()) {
        (Some(Ok(used)), Some(Ok(total))) => Ok((used * MIB, total * MIB)),
        _ => Err(format!("nvidia-smi said {text:?}").into()),
    }
}

async fn device0(sc: &Sidecar) -> Res<GpuDevice> {
    let status = sc
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await?
        .into_inner();
    if !status.gpu_monitoring {
        return Err("GPU monitoring is off: the supervisor found no NVML".into());
    }
    status
        .gpus
        .into_iter()
        .find(|d| d.index == 0)
        .ok_or_else(|| "GetStatus lists no device 0".into())
}

async fn gpu0_health(sc: &Sidecar) -> Res<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sc.api))?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    let r = health
        .check(HealthCheckRequest {
            service: "gpu/0".into(),
        })
        .await?
        .into_inner();
    Ok(r.status())
}

fn check(ok: bool, what: String) -> Res<()> {
    println!("{} {what}", if ok { "ok  " } else { "FAIL" });
    if ok { Ok(()) } else { Err(what.into()) }
}

/// Waits for the guard's next samples.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let (used, total) = nvidia_smi()?;
    // Met now (free = total - used), not after TAKE more is used.
    let reserve = total - used - TAKE / 2;
    println!(
        "device 0: {} MiB used of {} MiB; reserve set to {} MiB",
        used / MIB,
        total / MIB,
        reserve / MIB
    );
    let sc = Sidecar::start(
        tempfile::tempdir()?,
        &format!("[memory]\nsample_interval = 0.5\ngpu_reserve = {reserve}\n"),
    );
    settle().await;
    let before = device0(&sc).await?;
    let (smi_used, _) = nvidia_smi()?;
    check(
        before.used_bytes.abs_diff(smi_used) <= 64 * MIB,
        format!(
            "supervisor used {} MiB, nvidia-smi {} MiB",
            before.used_bytes / MIB,
            smi_used / MIB
        ),
    )?;
    check(
        gpu0_health(&sc).await? == ServingStatus::Serving,
        "gpu/0 SERVING above its reserve".into(),
    )?;

    let mut torch = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import time, torch\nx = torch.empty({TAKE}, dtype=torch.uint8, device='cuda')\nx.fill_(1)\ntorch.cuda.synchronize()\nprint('taken', flush=True)\ntime.sleep(120)\n"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let mut line = String::new();
    BufReader::new(torch.stdout.take().ok_or("stdout")?).read_line(&mut line)?;
    check(
        line.trim() == "taken",
        format!("PyTorch took {} MiB in {:?}", TAKE / MIB, started.elapsed()),
    )?;
    settle().await;
    let after = device0(&sc).await?;
    let (smi_used, _) = nvidia_smi()?;
    let moved = after.used_bytes.saturating_sub(before.used_bytes);
    check(
        (TAKE..=TAKE + 1024 * MIB).contains(&moved),
        format!(
            "supervisor's used figure moved by {} MiB (taken {} MiB plus PyTorch's CUDA context)",
            moved / MIB,
            TAKE / MIB
        ),
    )?;
    check(
        after.used_bytes.abs_diff(smi_used) <= 64 * MIB,
        format!(
            "supervisor used {} MiB, nvidia-smi {} MiB",
            after.used_bytes / MIB,
            smi_used / MIB
        ),
    )?;
    check(
        gpu0_health(&sc).await? == ServingStatus::NotServing,
        format!(
            "gpu/0 NOT_SERVING with {} MiB free under the reserve of {} MiB",
            after.free_bytes / MIB,
            reserve / MIB
        ),
    )?;

    torch.kill()?;
    torch.wait()?;
    settle().await;
    check(
        gpu0_health(&sc).await? == ServingStatus::Serving,
        "gpu/0 SERVING again once the memory is released".into(),
    )?;
    println!("GPU check passed");
    Ok(())
}
