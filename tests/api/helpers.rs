//! The one test helper (STYLE.md §2.5): the real app on `127.0.0.1:0`, callers as values
//! with one method per endpoint (`app.as_user("u1").upload_file(..)`, `app.as_service()`,
//! `app.anonymous()`), the small helpers every module uses, token minting, and the real
//! binary as a child process.

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

/// An RSA key pair made in the process, written as PKCS#8 / SPKI PEM files (the app reads
/// `JWT_PRIVATE_KEY_PATH` and `JWT_PUBLIC_KEY_PATH`).
pub(crate) struct KeyPair {
    pub(crate) private_path: PathBuf,
    pub(crate) public_path: PathBuf,
    pub(crate) private_pem: String,
    pub(crate) public_pem: String,
}

/// The OS random source, for `rsa`'s key generation (the `rand_core` version `rsa` takes is
/// not the one `getrandom` 0.3 serves).
struct OsRandom;

impl rsa::rand_core::TryRng for OsRandom {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(getrandom::u32().unwrap())
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(getrandom::u64().unwrap())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        getrandom::fill(dst).unwrap();
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for OsRandom {}

impl KeyPair {
    fn generate(dir: &Path, name: &str) -> Self {
        use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
        let key = rsa::PrivateKey::new(&mut OsRandom, 2048).unwrap();
        let private_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let private_path = dir.join(format!("{name}-private.pem"));
        let public_path = dir.join(format!("{name}-public.pem"));
        std::fs::write(&private_path, &private_pem).unwrap();
        std::fs::write(&public_path, &public_pem).unwrap();
        Self {
            private_path,
            public_path,
            private_pem,
            public_pem,
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
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": b64url(&key.n_bytes()),
            "e": b64url(&key.e_bytes()),
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
    /// With `UPLOAD_TEST_BACKEND=s3`: the bucket and the database the app runs on (shared
    /// by the apps of one test over the same `UPLOAD_ROOT`).
    pub(crate) cloud: Option<std::sync::Arc<CloudBackend>>,
}

/// A real S3 server and a PostgreSQL database of the app's own (`STORAGE_BACKEND=s3`).
pub(crate) struct CloudBackend {
    pub(crate) s3: crate::s3_server::S3Server,
    pub(crate) db: crate::pg_server::TestDb,
}

/// Whether the apps of this run use `STORAGE_BACKEND=s3` (`UPLOAD_TEST_BACKEND=s3`): the
/// API suite runs once per backend, the same tests.
pub(crate) fn s3_backend() -> bool {
    std::env::var("UPLOAD_TEST_BACKEND").is_ok_and(|b| b == "s3")
}

/// The backends of the apps running, by `UPLOAD_ROOT`: two apps a test starts over one
/// root (a restart, other settings) see the same files, as they would on disk.
static BACKENDS: std::sync::Mutex<Vec<(std::path::PathBuf, std::sync::Weak<CloudBackend>)>> =
    std::sync::Mutex::new(Vec::new());

/// For a test of what only the filesystem backend has (files placed by hand, sparse files,
/// mounts, the sidecar cache): true, saying so, when this run is `UPLOAD_TEST_BACKEND=s3`.
pub(crate) fn fs_only(what: &str) -> bool {
    if s3_backend() {
        eprintln!("filesystem backend only, not run with UPLOAD_TEST_BACKEND=s3: {what}");
        return true;
    }
    false
}

impl CloudBackend {
    /// The backend of the apps over `root`: made on first use, with whatever a test put in
    /// `root/storage` beforehand (an old service's tree) moved into it by
    /// `upload-server migrate`, as a deployment would move it.
    pub(crate) async fn for_root(root: &Path) -> std::sync::Arc<Self> {
        let found = BACKENDS
            .lock()
            .unwrap()
            .iter()
            .find(|(r, _)| r == root)
            .and_then(|(_, b)| b.upgrade());
        if let Some(b) = found {
            return b;
        }
        let b = std::sync::Arc::new(Self::start().await);
        if root.join("storage").is_dir() {
            let mut env = b.env();
            env.push(("UPLOAD_ROOT".into(), root.to_str().unwrap().to_owned()));
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (status, out, err) =
                run_args_to_exit(&env, &["migrate"], std::time::Duration::from_secs(120)).await;
            assert!(status.success(), "migrate failed: {out}{err}");
        }
        let mut all = BACKENDS.lock().unwrap();
        all.retain(|(_, w)| w.strong_count() > 0);
        all.push((root.to_path_buf(), std::sync::Arc::downgrade(&b)));
        b
    }

    pub(crate) async fn start() -> Self {
        let s3 = tokio::task::spawn_blocking(crate::s3_server::S3Server::start)
            .await
            .unwrap();
        let db = crate::pg_server::TestDb::new().await;
        Self { s3, db }
    }

    /// The settings that point an app at them.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        [
            ("STORAGE_BACKEND", "s3".to_owned()),
            ("S3_ENDPOINT", self.s3.endpoint.clone()),
            ("S3_BUCKET", crate::s3_server::BUCKET.to_owned()),
            ("S3_ACCESS_KEY_ID", crate::s3_server::ACCESS_KEY.to_owned()),
            (
                "S3_SECRET_ACCESS_KEY",
                crate::s3_server::SECRET_KEY.to_owned(),
            ),
            ("DATABASE_URL", self.db.url()),
            ("DATABASE_POOL_SIZE", "4".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
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
    let cloud = if s3_backend() {
        let chosen = extra
            .iter()
            .find(|(k, _)| *k == "UPLOAD_ROOT")
            .map_or_else(|| root.path().to_path_buf(), |(_, v)| v.into());
        Some(CloudBackend::for_root(&chosen).await)
    } else {
        None
    };
    if let Some(c) = &cloud {
        env.extend(c.env());
    }
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
        cloud,
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
    /// The folder holding the `storage/` tree of stored files and sidecars: `UPLOAD_ROOT`, or
    /// (s3) the bucket's folder on the S3 server's disk, object key = file key.
    pub(crate) fn storage_root(&self) -> std::path::PathBuf {
        match &self.cloud {
            None => self.root.path().to_path_buf(),
            Some(c) => c.s3.root.path().join(crate::s3_server::BUCKET),
        }
    }

    /// What [`TestApp::leftovers`] holds of a session that has received nothing: its record
    /// (on disk `session.json`; s3: a row in the database, nothing in the bucket).
    pub(crate) fn empty_session(&self, id: &str) -> Vec<String> {
        match &self.cloud {
            None => vec![format!("{id}/session.json")],
            Some(_) => vec![],
        }
    }

    /// What uploads in flight keep (sessions, parts, spools): empty once every upload has
    /// ended, whichever way.
    pub(crate) fn leftovers(&self) -> Vec<String> {
        match &self.cloud {
            None => files_under(&self.root.path().join(".parts")),
            Some(c) => {
                let mut left = files_under(
                    &c.s3
                        .root
                        .path()
                        .join(crate::s3_server::BUCKET)
                        .join("parts"),
                );
                left.extend(files_under(&self.root.path().join(".spool")));
                left
            }
        }
    }
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

// ---------------------------------------------------------------------------------------
// Callers as values, with one method per endpoint (STYLE.md §2.5).

impl TestApp {
    /// A user caller: `Authorization: Bearer` with a valid token for `user_id`.
    pub(crate) fn as_user(&self, user_id: &str) -> Caller<'_> {
        Caller {
            app: self,
            auth: Auth::Bearer(self.user_token(user_id)),
            user: None,
        }
    }

    /// The service caller (`X-Service-Token`); name the user it acts for with
    /// [`Caller::acting_for`].
    pub(crate) fn as_service(&self) -> Caller<'_> {
        Caller {
            app: self,
            auth: Auth::Service,
            user: None,
        }
    }

    /// A caller without credentials.
    pub(crate) fn anonymous(&self) -> Caller<'_> {
        Caller {
            app: self,
            auth: Auth::None,
            user: None,
        }
    }
}

#[derive(Clone)]
enum Auth {
    Service,
    Bearer(String),
    None,
}

/// Someone calling the app: its requests carry the caller's credentials, and, for a service
/// acting for a user, name that user where the endpoint takes one (API.md §2).
#[derive(Clone)]
pub(crate) struct Caller<'a> {
    app: &'a TestApp,
    auth: Auth,
    /// The user a service acts for (`meta.user_id` / `?user_id=`).
    user: Option<String>,
}

impl<'a> Caller<'a> {
    /// The same caller acting for `user` (what a service must name; a user caller is always
    /// itself, and the app ignores the name).
    pub(crate) fn acting_for(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// Any request, with the caller's credentials.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.app.request(method, path);
        match &self.auth {
            Auth::Service => req.as_service(),
            Auth::Bearer(jwt) => req.bearer(jwt),
            Auth::None => req,
        }
    }

