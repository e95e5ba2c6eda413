//! Graceful stop (API.md §8): on SIGTERM the binary stops accepting, lets the requests in
//! flight finish with a complete response, and exits 0.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{keys, read_response, start_server, Server, SERVICE_TOKEN};

async fn start() -> (Server, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let server = start_server(
        &[
            ("PORT", "0"),
            ("UPLOAD_ROOT", root.path().to_str().unwrap()),
            ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN),
            (
                "JWT_PRIVATE_KEY_PATH",
                keys().main.private_path.to_str().unwrap(),
            ),
        ],
        &[],
    )
    .await;
    (server, root)
}

fn request_head() -> String {
    format!(
        "POST /v1/files/generate-token?user_id=u1 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\
         X-Service-Token: {SERVICE_TOKEN}\r\n\
         Content-Type: application/octet-stream\r\n\
         Content-Length: 10\r\n\
         \r\n"
    )
}

fn assert_minted(status: &str, body: &str) {
    assert!(status.starts_with("HTTP/1.1 200"), "{status}: {body}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["user_id"], "u1", "{body}");
    assert_eq!(json["token_type"], "Bearer", "{body}");
}

async fn assert_refused(port: &str) {
    let err = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .map(|_| ())
        .expect_err("a new connection was accepted after SIGTERM");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn sigterm_lets_a_request_with_a_slow_body_finish() {
    let (mut server, _root) = start().await;
    let addr = server.addr().to_owned();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(request_head().as_bytes()).await.unwrap();
    stream.write_all(b"01234").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    server.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_refused(&port).await;
    // The rest of the body may meet a connection the server already finished with.
    let _ = stream.write_all(b"56789").await;
    let (status, body) = read_response(&mut stream).await;
    assert_minted(&status, &body);
    let exit = server.wait_exit(Duration::from_secs(5)).await;
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test]
async fn sigterm_lets_a_request_with_slow_headers_finish() {
    let (mut server, _root) = start().await;
    let addr = server.addr().to_owned();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let head = request_head();
    let (first, rest) = head.split_at(head.find("X-Service-Token").unwrap());
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The request has begun but the server cannot have answered it yet.
    server.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_refused(&port).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited with a request in flight"
    );
    stream.write_all(rest.as_bytes()).await.unwrap();
    stream.write_all(b"0123456789").await.unwrap();
    let (status, body) = read_response(&mut stream).await;
    assert_minted(&status, &body);
    let exit = server.wait_exit(Duration::from_secs(5)).await;
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test]
async fn sigterm_on_an_idle_server_exits_0_quickly() {
    let (mut server, _root) = start().await;
    let started = Instant::now();
    server.terminate();
    let exit = server.wait_exit(Duration::from_secs(5)).await;
    assert!(exit.success(), "exit status {exit}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn sigterm_closes_idle_connections_at_once() {
    let (mut server, _root) = start().await;
    let addr = server.addr().to_owned();
    // One kept alive after a request, one that never sent a byte.
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_response(&mut kept).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let _silent = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.terminate();
    let exit = server.wait_exit(Duration::from_secs(5)).await;
    assert!(exit.success(), "exit status {exit}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut rest = Vec::new();
    assert_eq!(kept.read_to_end(&mut rest).await.unwrap_or(0), 0);
}
