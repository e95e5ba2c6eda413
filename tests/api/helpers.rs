//! The one test helper (STYLE.md §2.5): the real app on `127.0.0.1:0`, callers as request
//! decorations, token minting, and the real binary as a child process.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The service token every spawned app accepts.
pub(crate) const SERVICE_TOKEN: &str = "test-service-token";
/// The signed-URL key every spawned app uses.
pub(crate) const SIGNING_KEY: &str = "test-signing-key";
/// The `kid` the app publishes and puts in the tokens it mints (the default of `JWKS_KID`).
pub(crate) const KID: &str = "streamline-rsa-1";
/// A route that needs a user or service caller and answers 404 for this session id
/// (API.md §3.2), so "accepted" and "refused" are told apart by status and body.
pub(crate) const PROBE: &str = "/v1/files/uploads/00000000-0000-4000-8000-000000000000";

/// An RSA key pair made by the `openssl` CLI.
pub(crate) struct KeyPair {
    pub(crate) private_path: PathBuf,
    pub(crate) public_path: PathBuf,
    pub(crate) private_pem: String,
    pub(crate) public_pem: String,
}

impl KeyPair {
    fn generate(dir: &Path, name: &str) -> Self {
        let private_path = dir.join(format!("{name}-private.pem"));
        let public_path = dir.join(format!("{name}-public.pem"));
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("the openssl CLI is needed to make test keys");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let private = private_path.to_str().unwrap();
        let public = public_path.to_str().unwrap();
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private,
        ]);
        run(&["pkey", "-in", private, "-pubout", "-out", public]);
        Self {
            private_pem: std::fs::read_to_string(&private_path).unwrap(),
            public_pem: std::fs::read_to_string(&public_path).unwrap(),
            private_path,
            public_path,
        }
    }

    /// The key that signs tokens.
    pub(crate) fn encoding_key(&self) -> EncodingKey {
        EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).unwrap()
    }

    /// The public key as a JWK (`n`, `e` base64url), with the given `kid`.
    pub(crate) fn jwk(&self, kid: &str) -> Value {
        use rsa::pkcs8::DecodePublicKey as _;
        use rsa::traits::PublicKeyParts as _;
        let key = rsa::PublicKey::from_public_key_pem(&self.public_pem).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": b64.encode(key.n_bytes()),
            "e": b64.encode(key.e_bytes()),
        })
    }
}

/// The test process's keys: `main` is what spawned apps trust and mint with; `other` is a
/// stranger (or the second key of a JWKS rotation).
pub(crate) struct Keys {
    _dir: TempDir,
    pub(crate) main: KeyPair,
    pub(crate) other: KeyPair,
}

/// Made once per test process: RSA generation is the slow part of a spawn.
pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let main = KeyPair::generate(dir.path(), "main");
        let other = KeyPair::generate(dir.path(), "other");
        Keys {
            _dir: dir,
            main,
            other,
        }
    })
}

/// Logs stay quiet unless `TEST_LOG` is set.
fn init_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// A running app and what a test needs to talk to it.
pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) root: TempDir,
    pub(crate) keys: &'static Keys,
}