    pub(crate) fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub(crate) fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// `POST /v1/files/init` (API.md §3.1) for `files` in `mode`; asserts 200 and returns
    /// the body.
    pub(crate) async fn init(&self, files: Value, mode: &str, folder: Option<&str>) -> Value {
        let mut body = json!({ "mode": mode, "files": files, "folder": folder });
        if let Some(user) = &self.user {
            body["meta"] = json!({ "user_id": user });
        }
        let (status, body) = send(self.post("/v1/files/init").json(&body)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// `PUT /v1/files/part/{id}/{n}`: a raw part.
    pub(crate) async fn put_part(&self, id: &str, n: u32, data: &[u8]) -> (StatusCode, Value) {
        send(
            self.request(Method::PUT, &format!("/v1/files/part/{id}/{n}"))
                .body(data.to_vec()),
        )
        .await
    }

    /// `POST /v1/files/part`: a base64 JSON part, serialised by `serde_json` (keys sorted,
    /// so `chunkBase64` comes before `uploadId` and the part is staged first).
    pub(crate) async fn json_part(&self, id: &str, n: i64, data: &[u8]) -> (StatusCode, Value) {
        send(
            self.post("/v1/files/part")
                .json(&json!({ "uploadId": id, "partNumber": n, "chunkBase64": b64(data) })),
        )
        .await
    }

    /// `POST /v1/files/part` with the fields in the old SDK's order, `uploadId` first: the
    /// part can then go straight to its session.
    pub(crate) async fn sdk_part(&self, id: &str, n: u32, data: &[u8]) -> (StatusCode, Value) {
        let chunk = b64(data);
        send(
            self.post("/v1/files/part")
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"uploadId":"{id}","partNumber":{n},"chunkBase64":"{chunk}"}}"#
                )),
        )
        .await
    }

    /// `POST /v1/files/complete` for session `id`, with the fields of `extra` added.
    pub(crate) async fn complete(&self, id: &str, extra: Value) -> (StatusCode, Value) {
        let mut body = json!({ "uploadId": id });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        send(self.post("/v1/files/complete").json(&body)).await
    }

    /// `GET /v1/files/uploads/{id}`: the session's state.
    pub(crate) async fn session(&self, id: &str) -> (StatusCode, Value) {
        send(self.get(&format!("/v1/files/uploads/{id}"))).await
    }

    /// `DELETE /v1/files/uploads/{id}`: aborts the session.
    pub(crate) async fn abort(&self, id: &str) -> (StatusCode, Value) {
        send(self.request(Method::DELETE, &format!("/v1/files/uploads/{id}"))).await
    }

    /// Uploads `data` as `name` in three steps (init, one raw part, complete with its
    /// SHA-256); asserts each answers 200 and returns the complete body.
    pub(crate) async fn upload_file(&self, name: &str, folder: Option<&str>, data: &[u8]) -> Value {
        let init = self
            .init(
                json!([{ "name": name, "size": data.len() }]),
                "single",
                folder,
            )
            .await;
        let id = init["uploadId"].as_str().unwrap();
        let (s, b) = self.put_part(id, 0, data).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = self.complete(id, json!({ "sha256": sha_hex(data) })).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    }

    /// `POST /v1/files/batch-download` with `body`; asserts 200 and returns the token.
    pub(crate) async fn batch_token(&self, body: Value) -> String {
        let (s, b) = send(self.post("/v1/files/batch-download").json(&body)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["token"].as_str().unwrap().to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers, written once.

/// Bytes that differ at every offset, so a misplaced part shows.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed as usize * 7) % 251) as u8)
        .collect()
}

/// SHA-256 as lowercase hex.
pub(crate) fn sha_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Standard base64, padded (JSON parts).
pub(crate) fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// base64url without padding (JWT segments, JWK numbers).
pub(crate) fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Every regular file under `dir`, relative, sorted.
pub(crate) fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Copies a tree, making it writable (the fixtures are read-only).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
            let mut perm = std::fs::metadata(&dest).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&dest, perm).unwrap();
        }
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

