//! Third-party tus clients against the real server (issue 15): tus-js-client 4.3.1 in Node
//! (`tests/clients/tus-js.mjs`; `npm ci` in `tests/clients`) and tuspy 1.1.0 from PyPI
//! (`tests/clients/tuspy_upload.py`, in the virtualenv `target/tuspy-venv`; `TUSPY_PYTHON`
//! names another interpreter). Each test runs the client as a child process against
//! 127.0.0.1, then checks through our own API what got stored: the bytes at the public URL,
//! the sidecar's SHA-256, CRC-32, name, type and client fields, and the listing. `.ci/run`
//! installs both clients; where one is missing the test is skipped with a note, except in
//! CI, where it fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{
    header, keys, pattern, s3_backend, send, sha_hex, spawn_app, spawn_app_with, start_server,
    As as _, CloudBackend, Server, SERVICE_TOKEN,
};

/// tus chunk size of the chunked cases (the example).
const CHUNK: usize = 256 * 1024;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A client that is not installed: skipped with a note, or a failure in CI.
fn missing(test: &str, what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {what} (.ci/run installs it); CI must run this test"
    );
    eprintln!("SKIPPED {test}: {what}");
}

/// Whether node and tus-js-client are there.
fn have_node(test: &str) -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        missing(test, "node is not installed (apt-get install nodejs npm)");
        return false;
    }
    let lib = clients_dir().join("node_modules/tus-js-client/package.json");
    if !lib.exists() {
        missing(
            test,
            "tus-js-client is not installed (cd tests/clients && npm ci)",
        );
        return false;
    }
    true
}

/// The Python that has tuspy, if any.
fn tuspy_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("TUSPY_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tuspy-venv/bin/python"),
        PathBuf::from,
    );
    let ok = std::process::Command::new(&python)
        .args(["-c", "import tusclient"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(python)
    } else {
        missing(
            test,
            &format!(
                "tuspy is not installed for {} (python3 -m venv target/tuspy-venv && target/tuspy-venv/bin/pip install tuspy==1.1.0)",
                python.display()
            ),
        );
        None
    }
}

/// One run of a client script: its environment, built up per case.
struct ClientRun {
    env: Vec<(String, String)>,
}

impl ClientRun {
    fn new(endpoint: &str, file: &Path) -> Self {
        Self {
            env: vec![
                ("TUS_ENDPOINT".into(), endpoint.into()),
                ("TUS_FILE".into(), file.to_str().unwrap().into()),
            ],
        }
    }

    fn set(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn headers(self, h: Value) -> Self {
        self.set("TUS_HEADERS", h.to_string())
    }

    fn metadata(self, m: Value) -> Self {
        self.set("TUS_METADATA", m.to_string())
    }

    fn chunk(self, n: usize) -> Self {
        self.set("TUS_CHUNK", n.to_string())
    }

    fn command(&self, program: &Path, script: &str, case: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg(clients_dir().join(script))
            .arg(case)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the script to its end (60 s at most); the JSON of its last line.
    async fn run(&self, program: &Path, script: &str, case: &str) -> Value {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            self.command(program, script, case).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{script} {case}: no end after 60 s"))
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{script} {case}: {}; stderr: {stderr}; stdout: {stdout}",
            out.status
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{script} {case}: last line is not JSON ({e}): {stdout}"))
    }

    async fn node(&self, case: &str) -> Value {
        self.run(Path::new("node"), "tus-js.mjs", case).await
    }

    async fn tuspy(&self, python: &Path, case: &str) -> Value {
        self.run(python, "tuspy_upload.py", case).await
    }
}

/// A file of `len` pattern bytes in `dir`.
fn write_file(dir: &Path, name: &str, len: usize, seed: u8) -> (PathBuf, Vec<u8>) {
    let data = pattern(len, seed);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// What the stored file must look like.
struct Expect<'a> {
    user: &'a str,
    name: &'a str,
    /// The declared type (stored as the name's extension says no other).
    mime: Option<&'a str>,
    folder: Option<&'a str>,
    /// Client fields of the sidecar.
    extra: Value,
}

/// Checks through the API of the server at `base` (as the service) that the upload the
/// client reported (`X-Upload-Key`, `X-Upload-Url`) holds `data` and the expected fields;
/// returns the key.
async fn check_stored(base: &str, client: &Value, data: &[u8], want: &Expect<'_>) -> String {
    let http = crate::helpers::client();
    let key = client["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no X-Upload-Key on the finishing answer: {client}"));
    assert!(key.starts_with(&format!("storage/{}/", want.user)), "{key}");
    // The public URL, on this server (a restarted binary reports no PUBLIC_BASE_URL).
    let public = client["publicUrl"].as_str().unwrap();
    let path = &public[public
        .find("/storage/")
        .unwrap_or_else(|| panic!("{public}"))..];
    let res = http.get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "GET {path}");
    let got = res.bytes().await.unwrap();
    assert_eq!(got.len(), data.len(), "{path}: size");
    assert!(
        got == data,
        "{path}: the stored bytes differ from the file's"
    );

