//! Hostile connections against the real sidecar: a thousand streams on one
//! HTTP/2 connection, a reset flood, streams whose client reads nothing,
//! idle streams with absurd deadlines. The sidecar advertises its limits,
//! sends the abuser a GOAWAY, ends what holds a slot for nothing, keeps its
//! pid and probes, and serves everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::vision::{BLAZEFACE, config as vision_config};
use e2e::{SMOLLM2, Sidecar, add_model, greedy, serial, smollm2_config, store};
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{OverflowPolicy, generate_stream_response};
use tonic::Code;

/// HTTP/2 frame types and codes (RFC 9113).
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// A literal header field without indexing, new name (HPACK, no Huffman).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend(name.as_bytes());
    out.push(value.len() as u8);
    out.extend(value.as_bytes());
}

/// The header block of a gRPC call to `path`.
fn grpc_headers(path: &str) -> Vec<u8> {
    // :method POST (static 3), :scheme http (static 6).
    let mut h = vec![0x83, 0x86];
    // :path, a literal with the static name 4.
    h.push(0x04);
    h.push(path.len() as u8);
    h.extend(path.as_bytes());
    literal(&mut h, ":authority", "localhost");
    literal(&mut h, "content-type", "application/grpc");
    literal(&mut h, "te", "trailers");
    h
}

/// A raw HTTP/2 connection: the client preface and an empty SETTINGS.
fn raw_connection(sc: &Sidecar) -> TcpStream {
    let mut s = TcpStream::connect(sc.api).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s
}

struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame from the server; `None` when it closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some(Frame {
        kind: head[3],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

fn code_of(f: &Frame) -> u32 {
    let at = if f.kind == GOAWAY { 4 } else { 0 };
    u32::from_be_bytes(f.payload[at..at + 4].try_into().unwrap())
}

/// What the server said on a raw connection until it closed it or went
/// quiet: its MAX_CONCURRENT_STREAMS, the streams it refused, and the
/// GOAWAY code.
#[derive(Default, Debug)]
struct Heard {
    max_streams: Option<u32>,
    refused: usize,
    goaway: Option<u32>,
}

fn listen(s: &mut TcpStream) -> Heard {
    let mut heard = Heard::default();
    while let Some(f) = read_frame(s) {
        match f.kind {
            SETTINGS if f.stream == 0 => {
                for kv in f.payload.chunks_exact(6) {
                    if u16::from_be_bytes([kv[0], kv[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS {
                        heard.max_streams = Some(u32::from_be_bytes(kv[2..6].try_into().unwrap()));
                    }
                }
            }
            RST_STREAM if code_of(&f) == REFUSED_STREAM => heard.refused += 1,
            GOAWAY => {
                heard.goaway = Some(code_of(&f));
                break;
            }
            _ => {}
        }
    }
    heard
}

async fn serves(sc: &Sidecar) {
    let mut text = sc.text().await;
    let r = text
        .generate(greedy("The capital of France is", 4))
        .await
        .expect("another client is served");
    assert!(!r.into_inner().text.is_empty());
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}

/// Attack 8: 1000 streams opened at once on one connection meet the
/// advertised limit of 256 (the 744 past it refused), a flood of
/// streams reset as soon as opened gets a GOAWAY (ENHANCE_YOUR_CALM), and
/// meanwhile another client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_and_a_reset_flood_meet_the_limits() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let before = e2e::status_bytes(pid, "VmRSS") >> 10;

    // 1000 calls opened, none sent a body: 256 wait, 744 are refused.
    let path = "/sidecar.v1.TextService/Tokenize";
    let headers = grpc_headers(path);
    let mut s = raw_connection(&sc);
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &headers));
    }
    s.write_all(&burst).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let heard = listen(&mut s);
    assert_eq!(heard.max_streams, Some(256), "{heard:?}");
    // Streams past the limit are refused.
    assert_eq!(heard.refused, 1000 - 256, "{heard:?}");
    assert_eq!(heard.goaway, None, "{heard:?}");
    serves(&sc).await;
    drop(s);

    // Streams opened and reset at once, 10 000 times: a GOAWAY.
    let mut s = raw_connection(&sc);
    let mut flood = Vec::new();
    for i in 0..10_000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(HEADERS, END_HEADERS, id, &headers));
        flood.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The server may close the connection before it has read it all.
    let _ = s.write_all(&flood);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let heard = listen(&mut s);
    assert_eq!(heard.goaway, Some(ENHANCE_YOUR_CALM), "{heard:?}");
    serves(&sc).await;

    assert_eq!(sc.child.id(), pid);
    let grown = (e2e::status_bytes(pid, "VmRSS") >> 10).saturating_sub(before);
    assert!(grown < 64 << 10, "the supervisor grew {grown} KiB");
    // Counted calls only: the refused and reset streams add no series.
    let (_, metrics) = sc.admin_get("/metrics");
    assert!(metrics.len() < 64 << 10, "{}", metrics.len());
}

