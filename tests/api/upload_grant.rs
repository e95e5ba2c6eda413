//! Signed upload URLs (issue 15): `POST /v1/files/sign-upload` and the one-request upload
//! with a grant instead of a token: user and folder from the grant, `max_size`, MIME types,
//! tampering, expiry, and no crossing with signed download URLs.

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// `POST /v1/files/sign-upload` as `caller`; the status and body.
async fn sign(caller: &Caller<'_>, body: Value) -> (StatusCode, Value) {
    send(caller.post("/v1/files/sign-upload").json(&body)).await
}

/// Signs as the service for `u1` and asserts 200.
async fn sign_ok(app: &TestApp, body: Value) -> Value {
    let mut body = body;
    body["user_id"] = json!("u1");
    let (s, b) = sign(&app.as_service(), body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

/// A grant and signature made here from the wire format (not with the server's code).
fn forge(claims: &Value, key: &str) -> String {
    let grant = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("upload-grant\n{grant}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    format!("grant={grant}&sig={sig}")
}

/// A raw one-request upload with no credentials but the query.
async fn raw_upload(
    app: &TestApp,
    query: &str,
    name: &str,
    ctype: &str,
    data: &[u8],
) -> (StatusCode, Value) {
    send(
        app.post(&format!("/v1/files/upload?{query}&filename={name}"))
            .header("content-type", ctype)
            .body(data.to_vec()),
    )
    .await
}

/// Files stored for `user` (sidecars included), relative to its directory.
fn stored(app: &TestApp, user: &str) -> Vec<String> {
    files_under(&app.storage_root().join("storage").join(user))
}

/// What `.parts/` holds (a refused upload must leave no work folder behind).
fn parts_left(app: &TestApp) -> Vec<String> {
    app.leftovers()
        .into_iter()
        .filter(|p| !p.starts_with('.'))
        .collect()
}

#[tokio::test]
async fn a_service_signs_and_a_browser_uploads_with_no_token() {
    let app = spawn_app().await;
    let b = sign_ok(
        &app,
        json!({ "folder": "photos//2026/", "expires_in": 600, "max_size": 1000,
                "mime_types": ["image/PNG", "video/*"] }),
    )
    .await;
    let query = b["query"].as_str().unwrap();
    assert!(
        query.starts_with("grant=") && query.contains("&sig="),
        "{b}"
    );
    assert_eq!(
        b["url"],
        json!(format!("{}/v1/files/upload?{query}", app.base))
    );
    assert_eq!(
        b["tus_url"],
        json!(format!("{}/v1/files/tus/?{query}", app.base))
    );
    assert_eq!(b["user_id"], "u1");
    assert_eq!(b["folder"], "photos/2026");
    assert_eq!(b["max_size"], 1000);
    assert_eq!(b["expires_in"], 600);
    assert_eq!(b["mime_types"], json!(["image/png", "video/*"]));
    let at = chrono::DateTime::parse_from_rfc3339(b["expires_at"].as_str().unwrap()).unwrap();
    assert!((at.timestamp() - (now() + 600)).abs() <= 2, "{b}");
    // The grant is the documented compact JSON.
    let grant = query
        .strip_prefix("grant=")
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let decoded: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(grant)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        decoded,
        json!({ "u": "u1", "f": "photos/2026", "e": at.timestamp(), "m": 1000,
                "t": ["image/png", "video/*"] })
    );

    // Raw body, exact type.
    let png = pattern(1000, 1);
    let (s, body) = raw_upload(&app, query, "a.png", "image/png", &png).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let key = body["files"][0]["key"].as_str().unwrap();
    assert!(key.starts_with("storage/u1/photos/2026/"), "{key}");
    assert!(key.ends_with("_a.png"), "{key}");
    let path = app.storage_root().join(key);
    assert_eq!(std::fs::read(path).unwrap(), png);

    // Multipart, a wildcard type; the form may repeat the grant's folder.
    let form = reqwest::multipart::Form::new()
        .text("folder", "photos/2026")
        .part(
            "file",
            reqwest::multipart::Part::bytes(pattern(10, 2))
                .file_name("clip.mp4")
                .mime_str("video/mp4")
                .unwrap(),
        );
    let (s, body) = send(
        app.post(&format!("/v1/files/upload?{query}"))
            .multipart(form),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let key = body["files"][0]["key"].as_str().unwrap();
    assert!(key.starts_with("storage/u1/photos/2026/"), "{key}");
    assert_eq!(body["files"][0]["mime"], "video/mp4");
    assert_eq!(stored(&app, "u1").len(), 4, "two files and their sidecars");
}

#[tokio::test]
async fn a_user_signs_for_itself_only() {
    let app = spawn_app().await;
    let me = app.as_user("u2");
    let (s, b) = sign(&me, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["user_id"], "u2");
    assert_eq!(b["folder"], Value::Null);
    assert_eq!(b["mime_types"], Value::Null);
    assert_eq!(b["expires_in"], 3600);
    // MAX_BODY_MB's default, 5120 MiB.
    assert_eq!(b["max_size"], 5120u64 * 1024 * 1024);
    let (s, b) = sign(&me, json!({ "user_id": "u2" })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    expect(
        me.post("/v1/files/sign-upload")
            .json(&json!({ "user_id": "u3" })),
        StatusCode::FORBIDDEN,
        json!({ "detail": "A user may sign upload URLs for itself only" }),
    )
    .await;
    // A service must name the user; nobody at all is 401.
    let (s, _) = sign(&app.as_service(), json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = sign(&app.anonymous(), json!({ "user_id": "u1" })).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // The user's grant uploads into its own files.
    let (s, b) = sign(&me, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = raw_upload(
        &app,
        b["query"].as_str().unwrap(),
        "n.txt",
        "text/plain",
        b"hi",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["files"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("storage/u2/"));
}

#[tokio::test]
async fn bad_sign_requests_say_why() {
    let app = spawn_app_with(&[("MAX_BODY_MB", "1")]).await;
    let ttl = "expires_in must be between 1 and 604800 seconds";
    for bad in [
        json!(0),
        json!(604_801),
        json!("soon"),
        json!(-5),
        json!(1.5),
    ] {
        expect(
            app.as_service()
                .post("/v1/files/sign-upload")
                .json(&json!({ "user_id": "u1", "expires_in": bad })),
            StatusCode::BAD_REQUEST,
            json!({ "detail": ttl }),
        )
        .await;
    }
    sign_ok(&app, json!({ "expires_in": "604800" })).await;
    for bad in [json!(0), json!(1024 * 1024 + 1)] {
        expect(
            app.as_service()
                .post("/v1/files/sign-upload")
                .json(&json!({ "user_id": "u1", "max_size": bad })),
            StatusCode::BAD_REQUEST,
            json!({ "detail": "max_size must be between 1 and 1048576 bytes (MAX_BODY_MB)" }),
        )
        .await;
    }
    let b = sign_ok(&app, json!({ "max_size": 1024 * 1024 })).await;
    assert_eq!(b["max_size"], 1024 * 1024);
    for (bad, detail) in [
        (
            json!([]),
            "mime_types must list at least one type, or be left out to allow any",
        ),
        (
            json!(["image/png", "png"]),
            "mime_types: 'png' is not a MIME type such as image/png or video/*",
        ),
    ] {
        expect(
            app.as_service()
                .post("/v1/files/sign-upload")
                .json(&json!({ "user_id": "u1", "mime_types": bad })),
            StatusCode::BAD_REQUEST,
            json!({ "detail": detail }),
        )
        .await;
    }
    let (s, _) = sign(
        &app.as_service(),
        json!({ "user_id": "u1", "mime_types": "image/png" }),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = sign(&app.as_service(), json!({ "user_id": "../x" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A grant must fit in a URL that proxies accept.
    let deep = vec!["a".repeat(100); 80].join("/");
    let (s, b) = sign(
        &app.as_service(),
        json!({ "user_id": "u1", "folder": deep }),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b["detail"]
        .as_str()
        .unwrap()
        .starts_with("The upload URL would be too long"));
    let many: Vec<String> = (0..32)
        .map(|i| format!("application/x-{i}-{}", "b".repeat(80)))
        .collect();
    let b = sign_ok(
        &app,
        json!({ "mime_types": many, "folder": "x".repeat(100) }),
    )
    .await;
    assert!(b["url"].as_str().unwrap().len() < 8000, "{b}");
}

#[tokio::test]
async fn tampered_or_expired_grants_are_refused() {
    let app = spawn_app().await;
    let b = sign_ok(&app, json!({ "max_size": 10 })).await;
    let query = b["query"].as_str().unwrap().to_owned();
    let invalid = json!({ "detail": "Invalid upload signature" });
    let upload = |q: String| {
        app.post(&format!("/v1/files/upload?{q}&filename=a.txt"))
            .body("x")
    };

    // One hex digit of the signature changed.
    let last = query.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &query[..query.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    expect(upload(flipped), StatusCode::FORBIDDEN, invalid.clone()).await;
    // A grant for more, with the old signature.
    let sig = query.split("&sig=").nth(1).unwrap();
    let bigger = forge(
        &json!({ "u": "u1", "f": null, "e": now() + 600, "m": 1_000_000 }),
        "another-key",
    );
    let bigger_grant = bigger.split('&').next().unwrap();
    expect(
        upload(format!("{bigger_grant}&sig={sig}")),
        StatusCode::FORBIDDEN,
        invalid.clone(),
    )
    .await;
    // Signed with another key; no signature; two grants.
    expect(upload(bigger), StatusCode::FORBIDDEN, invalid.clone()).await;
    let grant_only = query.split('&').next().unwrap().to_owned();
    expect(
        upload(grant_only.clone()),
        StatusCode::FORBIDDEN,
        invalid.clone(),
    )
    .await;
    expect(
        upload(format!("{grant_only}&{query}")),
        StatusCode::FORBIDDEN,
        invalid.clone(),
    )
    .await;
    // Signed with the right key but not a grant.
    let junk = forge(&json!({ "u": "u1", "x": 1 }), SIGNING_KEY);
    expect(upload(junk), StatusCode::FORBIDDEN, invalid).await;

    // Right key, in the past.
    let expired = forge(
        &json!({ "u": "u1", "f": null, "e": now() - 1, "m": 10 }),
        SIGNING_KEY,
    );
    expect(
        upload(expired),
        StatusCode::FORBIDDEN,
        json!({ "detail": "Upload URL expired" }),
    )
    .await;
    // ...and the real thing: a one-second URL a little later.
    let short = sign_ok(&app, json!({ "expires_in": 1 })).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    expect(
        upload(short["query"].as_str().unwrap().to_owned()),
        StatusCode::FORBIDDEN,
        json!({ "detail": "Upload URL expired" }),
    )
    .await;
    // A forged grant in the documented format with the right key works: the format is
    // the contract the tus routes share.
    let mine = forge(
        &json!({ "u": "u1", "f": "x", "e": now() + 60, "m": 10 }),
        SIGNING_KEY,
    );
    let (s, body) = send(upload(mine)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["files"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("storage/u1/x/"));
    assert_eq!(stored(&app, "u1").len(), 2);
}

#[tokio::test]
async fn over_max_size_is_413_and_nothing_is_kept() {
    let app = spawn_app().await;
    let b = sign_ok(&app, json!({ "max_size": 1000 })).await;
    let query = b["query"].as_str().unwrap();
    let too_large = json!({ "detail": "File too large for this upload URL: at most 1000 bytes" });

    // Declared by Content-Length: refused before the body is read.
    let (s, body) = raw_upload(
        &app,
        query,
        "a.bin",
        "application/octet-stream",
        &pattern(1001, 3),
    )
    .await;
    assert_eq!((s, &body), (StatusCode::PAYLOAD_TOO_LARGE, &too_large));

    // Chunked, with no length: cut as the bytes pass the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|i| Ok(pattern(400, i))).collect();
    let res = app
        .post(&format!("/v1/files/upload?{query}&filename=b.bin"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let (s, body) = json_of(res).await;
    assert_eq!((s, &body), (StatusCode::PAYLOAD_TOO_LARGE, &too_large));

    // Multipart: the second file is over; the first is not kept either.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(pattern(1000, 4)).file_name("ok.bin"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(pattern(1500, 5)).file_name("big.bin"),
        );
    let (s, body) = send(
        app.post(&format!("/v1/files/upload?{query}"))
            .multipart(form),
    )
    .await;
    assert_eq!((s, &body), (StatusCode::PAYLOAD_TOO_LARGE, &too_large));

    assert_eq!(stored(&app, "u1"), Vec::<String>::new());
    assert_eq!(parts_left(&app), Vec::<String>::new());
    // Exactly the limit is fine.
    let (s, body) = raw_upload(
        &app,
        query,
        "c.bin",
        "application/octet-stream",
        &pattern(1000, 6),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn wrong_type_is_403_and_wildcards_match() {
    let app = spawn_app().await;
    let b = sign_ok(&app, json!({ "mime_types": ["image/png", "video/*"] })).await;
    let query = b["query"].as_str().unwrap();
    let refused = |t: &str| {
        json!({ "detail": format!(
            "File type '{t}' is not allowed by this upload URL (allowed: image/png, video/*)"
        ) })
    };
    let (s, body) = raw_upload(&app, query, "a.txt", "text/plain", b"x").await;
    assert_eq!((s, &body), (StatusCode::FORBIDDEN, &refused("text/plain")));
    // The type a file is stored and served with counts: its name's, not the declared one.
    let (s, body) = raw_upload(&app, query, "page.html", "image/png", b"x").await;
    assert_eq!((s, &body), (StatusCode::FORBIDDEN, &refused("text/html")));
    // No extension: the declared type, parameters and case ignored.
    let (s, body) = raw_upload(&app, query, "noext", "Video/WebM; codecs=vp9", b"x").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = raw_upload(&app, query, "noext2", "application/octet-stream", b"x").await;
    assert_eq!(
        (s, &body),
        (StatusCode::FORBIDDEN, &refused("application/octet-stream"))
    );
    let (s, body) = raw_upload(&app, query, "B.PNG", "", b"x").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Multipart: the part's name and type.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"x".to_vec())
            .file_name("doc.pdf")
            .mime_str("application/pdf")
            .unwrap(),
    );
    let (s, body) = send(
        app.post(&format!("/v1/files/upload?{query}"))
            .multipart(form),
    )
    .await;
    assert_eq!(
        (s, &body),
        (StatusCode::FORBIDDEN, &refused("application/pdf"))
    );
    assert_eq!(stored(&app, "u1").len(), 4, "noext and B.PNG with sidecars");
}

#[tokio::test]
async fn the_grant_decides_user_and_folder() {
    let app = spawn_app().await;
    let b = sign_ok(&app, json!({ "folder": "inbox" })).await;
    let query = b["query"].as_str().unwrap();
    // The grant's folder may be repeated; another is refused; a named user is ignored.
    let (s, body) = raw_upload(
        &app,
        &format!("{query}&folder=inbox&user_id=u9"),
        "a.txt",
        "text/plain",
        b"a",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["files"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("storage/u1/inbox/"));
    expect(
        app.post(&format!(
            "/v1/files/upload?{query}&folder=elsewhere&filename=b.txt"
        ))
        .body("b"),
        StatusCode::FORBIDDEN,
        json!({ "detail": "This upload URL is for folder 'inbox' only" }),
    )
    .await;

    // Bearer and service headers win over a grant (which is then not even checked).
    let (s, body) = send(
        app.as_user("u3")
            .post(&format!("/v1/files/upload?{query}&filename=c.txt"))
            .body("c"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["files"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("storage/u3/"));
    let (s, body) = send(
        app.as_user("u3")
            .post("/v1/files/upload?grant=junk&sig=00&filename=d.txt")
            .body("d"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // A grant wins over the ambient cookie: the file is the grant's user's, and a cookie
    // from another site does not matter.
    let (s, body) = send(
        app.post(&format!("/v1/files/upload?{query}&filename=e.txt"))
            .cookie(&app.user_token("u3"))
            .header("origin", "https://elsewhere.example")
            .body("e"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["files"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("storage/u1/inbox/"));
    // Without a grant that cookie request is refused as cross-site, as before.
    let (s, _) = send(
        app.post("/v1/files/upload?filename=f.txt")
            .cookie(&app.user_token("u3"))
            .header("origin", "https://elsewhere.example")
            .body("f"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn grants_and_download_signatures_do_not_cross() {
    let app = spawn_app().await;
    let up = app
        .as_service()
        .acting_for("u1")
        .upload_file("a.txt", None, b"secret")
        .await;
    let key = up["key"].as_str().unwrap();
    let (s, signed) = send(
        app.as_service()
            .get(&format!("/v1/files/signed-url?key={key}")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{signed}");
    let url = signed["url"].as_str().unwrap();
    let dl_sig = url.split("sig=").nth(1).unwrap().split('&').next().unwrap();
    let exp = signed["expires_at"].as_i64().unwrap();

    // A download signature under a grant.
    let grant = sign_ok(&app, json!({})).await;
    let grant_text = grant["query"]
        .as_str()
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    expect(
        app.post(&format!(
            "/v1/files/upload?{grant_text}&sig={dl_sig}&filename=x.txt"
        ))
        .body("x"),
        StatusCode::FORBIDDEN,
        json!({ "detail": "Invalid upload signature" }),
    )
    .await;
    // A grant's signature as a download signature, for the grant text as a "key" or the
    // real key.
    let grant_sig = grant["query"]
        .as_str()
        .unwrap()
        .split("&sig=")
        .nth(1)
        .unwrap();
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(key);
    for path in [
        format!("/get/{encoded}?exp={exp}&sig={grant_sig}"),
        format!(
            "/get/{}?exp={exp}&sig={grant_sig}",
            base64::engine::general_purpose::URL_SAFE.encode(&grant_text[6..])
        ),
    ] {
        let res = app.get(&path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // The download URL itself still works.
    let res = app.http.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"secret");
}

#[tokio::test]
async fn sign_upload_is_in_the_openapi_document() {
    let app = spawn_app().await;
    let (s, doc) = send(app.get("/openapi.json")).await;
    assert_eq!(s, StatusCode::OK);
    let op = &doc["paths"]["/v1/files/sign-upload"]["post"];
    assert!(op.is_object(), "{}", doc["paths"]);
    for status in ["200", "400", "401", "403", "422"] {
        assert!(op["responses"][status].is_object(), "{status}: {op}");
    }
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["SignUploadRequest"]["properties"]["mime_types"].is_object());
    assert!(schemas["SignedUpload"]["properties"]["tus_url"].is_object());
    let upload = &doc["paths"]["/v1/files/upload"]["post"];
    let params: Vec<&str> = upload["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        params.contains(&"grant") && params.contains(&"sig"),
        "{params:?}"
    );
}

#[tokio::test]
async fn a_listed_origin_may_upload_with_a_grant() {
    let app = spawn_app_with(&[("CORS_ALLOW_ORIGINS", "https://app.example")]).await;
    let b = sign_ok(&app, json!({})).await;
    let path = format!(
        "/v1/files/upload?{}&filename=a.bin",
        b["query"].as_str().unwrap()
    );
    let res = app
        .request(Method::OPTIONS, &path)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header_opt(&res, "access-control-allow-origin"),
        Some("https://app.example")
    );
    let res = app
        .post(&path)
        .header("origin", "https://app.example")
        .header("content-type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_opt(&res, "access-control-allow-origin"),
        Some("https://app.example")
    );
    let (s, body) = json_of(res).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}
