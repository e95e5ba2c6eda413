//! What the fuzz targets share: the real application, built once per process in a static
//! (one tokio runtime, one `Router`, one `UPLOAD_ROOT` with real files and sidecars), the
//! text format of HTTP inputs with placeholders, and the checks on file responses.
//!
//! The temp dirs live in `$TMPDIR` (`bench/fuzz` points it at a scratch dir on tmpfs and
//! removes it afterwards): a process-wide static is never dropped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use upload_server::config::Settings;
use upload_server::signer::{self, Disposition};
use upload_server::state::AppState;

/// The service token the app accepts.
pub const SERVICE_TOKEN: &str = "fuzz-service-token";
/// The signed-URL key: the old service's test key, so the URLs it signed in
/// `tests/fixtures/signed-url-vectors.json` are real inputs.
pub const SIGNING_KEY: &str = "test-signing-key";
/// `PUBLIC_BASE_URL`.
pub const BASE: &str = "http://fuzz.test";
/// A far-future expiry for signed URLs (2100-01-01).
pub const FAR: i64 = 4_102_444_800;
/// An expiry in the past (2023-11-14).
pub const PAST: i64 = 1_700_000_000;
/// Text that must never appear in a file response: planted secrets, sidecars, session and
/// ledger files all carry one of these.
pub const SECRET_MARKERS: &[&[u8]] = &[
    b"SECRET-",
    b"\"original_name\"",
    b"\"upload_id\"",
    b"\"reserved\"",
];

/// A file stored in the fixture root.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// `storage/{user}/...`.
    pub key: String,
    /// The bytes on disk.
    pub bytes: Vec<u8>,
    /// `ETag` as the app sends it.
    pub etag: String,
    /// `Last-Modified` as the app sends it.
    pub last_modified: String,
    /// `Content-Type` as the app sends it.
    pub mime: String,
}

impl Fixture {
    /// The key's path below `/storage/`, percent-encoded for a URI.
    pub fn public_path(&self) -> String {
        let below = self.key.strip_prefix("storage/").unwrap_or(&self.key);
        format!("/storage/{}", encode_path(below))
    }
}

/// The application and what the checks need to know about its data.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    /// The app, as `main.rs` serves it.
    pub app: Router,
    /// Its state (for set-up and clean-up through the store).
    pub state: AppState,
    /// `UPLOAD_ROOT`.
    pub root: PathBuf,
    /// The stored files. Their sizes all differ, so a size names a file.
    pub files: Vec<Fixture>,
    /// A JWT for `u1`.
    pub user_token: String,
    /// A JWT for `u2`.
    pub other_token: String,
    /// A JWT for `u1` signed by a key the app does not trust.
    pub forged_token: String,
}

/// The users and names of the fixture files: (user, folder, name, size).
const FIXTURE_FILES: &[(&str, Option<&str>, &str, usize)] = &[
    ("u1", Some("docs"), "report.txt", 1000),
    ("u1", None, "empty.bin", 0),
    (
        "alice@example.com",
        Some("main/pictures"),
        "Résumé été.pdf",
        1,
    ),
    ("u2", None, "page.html", 70_000),
];

/// The old service's `UPLOAD_ROOT` (tests/fixtures), relative to this crate.
const OLD_ROOT: &str = "../tests/fixtures/old-service-root";

/// Its files: with sidecars, and one placed by hand without.
const OLD_KEYS: &[&str] = &[
    "storage/alice@example.com/main/pictures/c0b82ce0_photo.jpg",
    "storage/alice@example.com/bab06353_notes.txt",
    "storage/alice@example.com/videos/91726cf7_clip.mp4",
    "storage/user123/documents/7b897611_Résumé été.pdf",
    "storage/user123/main/c26d2440_data.json",
    "storage/user123/legacy/placed-by-hand.png",
];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy: mkdir");
    for e in std::fs::read_dir(from).expect("copy: read_dir").flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().expect("copy: type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy: file");
        }
    }
}

/// Deterministic content, distinct per file and per offset (so a slice names its place).
fn content(seed: usize, size: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ (seed as u32).wrapping_mul(0x85eb_ca6b);
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b'a' + (x % 26) as u8
        })
        .collect()
}

