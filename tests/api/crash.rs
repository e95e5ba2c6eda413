//! A server killed with SIGKILL in the middle of a complete leaves either the finished
//! file with its sidecar or nothing visible, and after a restart the session or the file is
//! there and consistent (issue: uploads, "Crash").

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::upload::files_under;

const SIZE: usize = 200 * 1024 * 1024;
const PART: usize = 8 * 1024 * 1024;

fn env<'a>(root: &'a str, port: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("UPLOAD_ROOT", root),
        ("PORT", port),
        ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN),
        ("UPLOAD_SIGNING_KEY", SIGNING_KEY),
        ("RUST_LOG", "warn"),
    ]
}

async fn call(http: &reqwest::Client, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let _ = http;
    let res = req
        .header("x-service-token", SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// One round: upload 200 MB in parts, start the complete, SIGKILL after `delay` (never, with
/// `None`: then the time the complete took is returned), restart, and check what is there.
async fn kill_during_complete(delay: Option<Duration>) -> (&'static str, Duration) {
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap().to_owned();
    let port = free_port();
    let port_s = port.to_string();
    let mut server = start_server(&env(&root_s, &port_s), &[], port).await;
    let http = client();
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    let sha = hex::encode(Sha256::digest(&data));
    let (s, init) = call(
        &http,
        http.post(server.url("/v1/files/init")).json(&json!({
            "mode": "chunked", "files": [{ "name": "big.bin", "size": SIZE }], "meta": { "user_id": "crash" }
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let id = init["uploadId"].as_str().unwrap().to_owned();
    for (n, chunk) in data.chunks(PART).enumerate() {
        let (s, b) = call(
            &http,
            http.put(server.url(&format!("/v1/files/part/{id}/{n}")))
                .body(chunk.to_vec()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let req = http
        .post(server.url("/v1/files/complete"))
        .header("x-service-token", SERVICE_TOKEN)
        .json(&json!({ "uploadId": id, "sha256": sha }));
    let started = std::time::Instant::now();
    let pending = tokio::spawn(async move { req.send().await.map(|r| r.status()) });
    let answered = match delay {
        Some(delay) => {
            tokio::time::sleep(delay).await;
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            pending.await.unwrap().ok()
        }
        None => {
            let status = pending.await.unwrap().ok();
            assert_eq!(status, Some(StatusCode::OK));
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            status
        }
    };
    let took = started.elapsed();

    // Before any restart: nothing partial is visible in storage/.
    let storage = root.path().join("storage");
    // (A sidecar alone may be there for the instant between its rename and the data's: it
    // is never listed or served, and the restart removes it.)
    let visible: Vec<String> = files_under(&storage)
        .into_iter()
        .filter(|f| !f.ends_with(".meta"))
        .collect();
    assert!(visible.len() <= 1, "{visible:?}");
    if visible.len() == 1 {
        assert!(
            storage.join(format!("{}.meta", visible[0])).exists(),
            "data without its sidecar"
        );
        assert_eq!(
            std::fs::metadata(storage.join(&visible[0])).unwrap().len() as usize,
            SIZE
        );
    }

    let port2 = free_port();
    let port2_s = port2.to_string();
    let server = start_server(&env(&root_s, &port2_s), &[], port2).await;
    let (s, list) = call(&http, http.get(server.url("/v1/files/all?user_id=crash"))).await;
    assert_eq!(s, StatusCode::OK);
    let files = list["files"].as_array().unwrap().clone();
    let outcome = if files.is_empty() {
        assert_ne!(
            answered,
            Some(StatusCode::OK),
            "a 200 was sent but the file is gone"
        );
        // The session came back whole: it completes now.
        let (s, st) = call(
            &http,
            http.get(server.url(&format!("/v1/files/uploads/{id}"))),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{st}");
        assert_eq!(st["receivedBytes"], SIZE);
        let (s, done) = call(
            &http,
            http.post(server.url("/v1/files/complete"))
                .json(&json!({ "uploadId": id, "sha256": sha })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{done}");
        "session recovered"
    } else {
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0]["size"], SIZE);
        let (s, _) = call(
            &http,
            http.get(server.url(&format!("/v1/files/uploads/{id}"))),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        "file published"
    };
    let key = {
        let (_, list) = call(&http, http.get(server.url("/v1/files/all?user_id=crash"))).await;
        list["files"][0]["key"].as_str().unwrap().to_owned()
    };
    let stored = std::fs::read(root.path().join(&key)).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&stored)), sha);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(root.path().join(format!("{key}.meta"))).unwrap())
            .unwrap();
    assert_eq!(meta["sha256"], sha);
    // Exactly the file and its sidecar; no claimed session or temporary file left.
    assert_eq!(files_under(&storage).len(), 2);
    let parts_left: Vec<String> = files_under(&root.path().join(".parts"));
    assert!(parts_left.is_empty(), "{parts_left:?}");
    (outcome, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_complete() {
    // First a complete that is let finish, to learn how long one takes here; then kills
    // early, in the middle, and at the very end of that time (around the publish).
    let (_, full) = kill_during_complete(None).await;
    let mut outcomes = Vec::new();
    for fraction in [0.1, 0.7, 0.97, 1.0] {
        let delay = full.mul_f64(fraction);
        outcomes.push((delay, kill_during_complete(Some(delay)).await.0));
    }
    eprintln!("complete took {full:?}; crash outcomes: {outcomes:?}");
}
