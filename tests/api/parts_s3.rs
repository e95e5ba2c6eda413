//! Three-step parts in S3 mode (issue #14), whatever UPLOAD_TEST_BACKEND says: parts of
//! 5 MiB and more sent in order go straight into one multipart upload per session and the
//! complete copies nothing; parts out of order, re-sent, small or with a wrong SHA-256 still
//! end in the right bytes; an abort or an expiry leaves no multipart upload and no object.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use upload_server::store::s3::{PartInfo, S3Bytes, S3Config, UploadId, DEFAULT_BUFFER_BUDGET};

use crate::helpers::*;
use crate::instances::instances;

const MIB: usize = 1 << 20;

/// Every object in the bucket (keys), as s3s-fs keeps them on disk.
fn objects(backend: &CloudBackend) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p: PathBuf = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let bucket = backend.s3.file("");
    let mut out = Vec::new();
    walk(&bucket, &bucket, &mut out);
    out.sort();
    out
}

/// The part objects (`parts/...`) in the bucket.
fn part_objects(backend: &CloudBackend) -> Vec<String> {
    objects(backend)
        .into_iter()
        .filter(|o| o.starts_with("parts/"))
        .collect()
}

/// The session's parts as the catalog has them: (number, in a multipart upload).
async fn part_rows(backend: &CloudBackend, id: &str) -> Vec<(i32, bool)> {
    let db = sqlx::PgPool::connect(&backend.db.url()).await.unwrap();
    sqlx::query_as(
        "SELECT number, etag IS NOT NULL FROM parts WHERE session_id = $1::uuid ORDER BY number",
    )
    .bind(id)
    .fetch_all(&db)
    .await
    .unwrap()
}

fn ok(res: (StatusCode, Value)) -> Value {
    assert_eq!(res.0, StatusCode::OK, "{}", res.1);
    res.1
}

async fn init(app: &TestApp, name: &str, size: usize) -> String {
    let init = app
        .as_service()
        .acting_for("u1")
        .init(json!([{ "name": name, "size": size }]), "chunked", None)
        .await;
    init["uploadId"].as_str().unwrap().to_owned()
}

async fn assert_served(app: &TestApp, done: &Value, data: &[u8]) {
    let key = done["key"].as_str().unwrap();
    let got = app.get(&format!("/{key}")).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let body = got.bytes().await.unwrap();
    assert_eq!(body.len(), data.len());
    assert!(body.as_ref() == data, "the stored bytes differ");
}

/// The file is served with `data`, and the bucket holds it and its sidecar, nothing else.
async fn assert_stored(backend: &CloudBackend, app: &TestApp, done: &Value, data: &[u8]) {
    assert_served(app, done, data).await;
    assert_only_file(backend, done);
}

/// The bucket holds the file and its sidecar, nothing else; no multipart upload is open.
fn assert_only_file(backend: &CloudBackend, done: &Value) {
    let key = done["key"].as_str().unwrap();
    assert_eq!(
        objects(backend),
        vec![key.to_owned(), format!("{key}.meta")],
        "leftovers in the bucket"
    );
    assert_eq!(backend.s3.open_uploads(), 0, "a multipart upload left open");
}

