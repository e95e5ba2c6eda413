//! Deployment as ops run it (API.md §8): the real binary behind a real nginx configured from
//! `nginx-file-server.conf`, over HTTPS with a certificate made here. Through nginx: a 200 MB
//! raw-part upload, a ranged download, a streamed ZIP, a signed URL, the X-Accel-Redirect
//! offload, and the client's address reaching the server's access log; HSTS on offloaded
//! answers too, /metrics and the docs only from allowed addresses, and no signature or batch
//! token in nginx's access log.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_over_https() {
    if Command::new("nginx").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is not installed (.ci/run installs it)"
        );
        eprintln!("SKIPPED through_nginx_over_https: nginx is not installed");
        return;
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
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |p: &str| format!("{public}{p}");

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
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/metrics", "/docs", "/redoc", "/openapi.json"] {
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
