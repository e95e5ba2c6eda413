//! A server killed with SIGKILL in the middle of a complete leaves either the finished
//! file with its sidecar or nothing visible, and after a restart the session or the file is
//! there and consistent (issue: uploads, "Crash").

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::*;

const SIZE: usize = 200 * 1024 * 1024;
const PART: usize = 8 * 1024 * 1024;

/// The binary's settings over `root`, on any free port.
fn env(root: &str) -> Vec<(&str, &str)> {
    vec![
        ("UPLOAD_ROOT", root),
        ("PORT", "0"),
        ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN),
        ("UPLOAD_SIGNING_KEY", SIGNING_KEY),
        ("RUST_LOG", "warn"),
    ]
}

async fn call(http: &reqwest::Client, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let _ = http;
    let res = req
        .header("x-service-token", SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// One round: upload 200 MB in parts, start the complete, SIGKILL after `delay` (never, with
/// `None`: then the time the complete took is returned), restart, and check what is there.
async fn kill_during_complete(delay: Option<Duration>) -> (&'static str, Duration) {
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap().to_owned();
    let mut server = start_server(&env(&root_s), &[]).await;
    let http = client();
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    let sha = sha_hex(&data);
    let (s, init) = call(
        &http,
        http.post(server.url("/v1/files/init")).json(&json!({
            "mode": "chunked", "files": [{ "name": "big.bin", "size": SIZE }], "meta": { "user_id": "crash" }
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let id = init["uploadId"].as_str().unwrap().to_owned();
    for (n, chunk) in data.chunks(PART).enumerate() {
        let (s, b) = call(
            &http,
            http.put(server.url(&format!("/v1/files/part/{id}/{n}")))
                .body(chunk.to_vec()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let req = http
        .post(server.url("/v1/files/complete"))
        .header("x-service-token", SERVICE_TOKEN)
        .json(&json!({ "uploadId": id, "sha256": sha }));
    let started = std::time::Instant::now();
    let pending = tokio::spawn(async move { req.send().await.map(|r| r.status()) });
    let answered = match delay {
        Some(delay) => {
            tokio::time::sleep(delay).await;
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            pending.await.unwrap().ok()
        }
        None => {
            let status = pending.await.unwrap().ok();
            assert_eq!(status, Some(StatusCode::OK));
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            status
        }
    };
    let took = started.elapsed();

    // Before any restart: nothing partial is visible in storage/.
    let storage = root.path().join("storage");
    // (A sidecar alone may be there for the instant between its rename and the data's: it
    // is never listed or served, and the restart removes it.)
    let visible: Vec<String> = files_under(&storage)
        .into_iter()
        .filter(|f| !f.ends_with(".meta"))
        .collect();
    assert!(visible.len() <= 1, "{visible:?}");
    if visible.len() == 1 {
        assert!(
            storage.join(format!("{}.meta", visible[0])).exists(),
            "data without its sidecar"
        );
        assert_eq!(
            std::fs::metadata(storage.join(&visible[0])).unwrap().len() as usize,
            SIZE
        );
    }

    let server = start_server(&env(&root_s), &[]).await;
    let (s, list) = call(&http, http.get(server.url("/v1/files/all?user_id=crash"))).await;
    assert_eq!(s, StatusCode::OK);
    let files = list["files"].as_array().unwrap().clone();
    let outcome = if files.is_empty() {
        assert_ne!(
            answered,
            Some(StatusCode::OK),
            "a 200 was sent but the file is gone"
        );
        // The session came back whole: it completes now.
        let (s, st) = call(
            &http,
            http.get(server.url(&format!("/v1/files/uploads/{id}"))),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{st}");
        assert_eq!(st["receivedBytes"], SIZE);
        let (s, done) = call(
            &http,
            http.post(server.url("/v1/files/complete"))
                .json(&json!({ "uploadId": id, "sha256": sha })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{done}");
        "session recovered"
    } else {
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0]["size"], SIZE);
        let (s, _) = call(
            &http,
            http.get(server.url(&format!("/v1/files/uploads/{id}"))),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        "file published"
    };
    let key = {
        let (_, list) = call(&http, http.get(server.url("/v1/files/all?user_id=crash"))).await;
        list["files"][0]["key"].as_str().unwrap().to_owned()
    };
    let stored = std::fs::read(root.path().join(&key)).unwrap();
    assert_eq!(sha_hex(&stored), sha);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(root.path().join(format!("{key}.meta"))).unwrap())
            .unwrap();
    assert_eq!(meta["sha256"], sha);
    // Exactly the file and its sidecar; no claimed session or temporary file left.
    assert_eq!(files_under(&storage).len(), 2);
    let parts_left: Vec<String> = files_under(&root.path().join(".parts"));
    assert!(parts_left.is_empty(), "{parts_left:?}");
    (outcome, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_complete() {
    // First a complete that is let finish, to learn how long one takes here; then kills
    // early, in the middle, and at the very end of that time (around the publish).
    let (_, full) = kill_during_complete(None).await;
    let mut outcomes = Vec::new();
    for fraction in [0.1, 0.7, 0.97, 1.0] {
        let delay = full.mul_f64(fraction);
        outcomes.push((delay, kill_during_complete(Some(delay)).await.0));
    }
    eprintln!("complete took {full:?}; crash outcomes: {outcomes:?}");
}

// ---------------------------------------------------------------------------------------
// Regressions for what the crash bench found (bench/RESULTS.md, bugs 5 and 7; ledger
// temporaries).

/// `bench/lib/killpoint.c` built once: an `LD_PRELOAD` shim that SIGKILLs the server at
/// one exact filesystem call (`KP_OP`, `KP_PATTERN`, `KP_AFTER`, `KP_LOG`).
fn killpoint_shim() -> &'static std::path::Path {
    static SHIM: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    let (_, path) = SHIM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("killpoint.so");
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/lib/killpoint.c");
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("a C compiler (cc) is needed to build the kill-point shim");
        assert!(status.success(), "cc failed on {}", src.display());
        (dir, out)
    });
    path
}

/// Regression (bug 5): a finished complete deleted its `.claimed-{id}` folder in place. A
/// kill in the middle of that delete, once `publish.json` was gone, left a claimed folder
/// that the restart took for a complete cut short and gave back as a live session: the
/// client, whose 200 was lost, could complete it again and get a second copy (or, when
/// `session.json` went first, the parts stayed until the TTL). Now the folder is renamed
/// away first, so no step removes `publish.json` from a folder still named `.claimed-*`:
/// the kill point below never fires, and nothing comes back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_a_finished_complete_cleans_up_gives_no_second_copy() {
    for parts in [1usize, 3] {
        let root = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let kp_log = logs.path().join("killpoint.log");
        let root_s = root.path().to_str().unwrap().to_owned();
        let mut vars = env(&root_s);
        let shim = killpoint_shim().to_str().unwrap().to_owned();
        let kp_log_s = kp_log.to_str().unwrap().to_owned();
        vars.extend([
            ("LD_PRELOAD", shim.as_str()),
            ("KP_OP", "unlink"),
            ("KP_PATTERN", "*/.parts/.claimed-*/publish.json"),
            ("KP_AFTER", "1"),
            ("KP_LOG", kp_log_s.as_str()),
        ]);
        let mut server = start_server(&vars, &[]).await;
        let http = client();
        let part = 1000usize;
        let (s, init) = call(
            &http,
            http.post(server.url("/v1/files/init")).json(&json!({
                "mode": "chunked", "files": [{ "name": "once.bin", "size": part * parts }],
                "meta": { "user_id": "kp" }
            })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{init}");
        let id = init["uploadId"].as_str().unwrap().to_owned();
        for n in 0..parts {
            let (s, b) = call(
                &http,
                http.put(server.url(&format!("/v1/files/part/{id}/{n}")))
                    .body(vec![b'a' + n as u8; part]),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        let completed = http
            .post(server.url("/v1/files/complete"))
            .header("x-service-token", SERVICE_TOKEN)
            .json(&json!({ "uploadId": id }))
            .send()
            .await
            .map(|r| r.status());
        // A crash right after, whatever happened.
        let _ = server.child.kill();
        server.child.wait().unwrap();

        let server = start_server(&env(&root_s), &[]).await;
        let (s, list) = call(&http, http.get(server.url("/v1/files/all?user_id=kp"))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["total_count"], 1, "{parts} part(s): {list}");
        let (s, b) = call(
            &http,
            http.get(server.url(&format!("/v1/files/uploads/{id}"))),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{parts} part(s): session back: {b}"
        );
        let (s, b) = call(
            &http,
            http.post(server.url("/v1/files/complete"))
                .json(&json!({ "uploadId": id })),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{parts} part(s): completed again: {b}"
        );
        let left = files_under(&root.path().join(".parts"));
        assert!(left.is_empty(), "{parts} part(s): left in .parts: {left:?}");
        // The order that makes it so, and the answer the client got.
        assert!(
            !kp_log.exists(),
            "{parts} part(s): publish.json was removed from a folder still named .claimed-*: {}",
            std::fs::read_to_string(&kp_log).unwrap_or_default()
        );
        assert_eq!(completed.ok(), Some(StatusCode::OK), "{parts} part(s)");
    }
}

/// The quota ledger of `user` under `root` (null before it exists).
fn ledger(root: &std::path::Path, user: &str) -> Value {
    let stem = hex::encode(&Sha256::digest(user.as_bytes())[..16]);
    match std::fs::read(root.join(".quota").join(format!("{stem}.json"))) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => panic!("{e}"),
    }
}

/// Regression (bug 7): a one-request upload reserves quota as its bytes arrive. Killed, it
/// left that reservation in the ledger: the start-up recount keeps it while the work folder
/// is young (another instance may own it), and the later sweep removed the folder without
/// releasing it, so it held until the hourly recount, and a small quota answered 413 to
/// uploads that fit. The sweep now releases it with the folder (the folder names its owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_one_request_upload_gives_its_reservation_back_with_its_folder() {
    use tokio::io::AsyncWriteExt as _;
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap().to_owned();
    let mut vars = env(&root_s);
    // A 10.7 MB quota; sweeps every 1.8 s.
    vars.extend([
        ("PER_USER_QUOTA_GB", "0.01"),
        ("UPLOAD_SESSION_TTL_HOURS", "0.002"),
    ]);
    let mut server = start_server(&vars, &[]).await;
    let mut sock = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /v1/files/upload?user_id=q&filename=cut.bin HTTP/1.1\r\nHost: x\r\n\
         X-Service-Token: {SERVICE_TOKEN}\r\nContent-Length: 5000000\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&[7u8; 1024]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ledger(root.path(), "q")["reserved"]
        .as_object()
        .is_none_or(|r| r.is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "no reservation made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(sock);
    let work: Vec<_> = std::fs::read_dir(root.path().join(".parts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".upload-")
        })
        .collect();
    assert_eq!(work.len(), 1, "{work:?}");
    // 55 s old: the start-up sweep leaves it (under a minute), a sweep seconds later does not.
    std::fs::File::open(&work[0])
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(55))
        .unwrap();

    let mut env2 = env(&root_s);
    env2.extend([
        ("PER_USER_QUOTA_GB", "0.01"),
        ("UPLOAD_SESSION_TTL_HOURS", "0.002"),
    ]);
    let server = start_server(&env2, &[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while work[0].exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead upload's folder is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let l = ledger(root.path(), "q");
    assert_eq!(l["reserved"], json!({}), "{l}");
    // And a file that fits the quota is taken.
    let http = client();
    let (s, b) = call(
        &http,
        http.post(server.url("/v1/files/upload?user_id=q&filename=fits.bin"))
            .body(vec![1u8; 4_000_000]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// A kill while a quota ledger was being saved left `.quota/.{stem}.{uuid}.tmp` for good
/// (11 after one crash run); the start-up sweep removes those no writer holds.
#[tokio::test]
async fn temporary_ledgers_left_by_a_kill_are_removed_at_start() {
    let root = tempfile::tempdir().unwrap();
    let quota = root.path().join(".quota");
    std::fs::create_dir_all(&quota).unwrap();
    let stem = hex::encode(&Sha256::digest(b"u")[..16]);
    let stale = quota.join(format!(".{stem}.0123456789abcdef0123456789abcdef.tmp"));
    std::fs::write(&stale, br#"{"user_id":"u","us"#).unwrap();
    let app = spawn_app_with(&[("UPLOAD_ROOT", root.path().to_str().unwrap())]).await;
    assert!(!stale.exists(), "{} is still there", stale.display());
    let (s, _) = send(app.get("/v1/files/all?user_id=u").as_service()).await;
    assert_eq!(s, StatusCode::OK);
}

/// Starts the server with the kill-point shim armed: SIGKILL at the `op` call on a path
/// matching `pattern` (not `exclude`), before the call runs; the shim logs to `kp_log`.
async fn start_with_killpoint(
    root: &str,
    op: &str,
    pattern: &str,
    exclude: &str,
    kp_log: &std::path::Path,
) -> Server {
    let shim = killpoint_shim().to_str().unwrap().to_owned();
    let kp_log_s = kp_log.to_str().unwrap().to_owned();
    let mut vars = env(root);
    vars.extend([
        ("LD_PRELOAD", shim.as_str()),
        ("KP_OP", op),
        ("KP_PATTERN", pattern),
        ("KP_EXCLUDE", exclude),
        ("KP_LOG", kp_log_s.as_str()),
    ]);
    start_server(&vars, &[]).await
}

/// The request was cut by the kill point, which left exactly one lone sidecar (the case
/// under test); a restart removes it.
async fn killed_with_one_lone_sidecar(
    server: &mut Server,
    answer: &Result<reqwest::Response, reqwest::Error>,
    kp_log: &std::path::Path,
    root: &std::path::Path,
) {
    server.child.wait().unwrap();
    assert!(answer.is_err(), "answered although killed: {answer:?}");
    assert!(kp_log.exists(), "the kill point was not reached");
    let lone = lone_sidecars(&root.join("storage"));
    assert_eq!(lone.len(), 1, "the case under test: {lone:?}");
    restart_and_check_no_lone_sidecar(root).await;
}

/// The sidecars under `storage` whose data file is missing.
fn lone_sidecars(storage: &std::path::Path) -> Vec<String> {
    let files = files_under(storage);
    files
        .iter()
        .filter(|f| {
            f.strip_suffix(".meta")
                .is_some_and(|data| !files.iter().any(|g| g == data))
        })
        .cloned()
        .collect()
}

/// Restarts the server on `root` without the shim, and checks the user `kp` has no file:
/// none listed, no lone sidecar on disk, a ledger that counts nothing.
async fn restart_and_check_no_lone_sidecar(root: &std::path::Path) {
    let root_s = root.to_str().unwrap().to_owned();
    let server = start_server(&env(&root_s), &[]).await;
    let http = client();
    let storage = root.join("storage");
    let lone = lone_sidecars(&storage);
    assert!(lone.is_empty(), "lone sidecars after the restart: {lone:?}");
    let (s, list) = call(&http, http.get(server.url("/v1/files/all?user_id=kp"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["total_count"], 0, "{list}");
    let left = files_under(&storage);
    assert!(left.is_empty(), "left in storage/: {left:?}");
    assert_eq!(ledger(root, "kp")["used"], 0);
}

/// Regression (kill points "one-request upload: before data into storage/" and "delete:
/// between data and sidecar unlinks"): a publish renames the sidecar into place, then the
/// data; a delete hides the data, then unlinks the sidecar. A kill between the two left a
/// sidecar without data, never served or listed, which the start-up recount kept while
/// under a minute old (for a publish of another instance between its renames) and so left
/// until the hourly recount. Both steps run under the user's ledger lock, which the recount
/// holds too: a lone sidecar it sees is a crash's, and is removed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_sidecar_and_data_leaves_no_lone_sidecar_after_a_restart() {
    let http = client();
    let data = vec![7u8; 5000];

    // A one-request upload killed before its data is renamed into place.
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap().to_owned();
    let logs = tempfile::tempdir().unwrap();
    let kp_log = logs.path().join("upload.log");
    let mut server =
        start_with_killpoint(&root_s, "rename", "*/storage/*", "*.meta", &kp_log).await;
    let answer = http
        .post(server.url("/v1/files/upload?user_id=kp&filename=cut.bin"))
        .header("x-service-token", SERVICE_TOKEN)
        .body(data.clone())
        .send()
        .await;
    killed_with_one_lone_sidecar(&mut server, &answer, &kp_log, root.path()).await;

    // A delete killed after hiding the data, before unlinking the sidecar.
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap().to_owned();
    let kp_log = logs.path().join("delete.log");
    let mut server = start_with_killpoint(&root_s, "unlink", "*/storage/*.meta", "", &kp_log).await;
    let (s, up) = call(
        &http,
        http.post(server.url("/v1/files/upload?user_id=kp&filename=doomed.bin"))
            .body(data.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{up}");
    let key = up["files"][0]["key"].as_str().unwrap().to_owned();
    let answer = http
        .delete(server.url(&format!("/v1/files/{key}")))
        .header("x-service-token", SERVICE_TOKEN)
        .send()
        .await;
    killed_with_one_lone_sidecar(&mut server, &answer, &kp_log, root.path()).await;
}