/// The process-wide harness, built on first use.
pub fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(Harness::build)
}

/// The OS random source, for `rsa`'s key generation (the `rand_core` version `rsa` takes is
/// not the one `getrandom` 0.3 serves).
struct OsRandom;

impl rsa::rand_core::TryRng for OsRandom {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(getrandom::u32().expect("OS randomness"))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(getrandom::u64().expect("OS randomness"))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        getrandom::fill(dst).expect("OS randomness");
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for OsRandom {}

/// A 2048-bit RSA key pair written as `{private}` (PKCS#8 PEM) and `{public}` (SPKI PEM).
fn write_key_pair(private: &Path, public: &Path) {
    use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
    let key = rsa::PrivateKey::new(&mut OsRandom, 2048).expect("an RSA key");
    let private_pem = key.to_pkcs8_pem(LineEnding::LF).expect("private PEM");
    let public_pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public PEM");
    std::fs::write(private, private_pem.as_bytes()).expect("private key file");
    std::fs::write(public, public_pem).expect("public key file");
}

impl Harness {
    fn build() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // Never dropped (the harness is a static): bench/fuzz removes $TMPDIR.
        let dir = tempfile::tempdir().expect("a temp dir").keep();
        let root = dir.join("root");
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let key_file = |n: &str| keys.join(n).to_str().unwrap_or_default().to_owned();
        for name in ["main", "stranger"] {
            write_key_pair(
                &keys.join(format!("{name}-private.pem")),
                &keys.join(format!("{name}-public.pem")),
            );
        }
        // The old service's files and sidecars, as it left them (some without a sidecar).
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join(OLD_ROOT), &root);
        let env: std::collections::HashMap<String, String> = [
            ("UPLOAD_ROOT", root.to_str().unwrap_or_default().to_owned()),
            ("PUBLIC_BASE_URL", BASE.to_owned()),
            ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN.to_owned()),
            ("UPLOAD_SIGNING_KEY", SIGNING_KEY.to_owned()),
            ("JWT_PUBLIC_KEY_PATH", key_file("main-public.pem")),
            ("JWT_PRIVATE_KEY_PATH", key_file("main-private.pem")),
            // Small limits, so the 413 paths are reachable by small inputs.
            ("MAX_BODY_MB", "1".to_owned()),
            ("PER_USER_QUOTA_GB", "0.0002".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let settings =
            Settings::from_sources(Default::default(), env).expect("fuzz settings are valid");
        let state = rt
            .block_on(upload_server::startup::build_state(settings))
            .expect("the app builds");
        let app = upload_server::startup::router(state.clone());

        let mint = |user: &str, private: &str| {
            let pem = std::fs::read(keys.join(private)).expect("private key");
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("RSA PEM");
            let mut head = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            head.kid = Some("streamline-rsa-1".to_owned());
            jsonwebtoken::encode(&head, &json!({ "user_id": user, "exp": FAR }), &key)
                .expect("a JWT")
        };
        let mut h = Self {
            rt,
            app,
            state,
            root: root.clone(),
            files: Vec::new(),
            user_token: mint("u1", "main-private.pem"),
            other_token: mint("u2", "main-private.pem"),
            forged_token: mint("u1", "stranger-private.pem"),
        };
        for (i, (user, folder, name, size)) in FIXTURE_FILES.iter().enumerate() {
            let bytes = content(i, *size);
            let key = h.upload(user, *folder, name, &bytes);
            h.add_fixture(key, bytes);
        }
        for key in OLD_KEYS {
            let bytes = std::fs::read(root.join(key)).expect("an old fixture");
            h.add_fixture((*key).to_owned(), bytes);
        }
        h.plant_secrets(&dir);
        let sizes: BTreeSet<usize> = h.files.iter().map(|f| f.bytes.len()).collect();
        assert_eq!(sizes.len(), h.files.len(), "fixture sizes must differ");
        h
    }

