//! How parts are kept (src/store/sessions.rs): parts that arrive in order are appended to
//! the session's data file while they stream in, and complete publishes that file as it is;
//! parts out of order, sent again, or arriving together fall back to a join. Either way the
//! stored bytes, SHA-256 and CRC-32 are those of the parts joined in order (API.md §3.1).

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// The files in a live session's folder, other than `session.json`, by kind: segment
/// records, part files, and whether the data file is there.
fn session_files(root: &Path, id: &str) -> (Vec<String>, Vec<String>, bool) {
    let names = files_under(&root.join(".parts").join(id));
    let segs = names
        .iter()
        .filter(|n| n.starts_with("seg_"))
        .cloned()
        .collect();
    let parts = names
        .iter()
        .filter(|n| n.starts_with("part_") && !n.ends_with(".sum"))
        .cloned()
        .collect();
    (segs, parts, names.iter().any(|n| n == "data"))
}

/// Checks a complete's answer against `data`: the answer, the stored bytes, and the
/// sidecar's SHA-256 and CRC-32.
fn assert_stored(root: &Path, done: &Value, data: &[u8]) {
    let key = done["key"].as_str().unwrap();
    assert_eq!(done["size"], data.len());
    assert_eq!(done["sha256"], sha_hex(data));
    assert!(
        std::fs::read(root.join(key)).unwrap() == data,
        "stored bytes differ"
    );
    let meta: Value =
        serde_json::from_slice(&std::fs::read(root.join(format!("{key}.meta"))).unwrap()).unwrap();
    assert_eq!(meta["sha256"], sha_hex(data));
    assert_eq!(meta["crc32"], crc32fast::hash(data));
    assert_eq!(meta["size"], data.len());
}

/// A chunked session for `data` as user `u`; its id.
async fn init(app: &TestApp, data: &[u8]) -> String {
    let init = app
        .as_service()
        .acting_for("u")
        .init(
            json!([{ "name": "f.bin", "size": data.len() }]),
            "chunked",
            None,
        )
        .await;
    init["uploadId"].as_str().unwrap().to_owned()
}

fn ok(res: (StatusCode, Value)) -> Value {
    assert_eq!(res.0, StatusCode::OK, "{}", res.1);
    res.1
}

#[tokio::test]
async fn parts_in_order_are_appended_and_complete_publishes_them_as_they_are() {
    let app = spawn_app().await;
    let root = app.root.path();
    // Sizes that do not fall on SHA-256 blocks, numbered from 1, raw and JSON mixed.
    let data = pattern(3 * 1024 * 1024 + 1001, 5);
    let id = init(&app, &data).await;
    let cuts = [0, 1_000_003, 1_000_004, 2_500_000, data.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let n = i as u32 + 1;
        let chunk = &data[w[0]..w[1]];
        if i % 2 == 0 {
            ok(app.as_service().put_part(&id, n, chunk).await);
        } else {
            ok(app.as_service().sdk_part(&id, n, chunk).await);
        }
    }
    let (segs, parts, has_data) = session_files(root, &id);
    assert_eq!(segs.len(), 4, "{segs:?} {parts:?}");
    assert!(parts.is_empty(), "{parts:?}");
    assert!(has_data);
    let (s, status) = app.as_service().session(&id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status["receivedBytes"], data.len());
    assert_eq!(status["parts"][1], json!({ "partNumber": 2, "size": 1 }));
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(root, &done, &data);
    assert!(files_under(&root.join(".parts")).is_empty());
    assert_eq!(app.as_service().session(&id).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn parts_out_of_order_are_joined() {
    let app = spawn_app().await;
    let root = app.root.path();
    let data = pattern(2 * 1024 * 1024 + 77, 6);
    let id = init(&app, &data).await;
    let chunks: Vec<&[u8]> = data.chunks(600_000).collect();
    // 2 first (appended at the start of the data file), then 0, 3, 1 (part files; 3 as
    // JSON whose chunk comes before its uploadId, so it is staged first).
    for n in [2usize, 0, 3, 1] {
        if n == 3 {
            ok(app.as_service().json_part(&id, 3, chunks[n]).await);
        } else {
            ok(app.as_service().put_part(&id, n as u32, chunks[n]).await);
        }
    }
    let (segs, parts, _) = session_files(root, &id);
    assert_eq!((segs.len(), parts.len()), (1, 3), "{segs:?} {parts:?}");
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(root, &done, &data);
    assert!(files_under(&root.join(".parts")).is_empty());
}

#[tokio::test]
async fn a_part_sent_again_after_it_was_appended_replaces_it() {
    let app = spawn_app().await;
    let root = app.root.path();
    let data = pattern(4 * 1024 * 1024, 7);
    let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();

    // A middle part sent wrong, then right.
    let id = init(&app, &data).await;
    let wrong = pattern(1 << 20, 99);
    for (n, c) in chunks.iter().enumerate() {
        let c: &[u8] = if n == 1 { &wrong } else { c };
        ok(app.as_service().put_part(&id, n as u32, c).await);
    }
    ok(app.as_service().sdk_part(&id, 1, chunks[1]).await);
    let (segs, parts, _) = session_files(root, &id);
    assert_eq!((segs.len(), parts.len()), (3, 1), "{segs:?} {parts:?}");
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(root, &done, &data);

    // The last part sent again, shorter then whole; no SHA given: the CRC and the
    // returned SHA-256 are still those of the bytes stored.
    let id = init(&app, &data).await;
    for (n, c) in chunks.iter().enumerate() {
        ok(app.as_service().put_part(&id, n as u32, c).await);
    }
    ok(app.as_service().put_part(&id, 3, &chunks[3][..10]).await);
    let (s, b) = app.as_service().complete(&id, json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    ok(app.as_service().put_part(&id, 3, chunks[3]).await);
    let done = ok(app.as_service().complete(&id, json!({})).await);
    assert_stored(root, &done, &data);

    // The first part sent again before the others: the rest still lands right.
    let id = init(&app, &data).await;
    ok(app.as_service().put_part(&id, 0, &wrong).await);
    ok(app.as_service().put_part(&id, 0, chunks[0]).await);
    for (n, c) in chunks.iter().enumerate().skip(1) {
        ok(app.as_service().put_part(&id, n as u32, c).await);
    }
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(root, &done, &data);
    assert!(files_under(&root.join(".parts")).is_empty());
}

#[tokio::test]
async fn a_sha_mismatch_keeps_appended_parts_for_a_later_complete() {
    let app = spawn_app().await;
    let root = app.root.path();
    let data = pattern(3 * 1024 * 1024 + 5, 8);
    let id = init(&app, &data).await;
    for (n, c) in data.chunks(1 << 20).enumerate() {
        ok(app.as_service().put_part(&id, n as u32, c).await);
    }
    let (s, b) = app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(b"something else") }))
        .await;
    assert_eq!(
        (s, b),
        (
            StatusCode::BAD_REQUEST,
            json!({ "detail": "SHA256 mismatch" })
        )
    );
    assert!(files_under(&root.join("storage")).is_empty());
    let (s, status) = app.as_service().session(&id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status["receivedBytes"], data.len());
    let (segs, parts, _) = session_files(root, &id);
    assert_eq!((segs.len(), parts.len()), (4, 0));
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(root, &done, &data);
}

