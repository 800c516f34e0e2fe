//! The channel's conformance peer: a process holding side B (or A) of a
//! channel, driven by `ipc`'s tests and benchmark. `ipc-peer MODE`:
//!
//! - `echo`: answers each REQUEST with one RESPONSE+END carrying its payload.
//! - `stream`: a REQUEST `[count u32][size u32]` is answered with `count`
//!   RESPONSE frames of `size` bytes, the last with END; open requests are
//!   served round-robin, so one paused request does not stop the others.
//! - `reverse N`: takes N requests, then answers them newest first, three
//!   frames each.
//! - `partial`: writes half of a frame (1 MiB, or the largest the ring
//!   takes) without publishing it, prints
//!   `PARTIAL`, and waits to be killed.
//! - `flood`: answers each REQUEST with RESPONSE frames of 1 KiB past its
//!   credit window, until the channel closes (a hostile peer).
//! - `control-flood N`: sends N ERROR frames on request id 0 (a hostile
//!   peer), prints `SENT`, and waits.
//! - `heartbeats N`: sends N heartbeats, prints `SENT`, and waits.
//! - `stray`: answers each REQUEST with heartbeats on its request id (a
//!   kind that is not an answer: a hostile peer).
//! - `grandchild`: prints its own descriptors and those of a child it starts.
//! - `list-fds`: prints its descriptors.
//! - `bench`: benchmark server over the channel; `socket-bench`: the same
//!   over a Unix socket given as standard input.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use ipc::{Blocked, BlockingChannel, Error, Flags, Kind};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let result = match mode {
        "list-fds" => {
            println!("{}", fd_targets());
            Ok(())
        }
        "grandchild" => grandchild(),
        "files" => files(),
        "socket-bench" => socket_bench(),
        _ => match BlockingChannel::from_env() {
            Ok(chan) => match mode {
                _ if set_spin_from_env(&chan).is_err() => {
                    Err(Error::Config("IPC_PEER_SPIN_US".into()))
                }
                "echo" => echo(&chan),
                "stream" => stream(&chan),
                "reverse" => reverse(&chan, args.get(1).and_then(|n| n.parse().ok()).unwrap_or(8)),
                "partial" => partial(&chan),
                "flood" => flood(&chan),
                "stray" => stray(&chan),
                "control-flood" => control(&chan, Kind::Error, count(&args)),
                "heartbeats" => control(&chan, Kind::Heartbeat, count(&args)),
                "bench" => bench(&chan),
                other => Err(Error::Config(format!("unknown mode {other:?}"))),
            },
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) | Err(Error::PeerGone) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipc-peer {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `IPC_PEER_SPIN_US` overrides the channel's spin time.
fn set_spin_from_env(chan: &BlockingChannel) -> Result<(), std::num::ParseIntError> {
    if let Ok(us) = std::env::var("IPC_PEER_SPIN_US") {
        chan.set_spin(Duration::from_micros(us.parse()?));
    }
    Ok(())
}

fn echo(chan: &BlockingChannel) -> ipc::Result<()> {
    chan.send(0, Kind::Hello, Flags::NONE, b"hello")?;
    loop {
        let req = chan.recv()?;
        if req.kind() != Kind::Request {
            continue;
        }
        let (id, len) = (req.request_id(), req.payload().len());
        chan.send_with(id, Kind::Response, Flags::END, len, |b| {
            b.copy_from_slice(req.payload())
        })?;
    }
}

struct Job {
    id: u64,
    left: u32,
    size: usize,
    sent: u32,
}

fn stream(chan: &BlockingChannel) -> ipc::Result<()> {
    let mut jobs: VecDeque<Job> = VecDeque::new();
    loop {
        while let Some(req) = chan.try_recv()? {
            if req.kind() == Kind::Request {
                let p = req.payload();
                let word = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
                if p.len() == 8 {
                    jobs.push_back(Job {
                        id: req.request_id(),
                        left: word(0),
                        size: word(4) as usize,
                        sent: 0,
                    });
                }
            }
        }
        let mut progressed = false;
        for _ in 0..jobs.len() {
            let Some(mut job) = jobs.pop_front() else {
                break;
            };
            let end = job.left == 1;
            let flags = if end { Flags::END } else { Flags::NONE };
            let mut payload = vec![(job.sent % 251) as u8; job.size];
            if job.size >= 4 {
                payload[..4].copy_from_slice(&job.sent.to_le_bytes());
            }
            match chan.try_send(job.id, Kind::Response, flags, &payload) {
                Ok(()) => {
                    progressed = true;
                    job.left -= 1;
                    job.sent += 1;
                    if !end {
                        jobs.push_back(job);
                    }
                }
                Err(Error::WouldBlock(Blocked::NoCredit | Blocked::RingFull)) => {
                    jobs.push_back(job)
                }
                Err(e) => return Err(e),
            }
        }
        if !progressed {
            chan.wait(Some(Duration::from_secs(1)))?;
        }
    }
}

fn reverse(chan: &BlockingChannel, n: usize) -> ipc::Result<()> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let req = chan.recv()?;
        if req.kind() == Kind::Request {
            ids.push((req.request_id(), req.payload().to_vec()));
        }
    }
    for (id, payload) in ids.into_iter().rev() {
        for part in 0u8..3 {
            let flags = if part == 2 { Flags::END } else { Flags::NONE };
            let mut body = payload.clone();
            body.push(part);
            chan.send(id, Kind::Response, flags, &body)?;
        }
    }
    loop {
        chan.recv()?;
    }
}

