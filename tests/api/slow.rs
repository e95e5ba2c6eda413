//! Slow and idle clients (issue #8): a body trickled below the minimum rate is cut off with
//! 408 and leaves nothing; a slow body above it is stored; connections that never finish a
//! request head, or sit idle between requests, are closed; kept-alive connections still work.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::upload::{files_under, init_as_service};

/// Body limits short enough for a test: 64 B/s averaged over 2 s windows, 10 s idle.
const SLOW_BODY_ENV: &[(&str, &str)] = &[
    ("REQUEST_BODY_TIMEOUT_SECS", "10"),
    ("REQUEST_BODY_MIN_RATE", "64"),
    ("REQUEST_BODY_RATE_WINDOW_SECS", "2"),
];

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Sends `head`, then `total` body bytes in `chunk`-byte writes every `every`, while
/// reading the answer. Returns the answer (as text) and when it came, counted from the
/// first body byte; stops writing as soon as the answer is there or the server closed.
async fn trickle(
    addr: &str,
    head: &str,
    total: usize,
    chunk: usize,
    every: Duration,
) -> (String, Duration) {
    let sock = TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = sock.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            let n = chunk.min(total - sent);
            if wr.write_all(&vec![b'x'; n]).await.is_err() {
                return;
            }
            sent += n;
            tokio::time::sleep(every).await;
        }
        // Keep the write half open until the answer has been read.
        std::future::pending::<()>().await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    writer.abort();
    assert!(
        read.is_ok(),
        "no answer in 30 s: {:?}",
        String::from_utf8_lossy(&answer)
    );
    (String::from_utf8_lossy(&answer).into_owned(), took)
}

fn head(method: &str, path: &str, length: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nX-Service-Token: {SERVICE_TOKEN}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

/// Every reservation in every quota ledger under `root`.
fn reservations(root: &std::path::Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root.join(".quota")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !name.starts_with('.') {
            let ledger: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            for (k, v) in ledger["reserved"].as_object().unwrap() {
                out.push((k.clone(), v.clone()));
            }
        }
    }
    out
}

fn assert_cut_for_rate(what: &str, answer: &str, took: Duration) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
    assert!(
        answer.contains(r#"{"detail":"Request body too slow"}"#),
        "{what}: {answer}"
    );
    // One 2 s window (plus scheduling), far from the 10 s idle timeout.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "{what}: cut after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_below_the_minimum_rate_is_cut_off_and_leaves_nothing() {
    let app = spawn_app_with(SLOW_BODY_ENV).await;
    let init = init_as_service(
        &app,
        "u",
        json!([{ "name": "a.bin", "size": 1000 }]),
        "single",
        None,
    )
    .await;
    let id = init["uploadId"].as_str().unwrap().to_owned();
    let a = addr(&app);
    // 1 byte every 250 ms: 4 B/s, never idle for long, far below 64 B/s.
    let every = Duration::from_millis(250);
    let part_head = head("PUT", &format!("/v1/files/part/{id}/0"), 1000);
    let upload_head = head("POST", "/v1/files/upload?user_id=u&filename=t.bin", 1000);
    let ((part, part_took), (upload, upload_took)) = tokio::join!(
        trickle(&a, &part_head, 1000, 1, every),
        trickle(&a, &upload_head, 1000, 1, every),
    );
    assert_cut_for_rate("raw part", &part, part_took);
    assert_cut_for_rate("one-request upload", &upload, upload_took);

    // Nothing left: the part's session holds no bytes, no work folder, no reservation
    // beyond the session's own, nothing stored.
    let (s, status) = send(app.get(&format!("/v1/files/uploads/{id}")).as_service()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status["receivedBytes"], 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let parts = files_under(&app.root.path().join(".parts"));
        let reserved = reservations(app.root.path());
        let clean = parts == vec![format!("{id}/session.json")]
            && reserved == vec![(id.clone(), json!(1000))];
        if clean {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {parts:?}, reservations {reserved:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(files_under(&app.root.path().join("storage")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_above_the_minimum_rate_is_stored() {
    let app = spawn_app_with(SLOW_BODY_ENV).await;
    let init = init_as_service(
        &app,
        "u",
        json!([{ "name": "a.bin", "size": 2000 }]),
        "single",
        None,
    )
    .await;
    let id = init["uploadId"].as_str().unwrap().to_owned();
    let a = addr(&app);
    // 100 bytes every 200 ms: 500 B/s for 4 s, two windows and more.
    let every = Duration::from_millis(200);
    let part_head = head("PUT", &format!("/v1/files/part/{id}/0"), 2000);
    let upload_head = head("POST", "/v1/files/upload?user_id=u&filename=s.bin", 2000);
    let ((part, took), (upload, _)) = tokio::join!(
        trickle(&a, &part_head, 2000, 100, every),
        trickle(&a, &upload_head, 2000, 100, every),
    );
    assert!(part.starts_with("HTTP/1.1 200"), "{part}");
    assert!(part.contains(r#""size":2000"#), "{part}");
    assert!(took >= Duration::from_millis(3500), "{took:?}");
    assert!(upload.starts_with("HTTP/1.1 200"), "{upload}");
    assert!(upload.contains(r#""size":2000"#), "{upload}");
}