/// The app with the test defaults.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The app with the test defaults, `extra` overriding them (an empty value unsets a variable).
pub(crate) async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    init_logs();
    let keys = keys();
    let root = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut env: HashMap<String, String> = [
        ("UPLOAD_ROOT", root.path().to_str().unwrap()),
        ("PUBLIC_BASE_URL", base.as_str()),
        ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN),
        (
            "JWT_PUBLIC_KEY_PATH",
            keys.main.public_path.to_str().unwrap(),
        ),
        (
            "JWT_PRIVATE_KEY_PATH",
            keys.main.private_path.to_str().unwrap(),
        ),
        ("UPLOAD_SIGNING_KEY", SIGNING_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let settings = upload_server::config::Settings::from_sources(HashMap::new(), env).unwrap();
    // Served as `main.rs` serves it: same connection handling and timeouts and cap.
    let limits = upload_server::server::ConnLimits::from_settings(&settings);
    let app = upload_server::startup::app(settings).await.unwrap();
    tokio::spawn(upload_server::server::serve(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    TestApp {
        base,
        http: client(),
        root,
        keys,
    }
}

/// A client that does not follow redirects.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub(crate) fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub(crate) fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// A token signed with the main key (RS256, `kid` = [`KID`]).
    pub(crate) fn mint(&self, claims: Value) -> String {
        mint_with(&rs256(KID), &claims, &self.keys.main.encoding_key())
    }

    /// A valid user token for `user_id`, an hour long.
    pub(crate) fn user_token(&self, user_id: &str) -> String {
        self.mint(json!({ "user_id": user_id, "exp": now() + 3600 }))
    }
}

/// An RS256 header naming `kid`.
pub(crate) fn rs256(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    header
}

/// A token with any header, claims and key.
pub(crate) fn mint_with(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

/// Unix time now, in seconds.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Callers as decorations of a request (API.md §2).
pub(crate) trait As: Sized {
    /// With the right `X-Service-Token`. (Named like STYLE.md §2.5's `app.as_service()`.)
    #[allow(clippy::wrong_self_convention)]
    fn as_service(self) -> Self;
    /// With any `X-Service-Token`.
    fn service_token(self, token: &str) -> Self;
    /// With `Authorization: Bearer`.
    fn bearer(self, jwt: &str) -> Self;
    /// With the `auth_token` cookie.
    fn cookie(self, jwt: &str) -> Self;
}

impl As for RequestBuilder {
    fn as_service(self) -> Self {
        self.service_token(SERVICE_TOKEN)
    }
    fn service_token(self, token: &str) -> Self {
        self.header("x-service-token", token)
    }
    fn bearer(self, jwt: &str) -> Self {
        self.bearer_auth(jwt)
    }
    fn cookie(self, jwt: &str) -> Self {
        self.header(
            reqwest::header::COOKIE,
            format!("theme=dark; auth_token={jwt}"),
        )
    }
}

/// Sends and returns the status and the JSON body, checking the content type.
pub(crate) async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    json_of(req.send().await.unwrap()).await
}

/// The status and JSON body of a response, checking the content type.
pub(crate) async fn json_of(res: Response) -> (StatusCode, Value) {
    let status = res.status();
    let ctype = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = res.text().await.unwrap();
    assert!(
        ctype.starts_with("application/json"),
        "{status}: content type {ctype:?}, body {text:?}"
    );
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    (status, body)
}

/// Sends and asserts the exact status and JSON body.
pub(crate) async fn expect(req: RequestBuilder, status: StatusCode, body: Value) {
    let (got_status, got_body) = send(req).await;
    assert_eq!(
        (got_status, &got_body),
        (status, &body),
        "expected {status} {body}, got {got_status} {got_body}"
    );
}

/// What the probe route answers an accepted caller.
pub(crate) fn accepted() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({ "detail": "Upload session not found" }),
    )
}

// ---------------------------------------------------------------------------------------
// The real binary as a child process.

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The `upload-server` binary with a clean environment (`PATH` only, plus `env`); its
/// stdout and stderr go to files so nothing can block on a full pipe.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    logs: TempDir,
}

/// Starts the binary; does not wait for it to listen.
pub(crate) fn launch(env: &[(&str, &str)], args: &[&str], port: u16) -> Server {
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_upload-server"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(logs.path().join("stdout")).unwrap())
        .stderr(File::create(logs.path().join("stderr")).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server {
        child: cmd.spawn().unwrap(),
        base: format!("http://127.0.0.1:{port}"),
        logs,
    }
}

/// Starts the binary and waits until `/healthz` answers on `port`.
pub(crate) async fn start_server(env: &[(&str, &str)], args: &[&str], port: u16) -> Server {
    let mut server = launch(env, args, port);
    server.wait_ready().await;
    server
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stdout")).unwrap()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap()
    }

    /// Waits until `/healthz` answers 200; panics with the child's output if it dies first.
    pub(crate) async fn wait_ready(&mut self) {
        let http = client();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "upload-server exited early ({status}); stderr: {}; stdout: {}",
                    self.stderr(),
                    self.stdout()
                );
            }
            if let Ok(res) = http.get(self.url("/healthz")).send().await {
                if res.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "upload-server did not answer on {}; stderr: {}",
                self.base,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit, at most `limit`.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "upload-server still running after {limit:?}; stderr: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) async fn stop(&mut self) {
        self.terminate();
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "exit status {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to its exit (it must stop by itself within `limit`): status, stdout, stderr.
pub(crate) async fn run_to_exit(
    env: &[(&str, &str)],
    limit: Duration,
) -> (ExitStatus, String, String) {
    let mut server = launch(env, &[], free_port());
    let status = server.wait_exit(limit).await;
    (status, server.stdout(), server.stderr())
}

/// A response header as text, `""` when absent.
pub(crate) fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// Reads one HTTP/1.1 response with a `Content-Length` body, over a raw connection (for
/// tests of timeouts and connection handling): status line and body. A reset, an early EOF
/// before the whole response arrived, or bytes past it (the tests send one request at a
/// time) fail the test.
pub(crate) async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())
                        .flatten()
                })
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            if buf.len() >= end + 4 + length {
                assert_eq!(buf.len(), end + 4 + length, "more than one response");
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                let status = head.lines().next().unwrap_or_default().to_owned();
                return (status, body);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, tokio::io::AsyncReadExt::read(stream, &mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no complete response; got {:?}",
                    String::from_utf8_lossy(&buf)
                )
            })
            .unwrap_or_else(|e| panic!("{e} after {:?}", String::from_utf8_lossy(&buf)));
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}