fn partial(chan: &BlockingChannel) -> ipc::Result<()> {
    let len = chan.max_payload().min(1 << 20);
    chan.write_partial_frame_for_test(len, len / 2, 0xAB)?;
    println!("PARTIAL");
    std::io::stdout()
        .flush()
        .map_err(|e| Error::Config(e.to_string()))?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn count(args: &[String]) -> u32 {
    args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000)
}

fn flood(chan: &BlockingChannel) -> ipc::Result<()> {
    chan.send(0, Kind::Hello, Flags::NONE, b"hello")?;
    let id = loop {
        let req = chan.recv()?;
        if req.kind() == Kind::Request {
            break req.request_id();
        }
    };
    let payload = vec![0x5A; 1024];
    loop {
        chan.send_past_credit_for_test(id, Kind::Response, Flags::NONE, &payload)?;
    }
}

fn stray(chan: &BlockingChannel) -> ipc::Result<()> {
    chan.send(0, Kind::Hello, Flags::NONE, b"hello")?;
    loop {
        let req = chan.recv()?;
        if req.kind() == Kind::Request {
            let id = req.request_id();
            drop(req);
            chan.send(id, Kind::Heartbeat, Flags::NONE, b"not an answer")?;
        }
    }
}

fn control(chan: &BlockingChannel, kind: Kind, n: u32) -> ipc::Result<()> {
    chan.send(0, Kind::Hello, Flags::NONE, b"hello")?;
    for i in 0..n {
        chan.send(0, kind, Flags::NONE, &i.to_le_bytes())?;
    }
    println!("SENT");
    std::io::stdout()
        .flush()
        .map_err(|e| Error::Config(e.to_string()))?;
    loop {
        chan.recv()?;
    }
}

fn fd_targets() -> String {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for entry in dir.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                out.push(format!(
                    "{}={}",
                    entry.file_name().to_string_lossy(),
                    target.display()
                ));
            }
        }
    }
    out.sort();
    out.join("|")
}

fn grandchild() -> ipc::Result<()> {
    // Attach first, as a worker does, so the descriptors become close-on-exec.
    let chan = BlockingChannel::from_env()?;
    println!("CHILD {}", fd_targets());
    let exe = std::env::current_exe().map_err(|e| Error::Config(e.to_string()))?;
    let out = std::process::Command::new(exe)
        .arg("list-fds")
        .output()
        .map_err(|e| Error::Config(e.to_string()))?;
    println!("GRANDCHILD {}", String::from_utf8_lossy(&out.stdout).trim());
    drop(chan);
    Ok(())
}

