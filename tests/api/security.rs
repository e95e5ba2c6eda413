//! Holes found by probing the running server as an attacker would (issue 16), each shown
//! closed: sidecar-named folders, multipart text fields, JSON parts staged ahead of their
//! session, the inline-type allowlist, and names that lie to people.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::batch::check_all_readers;
use crate::helpers::*;

/// 1 MiB, as `PER_USER_QUOTA_GB`.
const ONE_MIB_QUOTA: &str = "0.0009765625";

/// A raw one-request upload as a user: status and body.
async fn raw_upload(app: &TestApp, jwt: &str, query: &str, body: Vec<u8>) -> (StatusCode, Value) {
    send(
        app.post(&format!("/v1/files/upload?{query}"))
            .bearer(jwt)
            .body(body),
    )
    .await
}

#[tokio::test]
async fn a_folder_named_like_a_sidecar_is_listed_and_counted() {
    let root = tempfile::tempdir().unwrap();
    // A tree the old sanitiser let through: a folder `old.meta` with a file in it.
    let old = root.path().join("storage/bob/old.meta");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("1a2b3c4d_x.bin"), pattern(900_000, 1)).unwrap();
    let app = spawn_app_with(&[
        ("UPLOAD_ROOT", root.path().to_str().unwrap()),
        ("PER_USER_QUOTA_GB", ONE_MIB_QUOTA),
    ])
    .await;

    // A new folder so named gets the `_` a file name gets.
    let alice = app.user_token("alice");
    let (s, b) = raw_upload(
        &app,
        &alice,
        "filename=x.bin&folder=a.meta",
        pattern(900_000, 2),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let key = b["files"][0]["key"].as_str().unwrap();
    assert!(key.starts_with("storage/alice/a.meta_/"), "{key}");
    let (s, b) = send(app.get("/v1/files/all").bearer(&alice)).await;
    assert_eq!((s, &b["total_count"]), (StatusCode::OK, &json!(1)), "{b}");
    // The quota saw it: a second quota's worth into another such folder is refused.
    let (s, b) = raw_upload(
        &app,
        &alice,
        "filename=y.bin&folder=b0.meta",
        pattern(900_000, 3),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");

    // The old folder's file is listed and counted (the recount walks it).
    let bob = app.user_token("bob");
    let (s, b) = send(app.get("/v1/files/all").bearer(&bob)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["total_count"], 1, "{b}");
    assert_eq!(b["files"][0]["folder"], "old.meta", "{b}");
    let (s, b) = send(app.post("/v1/files/init").bearer(&bob).json(&json!({
        "mode": "single", "files": [{ "name": "z.bin", "size": 200_000 }]
    })))
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("900000"), "{b}");
}