#[tokio::test]
async fn parts_s3_in_order_go_into_one_multipart_upload_and_complete_copies_nothing() {
    let (backend, apps, _roots) = instances(3, &[]).await;
    let data = pattern(13 * MIB + 5, 1);
    let id = init(&apps[0], "film.mp4", data.len()).await;
    // 6 MiB, 6 MiB and the last 1 MiB (+5 bytes), each to another instance.
    for (n, chunk) in data.chunks(6 * MIB).enumerate() {
        ok(apps[n % 3]
            .as_service()
            .put_part(&id, n as u32, chunk)
            .await);
    }
    // Every part is in the session's multipart upload: no part object exists for the
    // complete to read or copy.
    assert_eq!(
        part_rows(&backend, &id).await,
        vec![(0, true), (1, true), (2, true)]
    );
    assert!(part_objects(&backend).is_empty(), "{:?}", objects(&backend));
    assert_eq!(backend.s3.open_uploads(), 1);
    let db = sqlx::PgPool::connect(&backend.db.url()).await.unwrap();
    let uploads: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT object FROM parts WHERE session_id = $1::uuid")
            .bind(&id)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let done = ok(apps[1]
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_eq!(done["sha256"], sha_hex(&data), "{done}");
    assert!(
        done["key"].as_str().unwrap().ends_with("_film.mp4"),
        "{done}"
    );
    assert_stored(&backend, &apps[2], &done, &data).await;
    // Completing again: not found.
    let (s, _) = apps[0].as_service().complete(&id, json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn parts_s3_in_order_completed_under_another_name_and_folder() {
    let (backend, apps, _roots) = instances(1, &[]).await;
    let app = &apps[0];
    let data = pattern(7 * MIB, 2);
    let id = init(app, "a.bin", data.len()).await;
    for (n, chunk) in data.chunks(5 * MIB).enumerate() {
        ok(app.as_service().put_part(&id, n as u32, chunk).await);
    }
    assert!(part_objects(&backend).is_empty());
    let done = ok(app
        .as_service()
        .complete(
            &id,
            json!({ "sha256": sha_hex(&data), "meta": { "filename": "b.bin", "folder": "docs" } }),
        )
        .await);
    let key = done["key"].as_str().unwrap();
    assert!(
        key.starts_with("storage/u1/docs/") && key.ends_with("_b.bin"),
        "{done}"
    );
    assert_stored(&backend, app, &done, &data).await;
}

#[tokio::test]
async fn parts_s3_out_of_order_and_resent_end_in_the_right_bytes() {
    let (backend, apps, _roots) = instances(2, &[]).await;
    let data = pattern(14 * MIB, 3);
    let chunks: Vec<&[u8]> = data.chunks(6 * MIB).collect();
    let id = init(&apps[0], "mixed.bin", data.len()).await;
    // 2 first (its parts in front are missing: an object of its own), then 0 and 1 (into
    // the multipart upload).
    for n in [2usize, 0, 1] {
        ok(apps[n % 2]
            .as_service()
            .put_part(&id, n as u32, chunks[n])
            .await);
    }
    assert_eq!(
        part_rows(&backend, &id).await,
        vec![(0, true), (1, true), (2, false)]
    );
    // Part 0 again, with other bytes, then right again: it replaces itself each time.
    let wrong = pattern(6 * MIB, 9);
    ok(apps[1].as_service().put_part(&id, 0, &wrong).await);
    ok(apps[0].as_service().put_part(&id, 0, chunks[0]).await);
    let done = ok(apps[1]
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(&backend, &apps[0], &done, &data).await;
}

#[tokio::test]
async fn parts_s3_sent_at_once_end_in_the_right_bytes() {
    let (backend, apps, _roots) = instances(2, &[]).await;
    let data = pattern(30 * MIB + 3, 10);
    let id = init(&apps[0], "parallel.bin", data.len()).await;
    // Six parts at once over two instances: whichever find their parts in front already
    // recorded go into the multipart upload (one commit at a time), the others into
    // objects of their own.
    let sends = data.chunks(5 * MIB).enumerate().map(|(n, chunk)| {
        let app = &apps[n % 2];
        let id = id.clone();
        async move { ok(app.as_service().put_part(&id, n as u32, chunk).await) }
    });
    futures_util::future::join_all(sends).await;
    assert_eq!(part_rows(&backend, &id).await.len(), 7);
    let done = ok(apps[1]
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(&backend, &apps[0], &done, &data).await;
}

#[tokio::test]
async fn parts_s3_a_part_past_the_declared_size_is_refused_and_changes_nothing() {
    let (backend, apps, _roots) = instances(1, &[]).await;
    let app = &apps[0];
    let data = pattern(10 * MIB, 11);
    let id = init(app, "sized.bin", data.len()).await;
    ok(app.as_service().put_part(&id, 0, &data[..6 * MIB]).await);
    let (s, body) = app
        .as_service()
        .put_part(&id, 1, &pattern(6 * MIB, 12))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(part_rows(&backend, &id).await, vec![(0, true)]);
    assert!(objects(&backend).is_empty(), "{:?}", objects(&backend));
    // The rest, as the last part (under 5 MiB): into the multipart upload too.
    ok(app.as_service().put_part(&id, 1, &data[6 * MIB..]).await);
    assert_eq!(part_rows(&backend, &id).await, vec![(0, true), (1, true)]);
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(&backend, app, &done, &data).await;
}

#[tokio::test]
async fn parts_s3_small_parts_are_joined() {
    let (backend, apps, _roots) = instances(2, &[]).await;
    // 1 MiB parts: none reaches S3's minimum, each is an object of its own.
    let data = pattern(3 * MIB + 100, 4);
    let id = init(&apps[0], "small.bin", data.len()).await;
    for (n, chunk) in data.chunks(MIB).enumerate() {
        ok(apps[n % 2]
            .as_service()
            .put_part(&id, n as u32, chunk)
            .await);
    }
    assert_eq!(
        part_rows(&backend, &id).await,
        vec![(0, false), (1, false), (2, false), (3, false)]
    );
    let done = ok(apps[1]
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(&backend, &apps[0], &done, &data).await;
}

#[tokio::test]
async fn parts_s3_a_small_part_resent_between_direct_ones_keeps_them() {
    let (backend, apps, _roots) = instances(1, &[]).await;
    let app = &apps[0];
    let data = pattern(18 * MIB, 5);
    let chunks: Vec<&[u8]> = data.chunks(6 * MIB).collect();
    let id = init(app, "resent.bin", data.len()).await;
    for (n, chunk) in chunks.iter().enumerate() {
        ok(app.as_service().put_part(&id, n as u32, chunk).await);
    }
    // Part 1 again as 1 MiB: it cannot stand in the multipart upload between the others,
    // so the upload is completed into a staging object and its parts become ranges of it.
    ok(app.as_service().put_part(&id, 1, &chunks[1][..MIB]).await);
    assert_eq!(
        part_rows(&backend, &id).await,
        vec![(0, false), (1, false), (2, false)]
    );
    assert_eq!(backend.s3.open_uploads(), 0);
    let (s, body) = app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // Right again: 0 and 2 come from the staging object, 1 from its own.
    ok(app.as_service().put_part(&id, 1, chunks[1]).await);
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(&backend, app, &done, &data).await;
}

#[tokio::test]
async fn parts_s3_a_sha_mismatch_keeps_the_parts_for_a_resend() {
    let (backend, apps, _roots) = instances(2, &[]).await;
    let data = pattern(13 * MIB, 6);
    let chunks: Vec<&[u8]> = data.chunks(6 * MIB).collect();
    let id = init(&apps[0], "sha.bin", data.len()).await;
    // Part 1 with wrong bytes of the right size.
    let wrong = pattern(6 * MIB, 8);
    ok(apps[0].as_service().put_part(&id, 0, chunks[0]).await);
    ok(apps[1].as_service().put_part(&id, 1, &wrong).await);
    ok(apps[0].as_service().put_part(&id, 2, chunks[2]).await);
    // The chain holds (each part hashed on from the one before): the fast path knows the
    // SHA-256 without completing the multipart upload, and refuses it.
    let (s, body) = apps[1]
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"], "SHA256 mismatch", "{body}");
    assert!(objects(&backend).is_empty(), "{:?}", objects(&backend));
    assert_eq!(backend.s3.open_uploads(), 1);
    // Part 1 right: part 2 was hashed on from the wrong part 1, so the chain breaks and
    // the slow path joins them; a wrong SHA-256 there keeps the parts too.
    ok(apps[1].as_service().put_part(&id, 1, chunks[1]).await);
    let (s, body) = apps[0]
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(b"not the file") }))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"], "SHA256 mismatch", "{body}");
    let done = ok(apps[0]
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_stored(&backend, &apps[1], &done, &data).await;
}

#[tokio::test]
async fn parts_s3_abort_leaves_no_multipart_upload_and_no_object() {
    let (backend, apps, _roots) = instances(2, &[]).await;
    let data = pattern(15 * MIB, 7);
    let id = init(&apps[0], "gone.bin", data.len()).await;
    // 0 and 1 into the multipart upload, 2 small and out of place: its own object.
    ok(apps[0]
        .as_service()
        .put_part(&id, 0, &data[..6 * MIB])
        .await);
    ok(apps[1]
        .as_service()
        .put_part(&id, 1, &data[6 * MIB..12 * MIB])
        .await);
    ok(apps[0]
        .as_service()
        .put_part(&id, 3, &data[12 * MIB..13 * MIB])
        .await);
    assert_eq!(backend.s3.open_uploads(), 1);
    assert_eq!(part_objects(&backend).len(), 1);
    let (s, body) = apps[1].as_service().abort(&id).await;
    assert!(s.is_success(), "{s} {body}");
    assert_eq!(backend.s3.open_uploads(), 0);
    assert!(objects(&backend).is_empty(), "{:?}", objects(&backend));
}

#[tokio::test]
async fn parts_s3_an_expired_session_leaves_no_multipart_upload_and_no_object() {
    // Sessions live 7.2 s; the sweep runs every few seconds.
    let (backend, apps, _roots) = instances(1, &[("UPLOAD_SESSION_TTL_HOURS", "0.002")]).await;
    let app = &apps[0];
    let data = pattern(12 * MIB, 8);
    let id = init(app, "expiring.bin", data.len()).await;
    ok(app.as_service().put_part(&id, 0, &data[..6 * MIB]).await);
    ok(app.as_service().put_part(&id, 2, &data[..MIB]).await);
    assert_eq!(backend.s3.open_uploads(), 1);
    assert_eq!(part_objects(&backend).len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while !(objects(&backend).is_empty() && backend.s3.open_uploads() == 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "not swept: {:?}, {} open",
            objects(&backend),
            backend.s3.open_uploads()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(part_rows(&backend, &id).await.is_empty());
}

/// The measurement issue #14 asks for (not run by default: it writes 2 GiB):
/// `UPLOAD_TEST_BACKEND=s3 cargo test --test api -- --ignored parts_s3_timing --nocapture`.
/// Uploads 1 GiB in 8 MiB parts, in order, and prints how long the complete took.
#[tokio::test]
#[ignore = "a measurement: 1 GiB through s3s-fs"]
async fn parts_s3_timing_of_a_1_gib_complete() {
    use sha2::Digest as _;
    let (backend, apps, _roots) = instances(1, &[("MAX_BODY_MB", "2048")]).await;
    let app = &apps[0];
    let part = 8 * MIB;
    let total = 1 << 30;
    let id = init(app, "big.bin", total).await;
    let mut sha = sha2::Sha256::new();
    let sending = std::time::Instant::now();
    for n in 0..total / part {
        let chunk = pattern(part, n as u8);
        sha.update(&chunk);
        ok(app.as_service().put_part(&id, n as u32, &chunk).await);
    }
    let sent = sending.elapsed();
    let direct = part_rows(&backend, &id).await.iter().all(|r| r.1);
    assert!(
        direct,
        "parts in order of 8 MiB go into the multipart upload"
    );
    let started = std::time::Instant::now();
    let done = ok(app
        .as_service()
        .complete(&id, json!({ "sha256": hex::encode(sha.finalize()) }))
        .await);
    let took = started.elapsed();
    eprintln!("1 GiB in 8 MiB parts: parts sent in {sent:?}, complete took {took:?}");
    eprintln!(
        "(parts in the multipart upload: {direct}; key {})",
        done["key"]
    );
}

/// Completes session `id`'s multipart upload straight in the bucket, from the parts the
/// catalog records, as a complete that died right after would have; a client of the
/// bucket, the upload's key and its id.
async fn complete_by_hand(backend: &CloudBackend, id: &str) -> (S3Bytes, String, String) {
    let db = sqlx::PgPool::connect(&backend.db.url()).await.unwrap();
    let rows: Vec<(String, String, String, i32, i64)> = sqlx::query_as(
        "SELECT object, upload_id, etag, number, size FROM parts
         WHERE session_id = $1::uuid ORDER BY number",
    )
    .bind(id)
    .fetch_all(&db)
    .await
    .unwrap();
    let s3 = S3Bytes::connect(&S3Config {
        endpoint: Some(backend.s3.endpoint.clone()),
        bucket: crate::s3_server::BUCKET.into(),
        region: "us-east-1".into(),
        access_key_id: crate::s3_server::ACCESS_KEY.into(),
        secret_access_key: secrecy::SecretString::from(crate::s3_server::SECRET_KEY),
        prefix: String::new(),
        path_style: true,
        allow_http: true,
        buffer_budget: DEFAULT_BUFFER_BUDGET,
    })
    .await
    .unwrap();
    let (key, upload) = (rows[0].0.clone(), rows[0].1.clone());
    let infos: Vec<PartInfo> = rows
        .iter()
        .map(|r| PartInfo {
            number: r.3 as u32 + 1,
            etag: r.2.clone(),
            size: r.4 as u64,
        })
        .collect();
    s3.complete(&key, &UploadId(upload.clone()), &infos)
        .await
        .unwrap();
    (s3, key, upload)
}

/// Regression (review of session 8): a session's multipart upload is begun at the file's
/// key, and once completed its object stands there before the file's row is committed,
/// dated by the server as early as the upload's start. A complete that died right then
/// left it to the deep sweep as "an object without a row", which deleted it: the session
/// could never complete. Parts' rows now count as naming their objects; the retry finds
/// the upload completed and publishes it.
#[tokio::test]
async fn parts_s3_a_completed_upload_left_by_a_dead_complete_survives_the_sweep() {
    let (backend, apps, _roots) = instances(1, &[]).await;
    let data = pattern(12 * MIB + 3, 4);
    let id = init(&apps[0], "kept.bin", data.len()).await;
    for (n, chunk) in data.chunks(6 * MIB).enumerate() {
        ok(apps[0].as_service().put_part(&id, n as u32, chunk).await);
    }
    assert_eq!(
        part_rows(&backend, &id).await,
        vec![(0, true), (1, true), (2, true)]
    );
    // The dead complete got as far as completing the multipart upload.
    let (s3, key, _) = complete_by_hand(&backend, &id).await;
    // Two hours old, as an upload begun long ago is dated; beside it a true orphan of the
    // same age (a file never published), which shows the sweep ran. Then an instance
    // starts, whose first sweep is deep.
    let orphan = "storage/u9/0badc0de_never-published.bin";
    s3.put_stream(
        orphan,
        futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))]),
        1,
    )
    .await
    .unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for object in [key.as_str(), orphan] {
        std::fs::File::options()
            .write(true)
            .open(backend.s3.file(object))
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    let env = backend.env();
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.push(("UPLOAD_ROOT", root.path().to_str().unwrap()));
    pairs.push(("UPLOAD_SIGNING_KEY", ""));
    let later = spawn_app_with(&pairs).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while backend.s3.file(orphan).exists() {
        assert!(std::time::Instant::now() < deadline, "no deep sweep ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        backend.s3.file(&key).is_file(),
        "the sweep deleted the completed upload's object"
    );

    // The retry asks for another name: the object is copied there, and removed from the
    // upload's key once the file is published.
    let done = ok(later
        .as_service()
        .complete(
            &id,
            json!({ "sha256": sha_hex(&data), "meta": { "filename": "renamed.bin" } }),
        )
        .await);
    let stored = done["key"].as_str().unwrap();
    assert!(stored.ends_with("_renamed.bin") && stored != key, "{done}");
    assert_stored(&backend, &later, &done, &data).await;
}

/// Regression (review of session 8): a complete ran in its request's future, so a client
/// that went away mid-complete cut it wherever it was: between completing the multipart
/// upload and recording that, the rows named an upload that was gone; in any case the
/// session stayed claimed until its lease lapsed. A complete now runs to its end on a task
/// of its own: the file is published though nobody waits for the answer.
#[tokio::test]
async fn parts_s3_a_complete_whose_client_goes_away_still_publishes() {
    let (backend, apps, _roots) = instances(1, &[]).await;
    // 48 parts of 1 MiB: joined through the instance, a complete that takes a while.
    let data = pattern(48 * MIB, 6);
    let id = init(&apps[0], "left.bin", data.len()).await;
    for (n, chunk) in data.chunks(MIB).enumerate() {
        ok(apps[0].as_service().put_part(&id, n as u32, chunk).await);
    }
    let cut = apps[0]
        .post("/v1/files/complete")
        .header("x-service-token", SERVICE_TOKEN)
        .json(&json!({ "uploadId": id, "sha256": sha_hex(&data) }))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(
        cut.as_ref().is_err_and(|e| e.is_timeout()),
        "the complete answered within 100 ms ({cut:?}): the test needs a slower one"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let (_, l) = send(apps[0].get("/v1/files/all?user_id=u1").as_service()).await;
        if l["total_count"] == 1 {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the complete stopped with its client: {l}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = &listed["files"][0];
    assert_stored(&backend, &apps[0], done, &data).await;
    let (s, _) = apps[0].as_service().session(&id).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Regression (review of session 8): when a complete's publish failed after the session's
/// multipart upload was completed, the object was moved to a staging key of random name,
/// and only then recorded; an instance dying in between left rows naming an upload that
/// was gone and an object nobody named: the session could never complete. The staging
/// key is named by the upload now (`parts/{session}/mpu-{16 hex of its SHA-256}`), so
/// the retry finds the object and joins the parts from it.
#[tokio::test]
async fn parts_s3_an_upload_moved_to_staging_by_a_dead_complete_is_found_again() {
    use sha2::Digest as _;
    let (backend, apps, _roots) = instances(1, &[]).await;
    let data = pattern(12 * MIB + 7, 8);
    let id = init(&apps[0], "staged.bin", data.len()).await;
    for (n, chunk) in data.chunks(6 * MIB).enumerate() {
        ok(apps[0].as_service().put_part(&id, n as u32, chunk).await);
    }
    // The dead complete completed the upload, failed to publish, moved the object to
    // staging and died before recording it.
    let (s3, key, upload) = complete_by_hand(&backend, &id).await;
    let staging = format!(
        "parts/{id}/mpu-{}",
        hex::encode(&sha2::Sha256::digest(upload.as_bytes())[..8])
    );
    s3.copy(&key, &staging).await.unwrap();
    s3.delete_object(&key).await.unwrap();

    let done = ok(apps[0]
        .as_service()
        .complete(&id, json!({ "sha256": sha_hex(&data) }))
        .await);
    assert_eq!(done["sha256"], sha_hex(&data), "{done}");
    assert_stored(&backend, &apps[0], &done, &data).await;
}
