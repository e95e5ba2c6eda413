//! Deployment as ops run it (API.md §8): the real binary behind a real nginx configured from
//! `nginx-file-server.conf`, over HTTPS with a certificate made here. Through nginx: a 200 MB
//! raw-part upload, a ranged download, a streamed ZIP, a signed URL, the X-Accel-Redirect
//! offload, and the client's address reaching the server's access log; HSTS on offloaded
//! answers too, /metrics and the docs only from allowed addresses, and no signature or batch
//! token in nginx's access log. tus and the IETF draft with a signed upload URL (no grant
//! in the log; nginx drops request trailers, so checksum-trailer is not offered), and one
//! request id in nginx's log, the server's log and the answer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::batch::check_all_readers;
use crate::helpers::*;

struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits (a SIGKILL of the master left
        // its workers running as orphans).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The access log once it has a line containing `needle` (nginx writes a request's
    /// line after its answer is sent, so a client may look before it is there).
    async fn access_log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log("access.log");
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The site of `nginx-file-server.conf` with this test's ports, certificate, upstream and
/// data root: the same locations and proxy settings ops deploy.
fn derive_site(dir: &Path, http: u16, https: u16, upstream: u16, root: &Path) -> String {
    let site = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-file-server.conf"),
    )
    .unwrap();
    let replaced = site
        .replace("listen 80;", &format!("listen 127.0.0.1:{http};"))
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{https} ssl http2;"),
        )
        .replace(
            "/etc/letsencrypt/live/file-server.example.com/fullchain.pem",
            dir.join("cert.pem").to_str().unwrap(),
        )
        .replace(
            "/etc/letsencrypt/live/file-server.example.com/privkey.pem",
            dir.join("key.pem").to_str().unwrap(),
        )
        .replace("127.0.0.1:5070", &format!("127.0.0.1:{upstream}"))
        .replace(
            "/data/uploads/storage/",
            &format!("{}/storage/", root.display()),
        )
        .replace("/var/www/letsencrypt", dir.join("acme").to_str().unwrap())
        .replace(
            "/var/log/nginx/file-server.access.log",
            dir.join("access.log").to_str().unwrap(),
        )
        .replace(
            "/etc/nginx/upload-server-admin-allow.conf",
            dir.join("admin-allow.conf").to_str().unwrap(),
        );
    // No IPv6 listeners in the sandbox.
    let site: String = replaced
        .lines()
        .filter(|l| !l.trim_start().starts_with("listen [::]"))
        .map(|l| format!("{l}\n"))
        .collect();
    for must in [
        "proxy_request_buffering off",
        "proxy_buffering off",
        "location /_files/",
        "internal;",
    ] {
        assert!(site.contains(must), "the site lost {must:?}");
    }
    site
}

/// A port that was free a moment ago, for nginx's listeners: nginx cannot report a port it
/// chose, so these may race another process (the upload server itself binds port 0).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn start_nginx(dir: &Path, http: u16, https: u16, upstream: u16, root: &Path) -> Nginx {
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl req failed");
    for d in ["acme", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    // The allow file as deploy.sh installs it (loopback 127.0.0.1 only).
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx-admin-allow.conf"),
        dir.join("admin-allow.conf"),
    )
    .unwrap();
    std::fs::write(
        dir.join("site.conf"),
        derive_site(dir, http, https, upstream, root),
    )
    .unwrap();
    let main = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx-test.conf"),
    )
    .unwrap();
    std::fs::write(
        dir.join("nginx.conf"),
        main.replace("{dir}", dir.to_str().unwrap()),
    )
    .unwrap();
    let conf = dir.join("nginx.conf");
    let test = Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nginx = Nginx {
        child,
        dir: dir.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", https)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not listen: {}",
            nginx.log("error.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx
}

/// The server behind nginx as deployed: the real binary (JSON logs, X-Accel offload) and
/// nginx with the site, over HTTPS on `public`; `http` connects from 127.0.0.2.
struct Deployment {
    server: Server,
    nginx: Nginx,
    http: reqwest::Client,
    public: String,
    http_port: u16,
    dir: tempfile::TempDir,
    root: tempfile::TempDir,
}

impl Deployment {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }
}

