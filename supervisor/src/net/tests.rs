//! The connection limits with a real tonic server on a real socket: the
//! cap on open connections, and the idle timeout that keepalive PINGs do
//! not defeat while a call that stays open does.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;

fn limits(max_connections: usize, idle: Duration) -> Connections {
    Connections {
        max_connections,
        idle_timeout: idle,
        ..Connections::default()
    }
}

/// Accepted connections as `incoming` hands them on.
async fn listener(
    c: &Connections,
) -> (
    std::net::SocketAddr,
    impl Stream<Item = std::io::Result<Conn<tokio::net::TcpStream>>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (addr, incoming(TcpListenerStream::new(l), c, "test"))
}

/// Whether the server closed `s` (a read gets the end) within `within`.
async fn closed(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_as_they_are_accepted() {
    let c = limits(2, Duration::from_secs(60));
    let (addr, conns) = listener(&c).await;
    let mut conns = Box::pin(conns);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let first = conns.next().await.unwrap().unwrap();
    let second = conns.next().await.unwrap().unwrap();
    // The third is refused (dropped), so the stream waits for a fourth.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), conns.next())
            .await
            .is_err(),
        "no third connection is handed on"
    );
    assert!(
        closed(&mut clients[2], Duration::from_secs(5)).await,
        "the third was closed"
    );
    assert!(!closed(&mut clients[0], Duration::from_millis(100)).await);
    // A place freed is a place for the next.
    drop(first);
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _third_place = tokio::time::timeout(Duration::from_secs(5), conns.next())
        .await
        .expect("a place is free")
        .unwrap()
        .unwrap();
    assert!(!closed(&mut fourth, Duration::from_millis(100)).await);
    drop(second);
}

#[tokio::test]
async fn a_connection_with_no_call_open_is_closed_after_its_idle_timeout() {
    let c = limits(8, Duration::from_millis(200));
    let (addr, conns) = listener(&c).await;
    let mut conns = Box::pin(conns);
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut conn = conns.next().await.unwrap().unwrap();
    let info = tonic::transport::server::Connected::connect_info(&conn);
    // A call open: the connection stays, however long.
    let call = info.activity.enter();
    let mut b = [0u8; 8];
    assert!(
        tokio::time::timeout(Duration::from_millis(600), conn.read(&mut b))
            .await
            .is_err(),
        "no end while a call is open"
    );
    drop(call);
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut b))
        .await
        .expect("ended after the idle timeout")
        .unwrap();
    assert_eq!(n, 0, "the server side reads the end");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_admin_listener_closes_connections_past_the_cap() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().route("/livez", axum::routing::get(|| async { "ok\n" }));
    tokio::spawn(async move { axum::serve(Capped::new(l, 2, "test"), app).await });
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("answered")
            .unwrap();
        assert!(
            b[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&b[..n])
        );
        held.push(s);
    }
    // Two kept-alive connections hold both places: a third is closed.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ =
        tokio::io::AsyncWriteExt::write_all(&mut third, b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
    assert!(
        closed(&mut third, Duration::from_secs(5)).await,
        "the third was closed"
    );
    // A place freed is a place for the next.
    drop(held.pop());
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut fourth, b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut b))
        .await
        .expect("answered")
        .unwrap();
    assert!(b[..n].starts_with(b"HTTP/1.1 200"));
}
