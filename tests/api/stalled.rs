//! Responses nobody reads, and the cap on open connections (issue 16, item 2): a client that
//! asks for a large file or a batch ZIP and never reads loses its connection at the stall
//! timeout, and the server lets go of the files it held; a slow reader that pauses for less
//! is not cut; past `MAX_CONNECTIONS` a new connection gets a `503` and is closed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

const STALL_SECS: u64 = 2;

fn addr(app: &TestApp) -> std::net::SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// Bytes that Deflate cannot shrink (xorshift), so a compressed archive stays large.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Uploads `data` as `name` for `u1` and returns its key and its path on disk as the kernel
/// names it in `/proc/self/fd`.
async fn stored(app: &TestApp, name: &str, data: &[u8]) -> (String, PathBuf) {
    let done = app
        .as_service()
        .acting_for("u1")
        .upload_file(name, None, data)
        .await;
    let key = done["key"].as_str().unwrap().to_owned();
    let path = app.storage_root().join(&key).canonicalize().unwrap();
    (key, path)
}

/// This process's descriptors open on any of `files` (the app runs in this process).
fn fds_on(files: &[PathBuf]) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| files.contains(&t)))
        .count()
}

/// A connection with a 2 KiB receive buffer that sends `path`'s GET.
async fn request_small_window(app: &TestApp, path: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let mut conn = sock.connect(addr(app)).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

/// Waits until no descriptor is open on `files`, after one was seen; returns when, counted
/// from `from`.
async fn released_after(files: &[PathBuf], from: Instant, limit: Duration) -> Duration {
    let mut seen = false;
    loop {
        let open = fds_on(files);
        seen |= open > 0;
        if seen && open == 0 {
            return from.elapsed();
        }
        assert!(
            from.elapsed() < limit,
            "{open} descriptors still open on {files:?} after {limit:?} (seen open: {seen})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads what the server sent until it closes; fails if that takes more than 20 s.
async fn drain(conn: &mut TcpStream) -> usize {
    // Through the 2 KiB window, the megabytes still in the server's socket buffer would take
    // long (a window below one segment is filled by the persist timer).
    socket2::SockRef::from(&*conn)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
            total += n;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("the server did not close the stalled connection: {total} bytes read")
    });
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_nobody_reads_is_closed_and_its_file_released() {
    let stall = STALL_SECS.to_string();
    let app = spawn_app_with(&[("RESPONSE_STALL_TIMEOUT_SECS", stall.as_str())]).await;
    let len = 16 << 20;
    let (key, path) = stored(&app, "big.bin", &pattern(len, 1)).await;

    let sent = Instant::now();
    let mut conn = request_small_window(&app, &format!("/{key}")).await;
    let files = [path];
    if app.cloud.is_none() {
        let t = released_after(&files, sent, Duration::from_secs(STALL_SECS + 8)).await;
        assert!(
            t >= Duration::from_secs(STALL_SECS) && t < Duration::from_secs(STALL_SECS + 5),
            "file released {t:?} after the request (stall timeout {STALL_SECS} s)"
        );
    } else {
        // s3: the S3 server's descriptors say nothing of this server; the drain checks the cut.
        tokio::time::sleep(Duration::from_secs(STALL_SECS + 2)).await;
    }
    let got = drain(&mut conn).await;
    assert!(got < len, "the whole file arrived ({got} bytes): not cut");
    // The server is fine and answers others meanwhile.
    assert_eq!(send(app.get("/healthz")).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_zip_nobody_reads_is_closed_and_its_files_released() {
    let stall = STALL_SECS.to_string();
    let app = spawn_app_with(&[("RESPONSE_STALL_TIMEOUT_SECS", stall.as_str())]).await;
    let (ka, pa) = stored(&app, "a.bin", &noise(8 << 20, 2)).await;
    let (kb, pb) = stored(&app, "b.bin", &noise(8 << 20, 3)).await;
    let files = [pa, pb];
    let mut conns = Vec::new();
    for compress in [false, true] {
        let (s, b) = send(
            app.post("/v1/files/batch-download")
                .as_service()
                .json(&json!({ "keys": [ka, kb], "compress": compress })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let token = b["token"].as_str().unwrap();
        let path = format!("/v1/files/batch-download/{token}");
        conns.push(request_small_window(&app, &path).await);
    }
    let sent = Instant::now();
    if app.cloud.is_none() {
        let t = released_after(&files, sent, Duration::from_secs(STALL_SECS + 8)).await;
        assert!(
            t < Duration::from_secs(STALL_SECS + 5),
            "files released {t:?} after the requests (stall timeout {STALL_SECS} s)"
        );
    } else {
        // s3: the descriptors on the S3 server's files say nothing of this server (the
        // object store hands over the bytes at its own pace); past the stall timeout the
        // connections must be cut, which the drain below checks.
        tokio::time::sleep(Duration::from_secs(STALL_SECS + 2)).await;
    }
    for mut conn in conns {
        let got = drain(&mut conn).await;
        assert!(got < 16 << 20, "the whole archive arrived ({got} bytes)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_pausing_less_than_the_stall_timeout_gets_everything() {
    let stall = STALL_SECS.to_string();
    let app = spawn_app_with(&[("RESPONSE_STALL_TIMEOUT_SECS", stall.as_str())]).await;
    let len = 3 << 20;
    let (key, _) = stored(&app, "slow.bin", &pattern(len, 4)).await;
    let started = Instant::now();
    let mut conn = request_small_window(&app, &format!("/{key}")).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut next_pause = 0;
    loop {
        if got.len() >= next_pause {
            // Paused three times (at 0, 1 and 2 MiB) for 3/4 of the stall timeout: the
            // whole transfer lasts longer than the timeout, but no pause reaches it.
            tokio::time::sleep(Duration::from_millis(STALL_SECS * 750)).await;
            next_pause += 1 << 20;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("no byte in 10 s")
            .unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= end + 4 + len {
                assert!(got.starts_with(b"HTTP/1.1 200"));
                assert_eq!(got[end + 4..], pattern(len, 4)[..]);
                break;
            }
        }
    }
    assert!(started.elapsed() > Duration::from_secs(STALL_SECS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_new_connection_gets_503_and_is_closed() {
    let app = spawn_app_with(&[("MAX_CONNECTIONS", "2")]).await;
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(addr(&app)).await.unwrap();
        conn.write_all(healthz).await.unwrap();
        let status = read_response(&mut conn).await.0;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        open.push(conn);
    }
    // Both stay open (kept alive): a third is one too many.
    let mut third = TcpStream::connect(addr(&app)).await.unwrap();
    third.write_all(healthz).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("the connection past the cap is still open")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{"detail":"Too many connections, try again later"}"#),
        "{answer}"
    );
    // The open ones still work, and once one closes there is room again.
    open[0].write_all(healthz).await.unwrap();
    assert!(read_response(&mut open[0])
        .await
        .0
        .starts_with("HTTP/1.1 200"));
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut conn = TcpStream::connect(addr(&app)).await.unwrap();
        conn.write_all(healthz).await.unwrap();
        let mut first = [0u8; 12];
        conn.read_exact(&mut first).await.unwrap();
        if &first == b"HTTP/1.1 200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still turned away 3 s after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
