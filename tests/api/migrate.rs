//! `upload-server migrate` and `upload-server reindex` through the real binary, against a
//! real S3 server (s3s-fs, `s3_server`) and a real PostgreSQL (`pg_server`): a root the old
//! service left (files without sidecars, non-ASCII names, `@` in a user id) copied byte for
//! byte, rows and usage right; reruns skip; interruptions finish; a corrupted file fails
//! alone; an unreachable database is named; the catalog rebuilt from the bucket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use upload_server::store::key::{Key, UserId};
use upload_server::store::pg::{FileRecord, PgCatalog, Usage};
use upload_server::store::read::meta_from;
use upload_server::store::s3::{S3Bytes, S3Config, DEFAULT_BUFFER_BUDGET};
use upload_server::store::sidecar::Meta;

use crate::helpers::{copy_dir, run_args_to_exit};
use crate::pg_server::{free_port, TestDb};
use crate::s3_server::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};

const PREFIX: &str = "tenant-a";
/// The mtime given to every file of the root: the row's date when the sidecar has none.
const MTIME: u64 = 1_764_000_000;

/// The large file added to the fixtures, written by the new service (its sidecar has a
/// date and a CRC-32): more than two parts of a multipart upload.
const BIG: &str = "storage/u2/clips/0a1b2c3d_big.bin";
const BIG_SIZE: usize = 11 * (1 << 20) + 5;
const BIG_CREATED: &str = "2025-06-01T12:00:00.250000Z";

/// The files of the root, as (key, path).
fn data_files(root: &Path) -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if !p.to_str().unwrap().ends_with(".meta") {
                let key = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                out.push((key, p));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join("storage"), root, &mut out);
    out.sort();
    out
}

/// `n` bytes without short repeats.
fn pattern(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A copy of the old service's root plus one large file of the new service, every file's
/// mtime set to [`MTIME`].
fn old_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("uploads");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-service-root"),
        &root,
    );
    let big = root.join(BIG);
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    let bytes = pattern(BIG_SIZE);
    std::fs::write(&big, &bytes).unwrap();
    let mut extra = serde_json::Map::new();
    extra.insert("folder".into(), "clips".into());
    let meta = Meta {
        original_name: "big.bin".into(),
        mime: "application/octet-stream".into(),
        sha256: Some(sha(&bytes)),
        crc32: Some(crc32fast::hash(&bytes)),
        user_id: "u2".into(),
        size: Some(BIG_SIZE as u64),
        created_at: Some(BIG_CREATED.into()),
        extra,
    };
    std::fs::write(Meta::path_for(&big), meta.to_json().unwrap()).unwrap();
    for (_, p) in data_files(&root) {
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME))
            .unwrap();
    }
    dir
}