/// A tmpfs mounted by [`mount_tmpfs`], unmounted when dropped.
pub(crate) struct Tmpfs(PathBuf);

/// Mounts a tmpfs of `size` (`mount`'s syntax: `4m`) on `dir`, for tests of full disks and
/// read-only roots. Needs mount rights (root, as in CI): without them the test named `test`
/// is skipped with a note, unless `CI` is set, where it fails (CI runs as root; a test it
/// skips would pass without testing anything).
pub(crate) fn mount_tmpfs(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(out) if out.status.success() => Some(Tmpfs(dir.to_path_buf())),
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: cannot mount a tmpfs ({why}); CI must run it as root"
            );
            eprintln!("SKIPPED {test}: cannot mount a tmpfs here (not root?): {why}");
            None
        }
    }
}

impl Tmpfs {
    /// `mount -o remount,{options}`: `ro` or `rw`.
    pub(crate) fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -o remount,{options}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the app's server task may still hold the root open.
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

// ---------------------------------------------------------------------------------------
// The real binary as a child process.

/// The `upload-server` binary with a clean environment (`PATH` only, plus `env`); its
/// stdout and stderr go to files so nothing can block on a full pipe. Started with
/// `PORT=0`, it binds a free port and reports it on stderr (`upload-server: listening on
/// ADDR`), which [`Server::wait_ready`] reads: no port is chosen here and bound again later.
pub(crate) struct Server {
    pub(crate) child: Child,
    /// `http://ADDR`, once [`Server::wait_ready`] has read the address; empty before.
    pub(crate) base: String,
    logs: TempDir,
}

/// The line `main.rs` writes to stderr once it listens.
const LISTENING: &str = "upload-server: listening on ";

/// Starts the binary; does not wait for it to listen. `env` (or the env file it is given)
/// should say `PORT=0`, unless the test holds the port it names.
pub(crate) fn launch(env: &[(&str, &str)], args: &[&str]) -> Server {
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
        base: String::new(),
        logs,
    }
}

