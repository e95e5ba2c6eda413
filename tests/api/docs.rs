//! The service explains itself (API.md §5): the OpenAPI document matches the router both
//! ways, `/docs` and `/redoc` load nothing from elsewhere (checked in headless Chromium),
//! `/metrics` counts what happens, and `/instructions` holds no secret.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{expect, send, spawn_app, spawn_app_with, As as _, TestApp};

// ---------------------------------------------------------------------------------------
// The document and the router.

/// The document as served.
async fn document(app: &TestApp) -> Value {
    let res = app.get("/openapi.json").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let ctype = res.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap();
    assert!(ctype.starts_with("application/json"), "{ctype}");
    res.json().await.unwrap()
}

const METHODS: [&str; 8] = [
    "get", "head", "post", "put", "delete", "patch", "options", "trace",
];

/// (METHOD, path) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// A route path as OpenAPI writes it: a catch-all `{*key}` is the parameter `{key}`.
fn openapi_form(path: &str) -> String {
    path.replace("{*", "{")
}

#[tokio::test]
async fn the_document_is_openapi_3_with_the_three_schemes_and_the_error_body() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        (
            &schemes["service_token"]["type"],
            &schemes["service_token"]["in"],
            &schemes["service_token"]["name"]
        ),
        (
            &json!("apiKey"),
            &json!("header"),
            &json!("X-Service-Token")
        )
    );
    assert_eq!(
        (
            &schemes["bearer"]["type"],
            &schemes["bearer"]["scheme"],
            &schemes["bearer"]["bearerFormat"]
        ),
        (&json!("http"), &json!("bearer"), &json!("JWT"))
    );
    assert_eq!(
        (
            &schemes["cookie"]["type"],
            &schemes["cookie"]["in"],
            &schemes["cookie"]["name"]
        ),
        (&json!("apiKey"), &json!("cookie"), &json!("auth_token"))
    );
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], json!(["detail"]), "{error}");
    // Every error answer an operation documents has that body (HEAD answers have none).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "head" {
                continue;
            }
            for (status, res) in op["responses"].as_object().unwrap() {
                let health = path.ends_with("/healthz");
                if status.starts_with('4') || (status.starts_with('5') && !health) {
                    assert_eq!(
                        res["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn every_route_served_is_documented_and_every_documented_route_is_served() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let documented = operations(&doc);
    let routes = upload_server::routes::routes();
    let served: BTreeSet<(String, String)> = routes
        .table()
        .iter()
        .map(|s| (s.method.as_str().to_owned(), openapi_form(&s.path)))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );
}

/// A value for each path parameter, so that the path reaches its route.
fn sample_path(path: &str) -> String {
    let values = [
        ("{upload_id}", "00000000-0000-4000-8000-000000000000"),
        ("{part_number}", "0"),
        ("{key}", "storage/u1/docs/00000000_none.txt"),
        ("{user_id}", "u1"),
        ("{path}", "docs/00000000_none.txt"),
        ("{encoded}", "c3RvcmFnZS91MS8wMDAwMDAwMF9ub25lLnR4dA=="),
        ("{token}", "0123456789abcdef"),
        ("{file}", "swagger-ui.css"),
    ];
    let mut out = path.to_owned();
    for (name, value) in values {
        out = out.replace(name, value);
    }
    assert!(
        !out.contains('{'),
        "no sample value for a parameter of {path}"
    );
    out
}

/// The router's own 404 (no route matched), as opposed to a handler's "File not found".
fn is_router_404(status: StatusCode, body: &str) -> bool {
    status == StatusCode::NOT_FOUND && body == r#"{"detail":"Not Found"}"#
}

/// The real app, asked without credentials: every documented (method, path) reaches a
/// handler, and answers 401 exactly when the document says it needs credentials; every
/// other method on those paths is 405. A route the table lists with the wrong methods, or
/// a document that lies about security, fails here.
#[tokio::test]
async fn the_app_answers_as_documented() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    // The detector itself: an unknown path is the router's 404.
    let res = app.get("/v1/nothing-here").send().await.unwrap();
    let status = res.status();
    assert!(is_router_404(status, &res.text().await.unwrap()));

    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = sample_path(path);
        for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"] {
            let op = item.get(method.to_lowercase()).or_else(|| {
                // axum answers HEAD wherever it answers GET.
                (method == "HEAD").then(|| item.get("get")).flatten()
            });
            let res = app
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body = res.text().await.unwrap();
            match op {
                None if status != StatusCode::METHOD_NOT_ALLOWED => {
                    problems.push(format!("{method} {url}: undocumented, got {status} {body}"));
                }
                None => {}
                Some(op) => {
                    let secured = op
                        .get("security")
                        .and_then(Value::as_array)
                        .is_some_and(|s| !s.is_empty());
                    if status == StatusCode::METHOD_NOT_ALLOWED
                        || method != "HEAD" && is_router_404(status, &body)
                    {
                        problems.push(format!("{method} {url}: documented, got {status} {body}"));
                    } else if secured != (status == StatusCode::UNAUTHORIZED) {
                        problems.push(format!(
                            "{method} {url}: security {secured}, got {status} {body}"
                        ));
                    }
                    if !op["responses"]
                        .as_object()
                        .unwrap()
                        .contains_key(status.as_str())
                    {
                        problems.push(format!("{method} {url}: {status} is not documented"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------
// The viewers' pages.

/// The URLs a page refers to (`src` and `href` attributes, `spec-url`).
fn referenced(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\"", "spec-url=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap();
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// GET a page: checks it is HTML with our content security policy, and that everything it
/// refers to is relative (so on this server) and there.
async fn check_page(app: &TestApp, path: &str) -> String {
    let res = app.get(path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    let h = res.headers().clone();
    assert_eq!(h[reqwest::header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = h[reqwest::header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(part), "{path}: CSP {csp} lacks {part}");
    }
    let html = res.text().await.unwrap();
    assert!(!html.contains("//"), "{path} names another origin:\n{html}");
    let refs = referenced(&html);
    assert!(refs.len() >= 2, "{path}: {refs:?}");
    for r in refs {
        assert!(
            !r.starts_with('/') && !r.contains(':'),
            "{path}: {r} is not relative"
        );
        let res = app.get(&format!("/{r}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path} refers to {r}");
        assert!(!res.bytes().await.unwrap().is_empty(), "{r} is empty");
    }
    html
}

#[tokio::test]
async fn docs_is_swagger_ui_from_this_server() {
    let app = spawn_app().await;
    let html = check_page(&app, "/docs").await;
    for file in [
        "docs/swagger-ui-bundle.js",
        "docs/swagger-ui.css",
        "docs/swagger-initializer.js",
    ] {
        assert!(html.contains(file), "{file}");
    }
    let res = app
        .get("/docs/swagger-initializer.js")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let init = res.text().await.unwrap();
    // The document beside the page, and no online validator (its badge is an external image).
    assert!(init.contains(r#""url": "openapi.json""#), "{init}");
    assert!(init.contains(r#""validatorUrl": "none""#), "{init}");
    let res = app.get("/docs/swagger-ui-bundle.js").send().await.unwrap();
    assert_eq!(
        res.headers()[reqwest::header::CONTENT_TYPE],
        "text/javascript"
    );
    let not_found = json!({ "detail": "File not found" });
    expect(
        app.get("/docs/nothing.js"),
        StatusCode::NOT_FOUND,
        not_found.clone(),
    )
    .await;
    // Swagger's own index.html only works under /docs/; /docs is the page.
    expect(
        app.get("/docs/index.html"),
        StatusCode::NOT_FOUND,
        not_found,
    )
    .await;
}

#[tokio::test]
async fn redoc_is_served_with_its_bundle_from_this_server() {
    let app = spawn_app().await;
    let html = check_page(&app, "/redoc").await;
    assert!(html.contains(r#"spec-url="openapi.json""#), "{html}");
    assert!(!html.contains("fonts.googleapis"), "{html}");
    let res = app.get("/redoc/redoc.standalone.js").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[reqwest::header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    let script = res.bytes().await.unwrap();
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/redoc.standalone.js"
    ))
    .unwrap();
    assert_eq!(script.len(), committed.len());
    assert!(script.starts_with(b"/*! For license information"));
}

// ---------------------------------------------------------------------------------------
// /instructions

#[tokio::test]
async fn instructions_use_the_public_base_url_and_hold_no_secret() {
    let token = "svc-token-Zq8w3R7t";
    let signing_key = "signing-key-Hn4v9Kp2";
    let app = spawn_app_with(&[
        ("PUBLIC_BASE_URL", "https://files.example.test"),
        ("AUTH_SERVICE_TOKEN", token),
        ("UPLOAD_SIGNING_KEY", signing_key),
    ])
    .await;
    // No credentials needed.
    let res = app.get("/instructions").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[reqwest::header::CONTENT_TYPE],
        "text/markdown; charset=utf-8"
    );
    let text = res.text().await.unwrap();
    assert!(
        text.contains("export BASE='https://files.example.test'"),
        "{text}"
    );
    assert!(text.contains("https://files.example.test/docs"), "{text}");
    assert!(!text.contains("{BASE}"), "{text}");
    assert!(
        !text.contains(&app.base),
        "the listen address leaked:\n{text}"
    );
    for path in [
        "/v1/files/init",
        "/v1/files/part\"",
        "/v1/files/part/$UPLOAD_ID/0",
        "/v1/files/complete",
        "/v1/files/upload",
        "/v1/files/all",
        "/v1/files/signed-url",
        "/v1/files/sign-upload",
        "/v1/files/batch-download",
        "/v1/files/uploads/$UPLOAD_ID",
    ] {
        assert!(
            text.contains(&format!("curl -s -X POST \"$BASE{path}"))
                || text.contains(&format!("\"$BASE{path}")),
            "no curl example for {path}"
        );
    }
    for secret in [
        token,
        signing_key,
        crate::helpers::SERVICE_TOKEN,
        crate::helpers::SIGNING_KEY,
    ] {
        assert!(!text.contains(secret), "{secret} is in the instructions");
    }
}

// ---------------------------------------------------------------------------------------
// Found by schemathesis (tests/schemathesis.sh)

/// `6633.0` is an integer to JSON Schema (and was to the old service's pydantic): init took
/// it for a type error (422).
#[tokio::test]
async fn init_takes_a_size_written_with_a_zero_fraction() {
    let app = spawn_app().await;
    let (status, body) = send(app.post("/v1/files/init").as_service().json(&json!({
        "mode": "chunked",
        "files": [{ "name": "a.bin", "size": 2097152.0 }],
        "meta": { "user_id": "u1" },
    })))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["parts"], 2);
    for size in [json!(1.5), json!("12"), json!(1e300)] {
        let (status, body) = send(app.post("/v1/files/init").as_service().json(&json!({
            "mode": "single",
            "files": [{ "name": "a.bin", "size": size }],
            "meta": { "user_id": "u1" },
        })))
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{size}: {body}");
    }
}

// ---------------------------------------------------------------------------------------
// /metrics

/// One sample of the text format: name, labels, value.
pub(crate) type Sample = (String, BTreeMap<String, String>, f64);

pub(crate) fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split("\",") {
                    let (k, v) = pair.split_once("=\"").unwrap();
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

/// The value of the series `name` whose labels include `labels` (0 when absent).
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

pub(crate) async fn scrape(app: &TestApp) -> Vec<Sample> {
    let res = app.get("/metrics").as_service().send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[reqwest::header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse_metrics(&res.text().await.unwrap())
}

/// Scrapes until `ok` holds (a request is counted when its body has been sent, a moment
/// after the client has it).
pub(crate) async fn scrape_until(app: &TestApp, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let samples = scrape(app).await;
        if ok(&samples) || Instant::now() > deadline {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_are_for_service_callers_only() {
    let app = spawn_app().await;
    expect(
        app.get("/metrics"),
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Authentication required" }),
    )
    .await;
    expect(
        app.get("/metrics").service_token("wrong"),
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Invalid service token" }),
    )
    .await;
    let jwt = app.user_token("u1");
    for req in [
        app.get("/metrics").bearer(&jwt),
        app.get("/metrics").cookie(&jwt),
    ] {
        expect(
            req,
            StatusCode::UNAUTHORIZED,
            json!({ "detail": "Service token required" }),
        )
        .await;
    }
}

#[tokio::test]
async fn metrics_count_requests_bytes_sessions_and_disk() {
    let app = spawn_app().await;
    let fresh = scrape(&app).await;
    for name in [
        "upload_server_uploaded_bytes_total",
        "upload_server_downloaded_bytes_total",
        "upload_server_uploads_in_progress",
        "upload_server_batch_downloads_in_progress",
        "upload_server_upload_sessions",
        "upload_server_disk_free_bytes",
    ] {
        assert!(fresh.iter().any(|(n, _, _)| n == name), "{name} missing");
    }
    assert_eq!(value(&fresh, "upload_server_upload_sessions", &[]), 0.0);
    assert!(value(&fresh, "upload_server_disk_free_bytes", &[]) > 0.0);

    // An unfinished session, an upload, a download, and a path no route knows.
    let (status, _) = send(app.post("/v1/files/init").as_service().json(&json!({
        "mode": "chunked",
        "files": [{ "name": "later.bin", "size": 10 }],
        "meta": { "user_id": "u1" },
    })))
    .await;
    assert_eq!(status, StatusCode::OK);
    let bytes = vec![7u8; 300_000];
    let (status, body) = send(
        app.post("/v1/files/upload?user_id=u1&filename=m.bin")
            .as_service()
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let url = body["files"][0]["url"].as_str().unwrap().to_owned();
    let got = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), bytes.len());
    let res = app.get("/no/such/path/123").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let storage = [
        ("method", "GET"),
        ("route", "/storage/{user_id}/{*path}"),
        ("status", "200"),
    ];
    let s = scrape_until(&app, |s| value(s, "http_requests_total", &storage) == 1.0).await;
    let n = bytes.len() as f64;
    assert_eq!(value(&s, "upload_server_uploaded_bytes_total", &[]), n);
    assert_eq!(value(&s, "upload_server_downloaded_bytes_total", &[]), n);
    assert_eq!(value(&s, "upload_server_upload_sessions", &[]), 1.0);
    assert_eq!(value(&s, "http_requests_total", &storage), 1.0);
    let upload = [("method", "POST"), ("route", "/v1/files/upload")];
    assert_eq!(
        value(
            &s,
            "http_requests_total",
            &[upload[0], upload[1], ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "http_request_duration_seconds_count", &upload),
        1.0
    );
    assert!(value(&s, "http_request_duration_seconds_sum", &upload) > 0.0);
    assert_eq!(
        value(
            &s,
            "http_request_duration_seconds_bucket",
            &[upload[0], upload[1], ("le", "+Inf")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    // Routes are labelled as matched, never by the raw path.
    assert!(
        s.iter().all(|(_, l, _)| l
            .get("route")
            .is_none_or(|r| !r.contains("storage/u1") && !r.contains("/no/such"))),
        "{s:?}"
    );
    assert_eq!(value(&s, "upload_server_uploads_in_progress", &[]), 0.0);
    assert_eq!(
        value(&s, "upload_server_batch_downloads_in_progress", &[]),
        0.0
    );
    // Each app has its own registry: a new one starts from zero.
    let other = spawn_app().await;
    assert_eq!(
        value(
            &scrape(&other).await,
            "upload_server_uploaded_bytes_total",
            &[]
        ),
        0.0
    );
}

#[tokio::test]
async fn metrics_show_uploads_and_batch_downloads_in_progress() {
    let app = spawn_app().await;
    // An upload whose body is still coming.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let upload = tokio::spawn(
        app.post("/v1/files/upload?user_id=u1&filename=slow.bin")
            .as_service()
            .body(body)
            .send(),
    );
    tx.send(Ok(vec![1u8; 1000])).await.unwrap();
    let s = scrape_until(&app, |s| {
        value(s, "upload_server_uploads_in_progress", &[]) == 1.0
    })
    .await;
    assert_eq!(value(&s, "upload_server_uploads_in_progress", &[]), 1.0);
    drop(tx);
    let res = upload.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let s = scrape_until(&app, |s| {
        value(s, "upload_server_uploads_in_progress", &[]) == 0.0
    })
    .await;
    assert_eq!(value(&s, "upload_server_uploads_in_progress", &[]), 0.0);

    // A batch ZIP larger than the socket buffers, not read by its client.
    let big = vec![3u8; 48 << 20];
    let (status, body) = send(
        app.post("/v1/files/upload?user_id=u1&filename=big.bin")
            .as_service()
            .body(big),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key = body["files"][0]["key"].clone();
    let (status, body) = send(
        app.post("/v1/files/batch-download")
            .as_service()
            .json(&json!({ "keys": [key] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap();
    let res = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let gauge = "upload_server_batch_downloads_in_progress";
    let s = scrape_until(&app, |s| value(s, gauge, &[]) == 1.0).await;
    assert_eq!(value(&s, gauge, &[]), 1.0);
    drop(res);
    let s = scrape_until(&app, |s| value(s, gauge, &[]) == 0.0).await;
    assert_eq!(value(&s, gauge, &[]), 0.0);
}

// ---------------------------------------------------------------------------------------
// Headless Chromium

/// Chromium's binary, or `None` (then the test is skipped, except in CI where it fails).
fn chromium() -> Option<std::path::PathBuf> {
    let candidates = ["chromium", "chromium-browser", "google-chrome"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in candidates {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("chromium is not installed (apt-get install chromium); CI needs it");
    }
    eprintln!("skipped: chromium is not installed (apt-get install chromium)");
    None
}

/// A headless Chromium, killed when dropped.
struct Browser {
    child: std::process::Child,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium with a fresh profile in `dir` and waits for its DevTools port.
    async fn start(binary: &std::path::Path, dir: &std::path::Path) -> Self {
        let profile = dir.join("profile");
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        let child = std::process::Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut browser = Self { child, port: 0 };
        // With port 0, Chromium writes the port it chose to DevToolsActivePort.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort")) {
                if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                    browser.port = port;
                    return browser;
                }
            }
            if let Some(status) = browser.child.try_wait().unwrap() {
                panic!(
                    "chromium exited ({status}): {}",
                    std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new tab, driven over the DevTools protocol.
    async fn new_page(&self) -> Page {
        let targets: Value = crate::helpers::client()
            .put(format!(
                "http://127.0.0.1:{}/json/new?about:blank",
                self.port
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ws_url = targets["webSocketDebuggerUrl"].as_str().unwrap();
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        Page {
            ws,
            next_id: 0,
            events: Vec::new(),
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One tab: commands in, answers and events out.
struct Page {
    ws: Ws,
    next_id: u64,
    /// Every event received so far (`method`, `params`).
    events: Vec<Value>,
}

impl Page {
    /// Sends a command and waits for its answer, keeping the events that come meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let msg = self.ws.next().await.unwrap().unwrap();
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if v["id"] == id {
                    return v;
                }
                if v.get("method").is_some() {
                    self.events.push(v);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates a JavaScript expression to a JSON value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is true.
    async fn wait_for(&mut self, expression: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(expression).await != json!(true) {
            assert!(Instant::now() < deadline, "{what} never happened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page has asked for nothing new for half a second (at most 10 s), so
    /// late requests (images of components that render last) are seen too.
    async fn settle(&mut self) {
        let count = |p: &Self| {
            p.events
                .iter()
                .filter(|e| e["method"] == "Network.requestWillBeSent")
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut seen, mut since) = (count(self), Instant::now());
        while since.elapsed() < Duration::from_millis(500) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.eval("1").await;
            if count(self) != seen {
                (seen, since) = (count(self), Instant::now());
            }
        }
    }

    /// Script errors the page reported.
    fn exceptions(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Runtime.exceptionThrown")
            .collect()
    }

    /// URLs the page asked for, with the reason any was blocked before it left.
    fn requests(&self) -> Vec<(String, Option<String>)> {
        let mut blocked = BTreeMap::new();
        for e in &self.events {
            if e["method"] == "Network.loadingFailed" {
                if let Some(reason) = e["params"]["blockedReason"].as_str() {
                    blocked.insert(e["params"]["requestId"].to_string(), reason.to_owned());
                }
            }
        }
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.requestWillBeSent")
            .map(|e| {
                let url = e["params"]["request"]["url"].as_str().unwrap().to_owned();
                (
                    url,
                    blocked.get(&e["params"]["requestId"].to_string()).cloned(),
                )
            })
            .collect()
    }
}

/// Only this server, or URLs that never touch a network.
fn stays_local(url: &str, base: &str) -> bool {
    url.starts_with(&format!("{base}/"))
        || url.starts_with("data:")
        || url.starts_with("blob:")
        || url.starts_with("about:")
}

#[tokio::test]
async fn swagger_ui_renders_in_headless_chromium_without_leaving_127_0_0_1() {
    let Some(binary) = chromium() else { return };
    let app = spawn_app().await;
    let doc = document(&app).await;
    let operations = operations(&doc).len();
    let dir = tempfile::tempdir().unwrap();
    let browser = Browser::start(&binary, dir.path()).await;
    let mut page = browser.new_page().await;
    page.call("Network.enable", json!({})).await;
    page.call("Page.enable", json!({})).await;
    page.call("Runtime.enable", json!({})).await;
    page.call("Page.navigate", json!({ "url": app.url("/docs") }))
        .await;
    page.wait_for(
        "document.querySelectorAll('.opblock').length > 0",
        "Swagger UI's operations list",
    )
    .await;
    // Every operation of the document is on the page.
    let shown = page
        .eval("document.querySelectorAll('.opblock').length")
        .await;
    assert_eq!(shown, json!(operations), "operations shown");
    let title = page
        .eval("document.querySelector('.info .title').textContent")
        .await;
    assert!(
        title
            .as_str()
            .unwrap()
            .contains("Stream-Line Upload Server"),
        "{title}"
    );
    let shot = page
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let shot_path = dir.path().join("docs.png");
    std::fs::write(&shot_path, &png).unwrap();
    eprintln!("screenshot: {}", shot_path.display());

    page.settle().await;
    assert!(page.exceptions().is_empty(), "{:?}", page.exceptions());
    let requests = page.requests();
    assert!(
        requests.iter().any(|(u, _)| u == &app.url("/openapi.json")),
        "{requests:?}"
    );
    let away: Vec<_> = requests
        .iter()
        .filter(|(u, _)| !stays_local(u, &app.base))
        .collect();
    assert!(away.is_empty(), "requests that left 127.0.0.1: {away:?}");
    if std::env::var_os("KEEP_DOCS_SCREENSHOT").is_some() {
        eprintln!("kept: {}", dir.keep().display());
    }
}

#[tokio::test]
async fn redoc_renders_in_headless_chromium_without_leaving_127_0_0_1() {
    let Some(binary) = chromium() else { return };
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let browser = Browser::start(&binary, dir.path()).await;
    let mut page = browser.new_page().await;
    page.call("Network.enable", json!({})).await;
    page.call("Page.enable", json!({})).await;
    page.call("Runtime.enable", json!({})).await;
    page.call("Page.navigate", json!({ "url": app.url("/redoc") }))
        .await;
    page.wait_for(
        "document.querySelectorAll('[data-section-id^=\"operation/\"]').length > 0",
        "ReDoc's operations",
    )
    .await;
    page.wait_for(
        "document.body.innerText.includes('API docs by Redocly')",
        "ReDoc's footer",
    )
    .await;
    page.settle().await;
    assert!(page.exceptions().is_empty(), "{:?}", page.exceptions());
    let requests = page.requests();
    assert!(
        requests.iter().any(|(u, _)| u == &app.url("/openapi.json")),
        "{requests:?}"
    );
    // ReDoc's footer logo points at its CDN: the page's policy stops it in the browser.
    let away: Vec<_> = requests
        .iter()
        .filter(|(u, blocked)| !stays_local(u, &app.base) && blocked.as_deref() != Some("csp"))
        .collect();
    assert!(away.is_empty(), "requests that left 127.0.0.1: {away:?}");
}

/// Regression: `/docs/` (and `/redoc/`) answered 404; they lead to the pages.
#[tokio::test]
async fn the_viewers_with_a_trailing_slash_redirect_to_the_pages() {
    let app = spawn_app().await;
    for (path, to) in [("/docs/", "/docs"), ("/redoc/", "/redoc")] {
        let res = app.get(path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT, "{path}");
        assert_eq!(res.headers()[reqwest::header::LOCATION], to, "{path}");
        check_page(&app, to).await;
    }
}
