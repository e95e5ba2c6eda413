//! The resumable protocols, rule by rule: tus 1.0 at `/v1/files/tus/` and the IETF draft at
//! `/v1/files/resumable/` (interop 6 and 8), over the same sessions as the three-step API
//! (src/store/resumable.rs). Third-party clients are in `tus_clients.rs`.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::*;

const TUS: &str = "/v1/files/tus/";
const DRAFT: &str = "/v1/files/resumable/";

fn b64s(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn header<'a>(res: &'a Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

fn offset(res: &Response) -> u64 {
    header(res, "upload-offset").unwrap().parse().unwrap()
}

/// A tus request of the service for `u1`.
fn tus(app: &TestApp, method: Method, path: &str) -> RequestBuilder {
    app.request(method, path)
        .header("X-Service-Token", SERVICE_TOKEN)
        .header("Tus-Resumable", "1.0.0")
}

/// Creates a tus upload for `u1` and gives its path.
async fn tus_create(app: &TestApp, length: Option<u64>, metadata: &str) -> String {
    let mut req = tus(app, Method::POST, TUS).header("Upload-Metadata", metadata);
    req = match length {
        Some(l) => req.header("Upload-Length", l),
        None => req.header("Upload-Defer-Length", "1"),
    };
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
    header(&res, "location").unwrap().to_owned()
}

fn meta(name: &str) -> String {
    format!("filename {},user_id {}", b64s(name), b64s("u1"))
}

async fn tus_patch(app: &TestApp, path: &str, at: u64, data: &[u8]) -> Response {
    tus(app, Method::PATCH, path)
        .header("Upload-Offset", at)
        .header("Content-Type", "application/offset+octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

async fn tus_head(app: &TestApp, path: &str) -> Response {
    tus(app, Method::HEAD, path).send().await.unwrap()
}

/// The sidecar of `key` as the metadata route gives it.
async fn sidecar(app: &TestApp, key: &str) -> Value {
    let res = app
        .as_service()
        .get(&format!("/v1/files/metadata/{key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[tokio::test]
async fn options_advertise_the_version_extensions_size_and_checksums() {
    let app = spawn_app_with(&[("MAX_BODY_MB", "7")]).await;
    for path in [TUS.to_owned(), format!("{TUS}{}", uuid::Uuid::new_v4())] {
        let res = app.request(Method::OPTIONS, &path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(header(&res, "tus-version"), Some("1.0.0"));
        assert_eq!(header(&res, "tus-resumable"), Some("1.0.0"));
        assert_eq!(header(&res, "tus-max-size"), Some("7340032"));
        assert_eq!(
            header(&res, "tus-checksum-algorithm"),
            Some("sha1,sha256,md5,crc32")
        );
        let ext: Vec<&str> = header(&res, "tus-extension").unwrap().split(',').collect();
        for e in [
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "termination",
            "expiration",
            "checksum",
            "checksum-trailer",
            "concatenation",
            "concatenation-unfinished",
        ] {
            assert!(ext.contains(&e), "{e} missing from {ext:?}");
        }
    }
    // A browser's preflight still gets CORS's answer, allowing PATCH.
    let res = app
        .request(Method::OPTIONS, TUS)
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "PATCH")
        .send()
        .await
        .unwrap();
    assert!(header(&res, "access-control-allow-methods")
        .unwrap()
        .contains("PATCH"));
}

#[tokio::test]
async fn a_tus_upload_in_chunks_becomes_an_ordinary_file() {
    let app = spawn_app().await;
    let data = pattern(300_000, 7);
    let path = tus_create(
        &app,
        Some(data.len() as u64),
        &format!(
            "{},folder {},note {}",
            meta("clip.bin"),
            b64s("media/2026"),
            b64s("hi")
        ),
    )
    .await;
    assert!(path.starts_with(TUS));
    let head = tus_head(&app, &path).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(offset(&head), 0);
    assert_eq!(header(&head, "upload-length"), Some("300000"));
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    assert!(header(&head, "upload-expires").is_some());
    let mut at = 0;
    let mut last = None;
    for chunk in data.chunks(128 * 1024) {
        let res = tus_patch(&app, &path, at, chunk).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        at = offset(&res);
        last = Some(res);
    }
    let last = last.unwrap();
    assert_eq!(at, data.len() as u64);
    let key = header(&last, "x-upload-key").unwrap().to_owned();
    assert!(key.starts_with("storage/u1/media/2026/"), "{key}");
    assert!(key.ends_with("_clip.bin"));
    assert_eq!(
        header(&last, "x-upload-url").unwrap(),
        format!("{}/{key}", app.base)
    );
    assert_eq!(std::fs::read(app.storage_root().join(&key)).unwrap(), data);
    let side = sidecar(&app, &key).await;
    assert_eq!(side["sha256"], sha_hex(&data));
    assert_eq!(side["note"], "hi");
    // HEAD afterwards: the whole length, and the file.
    let head = tus_head(&app, &path).await;
    assert_eq!(offset(&head), data.len() as u64);
    assert_eq!(header(&head, "x-upload-key"), Some(key.as_str()));
    // The session status shows the file too.
    let id = path.rsplit('/').next().unwrap();
    let (status, body) = app.as_service().session(id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["protocol"], "tus");
    assert_eq!(body["key"], key.as_str());
    // The public link serves it.
    let res = app.get(&format!("/{key}")).send().await.unwrap();
    assert_eq!(res.bytes().await.unwrap().as_ref(), data.as_slice());
}

#[tokio::test]
async fn tus_rules_answer_with_their_statuses() {
    let app = spawn_app_with(&[("MAX_BODY_MB", "1"), ("PER_USER_QUOTA_GB", "0.001953125")]).await;
    // No or another Tus-Resumable: 412 naming the version.
    let res = app
        .request(Method::POST, TUS)
        .header("X-Service-Token", SERVICE_TOKEN)
        .header("Upload-Length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(header(&res, "tus-version"), Some("1.0.0"));
    // Neither length nor deferral; both; a bad length.
    for (h, v) in [("X-Nothing", "1"), ("Upload-Length", "-3")] {
        let res = tus(&app, Method::POST, TUS)
            .header(h, v)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Length", "5")
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Over MAX_BODY_MB: 413 at creation.
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Length", 2 << 20)
        .header("Upload-Metadata", meta("big"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Over the quota, all uploads together: 413 at creation.
    let _a = tus_create(&app, Some(1 << 20), &meta("a")).await;
    let _b = tus_create(&app, Some(1 << 20), &meta("b")).await;
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Length", 10)
        .header("Upload-Metadata", meta("c"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let detail = res.json::<Value>().await.unwrap()["detail"].to_string();
    assert!(detail.contains("Quota"), "{detail}");

    let app = spawn_app().await;
    // A service must name the user.
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let path = tus_create(&app, Some(10), &meta("r.bin")).await;
    // Wrong offset: 409, and the offset is unchanged.
    let res = tus_patch(&app, &path, 3, b"abc").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    // Wrong content type: 415.
    let res = tus(&app, Method::PATCH, &path)
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/octet-stream")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Past the length: 413, nothing kept.
    let res = tus_patch(&app, &path, 0, &[1; 11]).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(offset(&tus_head(&app, &path).await), 0);
    // Another user's upload: 404, as an unknown one.
    let other = app
        .request(Method::HEAD, &path)
        .header("Tus-Resumable", "1.0.0")
        .bearer_auth(app.user_token("u2"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let owner = app
        .request(Method::HEAD, &path)
        .header("Tus-Resumable", "1.0.0")
        .bearer_auth(app.user_token("u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(owner.status(), StatusCode::OK);
    // An unknown upload, and one that is not an id.
    for p in [
        format!("{TUS}{}", uuid::Uuid::new_v4()),
        format!("{TUS}nope"),
    ] {
        assert_eq!(tus_head(&app, &p).await.status(), StatusCode::NOT_FOUND);
    }
    // A three-step session is not a tus upload, nor the other way round.
    let init = app
        .as_service()
        .acting_for("u1")
        .init(json!([{ "name": "x", "size": 3 }]), "single", None)
        .await;
    let id = init["uploadId"].as_str().unwrap().to_owned();
    assert_eq!(
        tus_head(&app, &format!("{TUS}{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    let tus_id = path.rsplit('/').next().unwrap();
    let (status, _) = app
        .as_service()
        .acting_for("u1")
        .put_part(tus_id, 1, b"abc")
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_checksum_that_fails_discards_the_chunk_with_460() {
    let app = spawn_app().await;
    let path = tus_create(&app, Some(10), &meta("sum.bin")).await;
    let sha1 = |d: &[u8]| {
        use sha1::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(d))
    };
    let send = |alg: String, at: u64, data: &'static [u8]| {
        tus(&app, Method::PATCH, &path)
            .header("Upload-Offset", at)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Checksum", alg)
            .body(data)
            .send()
    };
    let res = send(format!("sha1 {}", sha1(b"other")), 0, b"hello")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 460);
    assert_eq!(offset(&tus_head(&app, &path).await), 0);
    let res = send("sha512 AAAA".to_owned(), 0, b"hello").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = send(format!("sha1 {}", sha1(b"hello")), 0, b"hello")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset(&res), 5);
    let crc =
        base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(b"world").to_be_bytes());
    let res = send(format!("crc32 {crc}"), 5, b"world").await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let key = header(&res, "x-upload-key").unwrap();
    assert_eq!(
        std::fs::read(app.storage_root().join(key)).unwrap(),
        b"helloworld"
    );
}

/// Sends a chunked tus PATCH whose checksum comes as a trailer, over a raw connection;
/// gives the status line.
async fn patch_with_trailer(
    app: &TestApp,
    path: &str,
    at: u64,
    data: &[u8],
    trailer: &str,
) -> String {
    let addr = app.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\nX-Service-Token: {SERVICE_TOKEN}\r\n\
         Upload-Offset: {at}\r\nContent-Type: application/offset+octet-stream\r\n\
         Transfer-Encoding: chunked\r\nTrailer: Upload-Checksum\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(data).await.unwrap();
    s.write_all(format!("\r\n0\r\nUpload-Checksum: {trailer}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_checksum_may_come_as_a_trailer() {
    let app = spawn_app().await;
    let path = tus_create(&app, Some(6), &meta("t.bin")).await;
    let sha256 = |d: &[u8]| {
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(d))
    };
    let bad = patch_with_trailer(
        &app,
        &path,
        0,
        b"abc",
        &format!("sha256 {}", sha256(b"xyz")),
    )
    .await;
    assert!(bad.contains(" 460"), "{bad}");
    assert_eq!(offset(&tus_head(&app, &path).await), 0);
    let good = patch_with_trailer(
        &app,
        &path,
        0,
        b"abc",
        &format!("sha256 {}", sha256(b"abc")),
    )
    .await;
    assert!(good.contains(" 204"), "{good}");
    assert_eq!(offset(&tus_head(&app, &path).await), 3);
}

#[tokio::test]
async fn creation_with_upload_and_deferred_length_and_override() {
    let app = spawn_app().await;
    // Creation with the first bytes, an empty Upload-Metadata from a user (tuspy sends one).
    let res = app
        .request(Method::POST, TUS)
        .header("Tus-Resumable", "1.0.0")
        .bearer_auth(app.user_token("u1"))
        .header("Upload-Length", "8")
        .header("Upload-Metadata", "")
        .header("Content-Type", "application/offset+octet-stream")
        .body("abcd")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(offset(&res), 4);
    let path = header(&res, "location").unwrap().to_owned();
    // X-HTTP-Method-Override: PATCH through POST.
    let res = app
        .request(Method::POST, &path)
        .header("Tus-Resumable", "1.0.0")
        .bearer_auth(app.user_token("u1"))
        .header("X-HTTP-Method-Override", "PATCH")
        .header("Upload-Offset", "4")
        .header("Content-Type", "application/offset+octet-stream")
        .body("efgh")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let key = header(&res, "x-upload-key").unwrap();
    assert!(
        key.ends_with("_upload"),
        "a nameless upload is called 'upload': {key}"
    );
    assert_eq!(
        std::fs::read(app.storage_root().join(key)).unwrap(),
        b"abcdefgh"
    );

    // Deferred length: nothing reserved until known, then the last PATCH declares it.
    let path = tus_create(&app, None, &meta("stream.log")).await;
    let head = tus_head(&app, &path).await;
    assert_eq!(header(&head, "upload-defer-length"), Some("1"));
    assert!(header(&head, "upload-length").is_none());
    assert_eq!(
        tus_patch(&app, &path, 0, b"12345").await.status(),
        StatusCode::NO_CONTENT
    );
    // A length below what arrived contradicts it.
    let res = tus(&app, Method::PATCH, &path)
        .header("Upload-Offset", 5)
        .header("Upload-Length", 3)
        .header("Content-Type", "application/offset+octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let res = tus(&app, Method::PATCH, &path)
        .header("Upload-Offset", 5)
        .header("Upload-Length", 8)
        .header("Content-Type", "application/offset+octet-stream")
        .body("678")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let key = header(&res, "x-upload-key").unwrap();
    assert_eq!(
        std::fs::read(app.storage_root().join(key)).unwrap(),
        b"12345678"
    );
}

#[tokio::test]
async fn termination_frees_the_upload_and_its_reservation() {
    let app = spawn_app_with(&[("PER_USER_QUOTA_GB", "0.0009765625")]).await;
    let path = tus_create(&app, Some(1 << 20), &meta("gone")).await;
    assert_eq!(
        tus_patch(&app, &path, 0, b"abc").await.status(),
        StatusCode::NO_CONTENT
    );
    // The quota is held: another upload does not fit.
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Length", 10)
        .header("Upload-Metadata", meta("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The session status counts the bytes received.
    let id = path.rsplit('/').next().unwrap();
    let (s, status) = app.as_service().session(id).await;
    assert_eq!(s, StatusCode::OK, "{status}");
    assert_eq!(status["receivedBytes"], 3, "{status}");
    let res = tus(&app, Method::DELETE, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(tus_head(&app, &path).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        tus_patch(&app, &path, 3, b"d").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.leftovers(), Vec::<String>::new());
    // Aborted as a session (the three-step DELETE), a tus upload goes the same way.
    let path = tus_create(&app, Some(1 << 20), &meta("fits")).await;
    assert_eq!(
        tus_patch(&app, &path, 0, b"abc").await.status(),
        StatusCode::NO_CONTENT
    );
    let (s, body) = app
        .as_service()
        .abort(path.rsplit('/').next().unwrap())
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(tus_head(&app, &path).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.leftovers(), Vec::<String>::new());
    let _ = tus_create(&app, Some(1 << 20), &meta("fits")).await;
}

#[tokio::test]
async fn an_expired_upload_is_gone() {
    let app = spawn_app().await;
    let path = tus_create(&app, Some(4), &meta("old")).await;
    let id = path.rsplit('/').next().unwrap();
    match &app.cloud {
        None => {
            let file = app.root.path().join(".parts").join(id).join("session.json");
            let mut s: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            s["expires_at"] = json!("2020-01-01T00:00:00Z");
            std::fs::write(&file, serde_json::to_vec(&s).unwrap()).unwrap();
        }
        Some(cloud) => {
            let catalog = cloud.db.catalog(1).await;
            let done = sqlx::query(
                "UPDATE sessions SET expires_at = '2020-01-01T00:00:00Z' WHERE id::text = $1",
            )
            .bind(id)
            .execute(catalog.pool())
            .await
            .unwrap();
            assert_eq!(done.rows_affected(), 1);
        }
    }
    assert_eq!(tus_head(&app, &path).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        tus_patch(&app, &path, 0, b"abcd").await.status(),
        StatusCode::NOT_FOUND
    );
}

/// The sweep removes an expired upload with the bytes it received (s3: its segment
/// objects) and its reservation.
#[tokio::test]
async fn an_expired_upload_is_swept_with_its_bytes() {
    // Sessions live 7.2 s; sweeps run every 1.8 s.
    let app = spawn_app_with(&[
        ("UPLOAD_SESSION_TTL_HOURS", "0.002"),
        ("PER_USER_QUOTA_GB", "0.0009765625"),
    ])
    .await;
    let path = tus_create(&app, Some(1 << 20), &meta("late")).await;
    assert_eq!(
        tus_patch(&app, &path, 0, b"abcd").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_ne!(app.leftovers(), Vec::<String>::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let left = app.leftovers();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(tus_head(&app, &path).await.status(), StatusCode::NOT_FOUND);
    // Its reservation went too: the whole quota fits again.
    let _ = tus_create(&app, Some(1 << 20), &meta("fits")).await;
}

#[tokio::test]
async fn concatenation_joins_partial_uploads_finished_or_not() {
    let app = spawn_app().await;
    let partial = |len: u64| {
        tus(&app, Method::POST, TUS)
            .header("Upload-Length", len)
            .header("Upload-Concat", "partial")
            .header("Upload-Metadata", format!("user_id {}", b64s("u1")))
            .send()
    };
    let a = header(&partial(3).await.unwrap(), "location")
        .unwrap()
        .to_owned();
    let b = header(&partial(4).await.unwrap(), "location")
        .unwrap()
        .to_owned();
    assert_eq!(
        tus_patch(&app, &b, 0, b"defg").await.status(),
        StatusCode::NO_CONTENT
    );
    // A partial upload is never a file of its own.
    assert!(header(&tus_patch(&app, &a, 0, b"abc").await, "x-upload-key").is_none());
    assert_eq!(
        header(&tus_head(&app, &a).await, "upload-concat"),
        Some("partial")
    );
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Concat", format!("final;{a} {}{b}", app.base))
        .header("Upload-Metadata", meta("joined.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = header(&res, "x-upload-key").unwrap().to_owned();
    assert_eq!(
        std::fs::read(app.storage_root().join(&key)).unwrap(),
        b"abcdefg"
    );
    assert_eq!(sidecar(&app, &key).await["sha256"], sha_hex(b"abcdefg"));
    // Its partial uploads are used up.
    assert_eq!(tus_head(&app, &a).await.status(), StatusCode::NOT_FOUND);

    // concatenation-unfinished: the final upload first, published by the last partial.
    let c = header(&partial(2).await.unwrap(), "location")
        .unwrap()
        .to_owned();
    let d = header(&partial(2).await.unwrap(), "location")
        .unwrap()
        .to_owned();
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Concat", format!("final;{c} {d}"))
        .header("Upload-Metadata", meta("later.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(header(&res, "x-upload-key").is_none());
    let fin = header(&res, "location").unwrap().to_owned();
    let head = tus_head(&app, &fin).await;
    assert!(
        header(&head, "upload-offset").is_none(),
        "unfinished: no offset"
    );
    assert_eq!(
        header(&head, "upload-concat"),
        Some(format!("final;{c} {d}").as_str())
    );
    // PATCH on a final upload: 403.
    assert_eq!(
        tus_patch(&app, &fin, 0, b"x").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        tus_patch(&app, &d, 0, b"zz").await.status(),
        StatusCode::NO_CONTENT
    );
    let last = tus_patch(&app, &c, 0, b"yy").await;
    let key = header(&last, "x-upload-key").unwrap().to_owned();
    assert_eq!(
        std::fs::read(app.storage_root().join(&key)).unwrap(),
        b"yyzz"
    );
    let head = tus_head(&app, &fin).await;
    assert_eq!(offset(&head), 4);
    assert_eq!(header(&head, "x-upload-key"), Some(key.as_str()));
    // Someone else's partial upload, or a plain one, cannot be joined.
    let plain = tus_create(&app, Some(1), &meta("p")).await;
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Concat", format!("final;{plain}"))
        .header("Upload-Metadata", meta("no"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Quota: everything was released or charged once.
    let usage = app
        .as_service()
        .get("/v1/files/all?user_id=u1")
        .send()
        .await
        .unwrap();
    assert_eq!(usage.status(), StatusCode::OK);
}

/// Opens a raw PATCH and sends `first` bytes of a body announced as `total` long; gives the
/// open connection.
async fn open_patch(
    app: &TestApp,
    path: &str,
    at: u64,
    total: usize,
    first: &[u8],
) -> tokio::net::TcpStream {
    let addr = app.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\nX-Service-Token: {SERVICE_TOKEN}\r\n\
         Upload-Offset: {at}\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {total}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(first).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// Polls HEAD until the offset is `want` (the server notices a cut connection a moment
/// after it happens).
async fn wait_offset(app: &TestApp, path: &str, want: u64) {
    for _ in 0..200 {
        if offset(&tus_head(app, path).await) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the offset never reached {want}");
}

#[tokio::test]
async fn a_cut_patch_keeps_what_arrived_and_resumes_there() {
    let app = spawn_app().await;
    let data = pattern(200_000, 3);
    let path = tus_create(&app, Some(data.len() as u64), &meta("cut.bin")).await;
    let conn = open_patch(&app, &path, 0, data.len(), &data[..120_000]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(conn);
    wait_offset(&app, &path, 120_000).await;
    let res = tus_patch(&app, &path, 120_000, &data[120_000..]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let key = header(&res, "x-upload-key").unwrap();
    assert_eq!(std::fs::read(app.storage_root().join(key)).unwrap(), data);
    assert_eq!(sidecar(&app, key).await["sha256"], sha_hex(&data));
}

#[tokio::test]
async fn a_newer_patch_ends_a_stalled_one_and_nothing_interleaves() {
    let app = spawn_app().await;
    let data = pattern(100_000, 9);
    let path = tus_create(&app, Some(data.len() as u64), &meta("race.bin")).await;
    // A PATCH that sent 30,000 bytes and then stalled (the client thinks it failed).
    let mut stalled = open_patch(&app, &path, 0, data.len(), &data[..30_000]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The retry at offset 0 ends the stalled one, which keeps its 30,000 bytes: the retry
    // is told where the upload really is.
    let res = tus_patch(&app, &path, 0, &data).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(offset(&tus_head(&app, &path).await), 30_000);
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    let res = tus_patch(&app, &path, 30_000, &data[30_000..]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let key = header(&res, "x-upload-key").unwrap();
    assert_eq!(std::fs::read(app.storage_root().join(key)).unwrap(), data);
}

#[tokio::test]
async fn a_head_ends_a_stalled_patch_and_gives_an_offset_that_works() {
    let app = spawn_app().await;
    let data = pattern(80_000, 2);
    let path = tus_create(&app, Some(data.len() as u64), &meta("head.bin")).await;
    let _stalled = open_patch(&app, &path, 0, data.len(), &data[..20_000]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client resumes as tus clients do: HEAD, then PATCH from there.
    let at = offset(&tus_head(&app, &path).await);
    assert_eq!(at, 20_000);
    let res = tus_patch(&app, &path, at, &data[20_000..]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let key = header(&res, "x-upload-key").unwrap();
    assert_eq!(std::fs::read(app.storage_root().join(key)).unwrap(), data);
}

#[tokio::test]
async fn an_empty_file_is_stored_at_creation() {
    let app = spawn_app().await;
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Length", 0)
        .header("Upload-Metadata", meta("empty.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = header(&res, "x-upload-key").unwrap();
    assert_eq!(std::fs::read(app.storage_root().join(key)).unwrap(), b"");
    let head = tus_head(&app, header(&res, "location").unwrap()).await;
    assert_eq!(offset(&head), 0);
    assert_eq!(header(&head, "upload-length"), Some("0"));
}

#[tokio::test]
async fn a_creation_refused_for_its_bytes_leaves_no_upload_and_no_reservation() {
    let app = spawn_app_with(&[("PER_USER_QUOTA_GB", "0.0009765625")]).await;
    // Bytes past the declared length in the creation request: 413, and the reservation of
    // the whole quota is not left behind.
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Length", 1 << 20)
        .header("Upload-Metadata", meta("over"))
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Checksum", "sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 460);
    assert!(header(&res, "location").is_none());
    let _ = tus_create(&app, Some(1 << 20), &meta("fits")).await;
}

// ---- the IETF draft ----

fn draft(app: &TestApp, method: Method, path: &str, interop: &str) -> RequestBuilder {
    app.request(method, path)
        .header("X-Service-Token", SERVICE_TOKEN)
        .header("Upload-Draft-Interop-Version", interop)
}

async fn draft_create(app: &TestApp, interop: &str, body: &[u8], complete: bool) -> Response {
    draft(
        app,
        Method::POST,
        &format!("{DRAFT}?user_id=u1&folder=docs"),
        interop,
    )
    .header("Upload-Complete", if complete { "?1" } else { "?0" })
    .header("Content-Disposition", "inline; filename=\"report.pdf\"")
    .header("Content-Type", "application/pdf")
    .body(body.to_vec())
    .send()
    .await
    .unwrap()
}

async fn draft_patch(
    app: &TestApp,
    path: &str,
    interop: &str,
    at: u64,
    data: &[u8],
    complete: bool,
) -> Response {
    draft(app, Method::PATCH, path, interop)
        .header("Upload-Offset", at)
        .header("Upload-Complete", if complete { "?1" } else { "?0" })
        .header("Content-Type", "application/partial-upload")
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_draft_upload_in_parts_with_both_interop_versions() {
    for interop in ["6", "8"] {
        let app = spawn_app().await;
        let data = pattern(50_000, 4);
        let res = draft_create(&app, interop, &data[..10_000], false).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(header(&res, "upload-draft-interop-version"), Some(interop));
        assert_eq!(header(&res, "upload-complete"), Some("?0"));
        assert_eq!(offset(&res), 10_000);
        let path = header(&res, "location").unwrap().to_owned();
        assert!(path.starts_with(DRAFT));
        let res = draft_patch(&app, &path, interop, 10_000, &data[10_000..30_000], false).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(offset(&res), 30_000);
        let head = draft(&app, Method::HEAD, &path, interop)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::NO_CONTENT);
        assert_eq!(offset(&head), 30_000);
        assert_eq!(header(&head, "upload-complete"), Some("?0"));
        assert_eq!(header(&head, "cache-control"), Some("no-store"));
        // What version 8 adds: limits on HEAD.
        assert_eq!(header(&head, "upload-limit").is_some(), interop == "8");
        let res = draft_patch(&app, &path, interop, 30_000, &data[30_000..], true).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "upload-complete"), Some("?1"));
        let body: Value = res.json().await.unwrap();
        let key = body["key"].as_str().unwrap();
        assert!(key.starts_with("storage/u1/docs/") && key.ends_with("_report.pdf"));
        assert_eq!(body["sha256"], sha_hex(&data));
        assert_eq!(std::fs::read(app.storage_root().join(key)).unwrap(), data);
        let head = draft(&app, Method::HEAD, &path, interop)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&head, "upload-complete"), Some("?1"));
        assert_eq!(header(&head, "x-upload-key"), Some(key));
    }
}

#[tokio::test]
async fn draft_errors_are_problem_details_in_version_8_only() {
    let app = spawn_app().await;
    let res = draft_create(&app, "8", b"abc", false).await;
    let path = header(&res, "location").unwrap().to_owned();
    // Mismatching offset.
    let res = draft_patch(&app, &path, "8", 1, b"x", false).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(offset(&res), 3);
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
    let p: Value = res.json().await.unwrap();
    assert_eq!(
        p["type"],
        "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
    );
    assert_eq!(p["expected-offset"], 3);
    assert_eq!(p["provided-offset"], 1);
    assert!(p["detail"].is_string());
    let res = draft_patch(&app, &path, "6", 1, b"x", false).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(header(&res, "content-type"), Some("application/json"));
    // Inconsistent length: declared 10, then completed at 4.
    let res = draft(&app, Method::PATCH, &path, "8")
        .header("Upload-Offset", 3)
        .header("Upload-Complete", "?0")
        .header("Upload-Length", 10)
        .header("Content-Type", "application/partial-upload")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = draft_patch(&app, &path, "8", 3, b"d", true).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let p: Value = res.json().await.unwrap();
    assert_eq!(
        p["type"],
        "https://iana.org/assignments/http-problem-types#inconsistent-upload-length"
    );
    // A wrong content type, an unknown version, a missing Upload-Complete.
    let res = draft(&app, Method::PATCH, &path, "8")
        .header("Upload-Offset", 4)
        .header("Upload-Complete", "?0")
        .header("Content-Type", "application/offset+octet-stream")
        .body("e")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = draft(&app, Method::HEAD, &path, "7").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    let res = draft(&app, Method::POST, DRAFT, "8")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // OPTIONS: Accept-Patch and the limits.
    let res = app.request(Method::OPTIONS, DRAFT).send().await.unwrap();
    assert_eq!(
        header(&res, "accept-patch"),
        Some("application/partial-upload")
    );
    assert!(header(&res, "upload-limit").unwrap().contains("max-size="));
    // Cancel.
    let res = draft(&app, Method::DELETE, &path, "8")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = draft(&app, Method::HEAD, &path, "8").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_draft_upload_in_one_request_and_its_digest() {
    let app = spawn_app().await;
    let digest = |d: &[u8]| {
        use sha2::Digest as _;
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(d))
        )
    };
    // A digest that does not match: refused, nothing stored, the upload still there.
    let res = draft(&app, Method::POST, &format!("{DRAFT}?user_id=u1"), "8")
        .header("Upload-Complete", "?1")
        .header("Repr-Digest", digest(b"something else"))
        .body("whole")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (_, listing) = list(&app).await;
    assert_eq!(listing, 0);
    let res = draft(&app, Method::POST, &format!("{DRAFT}?user_id=u1"), "8")
        .header("Upload-Complete", "?1")
        .header("Repr-Digest", digest(b"whole"))
        .header(
            "Content-Disposition",
            "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.txt",
        )
        .body("whole")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["key"].as_str().unwrap().ends_with("_résumé.txt"),
        "{body}"
    );
    // A complete upload takes no more bytes.
    let path = format!("{DRAFT}{}", uuid::Uuid::new_v4());
    assert_eq!(
        draft_patch(&app, &path, "8", 0, b"x", true).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn list(app: &TestApp) -> (Value, usize) {
    let res = app
        .as_service()
        .get("/v1/files/all?user_id=u1")
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    let n = v["files"].as_array().map_or(0, Vec::len);
    (v, n)
}

#[tokio::test]
async fn the_same_bytes_by_three_protocols_give_the_same_file() {
    let app = spawn_app().await;
    let data = pattern(70_000, 5);
    // Three-step.
    let caller = app.as_service().acting_for("u1");
    let init = caller
        .init(
            json!([{ "name": "same.bin", "size": data.len(), "mime": "application/x-demo" }]),
            "single",
            Some("same"),
        )
        .await;
    let id = init["uploadId"].as_str().unwrap().to_owned();
    assert_eq!(caller.put_part(&id, 1, &data).await.0, StatusCode::OK);
    let (status, done) = caller.complete(&id, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let three = done["key"].as_str().unwrap().to_owned();
    // tus.
    let path = tus_create(
        &app,
        Some(data.len() as u64),
        &format!(
            "{},filetype {},folder {}",
            meta("same.bin"),
            b64s("application/x-demo"),
            b64s("same")
        ),
    )
    .await;
    let res = tus_patch(&app, &path, 0, &data).await;
    let tus_key = header(&res, "x-upload-key").unwrap().to_owned();
    // The draft.
    let res = draft(
        &app,
        Method::POST,
        &format!("{DRAFT}?user_id=u1&folder=same"),
        "8",
    )
    .header("Upload-Complete", "?1")
    .header("Content-Disposition", "inline; filename=\"same.bin\"")
    .header("Content-Type", "application/x-demo")
    .body(data.clone())
    .send()
    .await
    .unwrap();
    let draft_key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let strip = |mut v: Value| {
        let o = v.as_object_mut().unwrap();
        for k in ["key", "created_at", "createdAt", "url", "modified"] {
            o.remove(k);
        }
        v
    };
    let a = strip(sidecar(&app, &three).await);
    let b = strip(sidecar(&app, &tus_key).await);
    let c = strip(sidecar(&app, &draft_key).await);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a["sha256"], sha_hex(&data));
    for k in [three, tus_key, draft_key] {
        assert_eq!(std::fs::read(app.storage_root().join(&k)).unwrap(), data);
        let side = std::fs::read(app.storage_root().join(format!("{k}.meta"))).unwrap();
        let side: Value = serde_json::from_slice(&side).unwrap();
        assert_eq!(
            side["crc32"].as_u64().unwrap(),
            u64::from(crc32fast::hash(&data))
        );
    }
}

/// A signed upload URL's query (`grant=..&sig=..`) for `u1`, folder `inbox`, 1,000 bytes,
/// text only.
async fn grant_query(app: &TestApp) -> String {
    let res = app
        .as_service()
        .post("/v1/files/sign-upload")
        .json(&json!({ "user_id": "u1", "folder": "inbox", "max_size": 1000, "mime_types": ["text/*"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["query"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_signed_upload_url_works_with_tus_and_the_draft_and_holds_its_limits() {
    let app = spawn_app().await;
    let q = grant_query(&app).await;
    let anon =
        |method: Method, path: &str| app.request(method, path).header("Tus-Resumable", "1.0.0");
    let create = |len: u64, name: &str| {
        anon(Method::POST, &format!("{TUS}?{q}"))
            .header("Upload-Length", len)
            .header("Upload-Metadata", format!("filename {}", b64s(name)))
            .send()
    };
    // No token at all, only the grant: the upload is u1's, in the grant's folder, and its
    // URL carries the grant for the PATCHes that follow.
    let res = create(5, "note.txt").await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = header(&res, "location").unwrap().to_owned();
    assert!(location.ends_with(&format!("?{q}")), "{location}");
    let res = anon(Method::PATCH, &location)
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let key = header(&res, "x-upload-key").unwrap();
    assert!(key.starts_with("storage/u1/inbox/"), "{key}");
    // Without the grant the same URL is nobody's.
    let bare = location.split('?').next().unwrap();
    let res = anon(Method::HEAD, bare).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Over the maximum, a type it does not list, another folder, a deferred length.
    assert_eq!(
        create(1001, "big.txt").await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        create(10, "clip.mp4").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let res = anon(Method::POST, &format!("{TUS}?{q}"))
        .header("Upload-Length", 3)
        .header(
            "Upload-Metadata",
            format!("filename {},folder {}", b64s("a.txt"), b64s("elsewhere")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = anon(Method::POST, &format!("{TUS}?{q}"))
        .header("Upload-Defer-Length", "1")
        .header("Upload-Metadata", format!("filename {}", b64s("a.txt")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A tampered grant.
    let tampered = q.replace("sig=", "sig=0");
    let res = anon(Method::POST, &format!("{TUS}?{tampered}"))
        .header("Upload-Length", 3)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Another user's upload is not reachable with u1's grant.
    let other = app
        .request(Method::POST, TUS)
        .header("Tus-Resumable", "1.0.0")
        .bearer_auth(app.user_token("u2"))
        .header("Upload-Length", 3)
        .send()
        .await
        .unwrap();
    let other = header(&other, "location").unwrap().to_owned();
    let res = anon(Method::HEAD, &format!("{other}?{q}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // u1's own uploads made with a token are not reachable with u1's grant either.
    let own = tus_create(&app, Some(3), &meta("own.txt")).await;
    let res = anon(Method::HEAD, &format!("{own}?{q}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = anon(Method::PATCH, &format!("{own}?{q}"))
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // The draft, in one request.
    let res = app
        .request(Method::POST, &format!("{DRAFT}?{q}"))
        .header("Upload-Complete", "?1")
        .header("Content-Disposition", "inline; filename=\"d.txt\"")
        .body("draft")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(body["key"]
        .as_str()
        .unwrap()
        .starts_with("storage/u1/inbox/"));
}

#[tokio::test]
async fn a_concatenation_that_cannot_be_published_keeps_its_partial_uploads() {
    if fs_only("a file in the way of the folder makes the publish fail; a bucket has no folders") {
        return;
    }
    let app = spawn_app().await;
    let partial = |data: &'static [u8]| {
        let app = &app;
        async move {
            let res = tus(app, Method::POST, TUS)
                .header("Upload-Length", data.len())
                .header("Upload-Concat", "partial")
                .header("Upload-Metadata", format!("user_id {}", b64s("u1")))
                .send()
                .await
                .unwrap();
            let p = header(&res, "location").unwrap().to_owned();
            assert_eq!(
                tus_patch(app, &p, 0, data).await.status(),
                StatusCode::NO_CONTENT
            );
            p
        }
    };
    let a = partial(b"left-").await;
    let b = partial(b"right").await;
    // A file where the folder should be: the publish fails.
    std::fs::create_dir_all(app.root.path().join("storage/u1")).unwrap();
    std::fs::write(app.root.path().join("storage/u1/blocked"), b"x").unwrap();
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Concat", format!("final;{a} {b}"))
        .header(
            "Upload-Metadata",
            format!("{},folder {}", meta("j.txt"), b64s("blocked")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // The partial uploads are still there, and join fine elsewhere.
    assert_eq!(tus_head(&app, &a).await.status(), StatusCode::OK);
    let res = tus(&app, Method::POST, TUS)
        .header("Upload-Concat", format!("final;{a} {b}"))
        .header("Upload-Metadata", meta("j.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = header(&res, "x-upload-key").unwrap();
    assert_eq!(
        std::fs::read(app.storage_root().join(key)).unwrap(),
        b"left-right"
    );
    assert_eq!(tus_head(&app, &a).await.status(), StatusCode::NOT_FOUND);
}