/// A segment record's content is not fsynced: after a power cut it may be empty. The part
/// still counts by the record's name; only the shortcut is lost.
#[tokio::test]
async fn an_empty_segment_record_still_counts_and_complete_joins() {
    let app = spawn_app().await;
    let root = app.root.path();
    let data = pattern(3 * 1024 * 1024 + 11, 13);
    let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
    let id = init(&app, &data).await;
    for (n, c) in chunks.iter().enumerate().take(2) {
        ok(app.as_service().put_part(&id, n as u32, c).await);
    }
    let (segs, _, _) = session_files(root, &id);
    std::fs::write(root.join(".parts").join(&id).join(&segs[1]), b"").unwrap();
    for (n, c) in chunks.iter().enumerate().skip(2) {
        ok(app.as_service().put_part(&id, n as u32, c).await);
    }
    let (segs, parts, _) = session_files(root, &id);
    assert_eq!((segs.len(), parts.len()), (2, 2), "{segs:?} {parts:?}");
    let (_, status) = app.as_service().session(&id).await;
    assert_eq!(status["receivedBytes"], data.len());
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(root, &done, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completes_of_appended_parts_have_one_winner() {
    let app = spawn_app().await;
    let root = app.root.path();
    let data = pattern(2 * 1024 * 1024 + 3, 9);
    for _ in 0..3 {
        let id = init(&app, &data).await;
        for (n, c) in data.chunks(1 << 20).enumerate() {
            ok(app.as_service().put_part(&id, n as u32, c).await);
        }
        let sha = sha_hex(&data);
        let calls = (0..4).map(|_| {
            let req = app
                .post("/v1/files/complete")
                .as_service()
                .json(&json!({ "uploadId": id, "sha256": sha }));
            tokio::spawn(send(req))
        });
        let mut wins = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            let (s, b) = call.await.unwrap();
            match s {
                StatusCode::OK => wins.push(b),
                StatusCode::NOT_FOUND => {}
                other => panic!("{other}: {b}"),
            }
        }
        assert_eq!(wins.len(), 1, "{wins:?}");
        assert_stored(root, &wins[0], &data);
    }
    assert_eq!(files_under(&root.join("storage").join("u")).len(), 6);
    assert!(files_under(&root.join(".parts")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_arriving_while_another_is_appended_goes_to_its_own_file() {
    let app = spawn_app().await;
    let root = app.root.path();
    let data = pattern(3 * 1024 * 1024, 10);
    let chunks: Vec<Vec<u8>> = data.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    let id = init(&app, &data).await;
    // Part 0 streams slowly: it holds the data file while parts 2 and 1 arrive.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let slow = app
        .request(reqwest::Method::PUT, &format!("/v1/files/part/{id}/0"))
        .as_service()
        .header("content-length", chunks[0].len())
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
    let slow = tokio::spawn(send(slow));
    tx.send(Ok(chunks[0][..1000].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(app.as_service().put_part(&id, 2, &chunks[2]).await);
    ok(app.as_service().put_part(&id, 1, &chunks[1]).await);
    tx.send(Ok(chunks[0][1000..].to_vec())).await.unwrap();
    drop(tx);
    ok(slow.await.unwrap());
    let (segs, parts, _) = session_files(root, &id);
    assert_eq!((segs.len(), parts.len()), (1, 2), "{segs:?} {parts:?}");
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(root, &done, &data);
}

#[tokio::test]
async fn a_cut_append_leaves_nothing_that_counts() {
    use tokio::io::AsyncWriteExt as _;
    let app = spawn_app().await;
    let root = app.root.path();
    let data = pattern(3 * 1024 * 1024, 11);
    let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
    let id = init(&app, &data).await;
    ok(app.as_service().put_part(&id, 0, chunks[0]).await);
    // Part 1 (2 MiB announced) cut off after its first write batch reached the data file.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /v1/files/part/{id}/1 HTTP/1.1\r\nHost: x\r\nX-Service-Token: {SERVICE_TOKEN}\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&vec![0xee; 1_500_000]).await.unwrap();
    let data_file = root.join(".parts").join(&id).join("data");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&data_file).unwrap().len() <= 1 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the append never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(sock);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, status) = app.as_service().session(&id).await;
    assert_eq!(status["receivedBytes"], 1 << 20, "{status}");
    // The data file is cut back to the one part.
    assert_eq!(std::fs::metadata(&data_file).unwrap().len(), 1 << 20);
    for (n, c) in chunks.iter().enumerate().skip(1) {
        ok(app.as_service().put_part(&id, n as u32, c).await);
    }
    let (segs, parts, _) = session_files(root, &id);
    assert_eq!((segs.len(), parts.len()), (3, 0));
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(root, &done, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appending_carries_on_after_a_restart_and_a_kill_mid_part() {
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap().to_owned();
    let env = [
        ("UPLOAD_ROOT", root_s.as_str()),
        ("PORT", "0"),
        ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN),
        ("UPLOAD_SIGNING_KEY", SIGNING_KEY),
        ("RUST_LOG", "warn"),
    ];
    let start = || start_server(&env, &[]);
    let http = client();
    let call = |req: reqwest::RequestBuilder| async move {
        let res = req
            .header("x-service-token", SERVICE_TOKEN)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    // Parts of 1.5 MiB: a cut part can then have a write batch (1 MiB) in the data file.
    const PART: usize = 1536 * 1024;
    let data = pattern(4 * PART + 9, 12);
    let chunks: Vec<Vec<u8>> = data.chunks(PART).map(<[u8]>::to_vec).collect();

    let mut server = start().await;
    let (s, init) = call(http.post(server.url("/v1/files/init")).json(&json!({
        "mode": "chunked", "files": [{ "name": "r.bin", "size": data.len() }], "meta": { "user_id": "u" }
    })))
    .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let id = init["uploadId"].as_str().unwrap().to_owned();
    let put = |server: &Server, n: usize| {
        http.put(server.url(&format!("/v1/files/part/{id}/{n}")))
            .body(chunks[n].clone())
    };
    for n in 0..2 {
        let (s, b) = call(put(&server, n)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    // A graceful restart between parts.
    server.stop().await;
    let mut server = start().await;
    let (s, b) = call(put(&server, 2)).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Part 3 is killed mid-body, once its first bytes are in the data file.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let cut = http
        .put(server.url(&format!("/v1/files/part/{id}/3")))
        .header("x-service-token", SERVICE_TOKEN)
        .header("content-length", chunks[3].len())
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .send();
    let cut = tokio::spawn(cut);
    tx.send(Ok(vec![0xab; 1_500_000])).await.unwrap();
    let data_file = root.path().join(".parts").join(&id).join("data");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&data_file).unwrap().len() <= 3 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the append never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(tx);
    let _ = cut.await;

    let server = start().await;
    let (s, status) = call(http.get(server.url(&format!("/v1/files/uploads/{id}")))).await;
    assert_eq!(s, StatusCode::OK, "{status}");
    assert_eq!(status["receivedBytes"], 3 * PART, "{status}");
    for n in 3..chunks.len() {
        let (s, b) = call(put(&server, n)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    // Still one chain: every part in the data file, none in its own file.
    let (segs, parts, _) = session_files(root.path(), &id);
    assert_eq!((segs.len(), parts.len()), (5, 0), "{segs:?} {parts:?}");
    let (s, done) = call(
        http.post(server.url("/v1/files/complete"))
            .json(&json!({ "uploadId": id, "sha256": sha_hex(&data) })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert_stored(root.path(), &done, &data);
}