    let (s, meta) = send(
        http.get(format!("{base}/v1/files/metadata/{key}"))
            .as_service(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{meta}");
    assert_eq!(meta["sha256"], sha_hex(data), "{meta}");
    assert_eq!(meta["crc32"], crc32fast::hash(data), "{meta}");
    assert_eq!(meta["size"], data.len(), "{meta}");
    assert_eq!(meta["original_name"], want.name, "{meta}");
    assert_eq!(meta["user_id"], want.user, "{meta}");
    if let Some(m) = want.mime {
        assert_eq!(meta["mime"], m, "{meta}");
    }
    for (k, v) in want.extra.as_object().unwrap() {
        assert_eq!(&meta[k], v, "client field {k}: {meta}");
    }

    let (s, list) = send(
        http.get(format!("{base}/v1/files/all?user_id={}", want.user))
            .as_service(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let listed = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == key)
        .unwrap_or_else(|| panic!("{key} is not listed: {list}"));
    assert_eq!(listed["filename"], want.name, "{listed}");
    assert_eq!(listed["size"], data.len(), "{listed}");
    assert_eq!(listed["folder"], json!(want.folder), "{listed}");
    if let Some(m) = want.mime {
        assert_eq!(listed["mime"], m, "{listed}");
    }
    key.to_owned()
}

fn offsets(client: &Value) -> Vec<u64> {
    client["patchOffsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// `0, CHUNK, 2·CHUNK, ...` below `len`: one PATCH per chunk, none repeated.
fn chunk_offsets(len: usize) -> Vec<u64> {
    (0..len).step_by(CHUNK).map(|o| o as u64).collect()
}

async fn tus_head(base: &str, url_path: &str) -> reqwest::Response {
    crate::helpers::client()
        .head(format!("{base}{url_path}"))
        .header("tus-resumable", "1.0.0")
        .as_service()
        .send()
        .await
        .unwrap()
}

/// The path of an upload URL.
fn path_of(url: &str) -> &str {
    &url[url.find("/v1/").unwrap_or_else(|| panic!("{url}"))..]
}

#[tokio::test]
async fn tus_js_client_uploads_in_chunks_for_a_service() {
    if !have_node("tus_js_client_uploads_in_chunks_for_a_service") {
        return;
    }
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    // Not a multiple of the chunk: the last PATCH is short.
    let (file, data) = write_file(dir.path(), "report.bin", 3 * 1024 * 1024 + 123, 1);
    let out = ClientRun::new(&app.url("/v1/files/tus/"), &file)
        .headers(json!({ "X-Service-Token": SERVICE_TOKEN }))
        .metadata(json!({
            "user_id": "u1", "filename": "Q3 report", "filetype": "application/x-report",
            "folder": "docs/2026", "project": "apollo",
        }))
        .chunk(CHUNK)
        .node("chunked")
        .await;
    assert_eq!(offsets(&out), chunk_offsets(data.len()), "{out}");
    let want = Expect {
        user: "u1",
        name: "Q3 report",
        mime: Some("application/x-report"),
        folder: Some("docs/2026"),
        extra: json!({ "project": "apollo" }),
    };
    check_stored(&app.base, &out, &data, &want).await;
    // Once finished, HEAD gives the whole length and names the file.
    let res = tus_head(&app.base, path_of(out["url"].as_str().unwrap())).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "upload-offset"), data.len().to_string());
    assert_eq!(header(&res, "x-upload-key"), out["key"].as_str().unwrap());
}

#[tokio::test]
async fn tus_js_client_parallel_uploads_are_concatenated() {
    if !have_node("tus_js_client_parallel_uploads_are_concatenated") {
        return;
    }
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = write_file(dir.path(), "movie.bin", 3 * 1024 * 1024 + 7, 2);
    let token = app.user_token("u2");
    let out = ClientRun::new(&app.url("/v1/files/tus/"), &file)
        .headers(json!({ "Authorization": format!("Bearer {token}") }))
        .metadata(json!({ "filename": "movie.mp4", "filetype": "video/mp4" }))
        .node("parallel")
        .await;
    // Three partial uploads (Upload-Concat: partial), then the final one.
    let created = out["created"].as_array().unwrap();
    assert_eq!(created.len(), 4, "{out}");
    let want = Expect {
        user: "u2",
        name: "movie.mp4",
        mime: Some("video/mp4"),
        folder: None,
        extra: json!({}),
    };
    check_stored(&app.base, &out, &data, &want).await;
    // Only the final upload became a file; the partial ones are gone.
    let (_, list) = send(app.as_user("u2").get("/v1/files/all")).await;
    assert_eq!(list["total_count"], 1, "{list}");
    for partial in &created[..3] {
        let res = app
            .request(Method::HEAD, partial.as_str().unwrap())
            .header("tus-resumable", "1.0.0")
            .bearer(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{partial}");
    }
}

#[tokio::test]
async fn tus_js_client_defers_the_length_of_a_stream() {
    if !have_node("tus_js_client_defers_the_length_of_a_stream") {
        return;
    }
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = write_file(dir.path(), "stream.bin", 2 * 1024 * 1024 + 5, 3);
    let token = app.user_token("u3");
    let out = ClientRun::new(&app.url("/v1/files/tus/"), &file)
        .headers(json!({ "Authorization": format!("Bearer {token}") }))
        .metadata(json!({ "name": "stream.bin" }))
        .chunk(CHUNK)
        .node("deferred")
        .await;
    assert_eq!(offsets(&out), chunk_offsets(data.len()), "{out}");
    let want = Expect {
        user: "u3",
        name: "stream.bin",
        mime: None,
        folder: None,
        extra: json!({}),
    };
    check_stored(&app.base, &out, &data, &want).await;
}

#[tokio::test]
async fn tus_js_client_terminates_and_the_quota_is_free_again() {
    if !have_node("tus_js_client_terminates_and_the_quota_is_free_again") {
        return;
    }
    // 0.005 GiB = 5,368,709 bytes: one 3 MiB upload fits, two do not.
    let app = spawn_app_with(&[("PER_USER_QUOTA_GB", "0.005")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = write_file(dir.path(), "gone.bin", 3 * 1024 * 1024, 4);
    let out = ClientRun::new(&app.url("/v1/files/tus/"), &file)
        .headers(json!({ "X-Service-Token": SERVICE_TOKEN }))
        .metadata(json!({ "user_id": "u4", "filename": "gone.bin" }))
        .chunk(CHUNK)
        .node("terminate")
        .await;
    assert_eq!(out["accepted"], CHUNK, "{out}");
    assert_eq!(
        out["statuses"].as_array().unwrap().last().unwrap(),
        "DELETE 204",
        "{out}"
    );
    let url = path_of(out["url"].as_str().unwrap()).to_owned();
    let id = url.rsplit('/').next().unwrap();
    // The upload is gone: tus HEAD, the session status, its folder.
    let res = tus_head(&app.base, &url).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&res, "tus-resumable"), "1.0.0");
    let (s, body) = app.as_service().session(id).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let left = app.leftovers();
    assert!(left.iter().all(|f| !f.contains(id)), "{left:?}");
    // Its reservation too: a new upload of the same size fits, and a second does not.
    let create = || {
        app.post("/v1/files/tus/")
            .as_service()
            .header("tus-resumable", "1.0.0")
            .header("upload-length", data.len().to_string())
            .header("upload-metadata", "user_id dTQ=")
    };
    let res = create().send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = create().send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, list) = send(app.as_user("u4").get("/v1/files/all")).await;
    assert_eq!(list["total_count"], 0, "{list}");
}

/// Regression: an empty file (`Upload-Length: 0`) was created and never published, as
/// tus-js-client (and tuspy) send no `PATCH` for it and report success after the `POST`.
/// Also creation-with-upload (the first chunk in the `POST`) and `X-HTTP-Method-Override`.
#[tokio::test]
async fn tus_js_client_empty_file_creation_with_upload_and_method_override() {
    if !have_node("tus_js_client_empty_file_creation_with_upload_and_method_override") {
        return;
    }
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let token = app.user_token("u8");
    let bearer = json!({ "Authorization": format!("Bearer {token}") });
    let (empty, _) = write_file(dir.path(), "empty.txt", 0, 0);
    let out = ClientRun::new(&app.url("/v1/files/tus/"), &empty)
        .headers(bearer.clone())
        .metadata(json!({ "filename": "empty.txt" }))
        .node("chunked")
        .await;
    assert_eq!(out["statuses"], json!(["POST 201"]), "{out}");
    let want = Expect {
        user: "u8",
        name: "empty.txt",
        mime: None,
        folder: None,
        extra: json!({}),
    };
    check_stored(&app.base, &out, &[], &want).await;

    let (file, data) = write_file(dir.path(), "first.bin", 2 * CHUNK + 1000, 9);
    let out = ClientRun::new(&app.url("/v1/files/tus/"), &file)
        .headers(bearer)
        .metadata(json!({ "filename": "first.bin" }))
        .chunk(CHUNK)
        .set("TUS_DURING_CREATION", "1")
        .set("TUS_OVERRIDE_PATCH", "1")
        .node("chunked")
        .await;
    // The first chunk came with the POST; the others as POSTs that say PATCH.
    assert_eq!(
        offsets(&out),
        chunk_offsets(data.len())[1..].to_vec(),
        "{out}"
    );
    assert_eq!(
        out["statuses"],
        json!(["POST 201", "POST 204", "POST 204"]),
        "{out}"
    );
    let want = Expect {
        user: "u8",
        name: "first.bin",
        mime: None,
        folder: None,
        extra: json!({}),
    };
    check_stored(&app.base, &out, &data, &want).await;
}

// ---------------------------------------------------------------------------------------
// A TCP proxy in front of the server, to cut or stall a request for real.

/// What the proxy does to the connection whose bytes (counted over all connections, client
/// to server) pass `trip_at`, once: forwards exactly up to that byte, then closes both
/// sides (`Cut`) or forwards nothing more and holds them open (`Stall`).
#[derive(Clone, Copy)]
enum Trip {
    Cut,
    Stall,
}

struct ProxyShared {
    target: Mutex<String>,
    forwarded: AtomicU64,
    trip_at: u64,
    trip: Trip,
    tripped: AtomicBool,
}

struct Proxy {
    base: String,
    shared: Arc<ProxyShared>,
}

impl Proxy {
    async fn start(target: &str, trip_at: u64, trip: Trip) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            target: Mutex::new(target.trim_start_matches("http://").to_owned()),
            forwarded: AtomicU64::new(0),
            trip_at,
            trip,
            tripped: AtomicBool::new(false),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(relay(conn, s.clone()));
            }
        });
        Self {
            base: format!("http://{addr}"),
            shared,
        }
    }

    /// Sends new connections to another server.
    fn retarget(&self, target: &str) {
        *self.shared.target.lock().unwrap() = target.trim_start_matches("http://").to_owned();
    }

    fn tripped(&self) -> bool {
        self.shared.tripped.load(Ordering::SeqCst)
    }

    async fn wait_tripped(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.tripped() {
            assert!(Instant::now() < deadline, "the proxy never tripped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn relay(client: TcpStream, shared: Arc<ProxyShared>) {
    let target = shared.target.lock().unwrap().clone();
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = shared.forwarded.fetch_add(n as u64, Ordering::SeqCst);
        if before + n as u64 > shared.trip_at && !shared.tripped.swap(true, Ordering::SeqCst) {
            let keep = usize::try_from(shared.trip_at.saturating_sub(before)).unwrap();
            let _ = to_server.write_all(&buf[..keep]).await;
            let _ = to_server.flush().await;
            match shared.trip {
                Trip::Cut => {
                    // Every half dropped: both connections close.
                    back.abort();
                    return;
                }
                Trip::Stall => std::future::pending::<()>().await,
            }
        }
        if to_server.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown().await;
    let _ = back.await;
}

#[tokio::test]
async fn tus_js_client_resumes_after_the_connection_is_cut_mid_patch() {
    if !have_node("tus_js_client_resumes_after_the_connection_is_cut_mid_patch") {
        return;
    }
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = write_file(dir.path(), "cut.bin", 4 * 1024 * 1024, 5);
    // The whole file in one PATCH; the proxy closes both connections after 1.5 MiB.
    let cut_at = 1536 * 1024;
    let proxy = Proxy::start(&app.base, cut_at, Trip::Cut).await;
    let token = app.user_token("u5");
    let out = ClientRun::new(&format!("{}/v1/files/tus/", proxy.base), &file)
        .headers(json!({ "Authorization": format!("Bearer {token}") }))
        .metadata(json!({ "filename": "cut.bin" }))
        .node("chunked")
        .await;
    assert!(proxy.tripped(), "the connection was never cut: {out}");
    // The client asked where the upload stood (HEAD) and sent only the rest: what reached
    // the server before the cut was kept.
    let sent = offsets(&out);
    let resumed_at = *sent.last().unwrap();
    assert_eq!(sent[0], 0, "{out}");
    assert!(
        resumed_at > 0 && resumed_at <= cut_at,
        "resumed at {resumed_at}: {out}"
    );
    assert!(
        out["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "HEAD 200"),
        "{out}"
    );
    let want = Expect {
        user: "u5",
        name: "cut.bin",
        mime: None,
        folder: None,
        extra: json!({}),
    };
    check_stored(&app.base, &out, &data, &want).await;
}

fn binary_env(root: &Path) -> Vec<(String, String)> {
    [
        ("PORT", "0".to_owned()),
        ("UPLOAD_ROOT", root.to_str().unwrap().to_owned()),
        ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN.to_owned()),
        (
            "JWT_PRIVATE_KEY_PATH",
            keys().main.private_path.to_str().unwrap().to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The server binary over `root`, and (s3) over `cloud`'s bucket and database.
async fn start_binary(root: &Path, cloud: Option<&CloudBackend>) -> Server {
    let mut env = binary_env(root);
    if let Some(c) = cloud {
        env.extend(c.env());
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    start_server(&env, &[]).await
}

#[tokio::test]
async fn tus_js_client_resumes_after_a_server_restart() {
    if !have_node("tus_js_client_resumes_after_a_server_restart") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // (s3: both servers over one bucket and database, the second finding the first's
    // segments in them.)
    let cloud = if s3_backend() {
        Some(CloudBackend::for_root(root.path()).await)
    } else {
        None
    };
    let mut server = start_binary(root.path(), cloud.as_deref()).await;
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = write_file(dir.path(), "restart.bin", 3 * 1024 * 1024, 6);
    let state = dir.path().join("tus-urls.json");
    std::fs::write(&state, "{}").unwrap();
    // Chunks of 256 KiB; the proxy stops forwarding in the middle of the sixth, with five
    // stored (the stream of the client also holds the POST and six PATCH heads).
    let stall_at = (5 * CHUNK + CHUNK / 2) as u64;
    let proxy = Proxy::start(&server.base, stall_at, Trip::Stall).await;
    let run = ClientRun::new(&format!("{}/v1/files/tus/", proxy.base), &file)
        .headers(json!({ "X-Service-Token": SERVICE_TOKEN }))
        .metadata(json!({ "user_id": "u6", "filename": "restart.bin", "kind": "restart" }))
        .chunk(CHUNK)
        .set("TUS_STATE", state.to_str().unwrap());
    let mut first = run
        .command(Path::new("node"), "tus-js.mjs", "restart-begin")
        .spawn()
        .unwrap();
    proxy.wait_tripped(Duration::from_secs(30)).await;
    // Let the server write what it got of the sixth chunk, then kill it, and the client.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    first.kill().await.unwrap();

    let server = start_binary(root.path(), cloud.as_deref()).await;
    proxy.retarget(&server.base);
    // The stored URL, from the client's own storage.
    let stored: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let (_, upload) = stored.as_object().unwrap().iter().next().unwrap();
    let url = path_of(upload["uploadUrl"].as_str().unwrap()).to_owned();
    // The new server resumes from the five recorded chunks; the sixth's bytes are dropped.
    let res = tus_head(&server.base, &url).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "upload-offset"), (5 * CHUNK).to_string());

    let out = run.node("restart-resume").await;
    assert_eq!(out["previous"], 1, "{out}");
    assert_eq!(path_of(out["url"].as_str().unwrap()), url, "{out}");
    assert_eq!(
        offsets(&out),
        chunk_offsets(data.len())[5..].to_vec(),
        "{out}"
    );
    let want = Expect {
        user: "u6",
        name: "restart.bin",
        mime: None,
        folder: None,
        extra: json!({ "kind": "restart" }),
    };
    check_stored(&server.base, &out, &data, &want).await;
}

/// tus-js-client's `protocol: 'ietf-draft-05'` (interop version 6) against the IETF draft
/// endpoint.
#[tokio::test]
async fn tus_js_client_speaks_ietf_draft_05() {
    if !have_node("tus_js_client_speaks_ietf_draft_05") {
        return;
    }
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = write_file(dir.path(), "draft.bin", 2 * 1024 * 1024 + 9, 7);
    let token = app.user_token("u7");
    let out = ClientRun::new(&app.url("/v1/files/resumable/"), &file)
        .headers(json!({ "Authorization": format!("Bearer {token}") }))
        .metadata(json!({ "filename": "draft.bin" }))
        .chunk(CHUNK)
        .set("TUS_PROTOCOL", "ietf-draft-05")
        .node("chunked")
        .await;
    assert_eq!(offsets(&out), chunk_offsets(data.len()), "{out}");
    let want = Expect {
        user: "u7",
        name: "draft.bin",
        mime: None,
        folder: None,
        extra: json!({}),
    };
    check_stored(&app.base, &out, &data, &want).await;
}

#[tokio::test]
async fn tuspy_uploads_with_checksums() {
    let Some(python) = tuspy_python("tuspy_uploads_with_checksums") else {
        return;
    };
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = write_file(dir.path(), "py.bin", 2 * 1024 * 1024 + 77, 8);

    // A user without metadata: tuspy sends an empty Upload-Metadata header.
    let token = app.user_token("p1");
    let out = ClientRun::new(&app.url("/v1/files/tus/"), &file)
        .headers(json!({ "Authorization": format!("Bearer {token}") }))
        .chunk(CHUNK)
        .tuspy(&python, "plain")
        .await;
    let n = chunk_offsets(data.len()).len();
    assert_eq!(out["statuses"], json!(vec![204; n]), "{out}");
    let want = Expect {
        user: "p1",
        name: "upload",
        mime: None,
        folder: None,
        extra: json!({}),
    };
    check_stored(&app.base, &out, &data, &want).await;

    // A service; the first PATCH's checksum is wrong: 460, its bytes discarded, the retry
    // (HEAD, then the same PATCH) goes through.
    let out = ClientRun::new(&app.url("/v1/files/tus/"), &file)
        .headers(json!({ "X-Service-Token": SERVICE_TOKEN }))
        .metadata(
            json!({ "user_id": "p2", "filename": "py-upload", "filetype": "application/x-py" }),
        )
        .chunk(CHUNK)
        .tuspy(&python, "corrupt-once")
        .await;
    assert_eq!(out["spoiled"], 1, "{out}");
    let mut statuses = vec![460];
    statuses.extend(vec![204; n]);
    assert_eq!(out["statuses"], json!(statuses), "{out}");
    let want = Expect {
        user: "p2",
        name: "py-upload",
        mime: Some("application/x-py"),
        folder: None,
        extra: json!({}),
    };
    check_stored(&app.base, &out, &data, &want).await;
}