/// Starts the server and nginx, or `None` (the test is skipped) when nginx is not installed
/// outside CI.
async fn deploy(test: &str) -> Option<Deployment> {
    if Command::new("nginx").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is not installed (.ci/run installs it)"
        );
        eprintln!("SKIPPED {test}: nginx is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (http_port, https_port) = (free_port(), free_port());
    let public = format!("https://127.0.0.1:{https_port}");
    let root_s = root.path().to_str().unwrap().to_owned();
    let server = start_server(
        &[
            ("UPLOAD_ROOT", root_s.as_str()),
            ("PORT", "0"),
            ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN),
            ("UPLOAD_SIGNING_KEY", SIGNING_KEY),
            ("PUBLIC_BASE_URL", public.as_str()),
            ("ACCEL_REDIRECT_PREFIX", "/_files/"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ],
        &[],
    )
    .await;
    let nginx = start_nginx(
        dir.path(),
        http_port,
        https_port,
        server.port(),
        root.path(),
    );
    // The client connects from another loopback address than nginx's own, so the access
    // log shows whose address the server took.
    // HTTP/1.1, as the old SDKs speak (reqwest would offer h2 by ALPN since the S3 client's
    // dependencies turn its HTTP/2 on); the log lines below say which version came.
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .http1_only()
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Some(Deployment {
        server,
        nginx,
        http,
        public,
        http_port,
        dir,
        root,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_over_https() {
    let Some(d) = deploy("through_nginx_over_https").await else {
        return;
    };
    let (server, nginx, http, dir) = (&d.server, &d.nginx, &d.http, &d.dir);
    let http_port = d.http_port;
    let url = |p: &str| d.url(p);

    // Plain HTTP is redirected to HTTPS.
    let res = http
        .get(format!("http://127.0.0.1:{http_port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);

    // 200 MB through the raw-part route, streamed by nginx.
    let size = 200usize << 20;
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_246_822_519).to_le_bytes()[2])
        .collect();
    let sha = sha_hex(&data);
    let init: Value = http
        .post(url("/v1/files/init"))
        .header("x-service-token", SERVICE_TOKEN)
        .json(&json!({ "mode": "single", "files": [{ "name": "movie.mp4", "size": size }], "folder": "videos", "meta": { "user_id": "ops" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = init["uploadId"].as_str().unwrap();
    let res = http
        .put(url(&format!("/v1/files/part/{id}/0")))
        .header("x-service-token", SERVICE_TOKEN)
        // A claim of the client's own, which nginx passes on before the address it saw.
        .header("x-forwarded-for", "203.0.113.7")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let done: Value = http
        .post(url("/v1/files/complete"))
        .header("x-service-token", SERVICE_TOKEN)
        .json(&json!({ "uploadId": id, "sha256": sha }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = done["key"].as_str().unwrap().to_owned();
    assert_eq!(done["sha256"], sha);

    // A ranged download of the public link, served by nginx from disk (offload).
    let public_path = format!("/{key}");
    let res = http
        .get(url(&public_path))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.headers()["content-type"], "video/mp4");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    // The location's own add_header lines must not drop the server's HSTS.
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert!(res.headers().get("x-accel-redirect").is_none());
    assert_eq!(res.bytes().await.unwrap(), data[1000..2000]);
    let res = http.get(url(&public_path)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-length"], size.to_string().as_str());
    let body = res.bytes().await.unwrap();
    assert_eq!(sha_hex(&body), sha);

    // A signed URL (made with PUBLIC_BASE_URL, so it points at nginx).
    let signed: Value = http
        .get(url(&format!(
            "/v1/files/signed-url?key={key}&disposition=attachment"
        )))
        .header("x-service-token", SERVICE_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = http
        .get(signed["url"].as_str().unwrap())
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"movie.mp4\""));
    assert_eq!(res.bytes().await.unwrap(), data[size - 10..]);

    // A streamed ZIP of the big file and a small one.
    let small: Value = http
        .post(url("/v1/files/upload?user_id=ops&filename=notes.txt"))
        .header("x-service-token", SERVICE_TOKEN)
        .body("hello through nginx")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token: Value = http
        .post(url("/v1/files/batch-download"))
        .header("x-service-token", SERVICE_TOKEN)
        .json(&json!({ "keys": [key, small["files"][0]["key"]] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = http
        .get(url(&format!(
            "/v1/files/batch-download/{}",
            token["token"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let length: usize = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let zip = res.bytes().await.unwrap();
    assert_eq!(zip.len(), length);
    let zip_path = dir.path().join("batch.zip");
    std::fs::write(&zip_path, &zip).unwrap();
    let entries = check_all_readers(&zip_path);
    assert_eq!(entries[0], ("movie.mp4".to_owned(), size, sha.clone()));
    assert_eq!(entries[1].0, "notes.txt");

    // /metrics and the docs: refused by nginx to 127.0.0.2, passed on for 127.0.0.1.
    let local = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
        .http1_only()
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/metrics", "/docs", "/redoc"] {
        let res = http.get(url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path} from 127.0.0.2");
        let res = local
            .get(url(path))
            .header("x-service-token", SERVICE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path} from 127.0.0.1");
    }

    // The OpenAPI document stays public (API.md §5; integrators fetch it).
    let res = http.get(url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // nginx's access log: the signed URL and the batch token were requested, and neither
    // the signature nor the token is in it.
    let signature = signed["url"]
        .as_str()
        .unwrap()
        .split("sig=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let nginx_log = nginx.log("access.log");
    assert!(nginx_log.contains("sig=-"), "{nginx_log}");
    assert!(
        nginx_log.contains("/v1/files/batch-download/- "),
        "{nginx_log}"
    );
    assert!(
        !nginx_log.contains(&signature),
        "a signature in {nginx_log}"
    );
    assert!(
        !nginx_log.contains(token["token"].as_str().unwrap()),
        "a batch token in {nginx_log}"
    );

    // The offload: the server sent no file bytes for the public link (nginx did), and the
    // address nginx saw (its X-Real-IP), not the one the client claimed, reached the
    // server's access log.
    let log = server.stdout();
    let storage_lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/storage/"))
        })
        .collect();
    assert!(
        !storage_lines.is_empty(),
        "no access line for /storage: {log}"
    );
    assert!(
        storage_lines.iter().all(|v| v["bytes"] == 0),
        "{storage_lines:?}"
    );
    assert!(
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["client"] == "127.0.0.2"
                && v["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/v1/files/part/"))),
        "the forwarded client address is not in the access log: {log}"
    );
    assert!(
        !log.contains("203.0.113.7"),
        "the client's own X-Forwarded-For claim was logged: {log}"
    );
    assert!(
        nginx
            .log("access.log")
            .contains(&format!("\"GET {public_path} HTTP/1.1\" 200 {size}")),
        "{}",
        nginx.log("access.log")
    );
}

/// The value of `name=` in a query.
fn query_value(query: &str, name: &str) -> String {
    query
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .unwrap()
        .to_owned()
}

/// Sends `request` (raw HTTP/1.1) to nginx over TLS with `openssl s_client` and gives the
/// answer's status line: reqwest cannot send a request trailer.
fn raw_https(port: u16, request: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", res.headers()))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_and_the_draft_through_nginx_with_a_signed_upload_url() {
    let Some(d) = deploy("tus_and_the_draft_through_nginx_with_a_signed_upload_url").await else {
        return;
    };
    let http = &d.http;
    let signed: Value = http
        .post(d.url("/v1/files/sign-upload"))
        .header("x-service-token", SERVICE_TOKEN)
        .json(&json!({ "user_id": "ops", "folder": "inbox", "max_size": 8 << 20 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let q = signed["query"].as_str().unwrap().to_owned();
    assert_eq!(
        signed["tus_url"].as_str().unwrap(),
        d.url(&format!("/v1/files/tus/?{q}"))
    );
    let (grant, sig) = (query_value(&q, "grant"), query_value(&q, "sig"));

    // OPTIONS: what tus offers through nginx, without checksum-trailer (nginx drops
    // request trailers).
    let res = http
        .request(reqwest::Method::OPTIONS, d.url("/v1/files/tus/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "tus-version"), "1.0.0");
    let extensions: Vec<&str> = header(&res, "tus-extension").split(',').collect();
    assert!(extensions.contains(&"checksum"), "{extensions:?}");
    assert!(extensions.contains(&"concatenation"), "{extensions:?}");
    assert!(!extensions.contains(&"checksum-trailer"), "{extensions:?}");
    assert_eq!(res.headers().get_all("tus-extension").iter().count(), 1);
    // This location's own header lines keep the server-level ones: one request id.
    assert_eq!(res.headers().get_all("x-request-id").iter().count(), 1);
    assert_eq!(
        header(&res, "strict-transport-security"),
        "max-age=31536000"
    );

    // tus: create with the grant, two PATCHes to the Location (one with a length, one in
    // chunks, as tus-js-client sends a stream), HEAD.
    let size = 3 << 20;
    let data = pattern(size, 9);
    let tus = |method: reqwest::Method, path: &str| {
        http.request(method, d.url(path))
            .header("tus-resumable", "1.0.0")
    };
    let res = tus(reqwest::Method::POST, &format!("/v1/files/tus/?{q}"))
        .header("upload-length", size)
        .header("upload-metadata", "filename bW92aWUuYmlu")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
    let location = header(&res, "location").to_owned();
    assert!(location.ends_with(&format!("?{q}")), "{location}");
    let bare = location.split('?').next().unwrap().to_owned();
    let first = (1 << 20) + 3;
    let res = tus(reqwest::Method::PATCH, &location)
        .header("upload-offset", 0)
        .header("content-type", "application/offset+octet-stream")
        .body(data[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        res.text().await
    );
    assert_eq!(header(&res, "upload-offset"), first.to_string());
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = data[first..]
        .chunks(300_000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let res = tus(reqwest::Method::PATCH, &location)
        .header("upload-offset", first)
        .header("content-type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        res.text().await
    );
    let key = header(&res, "x-upload-key").to_owned();
    assert!(key.starts_with("storage/ops/inbox/"), "{key}");
    let res = tus(reqwest::Method::HEAD, &location).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "upload-offset"), size.to_string());
    assert_eq!(header(&res, "upload-length"), size.to_string());
    assert_eq!(header(&res, "cache-control"), "no-store");
    assert_eq!(std::fs::read(d.root.path().join(&key)).unwrap(), data);

    // A checksum in the Upload-Checksum header works through nginx; one in a trailer does
    // not reach the server (nginx drops it), so the PATCH is refused and nothing is kept.
    let res = tus(reqwest::Method::POST, &format!("/v1/files/tus/?{q}"))
        .header("upload-length", 6)
        .send()
        .await
        .unwrap();
    let small = header(&res, "location").to_owned();
    let sha256 = |b: &[u8]| {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b))
    };
    let port: u16 = d.public.rsplit(':').next().unwrap().parse().unwrap();
    let trailer = format!(
        "PATCH {small} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n\
         Transfer-Encoding: chunked\r\nTrailer: Upload-Checksum\r\nConnection: close\r\n\r\n\
         3\r\nabc\r\n0\r\nUpload-Checksum: sha256 {}\r\n\r\n",
        sha256(b"abc")
    );
    let status = tokio::task::spawn_blocking(move || raw_https(port, trailer.as_bytes()))
        .await
        .unwrap();
    assert!(status.contains(" 400"), "{status}");
    let res = tus(reqwest::Method::HEAD, &small).send().await.unwrap();
    assert_eq!(header(&res, "upload-offset"), "0");
    let res = tus(reqwest::Method::PATCH, &small)
        .header("upload-offset", 0)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-checksum", format!("sha256 {}", sha256(b"abcdef")))
        .body("abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // X-HTTP-Method-Override (clients behind proxies that allow only GET and POST).
    let res = tus(reqwest::Method::POST, &format!("/v1/files/tus/?{q}"))
        .header("upload-length", 5)
        .send()
        .await
        .unwrap();
    let doomed = header(&res, "location").to_owned();
    let res = tus(reqwest::Method::POST, &doomed)
        .header("x-http-method-override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = tus(reqwest::Method::HEAD, &doomed).send().await.unwrap();
    assert!(
        matches!(res.status(), StatusCode::NOT_FOUND | StatusCode::GONE),
        "{}",
        res.status()
    );

    // The IETF draft: create with the first part, PATCH the rest.
    let draft_data = pattern(2 << 20, 3);
    let res = http
        .post(d.url(&format!("/v1/files/resumable/?{q}")))
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("upload-length", draft_data.len())
        .header("content-disposition", "inline; filename=\"draft.bin\"")
        .body(draft_data[..700_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
    assert_eq!(header(&res, "upload-offset"), "700000");
    let draft_location = header(&res, "location").to_owned();
    assert!(
        draft_location.ends_with(&format!("?{q}")),
        "{draft_location}"
    );
    let res = http
        .patch(d.url(&draft_location))
        .header("upload-draft-interop-version", "8")
        .header("upload-offset", 700_000)
        .header("upload-complete", "?1")
        .header("content-type", "application/partial-upload")
        .body(draft_data[700_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    let done: Value = res.json().await.unwrap();
    let draft_key = done["key"].as_str().unwrap();
    assert!(draft_key.starts_with("storage/ops/inbox/"), "{draft_key}");
    assert_eq!(done["sha256"], sha_hex(&draft_data));
    assert_eq!(
        std::fs::read(d.root.path().join(draft_key)).unwrap(),
        draft_data
    );
    let res = http
        .head(d.url(&draft_location))
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "upload-complete"), "?1");

    // The upload page: the page itself is never cached (its URL holds the grant), Uppy's
    // versioned bundle for a year.
    let res = http
        .get(d.url(&format!("/upload?{q}")))
        .header("referer", d.url(&format!("/upload?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "cache-control"), "no-store");
    let res = http
        .get(d.url("/upload/uppy-6.0.1.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "cache-control"),
        "public, max-age=31536000, immutable"
    );

    // A query naming sig twice, as a confused client may send.
    let _ = http
        .head(d.url("/v1/files/tus/x?sig=firstsecretsig&grant=secretgrant&sig=secondsecretsig"))
        .send()
        .await
        .unwrap();

    // nginx's access log: every upload request is there, no grant or signature is.
    let log = d.nginx.access_log_with("\"HEAD /v1/files/tus/x?").await;
    for secret in [
        grant.as_str(),
        sig.as_str(),
        "firstsecretsig",
        "secretgrant",
        "secondsecretsig",
    ] {
        assert!(!log.contains(secret), "{secret} in {log}");
    }
    for line in [
        "\"POST /v1/files/tus/?grant=-&sig=- HTTP/1.1\" 201".to_owned(),
        format!("\"PATCH {bare}?grant=-&sig=- HTTP/1.1\" 204"),
        format!("\"HEAD {bare}?grant=-&sig=- HTTP/1.1\" 200"),
        "\"POST /v1/files/resumable/?grant=-&sig=- HTTP/1.1\" 201".to_owned(),
        // The referer named the grant too: not logged ("-").
        "\"GET /upload?grant=-&sig=- HTTP/1.1\" 200".to_owned(),
        "\"-\" \"-\"".to_owned(),
        "\"HEAD /v1/files/tus/x?- HTTP/1.1\"".to_owned(),
    ] {
        assert!(log.contains(&line), "{line} not in {log}");
    }
    // The bodies streamed through: nginx kept none of them in a temporary file.
    let errors = d.nginx.log("error.log");
    assert!(!errors.contains("buffered to a temporary file"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_the_server_log_the_same_request_id() {
    let Some(d) = deploy("nginx_and_the_server_log_the_same_request_id").await else {
        return;
    };
    // The id is nginx's, whatever the client sent: the server logs it and answers with it.
    let res = d
        .http
        .get(d.url("/v1/files/all?user_id=ops"))
        .header("x-service-token", SERVICE_TOKEN)
        .header("x-request-id", "chosen-by-the-client")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers().get_all("x-request-id").iter().count(), 1);
    let id = header(&res, "x-request-id").to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    // A file served by nginx from disk (the offload) and an answer nginx makes itself.
    let small: Value = d
        .http
        .post(d.url("/v1/files/upload?user_id=ops&filename=a.txt"))
        .header("x-service-token", SERVICE_TOKEN)
        .body("offloaded")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = d
        .http
        .get(d.url(&format!("/{}", small["files"][0]["key"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers().get_all("x-request-id").iter().count(), 1);
    let offloaded = header(&res, "x-request-id").to_owned();
    let res = d.http.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let refused = header(&res, "x-request-id").to_owned();

    let nginx_log = d.nginx.access_log_with(&refused).await;
    let logged_id = |path: &str| {
        nginx_log
            .lines()
            .find(|l| l.contains(&format!(" {path} HTTP/1.1\"")))
            .unwrap_or_else(|| panic!("no {path} in {nginx_log}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(logged_id("/v1/files/all?user_id=ops"), id);
    assert_eq!(
        logged_id(&format!("/{}", small["files"][0]["key"].as_str().unwrap())),
        offloaded
    );
    assert_eq!(logged_id("/metrics"), refused);
    let server_log = d.server.stdout();
    let server_ids: Vec<String> = server_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["path"] == "/v1/files/all"
                || v["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/storage/"))
        })
        .filter_map(|v| v["request_id"].as_str().map(str::to_owned))
        .collect();
    assert!(server_ids.contains(&id), "{id} not in {server_log}");
    assert!(
        server_ids.contains(&offloaded),
        "{offloaded} not in {server_log}"
    );
    assert!(!server_log.contains("chosen-by-the-client"), "{server_log}");
}