#[tokio::test]
async fn multipart_keeps_only_its_own_text_fields_within_64_kib() {
    let app = spawn_app().await;
    let alice = app.user_token("alice");
    let file = || reqwest::multipart::Part::bytes(b"data".to_vec()).file_name("a.txt");

    // Fields the API does not define are read past, whatever their size or number.
    let mut form = reqwest::multipart::Form::new().text("folder", "inbox");
    for i in 0..200 {
        form = form.text(format!("junk{i}"), "j".repeat(100_000));
    }
    let form = form.part("file", file());
    let (s, b) = send(app.post("/v1/files/upload").bearer(&alice).multipart(form)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b["files"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("storage/alice/inbox/"));

    // Its own fields are capped together: two of 40 KB pass no limit each, but do together.
    let form = reqwest::multipart::Form::new()
        .text("folder", "f".repeat(40_000))
        .text("meta", format!(r#"{{"note":"{}"}}"#, "n".repeat(40_000)))
        .part("file", file());
    let (s, b) = send(app.post("/v1/files/upload").bearer(&alice).multipart(form)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("65536"), "{b}");
    // Nothing was stored by the refused request.
    let (_, b) = send(app.get("/v1/files/all").bearer(&alice)).await;
    assert_eq!(b["total_count"], 1, "{b}");
}

/// A JSON part whose data comes before its `uploadId`.
fn chunk_first(id: &str, data: &[u8]) -> String {
    let chunk = b64(data);
    format!(r#"{{"chunkBase64":"{chunk}","partNumber":0,"uploadId":"{id}"}}"#)
}

#[tokio::test]
async fn json_parts_staged_before_their_session_stay_within_the_users_reservations() {
    let app = spawn_app_with(&[("PER_USER_QUOTA_GB", ONE_MIB_QUOTA)]).await;
    let alice = app.user_token("alice");
    let staging = app.root.path().join(".parts/.staging");
    let unknown = "00000000-0000-4000-8000-000000000000";

    // No session open: nothing may be staged for this user, so 2 MiB is refused early.
    let (s, b) = send(
        app.post("/v1/files/part")
            .bearer(&alice)
            .header("content-type", "application/json")
            .body(chunk_first(unknown, &pattern(2 << 20, 1))),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");

    // With a 100,000-byte session, a part of that size staged ahead of its id still works.
    let (s, init) = send(app.post("/v1/files/init").bearer(&alice).json(&json!({
        "mode": "single", "files": [{ "name": "a.bin", "size": 100_000 }]
    })))
    .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let id = init["uploadId"].as_str().unwrap();
    let data = pattern(100_000, 2);
    let (s, b) = send(
        app.post("/v1/files/part")
            .bearer(&alice)
            .header("content-type", "application/json")
            .body(chunk_first(id, &data)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // But not more than the user reserved.
    let (s, b) = send(
        app.post("/v1/files/part")
            .bearer(&alice)
            .header("content-type", "application/json")
            .body(chunk_first(id, &pattern(600_000, 3))),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert!(
        files_under(&staging).is_empty(),
        "{:?}",
        files_under(&staging)
    );
    let (s, b) = send(
        app.post("/v1/files/complete")
            .bearer(&alice)
            .json(&json!({ "uploadId": id })),
    )
    .await;
    assert_eq!((s, &b["size"]), (StatusCode::OK, &json!(100_000)), "{b}");
}

/// Stores `data` as `name`, declaring `mime` at init; returns its key.
async fn upload_typed(app: &TestApp, name: &str, mime: &str, data: &[u8]) -> String {
    let (s, init) = send(app.post("/v1/files/init").as_service().json(&json!({
        "mode": "single", "files": [{ "name": name, "size": data.len(), "mime": mime }],
        "meta": { "user_id": "u1" }
    })))
    .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let id = init["uploadId"].as_str().unwrap();
    let res = app
        .request(reqwest::Method::PUT, &format!("/v1/files/part/{id}/0"))
        .as_service()
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (s, b) = send(
        app.post("/v1/files/complete")
            .as_service()
            .json(&json!({ "uploadId": id })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn only_display_only_types_are_served_without_a_sandbox() {
    let app = spawn_app().await;
    let html = b"--x\r\nContent-Type: text/html\r\n\r\n<script>alert(document.cookie)</script>\r\n";
    for (name, mime, sandboxed) in [
        // Firefox renders the text/html parts of a multipart/x-mixed-replace stream.
        ("feed.zzz", "multipart/x-mixed-replace;boundary=x", true),
        ("page.mht", "message/rfc822", true),
        ("thing.zzz", "application/x-shockwave-flash", true),
        ("pic.png", "image/png", false),
        ("clip.mp4", "video/mp4", false),
        ("notes.txt", "text/plain", false),
    ] {
        let key = upload_typed(&app, name, mime, html).await;
        let res = app.get(&format!("/{key}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        let csp = if sandboxed { "sandbox" } else { "" };
        assert_eq!(
            header(&res, "content-security-policy"),
            csp,
            "{name} served as {}",
            header(&res, "content-type")
        );
        assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    }
}

#[tokio::test]
async fn names_show_what_they_are() {
    let root = tempfile::tempdir().unwrap();
    let app = spawn_app_with(&[("UPLOAD_ROOT", root.path().to_str().unwrap())]).await;
    // U+202E before `gnp.exe` shows it as `exe.png`; U+2066..2069 and U+200B hide the same way.
    let done = app
        .as_service()
        .acting_for("u1")
        .upload_file("\u{202E}gnp.exe", Some("\u{2066}in\u{200B}box"), b"MZ")
        .await;
    let key = done["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("storage/u1/inbox/"), "{key}");
    assert!(key.ends_with("_gnp.exe"), "{key}");
    // The signed download names it without the override, though the sidecar keeps the
    // client's name as sent.
    let (s, b) = send(
        app.post("/v1/files/signed-url")
            .json(&json!({ "key": key, "disposition": "attachment" }))
            .as_service(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let res = client()
        .get(b["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "content-disposition"),
        "attachment; filename=\"gnp.exe\"; filename*=UTF-8''gnp.exe"
    );

    // ZIP entries that differ only in case would overwrite each other on Windows and macOS.
    let ka = app
        .as_service()
        .acting_for("u1")
        .upload_file("a.txt", None, b"lower")
        .await;
    let kb = app
        .as_service()
        .acting_for("u1")
        .upload_file("A.TXT", None, b"upper")
        .await;
    let token = app
        .as_service()
        .batch_token(json!({ "keys": [ka["key"], kb["key"], key] }))
        .await;
    let zip = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let path = root.path().join("out.zip");
    std::fs::write(&path, &zip).unwrap();
    let names: Vec<String> = check_all_readers(Path::new(&path))
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(names, ["a.txt", "A_1.TXT", "gnp.exe"]);
}
