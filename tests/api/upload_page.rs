//! The upload page `/upload` (issue 15): served from this server with its Uppy bundle, a
//! strict CSP and long-cached vendored files; `UPLOAD_PAGE=0` turns it off; in headless
//! Chromium (puppeteer-core driving Debian's chromium, `tests/browser/upload_page.mjs`) it
//! renders and, once tus is there, uploads 20 MiB with a signed upload URL.

use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// The page's `<script src>` and `<link href>` paths (relative to `/`).
fn referenced(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for piece in html.split(attr).skip(1) {
            let value = piece.split('"').next().unwrap();
            if !value.starts_with("data:") {
                out.push(format!("/{value}"));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_page_and_its_files_are_served_from_here() {
    let app = spawn_app().await;
    let res = app.get("/upload?grant=x&sig=y").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header_opt(&res, "content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = header_opt(&res, "content-security-policy")
        .unwrap()
        .to_owned();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert_eq!(script_src.trim(), "script-src 'self'");
    assert_eq!(header_opt(&res, "referrer-policy"), Some("no-referrer"));
    assert_eq!(header_opt(&res, "cache-control"), Some("no-store"));
    let html = res.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    let files = referenced(&html);
    assert_eq!(
        files,
        [
            "/upload/uppy-6.0.1.min.js",
            "/upload/upload.js",
            "/upload/uppy-6.0.1.min.css",
            "/upload/upload.css",
        ]
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    for (path, ctype, cache, asset) in [
        (
            "/upload/uppy-6.0.1.min.js",
            "text/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
            "uppy-6.0.1.min.js",
        ),
        (
            "/upload/uppy-6.0.1.min.css",
            "text/css; charset=utf-8",
            "public, max-age=31536000, immutable",
            "uppy-6.0.1.min.css",
        ),
        (
            "/upload/upload.js",
            "text/javascript; charset=utf-8",
            "public, max-age=300",
            "upload.js",
        ),
        (
            "/upload/upload.css",
            "text/css; charset=utf-8",
            "public, max-age=300",
            "upload.css",
        ),
        (
            "/upload/uppy.LICENSE",
            "text/plain; charset=utf-8",
            "public, max-age=300",
            "uppy.LICENSE",
        ),
    ] {
        let res = app.get(path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(header_opt(&res, "content-type"), Some(ctype), "{path}");
        assert_eq!(header_opt(&res, "cache-control"), Some(cache), "{path}");
        assert_eq!(header_opt(&res, "x-content-type-options"), Some("nosniff"));
        let body = res.bytes().await.unwrap();
        assert_eq!(
            body.as_ref(),
            std::fs::read(root.join(asset)).unwrap(),
            "{path}"
        );
    }
    // Uppy's own bundle, unmodified, with its licence beside it.
    let bundle = std::fs::read_to_string(root.join("uppy-6.0.1.min.js")).unwrap();
    assert!(bundle.len() > 500_000 && bundle.contains("Dashboard") && bundle.contains("Tus"));
    for missing in [
        "/upload/x.js",
        "/upload/..%2Fassets%2Fupload.js",
        "/upload/uppy.min.js",
    ] {
        let (s, body) = send(app.get(missing)).await;
        assert_eq!(
            (s, &body),
            (
                StatusCode::NOT_FOUND,
                &json!({ "detail": "File not found" })
            ),
            "{missing}"
        );
    }
}

#[tokio::test]
async fn upload_page_0_turns_it_off() {
    let app = spawn_app_with(&[("UPLOAD_PAGE", "0")]).await;
    for path in [
        "/upload",
        "/upload?grant=a&sig=b",
        "/upload/uppy-6.0.1.min.js",
        "/upload/upload.js",
    ] {
        let (s, body) = send(app.get(path)).await;
        assert_eq!(
            (s, &body),
            (
                StatusCode::NOT_FOUND,
                &json!({ "detail": "The upload page is turned off" })
            ),
            "{path}"
        );
    }
    // Signed upload URLs themselves still work.
    let (s, _) = send(
        app.as_service()
            .post("/v1/files/sign-upload")
            .json(&json!({ "user_id": "u1" })),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// In a browser: Node + puppeteer-core + Debian's chromium (installed by .ci/run).

/// `tests/browser`, when Chromium, Node and puppeteer-core are all there; else `None` and a
/// note (the test is skipped), except in CI where it fails.
pub(crate) fn browser_driver() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let on_path = |name: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(name).is_file())
    };
    let missing = if !on_path("chromium") {
        Some("chromium (apt-get install chromium)")
    } else if !on_path("node") {
        Some("node (apt-get install nodejs npm)")
    } else if !dir
        .join("node_modules/puppeteer-core/package.json")
        .is_file()
    {
        Some("puppeteer-core (cd tests/browser && npm ci)")
    } else {
        None
    };
    match missing {
        None => Some(dir),
        Some(what) if std::env::var_os("CI").is_some() => {
            panic!("{what} is missing; CI needs it (.ci/run installs it)")
        }
        Some(what) => {
            eprintln!("skipped: {what} is missing");
            None
        }
    }
}

/// Runs `upload_page.mjs` with `args`; its JSON report, and whether it passed.
async fn drive(dir: &Path, args: &[&str]) -> (bool, Value) {
    let out = tokio::process::Command::new("node")
        .arg(dir.join("upload_page.mjs"))
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (out.status.success(), driver_report(&out))
}

/// The JSON report a browser driver prints last (its last line that parses).
pub(crate) fn driver_report(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from the driver ({}): {stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Where screenshots are kept: `target/browser/`.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn signed_upload(app: &TestApp, body: Value) -> Value {
    let (s, b) = send(app.as_service().post("/v1/files/sign-upload").json(&body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

/// Uppy's Dashboard renders under the page's CSP (no script error, no CSP report, nothing
/// loaded from elsewhere) and reads the grant. Needs no tus endpoint.
#[tokio::test]
async fn the_page_renders_in_headless_chromium_under_its_csp() {
    let Some(dir) = browser_driver() else { return };
    let app = spawn_app().await;
    let grant = signed_upload(
        &app,
        json!({ "user_id": "u1", "folder": "inbox", "max_size": 1000, "mime_types": ["image/*"] }),
    )
    .await;
    let url = app.url(&format!("/upload?{}", grant["query"].as_str().unwrap()));
    let shot = screenshot_dir().join("upload-page.png");
    let (ok, report) = drive(
        &dir,
        &["--url", &url, "--screenshot", shot.to_str().unwrap()],
    )
    .await;
    assert!(ok, "{report:#}");
    let info = report["grantInfo"].as_str().unwrap();
    assert!(
        info.starts_with(
            "Uploading for u1, into folder inbox, files up to 1000 B, of type image/*"
        ),
        "{info}"
    );
    assert!(shot.is_file());
}

/// With a token pasted into the page (no grant), it lists the user's files with working
/// public links, keeps the token in sessionStorage only, and clears the field.
#[tokio::test]
async fn with_a_token_the_page_lists_the_users_files_with_their_links() {
    let Some(dir) = browser_driver() else { return };
    let app = spawn_app().await;
    let svc = app.as_service().acting_for("u5");
    svc.upload_file("one.txt", Some("docs"), b"first").await;
    svc.upload_file("two words.txt", None, b"second").await;
    app.as_service()
        .acting_for("u6")
        .upload_file("not-mine.txt", None, b"x")
        .await;
    let token = app.user_token("u5");
    let url = app.url("/upload");
    let (ok, report) = drive(
        &dir,
        &["--url", &url, "--token", &token, "--expect-listed", "2"],
    )
    .await;
    assert!(ok, "{report:#}");
    assert_eq!(report["tokenStored"], true, "{report:#}");
    assert_eq!(report["tokenFieldCleared"], true, "{report:#}");
    let listed = report["listed"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{report:#}");
    for item in listed {
        let key = item["key"].as_str().unwrap();
        assert!(key.starts_with("storage/u5/"), "{key}");
        let link = item["url"].as_str().unwrap();
        assert!(
            link.starts_with(&format!("{}/storage/u5/", app.base)),
            "{link}"
        );
        let res = app.http.get(link).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{link}");
    }
}

/// The browser test: Uppy in headless Chromium uploads a 20 MiB file from
/// `/upload` with a signed upload URL, over tus, and the page lists it with its link.
/// A screenshot is kept at `target/browser/uppy-20mib-upload.png`.
#[tokio::test]
async fn uppy_uploads_20_mib_from_the_page_with_a_signed_upload_url() {
    let app = spawn_app().await;
    let res = app
        .request(Method::OPTIONS, "/v1/files/tus/")
        .send()
        .await
        .unwrap();
    assert!(
        res.headers().contains_key("tus-version"),
        "no tus endpoint yet: OPTIONS /v1/files/tus/ answered {} without Tus-Version",
        res.status()
    );
    let dir = browser_driver().expect("Chromium, Node and puppeteer-core are needed");
    let data = pattern(20 << 20, 9);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("clip.mp4");
    std::fs::write(&file, &data).unwrap();
    let grant = signed_upload(
        &app,
        json!({ "user_id": "u1", "folder": "browser", "max_size": 21 << 20,
                "mime_types": ["video/*"], "expires_in": 600 }),
    )
    .await;
    let url = app.url(&format!("/upload?{}", grant["query"].as_str().unwrap()));
    let shot = screenshot_dir().join("uppy-20mib-upload.png");
    let (ok, report) = drive(
        &dir,
        &[
            "--url",
            &url,
            "--file",
            file.to_str().unwrap(),
            "--screenshot",
            shot.to_str().unwrap(),
            "--timeout",
            "300",
        ],
    )
    .await;
    assert!(ok, "{report:#}");
    assert!(shot.is_file());
    // The page shows the stored file, from the X-Upload-Key / X-Upload-Url headers.
    let listed = &report["files"][0];
    let key = listed["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no key listed: {report:#}"));
    assert!(key.starts_with("storage/u1/browser/"), "{key}");
    assert!(key.ends_with("_clip.mp4"), "{key}");
    assert!(listed["url"].as_str().unwrap().starts_with(&app.base));
    let stored = std::fs::read(app.storage_root().join(key)).unwrap();
    assert_eq!(stored.len(), data.len());
    assert_eq!(sha_hex(&stored), sha_hex(&data));
}