    fn upload(&self, user: &str, folder: Option<&str>, name: &str, bytes: &[u8]) -> String {
        let mut q = format!(
            "/v1/files/upload?user_id={}&filename={}",
            encode_query(user),
            encode_query(name)
        );
        if let Some(f) = folder {
            q.push_str(&format!("&folder={}", encode_query(f)));
        }
        let req = Request::post(q)
            .header("x-service-token", SERVICE_TOKEN)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(bytes.to_vec()))
            .expect("upload request");
        let res = self.send(req);
        assert_eq!(res.status, StatusCode::OK, "fixture upload: {:?}", res.body);
        let v: Value = serde_json::from_slice(&res.body).expect("upload JSON");
        v["files"][0]["key"]
            .as_str()
            .expect("upload key")
            .to_owned()
    }

    fn add_fixture(&mut self, key: String, bytes: Vec<u8>) {
        let fx = Fixture {
            key,
            bytes,
            etag: String::new(),
            last_modified: String::new(),
            mime: String::new(),
        };
        let res = self.send(get(&fx.public_path(), &[]));
        assert_eq!(res.status, StatusCode::OK, "fixture GET {}", fx.key);
        assert_eq!(res.body.as_ref(), fx.bytes.as_slice());
        let h = |n: header::HeaderName| {
            res.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let fx = Fixture {
            etag: h(header::ETAG),
            last_modified: h(header::LAST_MODIFIED),
            mime: h(header::CONTENT_TYPE),
            ..fx
        };
        assert!(!fx.etag.is_empty() && !fx.last_modified.is_empty());
        self.files.push(fx);
    }

    /// Files that must never be served, whatever the path: dot-files in and above
    /// `storage/`, a file outside the root, symlinks to it, a session folder.
    fn plant_secrets(&self, dir: &Path) {
        let outside = dir.join("outside");
        std::fs::create_dir_all(&outside).expect("outside dir");
        std::fs::write(outside.join("secret.txt"), "SECRET-OUTSIDE").expect("secret");
        let put = |rel: &str, text: &str| {
            let p = self.root.join(rel);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("secret dir");
            std::fs::write(p, text).expect("secret file");
        };
        put(".signing_key", "SECRET-SIGNING-KEY");
        put("storage/.top", "SECRET-STORAGE-DOTFILE");
        put("storage/u1/.hidden", "SECRET-HIDDEN");
        put("storage/u1/docs/.env", "SECRET-ENV");
        put("storage/.parts/x/part", "SECRET-FAKE-PARTS");
        put(
            ".parts/00000000-0000-4000-8000-000000000000/part-000000",
            "SECRET-PART",
        );
        let link = |target: &Path, rel: &str| {
            let _ = std::os::unix::fs::symlink(target, self.root.join(rel));
        };
        link(
            &outside.join("secret.txt"),
            "storage/u1/docs/1a2b3c4d_link.txt",
        );
        link(&outside, "storage/u1/linkdir");
        link(&outside.join("secret.txt"), "storage/u1/linkfile");
    }

    /// Sends one request through the app and collects the whole answer.
    pub fn send(&self, req: Request<Body>) -> Answer {
        self.rt.block_on(async {
            let res = match self.app.clone().oneshot(req).await {
                Ok(r) => r,
                Err(e) => match e {},
            };
            let (parts, body) = res.into_parts();
            let body = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => panic!("the response body failed mid-stream: {e}"),
            };
            Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        })
    }

    /// Runs a future on the harness's runtime (store set-up and clean-up).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The fixture whose `ETag` this is.
    pub fn by_etag(&self, etag: &str) -> Option<&Fixture> {
        self.files.iter().find(|f| f.etag == etag)
    }

    /// The fixture of this size.
    pub fn by_size(&self, size: u64) -> Option<&Fixture> {
        self.files.iter().find(|f| f.bytes.len() as u64 == size)
    }

    /// A signed URL (path and query) for fixture `i`.
    pub fn signed(&self, i: usize, exp: i64, d: Disposition) -> String {
        let url = signer::signed_url(
            BASE,
            SIGNING_KEY.as_bytes(),
            &self.files[i % self.files.len()].key,
            exp,
            d,
        );
        url.strip_prefix(BASE).unwrap_or(&url).to_owned()
    }

    /// Replaces the placeholders of HTTP inputs:
    /// `{Pi}` public path of fixture i, `{Si}` signed URL (inline), `{Ai}` (attachment),
    /// `{Xi}` expired, `{Ki}` base64url key, `{KEYi}` key, `{ETAGi}`, `{LMi}` (Last-Modified),
    /// `{SIGi}` inline signature, `{SIGAi}` attachment signature, `{EXP}`, `{PAST}`.
    pub fn expand(&self, text: &str) -> String {
        if !text.contains('{') {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len() + 64);
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            match after.find('}').and_then(|end| {
                let name = &after[..end];
                self.placeholder(name).map(|v| (v, end))
            }) {
                Some((v, end)) => {
                    out.push_str(&v);
                    rest = &after[end + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn placeholder(&self, name: &str) -> Option<String> {
        match name {
            "EXP" => return Some(FAR.to_string()),
            "PAST" => return Some(PAST.to_string()),
            _ => {}
        }
        let split = name.find(|c: char| c.is_ascii_digit())?;
        let (kind, num) = name.split_at(split);
        if !num.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i: usize = num.parse().ok()?;
        let f = self.files.get(i)?;
        Some(match kind {
            "P" => f.public_path(),
            "S" => self.signed(i, FAR, Disposition::Inline),
            "A" => self.signed(i, FAR, Disposition::Attachment),
            "X" => self.signed(i, PAST, Disposition::Inline),
            "K" => signer::encode_key(&f.key),
            "KEY" => f.key.clone(),
            "ETAG" => f.etag.clone(),
            "LM" => f.last_modified.clone(),
            "SIG" => signer::sign(SIGNING_KEY.as_bytes(), &f.key, FAR, Disposition::Inline),
            "SIGA" => signer::sign(SIGNING_KEY.as_bytes(), &f.key, FAR, Disposition::Attachment),
            _ => return None,
        })
    }
}

/// With `FUZZ_TRACE` set, targets print each request's outcome (to see what the seeds
/// reach: `FUZZ_TRACE=1 cargo fuzz run TARGET fuzz/seeds/TARGET/*`).
pub fn trace(what: impl FnOnce() -> String) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some()) {
        eprintln!("trace: {}", what());
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// A header as text ("" when absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Panics unless this is an error answer with a JSON `{"detail": ...}` body.
    pub fn assert_json_error(&self, method: &Method) {
        let ctype = self.header("content-type");
        assert!(
            ctype.starts_with("application/json"),
            "{} error without a JSON type: {ctype:?}",
            self.status
        );
        if method == Method::HEAD {
            return;
        }
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} error body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        });
        let detail = &v["detail"];
        assert!(
            detail.is_string() || detail.is_array(),
            "{} error without a detail: {v}",
            self.status
        );
        if self.status.is_server_error() {
            assert_eq!(
                detail, "Internal Server Error",
                "a 5xx must not leak internals"
            );
        }
    }
}

