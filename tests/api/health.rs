//! Service endpoints without auth (API.md §5): `/` and the health checks, healthy and not.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    fs_only, mount_tmpfs, run_args_to_exit, send, spawn_app, spawn_app_with, CloudBackend, TestApp,
};

const HEALTH_PATHS: [&str; 2] = ["/healthz", "/v1/files/healthz"];

/// The body with `disk_free_gb` checked (a number, at least 0) and taken out.
fn without_free_space(mut body: Value) -> Value {
    let free = body
        .as_object_mut()
        .and_then(|o| o.remove("disk_free_gb"))
        .unwrap_or_else(|| panic!("no disk_free_gb in {body}"));
    assert!(
        free.as_f64().is_some_and(|gb| gb >= 0.0),
        "disk_free_gb is {free}"
    );
    body
}

#[tokio::test]
async fn root_describes_the_service() {
    let app = spawn_app().await;
    let (status, body) = send(app.get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "service": "Stream-Line Upload Server",
            "version": env!("CARGO_PKG_VERSION"),
            "status": "running",
        })
    );
}

#[tokio::test]
async fn health_is_healthy_on_a_writable_root() {
    let app = spawn_app().await;
    for path in HEALTH_PATHS {
        let (status, body) = send(app.get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(
            without_free_space(body),
            json!({ "status": "healthy", "writable": true }),
            "{path}"
        );
    }
    // The probe leaves nothing behind in the root.
    let left: Vec<String> = std::fs::read_dir(app.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("health"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

async fn assert_unhealthy(app: &TestApp, why: &str) {
    for path in HEALTH_PATHS {
        let (status, body) = send(app.get(path)).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{why}, {path}: {body}"
        );
        assert_eq!(
            without_free_space(body),
            json!({ "status": "unhealthy", "writable": false }),
            "{why}, {path}"
        );
    }
}

#[tokio::test]
async fn health_is_unhealthy_when_the_root_is_gone() {
    if fs_only("UPLOAD_ROOT replaced by a file") {
        return;
    }
    let app = spawn_app().await;
    let root = app.root.path().to_owned();
    // Root ignores permission bits, so replace the directory by a plain file instead.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();

    assert_unhealthy(&app, "root replaced by a file").await;

    // Restored, the service is healthy again without a restart.
    std::fs::remove_file(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    let (status, body) = send(app.get("/healthz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A root that refuses writes is unhealthy: by mode 0500 where permission bits stop the
/// test's user, and by a read-only mount, which stops root too (CI runs as root).
#[tokio::test]
async fn health_is_unhealthy_on_a_read_only_root() {
    if fs_only("UPLOAD_ROOT on a read-only mount") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let app = spawn_app().await;
    let root = app.root.path().to_owned();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Permission bits do not stop root (CAP_DAC_OVERRIDE): then only the mount below counts.
    let canary = root.join("canary");
    if std::fs::write(&canary, b"x").is_ok() {
        std::fs::remove_file(&canary).unwrap();
        eprintln!("mode 0500 does not stop this user: only the read-only mount is tested");
    } else {
        assert_unhealthy(&app, "root mode 0500").await;
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();

    // A read-only mount refuses every writer, root included.
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = mount_tmpfs(dir.path(), "1m", "health_is_unhealthy_on_a_read_only_root")
    else {
        return;
    };
    let app = spawn_app_with(&[("UPLOAD_ROOT", dir.path().to_str().unwrap())]).await;
    let (status, body) = send(app.get("/healthz")).await;
    assert_eq!(status, StatusCode::OK, "before the remount: {body}");
    tmpfs.remount("ro");
    assert!(
        std::fs::write(dir.path().join("canary"), b"x").is_err(),
        "the read-only mount took a write"
    );

    assert_unhealthy(&app, "root on a read-only mount").await;

    // Writable again, healthy again without a restart.
    tmpfs.remount("rw");
    let (status, body) = send(app.get("/healthz")).await;
    assert_eq!(status, StatusCode::OK, "after the remount: {body}");
}

/// A full disk leaves the instance healthy (reads, listings and deletes still work; uploads
/// answer 507), and says so with `disk_full`. A 1 MiB tmpfs as the root: needs mount rights
/// (root in CI).
#[tokio::test]
async fn health_stays_healthy_on_a_full_disk_and_says_so() {
    if fs_only("a full tmpfs as UPLOAD_ROOT") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = mount_tmpfs(
        dir.path(),
        "1m",
        "health_stays_healthy_on_a_full_disk_and_says_so",
    ) else {
        return;
    };
    let app = spawn_app_with(&[("UPLOAD_ROOT", dir.path().to_str().unwrap())]).await;
    let filler = dir.path().join("filler");
    let full = std::fs::write(&filler, vec![0u8; 2 << 20]);
    assert_eq!(full.unwrap_err().raw_os_error(), Some(28), "not full");

    for path in HEALTH_PATHS {
        let (status, body) = send(app.get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(
            body,
            json!({ "status": "healthy", "disk_free_gb": 0.0, "writable": true, "disk_full": true }),
            "{path}"
        );
    }
    // Reads go on.
    let (status, _) = send(crate::helpers::As::as_service(
        app.get("/v1/files/all?user_id=u"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);

    std::fs::remove_file(&filler).unwrap();
    let (status, body) = send(app.get("/healthz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        without_free_space(body),
        json!({ "status": "healthy", "writable": true })
    );
}

/// STORAGE_BACKEND=s3 (whatever UPLOAD_TEST_BACKEND says): healthy while the database and
/// the bucket answer, 503 naming the one that does not; an unreachable backend at start
/// stops the server with one line naming it (exit 2), the password left out.
#[tokio::test]
async fn s3_health_names_the_backend_that_is_down() {
    let backend = CloudBackend::start().await;
    let root = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = backend.env();
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.push(("UPLOAD_ROOT", root.path().to_str().unwrap()));
    let app = spawn_app_with(&pairs).await;
    let (s, b) = send(app.get("/healthz")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "healthy");

    // The bucket goes away: 503, saying which.
    let CloudBackend { s3, db } = backend;
    drop(s3);
    let (s, b) = send(app.get("/healthz")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(b["unreachable"], "object storage", "{b}");

    // A database nobody listens on, at start: exit 2, one line naming DATABASE_URL.
    let port = crate::pg_server::free_port();
    let bad = format!("postgres://app:s3cret-pw@127.0.0.1:{port}/none");
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.retain(|(k, _)| *k != "DATABASE_URL");
    pairs.push(("DATABASE_URL", &bad));
    pairs.push(("UPLOAD_ROOT", root.path().to_str().unwrap()));
    pairs.push(("PORT", "0"));
    let (status, _, err) = run_args_to_exit(&pairs, &[], std::time::Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(2), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
    drop(db);
}
