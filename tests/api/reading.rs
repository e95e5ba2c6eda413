//! Reading (API.md §4.1–4.4, §4.6): listing, metadata, delete, public links with ranges and
//! conditionals, signed URLs, and every hostile path form.

use std::path::Path;

use hmac::{Hmac, KeyInit as _, Mac as _};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::*;

/// An app over a copy of the old service's tree.
async fn app_with_old_data(extra: &[(&str, &str)]) -> (TestApp, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    copy_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/old-service-root")
            .as_path(),
        root.path(),
    );
    let mut env = vec![("UPLOAD_ROOT", root.path().to_str().unwrap())];
    env.extend_from_slice(extra);
    (spawn_app_with(&env).await, root)
}

/// A URL signed the way the old service did it: hex(HMAC-SHA256(key, "{key}|{exp}")).
fn old_style_url(base: &str, key: &str, exp: i64, secret: &str) -> String {
    use base64::Engine as _;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{key}|{exp}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let enc = base64::engine::general_purpose::URL_SAFE.encode(key.as_bytes());
    format!("{base}/get/{enc}?exp={exp}&sig={sig}")
}

async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    app.get(path).headers(h).send().await.unwrap()
}

#[tokio::test]
async fn listing_covers_old_and_new_files() {
    let (app, _root) = app_with_old_data(&[]).await;
    let (s, l) = send(app.get("/v1/files/all?user_id=user123").as_service()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(l["total_count"], 3);
    assert_eq!(l["total_size"], 14 + 208 + 5009);
    let by_name = |n: &str| {
        l["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["filename"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("placed-by-hand.png")["mime"], "image/png");
    assert_eq!(by_name("placed-by-hand.png")["folder"], "legacy");
    assert_eq!(
        by_name("Résumé été.pdf")["key"],
        "storage/user123/documents/7b897611_Résumé été.pdf"
    );
    // New uploads come first (newest first), folders filter subfolders too.
    app.as_service()
        .acting_for("user123")
        .upload_file("new.txt", Some("documents/sub"), b"new")
        .await;
    let (_, l) = send(
        app.get("/v1/files/all?user_id=user123&folder=documents")
            .as_service(),
    )
    .await;
    let names: Vec<&str> = l["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["new.txt", "Résumé été.pdf"]);
    assert_eq!(l["files"][0]["folder"], "documents/sub");
    // Paging keeps the totals of the whole set.
    let (_, l) = send(
        app.get("/v1/files/all?user_id=user123&limit=1&offset=1")
            .as_service(),
    )
    .await;
    assert_eq!(l["files"].as_array().unwrap().len(), 1);
    assert_eq!(l["total_count"], 4);
    // A file at the user's top level has no folder.
    let (_, l) = send(
        app.get("/v1/files/all?user_email=alice@example.com")
            .as_service(),
    )
    .await;
    let notes = l["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["filename"] == "notes.txt")
        .unwrap();
    assert_eq!(notes["folder"], Value::Null);
    // A user caller always gets its own files, whatever it names.
    let t = app.user_token("alice@example.com");
    let (_, l) = send(app.get("/v1/files/all?user_id=user123").bearer(&t)).await;
    assert_eq!(l["total_count"], 3);
    // A service must name the user.
    assert_eq!(
        send(app.get("/v1/files/all").as_service()).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn metadata_and_delete_with_slashes_raw_and_encoded() {
    let (app, root) = app_with_old_data(&[]).await;
    let key = "storage/alice@example.com/main/pictures/c0b82ce0_photo.jpg";
    for path in [
        format!("/v1/files/metadata/{key}"),
        format!("/v1/files/metadata/{}", key.replace('/', "%2F")),
    ] {
        let (s, m) = send(app.get(&path).as_service()).await;
        assert_eq!(s, StatusCode::OK, "{path}: {m}");
        assert_eq!(m["size"], 10244);
        assert_eq!(m["mime"], "image/jpeg");
        assert_eq!(
            m["sha256"],
            "2078274b743c84b46234593c4c5200ff38a392bd9cea81595eb10ea20745caa4"
        );
        assert!(m["createdAt"].is_string());
        assert_eq!(m["album"], "summer");
    }
    let bob = app.user_token("bob");
    expect(
        app.get(&format!("/v1/files/metadata/{key}")).bearer(&bob),
        StatusCode::FORBIDDEN,
        json!({ "detail": "Access denied" }),
    )
    .await;
    expect(
        app.request(Method::DELETE, &format!("/v1/files/{key}"))
            .bearer(&bob),
        StatusCode::FORBIDDEN,
        json!({ "detail": "Access denied" }),
    )
    .await;
    let (s, _) = send(
        app.get("/v1/files/metadata/storage/alice@example.com/nope.txt")
            .as_service(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Delete frees quota at once: alice holds 49,944 bytes of a 107,374-byte quota.
    let app2 = spawn_app_with(&[
        ("UPLOAD_ROOT", root.path().to_str().unwrap()),
        ("PER_USER_QUOTA_GB", "0.0001"),
    ])
    .await;
    let too_big = json!({ "mode": "single", "files": [{ "name": "x", "size": 60_000 }], "meta": { "user_id": "alice@example.com" } });
    assert_eq!(
        send(app2.post("/v1/files/init").as_service().json(&too_big))
            .await
            .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let alice = app2.user_token("alice@example.com");
    let enc = key.replace('/', "%2F");
    expect(
        app2.request(Method::DELETE, &format!("/v1/files/{enc}"))
            .bearer(&alice),
        StatusCode::OK,
        json!({ "status": "deleted", "key": key }),
    )
    .await;
    let stored = app2.storage_root();
    assert!(!stored.join(key).exists() && !stored.join(format!("{key}.meta")).exists());
    assert_eq!(
        send(app2.post("/v1/files/init").as_service().json(&too_big))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        send(
            app2.request(Method::DELETE, &format!("/v1/files/{key}"))
                .as_service()
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn public_links_ranges_and_conditionals() {
    let app = spawn_app().await;
    let data = pattern(100_000, 7);
    let done = app
        .as_service()
        .acting_for("u1")
        .upload_file("clip.mp4", Some("videos"), &data)
        .await;
    let path = format!("/{}", done["key"].as_str().unwrap());
    let res = get_with(&app, &path, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-type"), "video/mp4");
    assert_eq!(header(&res, "content-length"), "100000");
    assert_eq!(header(&res, "accept-ranges"), "bytes");
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert_eq!(header(&res, "content-security-policy"), "");
    let etag = header(&res, "etag").to_owned();
    let modified = header(&res, "last-modified").to_owned();
    assert!(etag.starts_with('"'), "strong ETag: {etag}");
    assert_eq!(res.bytes().await.unwrap(), data);
    // Single, suffix and open ranges.
    for (range, start, end) in [
        ("bytes=0-99", 0, 100),
        ("bytes=-10", 99_990, 100_000),
        ("bytes=99000-", 99_000, 100_000),
    ] {
        let res = get_with(&app, &path, &[("range", range)]).await;
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&res, "content-range"),
            format!("bytes {start}-{}/100000", end - 1)
        );
        assert_eq!(res.bytes().await.unwrap(), data[start..end]);
    }
    // Unsatisfiable → 416 with bytes */size.
    let res = get_with(&app, &path, &[("range", "bytes=200000-")]).await;
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&res, "content-range"), "bytes */100000");
    // Malformed → ignored (200); several, overlapping, or more than 16 → never a 500, never expanded.
    let many = format!(
        "bytes={}",
        (0..20)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 5))
            .collect::<Vec<_>>()
            .join(",")
    );
    for range in [
        "bytes=abc",
        "items=0-1",
        "bytes=0-1,5-9",
        "bytes=0-50000,100-60000",
        many.as_str(),
    ] {
        let res = get_with(&app, &path, &[("range", range)]).await;
        assert!(
            res.status() == StatusCode::OK
                || res.status() == StatusCode::PARTIAL_CONTENT
                || res.status() == StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}: {}",
            res.status()
        );
        let len = res.bytes().await.unwrap().len();
        assert!(len <= 100_000, "{range}: amplified to {len}");
    }
    // Conditionals.
    assert_eq!(
        get_with(&app, &path, &[("if-none-match", &etag)])
            .await
            .status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get_with(&app, &path, &[("if-modified-since", &modified)])
            .await
            .status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get_with(&app, &path, &[("if-none-match", "\"other\"")])
            .await
            .status(),
        StatusCode::OK
    );
    let res = get_with(&app, &path, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    let res = get_with(
        &app,
        &path,
        &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 100_000);
    let res = get_with(
        &app,
        &path,
        &[
            ("range", "bytes=0-9"),
            ("if-range", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // HEAD: the headers, no body.
    let res = app.request(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-length"), "100000");
    assert!(res.bytes().await.unwrap().is_empty());
    // Missing → 404 (the old service answered 500).
    assert_eq!(
        get_with(&app, "/storage/u1/videos/00000000_none.mp4", &[])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// Drops a file's pages from the page cache, so the next read must go to the disk.
fn evict(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

#[tokio::test]
async fn large_files_stream_whole_and_in_ranges_from_cache_or_disk() {
    let app = spawn_app().await;
    // Larger than what is read whole before answering, and not a multiple of any chunk.
    let data = pattern(3 * 1024 * 1024 + 12_345, 3);
    let done = app
        .as_service()
        .acting_for("u1")
        .upload_file("movie.mp4", None, &data)
        .await;
    let key = done["key"].as_str().unwrap().to_owned();
    let path = format!("/{key}");
    let on_disk = app.storage_root().join(&key);
    for cold in [false, true] {
        let ranges: [(u64, u64); 4] = [
            (0, data.len() as u64),
            (1_000_000, 2_500_001),
            (1, 2),
            (data.len() as u64 - 300_000, data.len() as u64),
        ];
        for (start, end) in ranges {
            if cold {
                evict(&on_disk);
            }
            let whole = start == 0 && end == data.len() as u64;
            let range = format!("bytes={start}-{}", end - 1);
            let with_range = [("range", range.as_str())];
            let res = get_with(&app, &path, if whole { &[] } else { &with_range }).await;
            assert_eq!(
                res.status(),
                if whole {
                    StatusCode::OK
                } else {
                    StatusCode::PARTIAL_CONTENT
                },
                "{range} cold={cold}"
            );
            assert_eq!(header(&res, "content-length"), (end - start).to_string());
            let body = res.bytes().await.unwrap();
            assert!(
                body[..] == data[start as usize..end as usize],
                "{range} cold={cold}: wrong bytes"
            );
        }
    }
    // HEAD with a range: the 206 headers, no body.
    let res = app
        .request(Method::HEAD, &path)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&res, "content-length"), "10");
    assert!(res.bytes().await.unwrap().is_empty());
    // If-Match / If-Unmodified-Since that the file does not meet → 412, JSON.
    for (name, value) in [
        ("if-match", "\"not-it\""),
        ("if-unmodified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ] {
        let res = get_with(&app, &path, &[(name, value)]).await;
        assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED, "{name}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["detail"], "Precondition failed");
    }
    // The same validators, and If-Match with the right tag, under a signed URL.
    let etag = header(&get_with(&app, &path, &[]).await, "etag").to_owned();
    let res = get_with(&app, &path, &[("if-match", &etag), ("range", "bytes=0-0")]).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.bytes().await.unwrap()[..], data[..1]);
}

#[tokio::test]
async fn special_files_in_storage_are_not_served_and_do_not_hang() {
    let app = spawn_app().await;
    let dir = app.storage_root().join("storage/u1/main");
    std::fs::create_dir_all(&dir).unwrap();
    // A FIFO opened for reading would block forever without O_NONBLOCK.
    let fifo = dir.join("0badcafe_pipe.bin");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    std::fs::create_dir(dir.join("0badcafe_dir.bin")).unwrap();
    for p in [
        "/storage/u1/main/0badcafe_pipe.bin",
        "/storage/u1/main/0badcafe_dir.bin",
    ] {
        let res = tokio::time::timeout(std::time::Duration::from_secs(10), get_with(&app, p, &[]))
            .await
            .expect("a special file must not hang the request");
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{p}");
    }
}

#[tokio::test]
async fn script_capable_files_are_sandboxed() {
    let app = spawn_app().await;
    for (name, body) in [
        ("page.html", &b"<script>alert(document.cookie)</script>"[..]),
        (
            "img.svg",
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        ),
        ("x.xhtml", b"<html/>"),
        ("a.js", b"alert(1)"),
    ] {
        let done = app
            .as_service()
            .acting_for("u1")
            .upload_file(name, None, body)
            .await;
        let res = get_with(&app, &format!("/{}", done["key"].as_str().unwrap()), &[]).await;
        assert_eq!(header(&res, "content-security-policy"), "sandbox", "{name}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{name}");
    }
}

#[tokio::test]
async fn a_range_at_the_end_of_a_3_gib_sparse_file() {
    if fs_only("a sparse file placed in UPLOAD_ROOT") {
        return;
    }
    let app = spawn_app().await;
    let dir = app.storage_root().join("storage/u1/big");
    std::fs::create_dir_all(&dir).unwrap();
    let f = std::fs::File::create(dir.join("0badcafe_sparse.bin")).unwrap();
    let len = 3u64 << 30;
    f.set_len(len).unwrap();
    {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let mut f = f;
        f.seek(SeekFrom::Start(len - 1)).unwrap();
        f.write_all(b"Z").unwrap();
    }
    let res = get_with(
        &app,
        "/storage/u1/big/0badcafe_sparse.bin",
        &[("range", "bytes=-1")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&res, "content-range"),
        format!("bytes {}-{}/{len}", len - 1, len - 1)
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"Z");
}

#[tokio::test]
async fn hostile_paths_are_never_served() {
    let (app, root) = app_with_old_data(&[]).await;
    // Something worth stealing outside storage/, and a symlink inside storage/ pointing out.
    std::fs::write(root.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink("/etc", root.path().join("storage/user123/etc-link")).unwrap();
    std::os::unix::fs::symlink(
        root.path().join("secret.txt"),
        root.path().join("storage/user123/main/00000000_s.txt"),
    )
    .unwrap();
    let session = "/storage/../.parts";
    for path in [
        "/storage/user123/main/c26d2440_data.json.meta",
        "/storage/user123/../../secret.txt",
        "/storage/user123/%2e%2e/%2e%2e/secret.txt",
        "/storage/user123/..%2F..%2Fsecret.txt",
        "/storage/user123/%2E%2E%2F%2E%2E%2F.signing_key",
        "/storage/..%2F.signing_key/x",
        "/storage/user123/..\\..\\secret.txt",
        "/storage/user123/main%5C..%5C..%5Csecret.txt",
        "/storage/user123/main/c26d2440_data.json%00.png",
        "/storage/user123/.hidden",
        "/storage/user123/etc-link/passwd",
        "/storage/user123/main/00000000_s.txt",
        "/storage/%2e%2e/secret.txt",
        "/storage/.parts/x/session.json",
        session,
        "/storage/user123//main/c26d2440_data.json.meta",
        "/storage/user123/main/%252e%252e/x",
    ] {
        let res = get_with(&app, path, &[]).await;
        assert!(
            res.status() == StatusCode::NOT_FOUND || res.status() == StatusCode::BAD_REQUEST,
            "{path}: {}",
            res.status()
        );
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("secret") && !body.contains("root:"),
            "{path}: {body}"
        );
    }
    // The legitimate one works, with its non-ASCII name percent-encoded.
    let res = get_with(
        &app,
        "/storage/user123/documents/7b897611_R%C3%A9sum%C3%A9%20%C3%A9t%C3%A9.pdf",
        &[],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-type"), "application/pdf");
}

#[tokio::test]
async fn signed_urls_old_new_and_tampered() {
    let (app, _root) = app_with_old_data(&[]).await;
    let key = "storage/user123/documents/7b897611_Résumé été.pdf";
    // Made in the test exactly as the old service made them.
    let exp = now() + 600;
    let url = old_style_url("", key, exp, SIGNING_KEY);
    let res = get_with(&app, &url, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-disposition"), "inline; filename=\"R_sum_ _t_.pdf\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%C3%A9t%C3%A9.pdf");
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert_eq!(res.bytes().await.unwrap().len(), 5009);
    // Also under /v1/files/get/, unpadded, with ranges and HEAD.
    let v1 = url
        .replacen("/get/", "/v1/files/get/", 1)
        .replace("=?", "?");
    let res = get_with(&app, &v1, &[("range", "bytes=0-3")]).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"%PDF");
    assert_eq!(
        app.request(Method::HEAD, &url)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Tampered key, expiry, signature; expired; missing parts → 403.
    let forbidden = json!({ "detail": "Invalid or expired signature" });
    let other_key = url.replace(&url[5..url.find('?').unwrap()], &{
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE.encode("storage/user123/main/c26d2440_data.json")
    });
    let bumped = url.replace(&format!("exp={exp}"), &format!("exp={}", exp + 1));
    let bad_sig = format!(
        "{}{}",
        &url[..url.len() - 1],
        if url.ends_with('0') { '1' } else { '0' }
    );
    let expired = old_style_url("", key, now() - 10, SIGNING_KEY);
    let no_sig = url[..url.find("&sig=").unwrap()].to_owned();
    let swapped = format!("{url}&disposition=attachment");
    for u in [other_key, bumped, bad_sig, expired, no_sig, swapped] {
        expect(app.get(&u), StatusCode::FORBIDDEN, forbidden.clone()).await;
    }
    // An undecodable key → 400; a signed key that does not exist → 404.
    assert_eq!(
        get_with(&app, "/get/!!!?exp=1&sig=00", &[]).await.status(),
        StatusCode::BAD_REQUEST
    );
    let gone = old_style_url(
        "",
        "storage/user123/main/00000000_gone.txt",
        exp,
        SIGNING_KEY,
    );
    assert_eq!(
        get_with(&app, &gone, &[]).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn old_service_url_vectors_verify() {
    let (app, root) = app_with_old_data(&[("UPLOAD_SIGNING_KEY", "test-signing-key")]).await;
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/signed-url-vectors.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for v in vectors["vectors"].as_array().unwrap() {
        let url = v["url"]
            .as_str()
            .unwrap()
            .replace("https://file-server.example.com", "");
        let exists = root.path().join(v["key"].as_str().unwrap()).exists();
        let res = get_with(&app, &url, &[]).await;
        let want = match (v["expired"].as_bool().unwrap(), exists) {
            (true, _) => StatusCode::FORBIDDEN,
            (false, true) => StatusCode::OK,
            (false, false) => StatusCode::NOT_FOUND,
        };
        assert_eq!(res.status(), want, "{url}");
    }
}

#[tokio::test]
async fn issuing_signed_urls() {
    let (app, _root) = app_with_old_data(&[]).await;
    let key = "storage/alice@example.com/videos/91726cf7_clip.mp4";
    let alice = app.user_token("alice@example.com");
    let (s, b) = send(
        app.get(&format!(
            "/v1/files/signed-url?key={}&ttl=120",
            key.replace('@', "%40")
        ))
        .bearer(&alice),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["url"], b["signed_url"]);
    assert_eq!(b["expires_in"], 120);
    assert_eq!(b["disposition"], "inline");
    let url = b["url"]
        .as_str()
        .unwrap()
        .strip_prefix(&app.base)
        .unwrap()
        .to_owned();
    assert!(url.starts_with("/get/"), "{url}");
    assert_eq!(get_with(&app, &url, &[]).await.status(), StatusCode::OK);
    // POST form of the old SDK, with the attachment disposition bound into the signature.
    let (s, b) = send(
        app.post("/v1/files/signed-url")
            .bearer(&alice)
            .json(&json!({ "file_key": key, "expires_in": 60, "disposition": "attachment" })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let url = b["signed_url"]
        .as_str()
        .unwrap()
        .strip_prefix(&app.base)
        .unwrap()
        .to_owned();
    assert!(url.ends_with("&disposition=attachment"));
    let res = get_with(&app, &url, &[]).await;
    assert!(header(&res, "content-disposition").starts_with("attachment; filename=\"clip.mp4\""));
    let stripped = url.replace("&disposition=attachment", "");
    assert_eq!(
        get_with(&app, &stripped, &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    // ttl bounds, ownership, missing file.
    for ttl in ["0", "604801", "-5", "abc"] {
        let (s, _) = send(
            app.get(&format!("/v1/files/signed-url?key={key}&ttl={ttl}"))
                .bearer(&alice),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "ttl {ttl}");
    }
    let bob = app.user_token("bob");
    assert_eq!(
        send(
            app.get(&format!("/v1/files/signed-url?key={key}"))
                .bearer(&bob)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(
            app.get("/v1/files/signed-url?key=storage/alice@example.com/none.mp4")
                .bearer(&alice)
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

/// Regression (load test): a listing raced a delete and answered 500 when a file vanished
/// between reading the folder and reading the file's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_while_files_come_and_go() {
    let app = spawn_app().await;
    for i in 0..20 {
        app.as_service()
            .acting_for("busy")
            .upload_file(&format!("keep{i}.txt"), Some("f"), b"k")
            .await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (http, base, stop) = (app.http.clone(), app.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let res: Value = http
                    .post(format!(
                        "{base}/v1/files/upload?user_id=busy&folder=f&filename=t{n}.bin"
                    ))
                    .header("x-service-token", SERVICE_TOKEN)
                    .body(vec![1u8; 100])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let key = res["files"][0]["key"].as_str().unwrap().to_owned();
                http.delete(format!("{base}/v1/files/{key}"))
                    .header("x-service-token", SERVICE_TOKEN)
                    .send()
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    for _ in 0..1000 {
        let (s, l) = send(app.get("/v1/files/all?user_id=busy&folder=f").as_service()).await;
        assert_eq!(s, StatusCode::OK, "{l}");
        assert!(l["total_count"].as_u64().unwrap() >= 20);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(churn.await.unwrap() > 0);
}

/// A sidecar edited by hand is served once `SIDECAR_CACHE_SECS` (here 1 s) has passed.
#[tokio::test]
async fn a_sidecar_edited_by_hand_is_served_once_the_cache_lifetime_has_passed() {
    if fs_only("a sidecar edited by hand in UPLOAD_ROOT (s3: the catalog row is the metadata)") {
        return;
    }
    let app = spawn_app_with(&[("SIDECAR_CACHE_SECS", "1")]).await;
    let done = app
        .as_service()
        .acting_for("u1")
        .upload_file("notes.txt", None, b"hello")
        .await;
    let key = done["key"].as_str().unwrap().to_owned();
    let path = format!("/{key}");
    let res = get_with(&app, &path, &[]).await;
    assert_eq!(header(&res, "content-type"), "text/plain");
    // An operator changes the type in the sidecar; the data file is untouched.
    let side = app.storage_root().join(format!("{key}.meta"));
    let mut m: Value = serde_json::from_slice(&std::fs::read(&side).unwrap()).unwrap();
    m["mime"] = json!("text/markdown");
    std::fs::write(&side, serde_json::to_vec(&m).unwrap()).unwrap();
    let start = std::time::Instant::now();
    loop {
        let res = get_with(&app, &path, &[]).await;
        if header(&res, "content-type") == "text/markdown" {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "the old type was still served after 3 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