/// A GET request with headers.
pub fn get(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).expect("a request")
}

/// Percent-encodes a path for a URI, keeping `/` and the characters a path may hold raw.
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~@!$&'()*+,;=:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Makes any fuzzed text a valid request target: bytes a URI may not hold raw (controls,
/// space, non-ASCII, `"<>\^`{|}`) are percent-encoded; `%` stays, so `%2e%2e` and `%00`
/// reach the app as written. Always starts with `/`.
pub fn lenient_target(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if !s.starts_with('/') {
        out.push('/');
    }
    for b in s.bytes() {
        if b.is_ascii_graphic() && !b"\"<>\\^`{|}#".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP input: `METHOD TARGET` on the first line, `Name: value` header lines, then
/// (after an empty line) the body. Placeholders are expanded everywhere.
#[derive(Debug)]
pub struct HttpInput {
    /// The method word (not validated).
    pub method: String,
    /// The request target as written (expanded, not yet made valid).
    pub target: String,
    /// Header lines that form a valid name and value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Everything after the first empty line.
    pub body: Vec<u8>,
}

impl HttpInput {
    /// Parses an input; `None` when the first line is not text.
    pub fn parse(h: &Harness, data: &[u8]) -> Option<Self> {
        let (head, body) = match find(data, b"\n\n") {
            Some(i) => (&data[..i], data[i + 2..].to_vec()),
            None => (data, Vec::new()),
        };
        let head = std::str::from_utf8(head).ok()?;
        let mut lines = head.split('\n');
        let first = lines.next()?;
        let (method, target) = first.split_once(' ').unwrap_or(("GET", first));
        let mut headers = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = h.expand(value.strip_prefix(' ').unwrap_or(value));
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.push((n, v));
            }
        }
        let body = match std::str::from_utf8(&body) {
            Ok(text) => h.expand(text).into_bytes(),
            Err(_) => body,
        };
        Some(Self {
            method: method.to_owned(),
            target: h.expand(target),
            headers,
            body,
        })
    }

    /// All values of a header.
    pub fn values(&self, name: &HeaderName) -> Vec<&HeaderValue> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }

    /// The request, with `target` made valid and `method` if it is a valid method.
    pub fn request(&self, method: Method, target: &str) -> Option<Request<Body>> {
        let uri: Uri = target.parse().ok()?;
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in &self.headers {
            b = b.header(n, v);
        }
        b.body(Body::from(self.body.clone())).ok()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses `bytes a-b/size`.
pub fn content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, size.parse().ok()?))
}