/// Prints each handed file's contents (`FILE ...`), then what a child of
/// this process inherits (`GRANDCHILD ...`).
fn files() -> ipc::Result<()> {
    use std::os::unix::fs::FileExt;
    let files = ipc::inherited_files()?;
    for f in files {
        let f = std::fs::File::from(f);
        let mut buf = vec![0u8; 64];
        let n = f
            .read_at(&mut buf, 0)
            .map_err(|e| Error::Config(e.to_string()))?;
        println!("FILE {}", String::from_utf8_lossy(&buf[..n]));
    }
    let exe = std::env::current_exe().map_err(|e| Error::Config(e.to_string()))?;
    let out = std::process::Command::new(exe)
        .arg("list-fds")
        .output()
        .map_err(|e| Error::Config(e.to_string()))?;
    println!("GRANDCHILD {}", String::from_utf8_lossy(&out.stdout).trim());
    Ok(())
}

/// Benchmark requests: byte 0 is the operation.
const OP_ECHO: u8 = 0;
const OP_CHECKSUM: u8 = 1;
const OP_REPLY_N: u8 = 2;

/// A cheap pass over every byte, so that both transports make the receiver
/// touch the data it got.
fn checksum(data: &[u8]) -> u64 {
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    let mut acc = words.fold(0u64, |acc, w| {
        acc ^ u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
    });
    for (i, b) in tail.iter().enumerate() {
        acc ^= u64::from(*b) << (8 * i);
    }
    acc
}

fn bench(chan: &BlockingChannel) -> ipc::Result<()> {
    loop {
        let req = chan.recv()?;
        if req.kind() != Kind::Request {
            continue;
        }
        let id = req.request_id();
        let p = req.payload();
        match p.first().copied() {
            Some(OP_CHECKSUM) => {
                let sum = checksum(&p[1..]);
                drop(req);
                chan.send(id, Kind::Response, Flags::END, &sum.to_le_bytes())?;
            }
            Some(OP_REPLY_N) if p.len() >= 9 => {
                let n = u64::from_le_bytes(p[1..9].try_into().unwrap_or_default()) as usize;
                drop(req);
                chan.send_with(id, Kind::Response, Flags::END, n, |b| b.fill(0x5A))?;
            }
            _ => {
                let len = p.len();
                chan.send_with(id, Kind::Response, Flags::END, len, |b| {
                    b.copy_from_slice(p)
                })?;
            }
        }
    }
}

fn socket_bench() -> ipc::Result<()> {
    let io = |e: std::io::Error| Error::Config(e.to_string());
    let fd = std::io::stdin().as_fd().try_clone_to_owned().map_err(io)?;
    let mut sock = UnixStream::from(fd);
    sock.set_nonblocking(false).map_err(io)?;
    let mut buf = Vec::new();
    let mut reply = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if sock.read_exact(&mut head).is_err() {
            return Ok(());
        }
        let len = u64::from_le_bytes(head[1..9].try_into().unwrap_or_default()) as usize;
        buf.resize(len, 0);
        sock.read_exact(&mut buf).map_err(io)?;
        match head[0] {
            OP_CHECKSUM => {
                let sum = checksum(&buf);
                sock.write_all(&8u64.to_le_bytes()).map_err(io)?;
                sock.write_all(&sum.to_le_bytes()).map_err(io)?;
            }
            OP_REPLY_N => {
                let n = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()) as usize;
                // Produce the answer afresh each time, as the channel peer
                // does (in place in the ring).
                reply.resize(n, 0);
                reply.fill(0x5A);
                sock.write_all(&(n as u64).to_le_bytes()).map_err(io)?;
                sock.write_all(&reply).map_err(io)?;
            }
            _ => {
                let _ = OP_ECHO;
                sock.write_all(&(len as u64).to_le_bytes()).map_err(io)?;
                sock.write_all(&buf).map_err(io)?;
            }
        }
    }
}