/// Starts the binary and waits until `/healthz` answers on the port it reports.
pub(crate) async fn start_server(env: &[(&str, &str)], args: &[&str]) -> Server {
    let mut server = launch(env, args);
    server.wait_ready().await;
    server
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        assert!(
            !self.base.is_empty(),
            "the server's address is not known yet"
        );
        format!("{}{path}", self.base)
    }

    /// `HOST:PORT` the server listens on.
    pub(crate) fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// The port the server listens on.
    pub(crate) fn port(&self) -> u16 {
        self.addr().rsplit(':').next().unwrap().parse().unwrap()
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stdout")).unwrap()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap()
    }

    /// Reads the address the server reports, then waits until `/healthz` answers 200 there;
    /// panics with the child's output if it dies first.
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
            if self.base.is_empty() {
                // Only a whole line counts: the file may end in the middle of one.
                let stderr = self.stderr();
                let reported = stderr
                    .split_inclusive('\n')
                    .filter(|l| l.ends_with('\n'))
                    .find_map(|l| l.trim_end().strip_prefix(LISTENING));
                if let Some(addr) = reported {
                    let addr: std::net::SocketAddr = addr
                        .parse()
                        .unwrap_or_else(|e| panic!("{LISTENING}{addr:?}: {e}"));
                    self.base = format!("http://{addr}");
                }
            }
            if !self.base.is_empty() {
                if let Ok(res) = http.get(self.url("/healthz")).send().await {
                    if res.status() == StatusCode::OK {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "upload-server did not answer (address {:?}); stderr: {}",
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
    run_args_to_exit(env, &[], limit).await
}

/// [`run_to_exit`] with command-line arguments (`check`, `--help`).
pub(crate) async fn run_args_to_exit(
    env: &[(&str, &str)],
    args: &[&str],
    limit: Duration,
) -> (ExitStatus, String, String) {
    let mut server = launch(env, args);
    let status = server.wait_exit(limit).await;
    (status, server.stdout(), server.stderr())
}

/// A response header as text, `""` when absent.
pub(crate) fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    header_opt(res, name).unwrap_or("")
}

/// A response header as text, `None` when absent.
pub(crate) fn header_opt<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
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