/// One part of a `multipart/byteranges` body: its `Content-Range` and bytes.
pub type BytePart = ((u64, u64, u64), Vec<u8>);

/// Splits a `multipart/byteranges` body; panics on a malformed one.
pub fn byteranges(body: &[u8], boundary: &str) -> Vec<BytePart> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    let start = find(rest, delim.as_bytes()).expect("multipart: no first boundary");
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .expect("multipart: CRLF after a boundary");
        let head_end = find(rest, b"\r\n\r\n").expect("multipart: part head");
        let head = std::str::from_utf8(&rest[..head_end]).expect("multipart: head text");
        let range = head
            .split("\r\n")
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-range")
                    .then(|| content_range(v.trim()))
                    .flatten()
            })
            .expect("multipart: a part without Content-Range");
        let data_start = head_end + 4;
        let len = (range.1 - range.0 + 1) as usize;
        let data = rest
            .get(data_start..data_start + len)
            .expect("multipart: part shorter than its range");
        parts.push((range, data.to_vec()));
        rest = &rest[data_start + len..];
        rest = rest
            .strip_prefix(b"\r\n")
            .expect("multipart: CRLF after a part");
        rest = rest
            .strip_prefix(delim.as_bytes())
            .expect("multipart: boundary after a part");
    }
    parts
}

/// What a file request was, for the checks.
#[derive(Debug, Default)]
pub struct FileRequest<'a> {
    /// GET or HEAD.
    pub head: bool,
    /// The file the request names, when it is one of the fixtures (an unchanged placeholder).
    pub expected: Option<&'a Fixture>,
    /// A `/get/` or `/v1/files/get/` route (403 and 422 are then possible too).
    pub signed_route: bool,
    /// For a valid signed URL: the disposition signed (the response must carry it).
    pub disposition: Option<Disposition>,
}

