//! The channel against a plain Unix socketpair, side by side in one run, on
//! the same peer binary (`ipc-peer`), with the same client runtime (tokio,
//! current-thread) on this side and a blocking peer on the other:
//!
//! - round-trip latency of 64-byte messages (p50, p99, mean), with the
//!   channel's default spin-before-sleep and with it off (every wake-up
//!   through the doorbell), plus blocking clients on both transports;
//! - throughput of 8 MiB payloads both ways: to the peer (it reads every
//!   byte and answers with a checksum; two payloads in flight on both
//!   transports) and from the peer (this side copies each answer out; also
//!   two in flight).
//!
//! `cargo bench -p ipc` runs it; under `cargo test` it runs a smoke pass.
#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipc::{AsyncChannel, BlockingChannel, ChannelConfig, Flags, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const PEER: &str = env!("CARGO_BIN_EXE_ipc-peer");
const OP_ECHO: u8 = 0;
const OP_CHECKSUM: u8 = 1;
const OP_REPLY_N: u8 = 2;
const BIG: usize = 8 << 20;

#[derive(Clone, Copy)]
struct Plan {
    rounds: usize,
    warmup: usize,
    big_rounds: usize,
    trials: usize,
}

struct Latency {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn measure(plan: Plan, mut once: impl FnMut()) -> Latency {
    let mut samples = Vec::with_capacity(plan.rounds);
    for i in 0..plan.warmup + plan.rounds {
        let t = Instant::now();
        once();
        if i >= plan.warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        mean: samples.iter().sum::<f64>() / samples.len() as f64,
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn channel_peer(ring: usize, spin: Duration) -> (ipc::Ends, Killed) {
    let (a, b) = ipc::create(ChannelConfig::with_ring_bytes(ring)).expect("channel");
    let mut cmd = Command::new(PEER);
    cmd.arg("bench")
        .env("IPC_PEER_SPIN_US", spin.as_micros().to_string());
    let child = b.spawn(&mut cmd, Some(libc::SIGKILL)).expect("spawn peer");
    (a, Killed(child))
}

fn socket_peer() -> (UnixStream, Killed) {
    let (mine, theirs) = UnixStream::pair().expect("socketpair");
    let child = Command::new(PEER)
        .arg("socket-bench")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .spawn()
        .expect("spawn peer");
    (mine, Killed(child))
}

async fn channel_call(chan: &AsyncChannel, op: u8, body: &[u8]) -> usize {
    let mut answers = chan
        .request_with(1 + body.len(), |b| {
            b[0] = op;
            b[1..].copy_from_slice(body);
        })
        .await
        .expect("request");
    let frame = answers.next().await.expect("answer").expect("no error");
    frame.payload.len()
}

async fn socket_call(
    sock: &mut tokio::net::UnixStream,
    op: u8,
    body: &[u8],
    buf: &mut Vec<u8>,
) -> usize {
    let mut head = [0u8; 9];
    head[0] = op;
    head[1..9].copy_from_slice(&(body.len() as u64).to_le_bytes());
    sock.write_all(&head).await.expect("write");
    sock.write_all(body).await.expect("write");
    let mut len = [0u8; 8];
    sock.read_exact(&mut len).await.expect("read");
    buf.resize(u64::from_le_bytes(len) as usize, 0);
    sock.read_exact(buf).await.expect("read");
    buf.len()
}

fn async_channel_latency(rt: &Runtime, plan: Plan, spin: Duration) -> Latency {
    let (a, _peer) = channel_peer(1 << 20, spin);
    let chan = rt.block_on(async { AsyncChannel::new(a) }).expect("attach");
    chan.set_spin(spin);
    // 64 bytes each way: op byte + 63.
    let body = [0x33u8; 63];
    measure(plan, || {
        assert_eq!(rt.block_on(channel_call(&chan, OP_ECHO, &body)), 64);
    })
}

fn blocking_channel_latency(plan: Plan, spin: Duration) -> Latency {
    let (a, _peer) = channel_peer(1 << 20, spin);
    let chan = BlockingChannel::new(a).expect("attach");
    chan.set_spin(spin);
    let body = [0u8; 64];
    let mut id = 0;
    measure(plan, || {
        id += 1;
        chan.send(id, Kind::Request, Flags::NONE, &body)
            .expect("send");
        assert_eq!(chan.recv().expect("answer").payload().len(), 64);
    })
}

fn async_socket_latency(rt: &Runtime, plan: Plan) -> Latency {
    let (sock, _peer) = socket_peer();
    sock.set_nonblocking(true).expect("nonblocking");
    let mut sock = rt
        .block_on(async { tokio::net::UnixStream::from_std(sock) })
        .expect("tokio socket");
    // 9-byte header + 55 bytes = 64 bytes to the peer.
    let body = [0x33u8; 55];
    let mut buf = Vec::new();
    measure(plan, || {
        rt.block_on(socket_call(&mut sock, OP_ECHO, &body, &mut buf));
    })
}

fn blocking_socket_latency(plan: Plan) -> Latency {
    let (mut sock, _peer) = socket_peer();
    let mut msg = vec![OP_ECHO];
    msg.extend_from_slice(&55u64.to_le_bytes());
    msg.extend_from_slice(&[0x33u8; 55]);
    let mut buf = vec![0u8; 8 + 55];
    measure(plan, || {
        sock.write_all(&msg).expect("write");
        sock.read_exact(&mut buf).expect("read");
    })
}

fn gbps(rounds: usize, took: Duration) -> f64 {
    (BIG * rounds) as f64 / took.as_secs_f64() / 1e9
}

fn channel_throughput(rt: &Runtime, plan: Plan) -> (f64, f64) {
    let (a, _peer) = channel_peer(2 * BIG + 4096, ipc::DEFAULT_SPIN);
    rt.block_on(async {
        let chan = AsyncChannel::new(a).expect("attach");
        let body = vec![0x33u8; BIG];
        channel_call(&chan, OP_CHECKSUM, &body).await;
        // Two payloads in flight, so that writing one overlaps reading the
        // other, as a socket's kernel buffer overlaps them.
        let send = || {
            chan.request_with(1 + BIG, |b| {
                b[0] = OP_CHECKSUM;
                b[1..].copy_from_slice(&body);
            })
        };
        let t = Instant::now();
        let mut in_flight = send().await.expect("request");
        for i in 0..plan.big_rounds {
            let next = if i + 1 < plan.big_rounds {
                Some(send().await.expect("request"))
            } else {
                None
            };
            let answer = in_flight.next().await.expect("answer").expect("no error");
            assert_eq!(answer.payload.len(), 8);
            match next {
                Some(n) => in_flight = n,
                None => break,
            }
        }
        let up = gbps(plan.big_rounds, t.elapsed());
        let n = (BIG as u64).to_le_bytes();
        channel_call(&chan, OP_REPLY_N, &n).await;
        let ask = || {
            chan.request_with(9, |b| {
                b[0] = OP_REPLY_N;
                b[1..].copy_from_slice(&n);
            })
        };
        let t = Instant::now();
        let mut in_flight = ask().await.expect("request");
        for i in 0..plan.big_rounds {
            let next = if i + 1 < plan.big_rounds {
                Some(ask().await.expect("request"))
            } else {
                None
            };
            let answer = in_flight.next().await.expect("answer").expect("no error");
            assert_eq!(answer.payload.len(), BIG);
            match next {
                Some(n) => in_flight = n,
                None => break,
            }
        }
        (up, gbps(plan.big_rounds, t.elapsed()))
    })
}

fn socket_throughput(rt: &Runtime, plan: Plan) -> (f64, f64) {
    let (sock, _peer) = socket_peer();
    rt.block_on(async {
        sock.set_nonblocking(true).expect("nonblocking");
        let mut sock = tokio::net::UnixStream::from_std(sock).expect("tokio socket");
        let body = vec![0x33u8; BIG];
        let mut buf = Vec::new();
        socket_call(&mut sock, OP_CHECKSUM, &body, &mut buf).await;
        let mut head = [0u8; 9];
        head[0] = OP_CHECKSUM;
        head[1..9].copy_from_slice(&(BIG as u64).to_le_bytes());
        // Two payloads in flight, as for the channel: the next request is
        // written before the previous answer is read.
        let t = Instant::now();
        sock.write_all(&head).await.expect("write");
        sock.write_all(&body).await.expect("write");
        for i in 0..plan.big_rounds {
            if i + 1 < plan.big_rounds {
                sock.write_all(&head).await.expect("write");
                sock.write_all(&body).await.expect("write");
            }
            let mut answer = [0u8; 16];
            sock.read_exact(&mut answer).await.expect("read");
            assert_eq!(
                u64::from_le_bytes(answer[..8].try_into().expect("8 bytes")),
                8
            );
        }
        let up = gbps(plan.big_rounds, t.elapsed());
        let n = (BIG as u64).to_le_bytes();
        socket_call(&mut sock, OP_REPLY_N, &n, &mut buf).await;
        let mut ask = [0u8; 17];
        ask[0] = OP_REPLY_N;
        ask[1..9].copy_from_slice(&8u64.to_le_bytes());
        ask[9..].copy_from_slice(&n);
        let t = Instant::now();
        sock.write_all(&ask).await.expect("write");
        for i in 0..plan.big_rounds {
            if i + 1 < plan.big_rounds {
                sock.write_all(&ask).await.expect("write");
            }
            let mut len = [0u8; 8];
            sock.read_exact(&mut len).await.expect("read");
            buf.resize(u64::from_le_bytes(len) as usize, 0);
            sock.read_exact(&mut buf).await.expect("read");
            assert_eq!(buf.len(), BIG);
        }
        (up, gbps(plan.big_rounds, t.elapsed()))
    })
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full {
        Plan {
            rounds: 20_000,
            warmup: 2_000,
            big_rounds: 40,
            trials: 7,
        }
    } else {
        Plan {
            rounds: 200,
            warmup: 20,
            big_rounds: 2,
            trials: 1,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spin = ipc::DEFAULT_SPIN;
    let rows = [
        (
            "ipc, tokio client, spin 20 µs (default)",
            async_channel_latency(&rt, plan, spin),
        ),
        (
            "ipc, tokio client, no spin",
            async_channel_latency(&rt, plan, Duration::ZERO),
        ),
        ("socketpair, tokio client", async_socket_latency(&rt, plan)),
        (
            "ipc, blocking client, spin 20 µs (default)",
            blocking_channel_latency(plan, spin),
        ),
        (
            "ipc, blocking client, no spin",
            blocking_channel_latency(plan, Duration::ZERO),
        ),
        ("socketpair, blocking client", blocking_socket_latency(plan)),
    ];
    // Throughput alternates the two transports over several trials and
    // reports medians, so a noisy neighbour hits both alike.
    let mut trials = Vec::new();
    for _ in 0..plan.trials {
        let (ipc_up, ipc_down) = channel_throughput(&rt, plan);
        let (sock_up, sock_down) = socket_throughput(&rt, plan);
        trials.push([ipc_up, sock_up, ipc_down, sock_down]);
    }
    let median = |k: usize| {
        let mut v: Vec<f64> = trials.iter().map(|t| t[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ipc_up, sock_up, ipc_down, sock_down) = (median(0), median(1), median(2), median(3));

    println!(
        "ipc channel vs Unix socketpair: {} round trips of 64 bytes; 8 MiB payloads: median of {} trials of {} each way; peer blocking",
        plan.rounds, plan.trials, plan.big_rounds
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8}",
        "round trip, µs", "p50", "p99", "mean"
    );
    for (name, l) in &rows {
        println!("{name:<44} {:>8.1} {:>8.1} {:>8.1}", l.p50, l.p99, l.mean);
    }
    let ratio = |ipc: usize, sock: usize| rows[sock].1.p50 / rows[ipc].1.p50;
    println!(
        "p50 speed-up over socketpair (tokio client): {:.2}x with spin, {:.2}x without",
        ratio(0, 2),
        ratio(1, 2)
    );
    println!(
        "p50 speed-up over socketpair (blocking client): {:.2}x with spin, {:.2}x without",
        ratio(3, 5),
        ratio(4, 5)
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8}",
        "8 MiB payloads, GB/s", "ipc", "socket", "ratio"
    );
    println!(
        "{:<44} {ipc_up:>8.2} {sock_up:>8.2} {:>7.2}x",
        "to the peer (peer reads every byte)",
        ipc_up / sock_up
    );
    println!(
        "{:<44} {ipc_down:>8.2} {sock_down:>8.2} {:>7.2}x",
        "from the peer (copied out here)",
        ipc_down / sock_down
    );
}