/// Paths, bytes and mtimes of everything under `root`: what must not change.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, SystemTime)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                walk(&p, out);
            } else {
                out.insert(
                    p.clone(),
                    (std::fs::read(&p).unwrap(), md.modified().unwrap()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

/// The bucket, the database and the root a run uses.
struct Setup {
    s3: S3Server,
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        Self {
            s3: S3Server::start(),
            db: TestDb::new().await,
            dir: old_root(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("uploads")
    }

    fn env(&self, database_url: &str) -> Vec<(String, String)> {
        [
            ("STORAGE_BACKEND", "s3"),
            ("S3_ENDPOINT", self.s3.endpoint.as_str()),
            ("S3_BUCKET", BUCKET),
            ("S3_ACCESS_KEY_ID", ACCESS_KEY),
            ("S3_SECRET_ACCESS_KEY", SECRET_KEY),
            ("S3_PREFIX", PREFIX),
            ("DATABASE_URL", database_url),
            ("UPLOAD_ROOT", self.root().to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// Runs `upload-server ARGS` on this setup's database: (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_on(&self.db.url(), args).await
    }

    async fn run_on(&self, database_url: &str, args: &[&str]) -> (i32, String, String) {
        let env = self.env(database_url);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, out, err) = run_args_to_exit(&env, args, Duration::from_secs(120)).await;
        (status.code().unwrap_or(-1), out, err)
    }

    async fn bucket(&self) -> S3Bytes {
        S3Bytes::connect(&S3Config {
            endpoint: Some(self.s3.endpoint.clone()),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SecretString::from(SECRET_KEY),
            prefix: PREFIX.into(),
            path_style: true,
            allow_http: true,
            buffer_budget: DEFAULT_BUFFER_BUDGET,
        })
        .await
        .unwrap()
    }

    /// The object's file in s3s-fs's folder (its mtime says whether it was written again).
    fn object_file(&self, key: &str) -> PathBuf {
        self.s3.file(&format!("{PREFIX}/{key}"))
    }
}

async fn read_object(s3: &S3Bytes, key: &str) -> Option<Vec<u8>> {
    match s3.get_range(key, None).await {
        Ok(got) => {
            let chunks: Vec<bytes::Bytes> = got.stream.try_collect().await.unwrap();
            Some(chunks.concat())
        }
        Err(upload_server::store::s3::S3Error::NotFound) => None,
        Err(e) => panic!("{key}: {e}"),
    }
}

/// Every row of the catalog, by key.
async fn rows(catalog: &PgCatalog) -> BTreeMap<String, FileRecord> {
    let mut out = BTreeMap::new();
    for (key, _) in catalog.file_keys_after(None, 1000).await.unwrap() {
        let rec = catalog.file(&Key::parse(&key).unwrap()).await.unwrap();
        out.insert(key, rec);
    }
    out
}

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

/// What the users' ledgers must say for the files of `root` (all but `except`).
fn expected_usage(root: &Path, except: &[&str]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (key, path) in data_files(root) {
        if except.contains(&key.as_str()) {
            continue;
        }
        let owner = key.split('/').nth(1).unwrap().to_owned();
        let e = out.entry(owner).or_default();
        e.0 += std::fs::metadata(path).unwrap().len();
        e.1 += 1;
    }
    out
}

async fn assert_usage(catalog: &PgCatalog, expected: &BTreeMap<String, (u64, u64)>) {
    for (u, (used, files)) in expected {
        let usage = catalog.usage(&user(u)).await.unwrap();
        assert_eq!(
            usage,
            Usage {
                used: *used,
                files: *files,
                reserved: 0
            },
            "{u}"
        );
    }
}

/// The bucket holds every file of the root (but `except`) byte for byte, each beside its
/// sidecar: the root's own, or for a file without one the sidecar the server makes up.
async fn assert_bucket_mirrors_root(setup: &Setup, except: &[&str]) {
    let s3 = setup.bucket().await;
    for (key, path) in data_files(&setup.root()) {
        let object = read_object(&s3, &key).await;
        let sidecar = read_object(&s3, &format!("{key}.meta")).await;
        if except.contains(&key.as_str()) {
            assert_eq!(object, None, "{key}");
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(object.as_deref() == Some(&bytes[..]), "{key}: bytes differ");
        let mtime = DateTime::<Utc>::from(SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let want = match std::fs::read(Meta::path_for(&path)) {
            // An undated sidecar (the old service's) gets the file's mtime as its first
            // member, every other byte kept.
            Ok(text) if !String::from_utf8_lossy(&text).contains("\"created_at\"") => {
                let text = String::from_utf8(text).unwrap();
                text.replacen('{', &format!("{{\"created_at\": \"{mtime}\","), 1)
                    .into_bytes()
            }
            Ok(text) => text,
            Err(_) => {
                let mut meta = meta_from(None, &Key::parse(&key).unwrap());
                meta.sha256 = Some(sha(&bytes));
                meta.created_at = Some(mtime);
                meta.to_json().unwrap()
            }
        };
        assert_eq!(
            sidecar.map(String::from_utf8),
            Some(Ok(String::from_utf8(want).unwrap())),
            "{key}"
        );
    }
}

/// The catalog holds a right row for every file of the root (but `except`).
async fn assert_rows(setup: &Setup, catalog: &PgCatalog, except: &[&str]) {
    let rows = rows(catalog).await;
    let files = data_files(&setup.root());
    let want: Vec<&String> = files
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !except.contains(&k.as_str()))
        .collect();
    assert_eq!(rows.keys().collect::<Vec<_>>(), want);
    for (key, path) in &files {
        let Some(row) = rows.get(key) else { continue };
        let bytes = std::fs::read(path).unwrap();
        let k = Key::parse(key).unwrap();
        let sidecar = std::fs::read(Meta::path_for(path)).ok();
        let mut meta = meta_from(sidecar.as_deref(), &k);
        if sidecar.is_none() {
            meta.sha256 = Some(sha(&bytes));
        }
        // An undated sidecar is dated with the file's mtime, as the listings showed it.
        if meta.created_at.is_none() {
            let mtime = DateTime::<Utc>::from(SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME));
            meta.created_at = Some(mtime.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        }
        assert_eq!(row.size, bytes.len() as u64, "{key}");
        assert_eq!(row.sha256.as_deref(), Some(sha(&bytes).as_str()), "{key}");
        assert_eq!(row.crc32, Some(crc32fast::hash(&bytes)), "{key}");
        assert_eq!(row.mime, meta.mime, "{key}");
        let created = if *key == BIG {
            BIG_CREATED.parse::<DateTime<Utc>>().unwrap()
        } else {
            DateTime::<Utc>::from(SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME))
        };
        assert_eq!(row.created_at, created, "{key}");
        assert_eq!(row.meta, meta, "{key}");
    }
}

const PNG: &str = "storage/user123/legacy/placed-by-hand.png";
const CLIP: &str = "storage/alice@example.com/videos/91726cf7_clip.mp4";
const RESUME: &str = "storage/user123/documents/7b897611_Résumé été.pdf";
const NOTES: &str = "storage/alice@example.com/bab06353_notes.txt";

#[tokio::test]
async fn migrate_copies_an_old_service_root_byte_for_byte_and_a_rerun_skips_it_all() {
    let setup = Setup::new().await;
    let before = snapshot(&setup.root());

    let (code, out, err) = setup.run(&["migrate"]).await;

    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("migrate: 7 copied, 0 skipped, 0 failed;"),
        "{out}"
    );
    assert!(!err.contains("FAILED"), "{err}");
    assert_bucket_mirrors_root(&setup, &[]).await;
    let catalog = setup.db.catalog(2).await;
    assert_rows(&setup, &catalog, &[]).await;
    assert_usage(&catalog, &expected_usage(&setup.root(), &[])).await;
    // The file placed by hand got the sidecar the server makes up for it, with its hash.
    let png = catalog.file(&Key::parse(PNG).unwrap()).await.unwrap();
    assert_eq!(png.meta.original_name, "placed-by-hand.png");
    assert_eq!(png.mime, "image/png");
    assert_eq!(png.meta.sha256, png.sha256);
    // The answers the old service gave hold in the catalog.
    let answers: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-service-root.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for up in answers["uploads"].as_array().unwrap() {
        let row = catalog
            .file(&Key::parse(up["key"].as_str().unwrap()).unwrap())
            .await
            .unwrap();
        assert_eq!(row.size, up["size"].as_u64().unwrap());
        assert_eq!(row.sha256.as_deref(), up["sha256"].as_str());
        assert_eq!(row.mime, up["mime"].as_str().unwrap());
    }
    // UPLOAD_ROOT is only read.
    assert_eq!(snapshot(&setup.root()), before);

    // Again: all skipped, nothing written to the bucket or the catalog.
    let stamps: Vec<SystemTime> = data_files(&setup.root())
        .iter()
        .map(|(k, _)| {
            std::fs::metadata(setup.object_file(k))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    let (code, out, err) = setup.run(&["migrate"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("migrate: 0 copied, 7 skipped, 0 failed;"),
        "{out}"
    );
    let again: Vec<SystemTime> = data_files(&setup.root())
        .iter()
        .map(|(k, _)| {
            std::fs::metadata(setup.object_file(k))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    assert_eq!(stamps, again, "objects were written again");
    assert_rows(&setup, &catalog, &[]).await;
    assert_usage(&catalog, &expected_usage(&setup.root(), &[])).await;
    assert_eq!(snapshot(&setup.root()), before);
}

#[tokio::test]
async fn an_interrupted_migration_finishes_on_a_rerun() {
    let setup = Setup::new().await;
    let (code, _, err) = setup.run(&["migrate"]).await;
    assert_eq!(code, 0, "{err}");
    let catalog = setup.db.catalog(2).await;
    let s3 = setup.bucket().await;
    // Cut off at each step: after the data object (no sidecar, no row), after the sidecar
    // (no row), and a row whose object went missing.
    catalog
        .delete_file(&Key::parse(RESUME).unwrap())
        .await
        .unwrap();
    std::fs::remove_file(setup.object_file(&format!("{RESUME}.meta"))).unwrap();
    catalog
        .delete_file(&Key::parse(BIG).unwrap())
        .await
        .unwrap();
    std::fs::remove_file(setup.object_file(NOTES)).unwrap();

    let (code, out, err) = setup.run(&["migrate"]).await;

    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("migrate: 3 copied, 4 skipped, 0 failed;"),
        "{out}"
    );
    assert_bucket_mirrors_root(&setup, &[]).await;
    assert_rows(&setup, &catalog, &[]).await;
    assert_usage(&catalog, &expected_usage(&setup.root(), &[])).await;
    assert!(read_object(&s3, NOTES).await.is_some());
}

#[tokio::test]
async fn a_corrupted_file_is_reported_and_not_recorded_while_the_others_are() {
    let setup = Setup::new().await;
    let clip = setup.root().join(CLIP);
    let mut bytes = std::fs::read(&clip).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&clip, &bytes).unwrap();

    let (code, out, err) = setup.run(&["migrate"]).await;

    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("migrate: 6 copied, 0 skipped, 1 failed;"),
        "{out}"
    );
    let line = err
        .lines()
        .find(|l| l.contains("FAILED") && l.contains(CLIP))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("SHA-256 mismatch"), "{line}");
    assert!(line.contains(&sha(&bytes)), "{line}");
    assert_bucket_mirrors_root(&setup, &[CLIP]).await;
    let s3 = setup.bucket().await;
    assert_eq!(read_object(&s3, &format!("{CLIP}.meta")).await, None);
    let catalog = setup.db.catalog(2).await;
    assert_rows(&setup, &catalog, &[CLIP]).await;
    assert_usage(&catalog, &expected_usage(&setup.root(), &[CLIP])).await;

    // Still wrong on a rerun; the rest is skipped.
    let (code, out, _) = setup.run(&["migrate"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("migrate: 0 copied, 6 skipped, 1 failed;"),
        "{out}"
    );
}

#[tokio::test]
async fn an_unreachable_database_or_a_filesystem_backend_exits_2_with_one_line() {
    let setup = Setup::new().await;
    let url = format!(
        "postgres://migrator:pa55word@127.0.0.1:{}/uploads",
        free_port()
    );
    for command in ["migrate", "reindex"] {
        let (code, out, err) = setup.run_on(&url, &[command]).await;

        assert_eq!(code, 2, "{command}: stdout: {out}\nstderr: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(err.contains("127.0.0.1"), "{err}");
        assert!(!err.contains("pa55word"), "{err}");
    }
    assert!(data_files(&setup.dir.path().join("uploads")).len() == 7);

    // The filesystem backend is no target.
    let env = [("UPLOAD_ROOT", setup.root().to_str().unwrap().to_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, err) = run_args_to_exit(&env, &["migrate"], Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("STORAGE_BACKEND"), "{err}");
}

#[tokio::test]
async fn reindex_into_an_empty_database_rebuilds_the_rows_migrate_made() {
    let setup = Setup::new().await;
    let (code, _, err) = setup.run(&["migrate"]).await;
    assert_eq!(code, 0, "{err}");
    let migrated = rows(&setup.db.catalog(2).await).await;
    let empty = TestDb::new().await;

    let (code, out, err) = setup.run_on(&empty.url(), &["reindex"]).await;

    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("reindex: 7 added, 0 kept, 0 failed;"), "{out}");
    assert!(out.contains("0 rows without an object"), "{out}");
    assert!(!err.contains("WARN") && !err.contains("FAILED"), "{err}");
    let catalog = empty.catalog(2).await;
    let rebuilt = rows(&catalog).await;
    assert_eq!(
        rebuilt.keys().collect::<Vec<_>>(),
        migrated.keys().collect::<Vec<_>>()
    );
    let s3 = setup.bucket().await;
    let listed: BTreeMap<String, DateTime<Utc>> = s3
        .list_prefix("storage")
        .map_ok(|o| {
            let key = o
                .location
                .strip_prefix(&format!("{PREFIX}/"))
                .unwrap()
                .to_owned();
            // As PostgreSQL keeps it: microseconds.
            let date = DateTime::from_timestamp_micros(o.last_modified.timestamp_micros());
            (key, date.unwrap())
        })
        .try_collect()
        .await
        .unwrap();
    for (key, row) in &rebuilt {
        // Every row as migrate made it, its date too: an old sidecar without `created_at`
        // went to the bucket dated with the file's mtime, not left to the object's date.
        assert_eq!(row, &migrated[key], "{key}");
        assert_ne!(row.created_at, listed[key], "{key}: dated by its object");
    }
    assert_usage(&catalog, &expected_usage(&setup.root(), &[])).await;

    // Again: every row kept as it is.
    let (code, out, _) = setup.run_on(&empty.url(), &["reindex"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("reindex: 0 added, 7 kept, 0 failed;"), "{out}");
    assert_eq!(rows(&catalog).await, rebuilt);
}

#[tokio::test]
async fn reindex_prunes_rows_of_gone_objects_only_when_asked_and_makes_up_missing_sidecars() {
    let setup = Setup::new().await;
    let (code, _, err) = setup.run(&["migrate"]).await;
    assert_eq!(code, 0, "{err}");
    let catalog = setup.db.catalog(2).await;
    let s3 = setup.bucket().await;
    // A file deleted from the bucket behind the catalog's back.
    s3.delete(CLIP).await.unwrap();
    // A data object whose sidecar and row are gone.
    catalog
        .delete_file(&Key::parse(NOTES).unwrap())
        .await
        .unwrap();
    std::fs::remove_file(setup.object_file(&format!("{NOTES}.meta"))).unwrap();

    let (code, out, err) = setup.run(&["reindex"]).await;

    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("reindex: 1 added, 5 kept, 0 failed;"), "{out}");
    assert!(
        out.contains("1 rows without an object (--prune removes them)"),
        "{out}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.contains(NOTES) && l.contains("no sidecar")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.contains("WARN") && l.contains(CLIP)),
        "{err}"
    );
    assert!(catalog.file(&Key::parse(CLIP).unwrap()).await.is_ok());
    // The row of the object without a sidecar: made up from the name, hashed from the bytes.
    let notes = catalog.file(&Key::parse(NOTES).unwrap()).await.unwrap();
    let bytes = std::fs::read(setup.root().join(NOTES)).unwrap();
    assert_eq!(notes.meta, meta_from(None, &Key::parse(NOTES).unwrap()));
    assert_eq!(notes.sha256, Some(sha(&bytes)));
    assert_eq!(notes.crc32, Some(crc32fast::hash(&bytes)));
    assert_eq!(notes.mime, "text/plain");

    let (code, out, err) = setup.run(&["reindex", "--prune"]).await;

    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("reindex: 0 added, 6 kept, 0 failed;"), "{out}");
    assert!(out.contains("1 rows without an object pruned"), "{out}");
    assert!(catalog.file(&Key::parse(CLIP).unwrap()).await.is_err());
    assert_usage(&catalog, &expected_usage(&setup.root(), &[CLIP])).await;
    assert_eq!(rows(&catalog).await.len(), 6);
}

#[tokio::test]
async fn help_describes_both_commands_and_their_options_are_checked() {
    let (status, out, _) = run_args_to_exit(&[], &["--help"], Duration::from_secs(10)).await;
    assert!(status.success());
    assert!(
        out.contains("upload-server migrate [--env-file PATH]"),
        "{out}"
    );
    assert!(
        out.contains("upload-server reindex [--env-file PATH] [--prune]"),
        "{out}"
    );
    assert!(out.contains("\nmigrate: copies every file"), "{out}");
    assert!(out.contains("\nreindex: rebuilds"), "{out}");
    for args in [
        &["migrate", "--prune"][..],
        &["reindex", "--accept-new-secrets"],
    ] {
        let (status, _, err) = run_args_to_exit(&[], args, Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("unknown argument"), "{err}");
    }
}