/// The invariants of any answer to `GET`/`HEAD` on `/storage/...` or a signed URL
/// (API.md §4.3, §4.4, §6): never 5xx, only the statuses the contract names, JSON
/// errors, lengths that add up, ranges consistent with the file, no secret ever served,
/// no amplification. Returns the fixture served, if any.
pub fn check_file_answer<'h>(
    h: &'h Harness,
    req: &FileRequest<'_>,
    res: &Answer,
) -> Option<&'h Fixture> {
    let method = if req.head { Method::HEAD } else { Method::GET };
    let s = res.status.as_u16();
    assert!(s < 500, "5xx: {} {:?}", res.status, res.body);
    let allowed: &[u16] = if req.signed_route {
        // 405: `/v1/files/get/a/b` is the path of `DELETE /v1/files/{*key}`.
        &[200, 206, 304, 400, 403, 404, 405, 412, 416, 422]
    } else {
        &[200, 206, 304, 400, 403, 404, 412, 416]
    };
    assert!(allowed.contains(&s), "unexpected status {s}");
    if !req.head {
        for m in SECRET_MARKERS {
            assert!(
                find(&res.body, m).is_none(),
                "a secret was served ({}): {:?}",
                String::from_utf8_lossy(m),
                String::from_utf8_lossy(&res.body[..res.body.len().min(200)])
            );
        }
    }
    if let (Ok(cl), false) = (res.header("content-length").parse::<u64>(), req.head) {
        assert_eq!(
            cl,
            res.body.len() as u64,
            "Content-Length differs from the body"
        );
    }
    if res.status.is_client_error() {
        res.assert_json_error(&method);
    }
    if s == 416 {
        let cr = res.header("content-range");
        let size: u64 = cr
            .strip_prefix("bytes */")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("416 without `Content-Range: bytes */size`: {cr:?}"));
        let f = h
            .by_size(size)
            .unwrap_or_else(|| panic!("416 names a size no file has: {size}"));
        if let Some(e) = req.expected {
            assert_eq!(e.key, f.key, "416 for another file");
        }
        return Some(f);
    }
    if !matches!(s, 200 | 206 | 304) {
        return None;
    }
    let etag = res.header("etag");
    let f = h
        .by_etag(etag)
        .unwrap_or_else(|| panic!("{s} for something that is not a stored file: ETag {etag:?}"));
    if let Some(e) = req.expected {
        assert_eq!(e.key, f.key, "served another file");
    }
    assert_eq!(res.header("x-content-type-options"), "nosniff");
    assert_eq!(res.header("last-modified"), f.last_modified);
    if upload_server::routes::serve::needs_sandbox(&f.mime) && s != 304 {
        assert_eq!(res.header("content-security-policy"), "sandbox");
    }
    if let Some(d) = req.disposition {
        let cd = res.header("content-disposition");
        assert!(
            cd.starts_with(&format!("{}; ", d.as_str())),
            "signed as {} but sent {cd:?}",
            d.as_str()
        );
    }
    let size = f.bytes.len() as u64;
    match s {
        304 => {
            assert!(res.body.is_empty(), "304 with a body");
        }
        200 => {
            if !req.head {
                assert_eq!(
                    res.body.as_ref(),
                    f.bytes.as_slice(),
                    "200 with other bytes"
                );
            } else if let Ok(cl) = res.header("content-length").parse::<u64>() {
                assert_eq!(cl, size, "HEAD Content-Length is not the size");
            }
        }
        206 => {
            let ctype = res.header("content-type");
            if let Some(b) = ctype.strip_prefix("multipart/byteranges; boundary=") {
                if req.head {
                    return Some(f);
                }
                let parts = byteranges(&res.body, b);
                assert!((1..=16).contains(&parts.len()), "{} parts", parts.len());
                let mut total = 0u64;
                for ((a, z, sz), data) in &parts {
                    assert_eq!(*sz, size, "part Content-Range size");
                    assert!(a <= z && *z < size, "part range {a}-{z}/{sz}");
                    assert_eq!(
                        data.as_slice(),
                        &f.bytes[*a as usize..=*z as usize],
                        "part bytes"
                    );
                    total += z - a + 1;
                }
                assert!(total <= size, "range amplification: {total} of {size}");
            } else {
                let cr = res.header("content-range");
                let (a, z, sz) = content_range(cr)
                    .unwrap_or_else(|| panic!("206 without a valid Content-Range: {cr:?}"));
                assert_eq!(sz, size, "Content-Range size is not the file's");
                assert!(a <= z && z < size, "bad range {cr}");
                assert_eq!(ctype, f.mime, "206 type");
                if req.head {
                    if let Ok(cl) = res.header("content-length").parse::<u64>() {
                        assert_eq!(cl, z - a + 1, "HEAD 206 Content-Length");
                    }
                } else {
                    assert_eq!(
                        res.body.as_ref(),
                        &f.bytes[a as usize..=z as usize],
                        "206 bytes differ from the file's"
                    );
                }
            }
        }
        _ => {}
    }
    Some(f)
}

/// The method for a fuzzed method word: `HEAD` or `GET`.
pub fn get_or_head(word: &str) -> Method {
    if word.eq_ignore_ascii_case("HEAD") {
        Method::HEAD
    } else {
        Method::GET
    }
}

/// Percent-decodes bytes (`+` stays `+`); invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The values of a query parameter, decoded as a form (`+` is a space).
pub fn query_values(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = String::from_utf8_lossy(&percent_decode(&k.replace('+', " "))).into_owned();
            (k == name).then(|| {
                String::from_utf8_lossy(&percent_decode(&v.replace('+', " "))).into_owned()
            })
        })
        .collect()
}