/// Attack 9: 4 GenerateStream calls whose client reads nothing and 4 idle
/// vision streams, all with a 99999999H timeout (cut to `deadlines.max`),
/// do not keep a Generate with a 5 s deadline from being served (the
/// worker pauses a request without credit, not the others, and has a KV
/// slot for each call the supervisor lets in); the
/// unread streams are ended after `connections.stream_stall` (their worker
/// slots freed), and their clients, once they read, get what was held and
/// then RESOURCE_EXHAUSTED naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_and_idle_streams_with_endless_deadlines_hold_no_slot_for_ever() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, BLAZEFACE);
    let config = format!(
        "[workers]\nmax_in_flight = 8\n[connections]\nstream_stall = 2\n[[models]]\nid = \"smollm2\"\nfamily = \"text\"\npath = \"{SMOLLM2}\"\ntext = {{ context_size = 512, threads = 1, parallel = 8 }}\n[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n"
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("smollm2").await;
    sc.ready("faces").await;
    let pid = sc.child.id();

    // Clients that read next to nothing: a 64-byte HTTP/2 window each.
    let mut unread = Vec::new();
    for _ in 0..4 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sc.api))
            .unwrap()
            .initial_stream_window_size(Some(64))
            .connect()
            .await
            .expect("connect");
        let mut text = TextServiceClient::new(channel);
        let mut req = tonic::Request::new(greedy("Count from one to one thousand: one, two,", 400));
        req.metadata_mut()
            .insert("grpc-timeout", "99999999H".parse().unwrap());
        let stream = text
            .generate_stream(req)
            .await
            .expect("stream opened")
            .into_inner();
        unread.push((text, stream));
    }
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut vision = VisionServiceClient::connect(format!("http://{}", sc.api))
            .await
            .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(vision_config(OverflowPolicy::Unspecified, 4))
            .await
            .unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("grpc-timeout", "99999999H".parse().unwrap());
        let stream = vision
            .process(req)
            .await
            .expect("stream opened")
            .into_inner();
        idle.push((vision, tx, stream));
    }

    let mut text = sc.text().await;
    let mut req = tonic::Request::new(greedy("The capital of France is", 4));
    req.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let r = text.generate(req).await.expect("served within its 5 s");
    assert!(!r.into_inner().text.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));

    // The unread streams are ended: their slots come back.
    sc.eventually("smollm2", Duration::from_secs(30), |m| m.in_flight == 0)
        .await;
    for (_, mut stream) in unread {
        let mut tokens = 0;
        let end = loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if matches!(m.msg, Some(generate_stream_response::Msg::Done(_))) {
                        panic!("an unread stream ran to its end instead of being cut");
                    }
                    tokens += 1;
                }
                Ok(None) => panic!("the stream ended without a status after {tokens} messages"),
                Err(s) => break s,
            }
        };
        assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
        assert!(
            end.message().contains("connections.stream_stall"),
            "{}",
            end.message()
        );
        assert!(tokens < 400, "{tokens}");
    }
    assert_eq!(sc.child.id(), pid);
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    drop(idle);
}
