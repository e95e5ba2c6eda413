//! Batch ZIP downloads (API.md §4.5): archives that Python's zipfile, `unzip -t`,
//! libarchive's `bsdtar` and Java's `ZipInputStream` open, with exact lengths, ranges,
//! If-Range, restarts, expiry, HEAD and compression.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

fn tool(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tools")
        .join(path)
}

/// Runs a checker; `None` (with a note) when the tool is not installed here.
fn run(cmd: &mut Command) -> Option<String> {
    let name = format!("{cmd:?}");
    match cmd.output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{name} failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name}: not installed (CI must install it)"
            );
            eprintln!("SKIPPED {name}: not installed");
            None
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// Opens the archive with every reader; returns Python's (name, size, sha256) list.
pub(crate) fn check_all_readers(zip: &Path) -> Vec<(String, usize, String)> {
    let py = run(Command::new("python3").arg(tool("zipcheck.py")).arg(zip)).unwrap();
    run(Command::new("unzip").arg("-t").arg(zip));
    if let Some(list) = run(Command::new("bsdtar").arg("-tf").arg(zip)) {
        let py_names: Vec<&str> = py.lines().map(|l| l.split('\t').next().unwrap()).collect();
        assert_eq!(list.lines().collect::<Vec<_>>(), py_names);
    }
    if let Some(java) = run(Command::new("java").arg(tool("ZipCheck.java")).arg(zip)) {
        let py_rows: Vec<(String, String)> = py
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f[0].to_owned(), f[1].to_owned())
            })
            .collect();
        let java_rows: Vec<(String, String)> = java
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f[0].to_owned(), f[1].to_owned())
            })
            .collect();
        assert_eq!(java_rows, py_rows, "ZipInputStream reads the same entries");
    }
    py.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[1].parse().unwrap(), f[2].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn archives_open_everywhere_with_exact_length_and_ranges() {
    if fs_only("sidecars edited by hand in UPLOAD_ROOT (hostile names, a file without one)") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-service-root"),
        root.path(),
    );
    let app = spawn_app_with(&[("UPLOAD_ROOT", root.path().to_str().unwrap())]).await;
    let a = pattern(300_000, 1);
    let ka = app
        .as_service()
        .acting_for("u1")
        .upload_file("a.bin", None, &a)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let kb = app
        .as_service()
        .acting_for("u1")
        .upload_file("a.bin", Some("other"), b"second a")
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Sidecars with hostile original names.
    let kc = app
        .as_service()
        .acting_for("u1")
        .upload_file("c.txt", None, b"passwd?")
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let kd = app
        .as_service()
        .acting_for("u1")
        .upload_file("d.txt", None, b"windows")
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for (k, name) in [(&kc, "../../etc/passwd"), (&kd, "C:\\x\\y")] {
        let p = root.path().join(format!("{k}.meta"));
        let mut m: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        m["original_name"] = json!(name);
        std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
    }
    // An old file without crc32 in its sidecar, and the one without any sidecar.
    let old = "storage/user123/documents/7b897611_Résumé été.pdf";
    let hand = "storage/user123/legacy/placed-by-hand.png";
    let token = app
        .as_service()
        .batch_token(json!({ "keys": [ka, kb, kc, kd, old, hand, ka] }))
        .await;
    // The missing CRC was recorded.
    let m: Value =
        serde_json::from_slice(&std::fs::read(root.path().join(format!("{old}.meta"))).unwrap())
            .unwrap();
    assert!(m["crc32"].is_u64(), "{m}");

    let res = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/zip");
    assert_eq!(h["accept-ranges"], "bytes");
    let cd = h["content-disposition"].to_str().unwrap();
    assert!(
        cd.starts_with("attachment; filename=batch_download_") && cd.ends_with(".zip"),
        "{cd}"
    );
    let length: usize = h["content-length"].to_str().unwrap().parse().unwrap();
    let etag = h["etag"].to_str().unwrap().to_owned();
    let body = res.bytes().await.unwrap();
    assert_eq!(body.len(), length);
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("a.zip");
    std::fs::write(&zip, &body).unwrap();
    let entries = check_all_readers(&zip);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names[0], "a.bin");
    assert_eq!(names[1], "a_1.bin");
    assert_eq!(names[6], "a_2.bin");
    // Hostile original names keep only their last segment.
    assert_eq!(names[2], "passwd");
    assert_eq!(names[3], "y");
    for n in &names {
        assert!(
            !n.contains('/') && !n.contains('\\') && !n.starts_with('.'),
            "{n}"
        );
    }
    assert_eq!(names[4], "Résumé été.pdf");
    assert_eq!(entries[0].2, sha_hex(&a));
    assert_eq!(entries[1].2, sha_hex(b"second a"));
    assert_eq!(entries[4].1, 5009);
    assert_eq!(entries[5].1, 208);

    // A range in the middle of an entry, and one over the central directory.
    for (start, end) in [(1000usize, 200_000usize), (length - 300, length - 1)] {
        let res = app
            .get(&format!("/v1/files/batch-download/{token}"))
            .header("range", format!("bytes={start}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            res.headers()["content-range"],
            format!("bytes {start}-{end}/{length}").as_str()
        );
        assert_eq!(res.bytes().await.unwrap(), body[start..=end]);
    }
    // If-Range: the current ETag gives the range, a stale one the whole archive.
    let res = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .header("range", "bytes=0-9")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    let res = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), length);
    // HEAD: the same headers, no body.
    let res = app
        .request(Method::HEAD, &format!("/v1/files/batch-download/{token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-length"], length.to_string().as_str());
    // A deleted file is left out before the response starts.
    send(
        app.request(Method::DELETE, &format!("/v1/files/{kb}"))
            .as_service(),
    )
    .await;
    let body2 = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&zip, &body2).unwrap();
    assert_eq!(check_all_readers(&zip).len(), 6);
}

