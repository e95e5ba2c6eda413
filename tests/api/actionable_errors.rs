//! Errors an integrator can act on (issue 17): limits with their numbers, where the user
//! must be named in a form, what a key looks like, and which part of a request is at fault.

use futures_util::stream;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{expect, send, spawn_app_with};

const OVER_ONE_MIB: &str =
    "Request body too large: the limit is MAX_BODY_MB = 1 MiB (1048576 bytes)";

#[tokio::test]
async fn a_body_over_max_body_mb_is_told_the_limit() {
    let app = spawn_app_with(&[("MAX_BODY_MB", "1")]).await;
    let svc = app.as_service();
    // With a Content-Length: refused before the handler.
    expect(
        svc.post("/v1/files/upload?user_id=u1&filename=big.bin")
            .body(vec![0u8; (1 << 20) + 1]),
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({ "detail": OVER_ONE_MIB }),
    )
    .await;
    // Chunked: cut off when the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..5).map(|_| Ok(vec![0u8; 300 * 1024])).collect();
    expect(
        svc.post("/v1/files/upload?user_id=u1&filename=big.bin")
            .body(reqwest::Body::wrap_stream(stream::iter(chunks))),
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({ "detail": OVER_ONE_MIB }),
    )
    .await;
    // A raw part over the limit.
    let init = svc
        .clone()
        .acting_for("u1")
        .init(json!([{ "name": "p.bin", "size": 10 }]), "single", None)
        .await;
    let id = init["uploadId"].as_str().unwrap();
    let (s, b) = svc.put_part(id, 0, &vec![0u8; (1 << 20) + 1]).await;
    assert_eq!(
        (s, b),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "detail": OVER_ONE_MIB })
        )
    );
}

#[tokio::test]
async fn a_quota_error_says_used_limit_and_the_whole_size_requested() {
    // 0.00001 GiB = 10737 bytes.
    let app = spawn_app_with(&[("PER_USER_QUOTA_GB", "0.00001")]).await;
    let svc = app.as_service().acting_for("u1");
    svc.upload_file("a.bin", None, &[1u8; 1000]).await;
    // The quota is passed at about 9.7 KB received; the request asked for 50000 bytes.
    expect(
        svc.post("/v1/files/upload?user_id=u1&filename=b.bin")
            .body(vec![2u8; 50_000]),
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({ "detail": "Quota exceeded: 1000 of 10737 bytes in use (PER_USER_QUOTA_GB), 50000 more requested" }),
    )
    .await;
    // Declared at init: the declared size.
    let (s, b) = send(svc.post("/v1/files/init").json(&json!({
        "mode": "single",
        "files": [{ "name": "c.bin", "size": 20_000 }],
        "meta": { "user_id": "u1" },
    })))
    .await;
    assert_eq!(
        (s, b),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "detail": "Quota exceeded: 1000 of 10737 bytes in use (PER_USER_QUOTA_GB), 20000 more requested" })
        )
    );
}

#[tokio::test]
async fn a_service_form_must_name_the_user_before_the_file_and_may_name_the_folder_after() {
    let app = spawn_app_with(&[]).await;
    let svc = app.as_service();
    let form = Form::new()
        .part("file", Part::bytes(b"hello".to_vec()).file_name("a.txt"))
        .text("user_id", "u1");
    expect(
        svc.post("/v1/files/upload").multipart(form),
        StatusCode::BAD_REQUEST,
        json!({ "detail": "user_id is required for service calls: name the user in the query (?user_id=...) or in a user_id (or user_email) form field placed before the file part" }),
    )
    .await;
    // user_id first (or in the query), folder after the file: accepted, into the folder.
    for (url, form) in [
        ("/v1/files/upload", Form::new().text("user_id", "u1")),
        ("/v1/files/upload?user_id=u1", Form::new()),
    ] {
        let form = form
            .part("file", Part::bytes(b"hello".to_vec()).file_name("a.txt"))
            .text("folder", "later");
        let (s, b) = send(svc.post(url).multipart(form)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let key = b["files"][0]["key"].as_str().unwrap();
        assert!(key.starts_with("storage/u1/later/"), "{key}");
    }
}

#[tokio::test]
async fn a_key_without_storage_says_how_a_key_looks() {
    let app = spawn_app_with(&[]).await;
    let svc = app.as_service();
    let want = json!({ "detail": "Invalid key: a key looks like storage/{user_id}/[{folder}/]{file}, as an upload returns it (e.g. storage/u1/docs/1a2b3c4d_report.pdf), without empty, '.' or '..' segments or names starting with '.'" });
    expect(
        svc.get("/v1/files/signed-url?key=u1/docs/report.pdf"),
        StatusCode::BAD_REQUEST,
        want.clone(),
    )
    .await;
    expect(
        svc.post("/v1/files/signed-url")
            .json(&json!({ "key": "u1/docs/report.pdf" })),
        StatusCode::BAD_REQUEST,
        want,
    )
    .await;
}

#[tokio::test]
async fn the_signed_url_body_is_blamed_as_the_body_and_unknown_fields_pass() {
    let app = spawn_app_with(&[]).await;
    let svc = app.as_service();
    let done = svc
        .clone()
        .acting_for("u1")
        .upload_file("a.bin", None, b"abc")
        .await;
    let key = done["key"].as_str().unwrap();
    expect(
        svc.post("/v1/files/signed-url").json(&json!({ "ttl": 60 })),
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({ "detail": [{ "type": "missing", "loc": ["body", "key"], "msg": "Field required" }] }),
    )
    .await;
    expect(
        svc.get("/v1/files/signed-url?ttl=60"),
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({ "detail": [{ "type": "missing", "loc": ["query", "key"], "msg": "Field required" }] }),
    )
    .await;
    expect(
        svc.post("/v1/files/signed-url")
            .json(&json!({ "key": key, "ttl": 0 })),
        StatusCode::BAD_REQUEST,
        json!({ "detail": "ttl must be between 1 and 604800 seconds (in the body)" }),
    )
    .await;
    // The old service ignored fields it did not know; so do we.
    let (s, b) = send(
        svc.post("/v1/files/signed-url")
            .json(&json!({ "key": key, "ttl": 60, "sdk_version": "1.2", "extra": { "a": 1 } })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}