#[tokio::test]
async fn tokens_validate_survive_restarts_and_expire() {
    let app = spawn_app_with(&[("BATCH_TOKEN_TTL", "2")]).await;
    let k = app
        .as_service()
        .acting_for("u1")
        .upload_file("one.txt", None, b"hello")
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // 1 to 1000 keys, checked first; each must exist and be the caller's.
    let (s, _) = send(
        app.post("/v1/files/batch-download")
            .as_service()
            .json(&json!({ "keys": [] })),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let many: Vec<String> = (0..1001).map(|i| format!("storage/u1/{i}")).collect();
    let (s, _) = send(
        app.post("/v1/files/batch-download")
            .as_service()
            .json(&json!({ "keys": many })),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let missing = "storage/u1/00000000_none.txt";
    expect(
        app.post("/v1/files/batch-download")
            .as_service()
            .json(&json!({ "keys": [k, missing] })),
        StatusCode::NOT_FOUND,
        json!({ "detail": format!("File not found: {missing}") }),
    )
    .await;
    let bob = app.user_token("bob");
    assert_eq!(
        send(
            app.post("/v1/files/batch-download")
                .bearer(&bob)
                .json(&json!({ "keys": [k] }))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let u1 = app.user_token("u1");
    let (s, b) = send(
        app.post("/v1/files/batch-download")
            .bearer(&u1)
            .json(&json!({ "keys": [k] })),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let token = b["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 22, "at least 122 random bits: {token}");
    // One file: {stem}_{timestamp}.zip.
    let res = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .send()
        .await
        .unwrap();
    let cd = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cd.starts_with("attachment; filename=one_") && cd.ends_with(".zip"),
        "{cd}"
    );
    // Another app on the same root (a restart, or a second instance) honours the token.
    let app2 = spawn_app_with(&[
        ("UPLOAD_ROOT", app.root.path().to_str().unwrap()),
        ("BATCH_TOKEN_TTL", "2"),
    ])
    .await;
    assert_eq!(
        app2.get(&format!("/v1/files/batch-download/{token}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Unknown and expired tokens: 404.
    assert_eq!(
        app.get("/v1/files/batch-download/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/files/batch-download/..%2F.signing_key")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(
        app.get(&format!("/v1/files/batch-download/{token}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn compressed_archives() {
    let app = spawn_app().await;
    let text = "the same words again and again "
        .repeat(20_000)
        .into_bytes();
    let kt = app
        .as_service()
        .acting_for("u1")
        .upload_file("words.txt", None, &text)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let img = pattern(50_000, 3);
    let ki = app
        .as_service()
        .acting_for("u1")
        .upload_file("photo.jpg", None, &img)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = app
        .as_service()
        .batch_token(json!({ "keys": [kt, ki], "compress": true }))
        .await;
    let res = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .header("range", "bytes=0-10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "no ranges on a compressed archive"
    );
    assert!(res.headers().get("content-length").is_none());
    assert!(res.headers().get("accept-ranges").is_none());
    let body = res.bytes().await.unwrap();
    assert!(
        body.len() < text.len() / 10 + img.len() + 1000,
        "{}",
        body.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("c.zip");
    std::fs::write(&zip, &body).unwrap();
    let entries = check_all_readers(&zip);
    assert_eq!(
        entries[0],
        ("words.txt".to_owned(), text.len(), sha_hex(&text))
    );
    assert_eq!(
        entries[1],
        ("photo.jpg".to_owned(), img.len(), sha_hex(&img))
    );
}

#[tokio::test]
async fn a_file_swapped_for_a_symlink_is_never_read_into_an_archive() {
    if fs_only("a symlink planted in UPLOAD_ROOT") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let app = spawn_app_with(&[("UPLOAD_ROOT", root.path().to_str().unwrap())]).await;
    let ka = app
        .as_service()
        .acting_for("u1")
        .upload_file("a.txt", None, b"public!")
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let kb = app
        .as_service()
        .acting_for("u1")
        .upload_file("b.txt", None, b"kept")
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = app
        .as_service()
        .batch_token(json!({ "keys": [ka, kb] }))
        .await;
    // Something outside storage/ of the same size, and the first file replaced by a link to it.
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, b"SECRET!").unwrap();
    let data = root.path().join(&ka);
    std::fs::remove_file(&data).unwrap();
    std::os::unix::fs::symlink(&secret, &data).unwrap();
    let res = app
        .get(&format!("/v1/files/batch-download/{token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.bytes().await.unwrap();
    assert!(
        !body.windows(7).any(|w| w == b"SECRET!"),
        "the archive read through a symlink"
    );
    assert!(body.windows(4).any(|w| w == b"kept"));
}

/// On either backend: the archive's length is exact, any range is that slice of the whole,
/// and every entry holds the bytes uploaded (s3: read from the bucket by ranges).
#[tokio::test]
async fn any_backend_streams_exact_archives_and_ranges() {
    let app = spawn_app().await;
    let big: Vec<u8> = (0..6 * 1024 * 1024 + 7)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let files: [(&str, Vec<u8>); 3] = [
        ("a.txt", b"alpha".to_vec()),
        ("big.bin", big),
        ("empty.txt", Vec::new()),
    ];
    let mut keys = Vec::new();
    for (name, data) in &files {
        let done = app
            .as_service()
            .acting_for("z1")
            .upload_file(name, None, data)
            .await;
        keys.push(done["key"].as_str().unwrap().to_owned());
    }
    let token = app.as_service().batch_token(json!({ "keys": keys })).await;
    let path = format!("/v1/files/batch-download/{token}");
    let res = app.get(&path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let length: u64 = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let whole = res.bytes().await.unwrap();
    assert_eq!(whole.len() as u64, length);
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("all.zip");
    std::fs::write(&zip, &whole).unwrap();
    let mut listed = check_all_readers(&zip);
    listed.sort();
    let mut want: Vec<(String, usize, String)> = files
        .iter()
        .map(|(n, d)| {
            use sha2::Digest as _;
            (
                (*n).to_owned(),
                d.len(),
                hex::encode(sha2::Sha256::digest(d)),
            )
        })
        .collect();
    want.sort();
    assert_eq!(listed, want);
    for (from, to) in [(0u64, 99u64), (1000, 5_000_000), (length - 30, length - 1)] {
        let res = app
            .get(&path)
            .header("range", format!("bytes={from}-{to}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
        let part = res.bytes().await.unwrap();
        assert_eq!(&part[..], &whole[from as usize..=to as usize]);
    }
}
