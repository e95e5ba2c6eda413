//! Several instances over one bucket and one database (STORAGE_BACKEND=s3, issue 14): a
//! session continues on any instance, of racing completes on different instances exactly one
//! wins, the quota holds for uploads spread over instances, and what one instance signs the
//! others verify (the signing key kept in the database). Runs whatever UPLOAD_TEST_BACKEND
//! says: it starts its own S3 server and PostgreSQL.

use reqwest::StatusCode;
use serde_json::json;
use sha2::Digest as _;

use crate::helpers::*;

/// `n` apps over one backend, each with its own UPLOAD_ROOT (only its spool is there).
pub(crate) async fn instances(
    n: usize,
    extra: &[(&str, &str)],
) -> (CloudBackend, Vec<TestApp>, Vec<tempfile::TempDir>) {
    let backend = CloudBackend::start().await;
    let env = backend.env();
    let mut apps = Vec::new();
    let mut roots = Vec::new();
    for _ in 0..n {
        let root = tempfile::tempdir().unwrap();
        let mut pairs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pairs.push(("UPLOAD_ROOT", root.path().to_str().unwrap()));
        // The shared signing key comes from the database, not from the test's setting.
        pairs.push(("UPLOAD_SIGNING_KEY", ""));
        pairs.extend_from_slice(extra);
        apps.push(spawn_app_with(&pairs).await);
        roots.push(root);
    }
    (backend, apps, roots)
}

#[tokio::test]
async fn a_session_continues_on_any_instance_and_one_complete_wins() {
    let (_backend, apps, _roots) = instances(3, &[]).await;
    let (a, b, c) = (&apps[0], &apps[1], &apps[2]);
    let part0: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
    let part1: Vec<u8> = (0..1 << 20).map(|i| (i % 241) as u8).collect();
    let whole = [part0.clone(), part1.clone()].concat();
    let init = a
        .as_service()
        .acting_for("u1")
        .init(
            json!([{ "name": "movie.mp4", "size": whole.len() }]),
            "chunked",
            None,
        )
        .await;
    let id = init["uploadId"].as_str().unwrap();
    // Part 1 to B, part 0 to C (out of order, on other instances than init).
    let (s, body) = b.as_service().put_part(id, 1, &part1).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = c.as_service().put_part(id, 0, &part0).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, status) = a.as_service().session(id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status["receivedBytes"], whole.len());
    // Completes race on B and C: exactly one wins, the other finds no session.
    let sha = hex::encode(sha2::Sha256::digest(&whole));
    let (sb, sc) = (b.as_service(), c.as_service());
    let (rb, rc) = tokio::join!(
        sb.complete(id, json!({ "sha256": sha })),
        sc.complete(id, json!({ "sha256": sha })),
    );
    let wins: Vec<_> = [&rb, &rc]
        .into_iter()
        .filter(|r| r.0 == StatusCode::OK)
        .collect();
    assert_eq!(wins.len(), 1, "{rb:?} {rc:?}");
    let loser = if rb.0 == StatusCode::OK { &rc } else { &rb };
    assert_eq!(loser.0, StatusCode::NOT_FOUND, "{loser:?}");
    let key = wins[0].1["key"].as_str().unwrap().to_owned();
    // Every instance serves it whole; a range from another.
    for app in &apps {
        let got = app.get(&format!("/{key}")).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.bytes().await.unwrap().as_ref(), whole.as_slice());
    }
    let got = a
        .get(&format!("/{key}"))
        .header("range", "bytes=3145720-3145735")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        got.bytes().await.unwrap().as_ref(),
        &whole[3_145_720..=3_145_735]
    );
    // A URL signed by A verifies on B and C.
    let (s, signed) = send(
        a.get(&format!("/v1/files/signed-url?key={key}"))
            .as_service(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{signed}");
    let url = signed["url"].as_str().unwrap();
    let path = &url[url.find("/get/").unwrap()..];
    for app in [b, c] {
        let got = app.get(path).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{path}");
        assert_eq!(got.bytes().await.unwrap().len(), whole.len());
    }
}

#[tokio::test]
async fn the_quota_holds_for_uploads_spread_over_instances() {
    // 1 MiB quota (0.0009765625 GiB); 12 uploads of 200 KB at once over 3 instances: at
    // most 5 fit, and what is stored is what the ledger says.
    let (_backend, apps, _roots) = instances(3, &[("PER_USER_QUOTA_GB", "0.0009765625")]).await;
    let body = vec![7u8; 200_000];
    let mut tasks = Vec::new();
    for i in 0..12 {
        let app = &apps[i % 3];
        let url = app.url(&format!("/v1/files/upload?user_id=q&filename=f{i}.bin"));
        let http = app.http.clone();
        let body = body.clone();
        tasks.push(async move {
            http.post(url)
                .header("x-service-token", SERVICE_TOKEN)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let statuses = futures_util::future::join_all(tasks).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::PAYLOAD_TOO_LARGE));
    assert!((1..=5).contains(&ok), "{statuses:?}");
    let (_, listing) = send(apps[1].get("/v1/files/all?user_id=q").as_service()).await;
    assert_eq!(listing["total_count"], ok);
    assert_eq!(listing["total_size"], ok * 200_000);
    assert!(listing["total_size"].as_u64().unwrap() <= 1 << 20);
}

/// Regression (distributed bench, session 6): a complete cut by its instance's death left
/// the session claimed, so every retry answered 404 and the upload was lost. The claim is a
/// lease now: a retry on another instance waits while the lease holds (the holder might
/// still finish), then takes the claim over and completes. The dying instance is played by
/// the database row it leaves: claimed, under a token nobody holds, a lease about to lapse.
#[tokio::test]
async fn a_complete_cut_by_a_dead_instance_is_taken_over_by_the_retry() {
    let (backend, apps, _roots) = instances(2, &[]).await;
    let (a, b) = (&apps[0], &apps[1]);
    let whole: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i % 239) as u8).collect();
    let init = a
        .as_service()
        .acting_for("u1")
        .init(
            json!([{ "name": "cut.bin", "size": whole.len() }]),
            "chunked",
            None,
        )
        .await;
    let id = init["uploadId"].as_str().unwrap();
    let (s, body) = a.as_service().put_part(id, 0, &whole).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let db = sqlx::PgPool::connect(&backend.db.url()).await.unwrap();
    let claimed = sqlx::query(
        "UPDATE sessions SET state = 'claimed', claimed_at = now(),
                claim_token = gen_random_uuid(), lease_until = now() + interval '2 seconds'
         WHERE id = $1::uuid AND state = 'live'",
    )
    .bind(id)
    .execute(&db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(claimed, 1);
    let sha = hex::encode(sha2::Sha256::digest(&whole));
    let started = std::time::Instant::now();
    let (s, done) = b.as_service().complete(id, json!({ "sha256": sha })).await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "completed after {:?}, while the dead instance's lease still held",
        started.elapsed()
    );
    let key = done["key"].as_str().unwrap();
    let got = a.get(&format!("/{key}")).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), whole.as_slice());
    // Completing again: not found, as API.md §3.1 says; the quota counts the file once.
    let (s, again) = a.as_service().complete(id, json!({ "sha256": sha })).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{again}");
    let (state, size): (String, i64) =
        sqlx::query_as("SELECT state, file_size FROM sessions WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((state.as_str(), size), ("finished", whole.len() as i64));
    let used: i64 = sqlx::query_scalar("SELECT used FROM quota WHERE user_id = 'u1'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(used, whole.len() as i64);
}

/// A tus request of the service for `u1`.
fn tus(app: &TestApp, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    app.request(method, path)
        .header("X-Service-Token", SERVICE_TOKEN)
        .header("Tus-Resumable", "1.0.0")
}

async fn tus_patch(app: &TestApp, path: &str, at: usize, data: &[u8]) -> reqwest::Response {
    tus(app, reqwest::Method::PATCH, path)
        .header("Upload-Offset", at)
        .header("Content-Type", "application/offset+octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} in {res:?}"))
}

#[tokio::test]
async fn a_tus_upload_goes_on_at_any_instance_and_of_racing_patches_one_is_kept() {
    use base64::Engine as _;
    let (backend, apps, _roots) = instances(3, &[]).await;
    let segments = || {
        files_under(
            &backend
                .s3
                .root
                .path()
                .join(crate::s3_server::BUCKET)
                .join("parts"),
        )
    };
    let (a, b, c) = (&apps[0], &apps[1], &apps[2]);
    let whole: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let res = tus(a, reqwest::Method::POST, "/v1/files/tus/")
        .header("Upload-Length", whole.len())
        .header(
            "Upload-Metadata",
            format!("filename {},user_id {}", b64("film.bin"), b64("u1")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let path = header(&res, "location").to_owned();
    // The first MiB to B; C knows where the upload stands.
    let mib = 1 << 20;
    let res = tus_patch(b, &path, 0, &whole[..mib]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "upload-offset"), mib.to_string());
    let res = tus(c, reqwest::Method::HEAD, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "upload-offset"), mib.to_string());
    // The second MiB to B and C at once: one is kept, the other refused as at a stale
    // offset, and its object does not stay in the bucket.
    let (rb, rc) = tokio::join!(
        tus_patch(b, &path, mib, &whole[mib..2 * mib]),
        tus_patch(c, &path, mib, &whole[mib..2 * mib]),
    );
    let mut statuses = [rb.status(), rc.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::NO_CONTENT, StatusCode::CONFLICT]);
    let loser = if rb.status() == StatusCode::CONFLICT {
        rb
    } else {
        rc
    };
    let refused: serde_json::Value = loser.json().await.unwrap();
    assert!(refused["detail"].is_string(), "{refused}");
    let kept = segments();
    assert_eq!(kept.len(), 2, "{kept:?}");
    // The rest to A publishes it; any instance serves it and knows it finished.
    let res = tus_patch(a, &path, 2 * mib, &whole[2 * mib..]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let key = header(&res, "x-upload-key").to_owned();
    for app in &apps {
        let got = app.get(&format!("/{key}")).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.bytes().await.unwrap().as_ref(), whole.as_slice());
    }
    let res = tus(b, reqwest::Method::HEAD, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "upload-offset"), whole.len().to_string());
    let (s, meta) = send(c.as_service().get(&format!("/v1/files/metadata/{key}"))).await;
    assert_eq!(s, StatusCode::OK, "{meta}");
    assert_eq!(meta["sha256"], hex::encode(sha2::Sha256::digest(&whole)));
    // The segments went with the publish.
    assert_eq!(segments(), Vec::<String>::new());
}

/// A one-request upload in S3 mode goes on to the bucket while its body still arrives
/// (issue 14's upload bench: the send no longer waits for the whole body), holds no part
/// buffer while its client stalls (other uploads go on), and, cut off, leaves no object,
/// no multipart upload, no spool file and no reservation.
#[tokio::test]
async fn a_raw_upload_is_sent_on_as_it_arrives_and_cut_off_leaves_nothing() {
    use tokio::io::AsyncWriteExt as _;
    let (backend, apps, roots) = instances(1, &[]).await;
    let app = &apps[0];
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/files/upload?user_id=t&filename=big.bin HTTP/1.1\r\nHost: x\r\nX-Service-Token: {SERVICE_TOKEN}\r\nContent-Length: {}\r\n\r\n",
        40 << 20
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&vec![5u8; 20 << 20]).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while backend.s3.open_uploads() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was sent before the body was whole"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The stalled upload holds no share of the bucket's transfer budget: two more large
    // uploads (more than the default budget's writers could buffer beside it) go through.
    for i in 0..2 {
        let data: Vec<u8> = (0..12_000_000u32).map(|x| (x * 7 + i) as u8).collect();
        let (s, b) = send(
            app.post(&format!("/v1/files/upload?user_id=v&filename=f{i}.bin"))
                .as_service()
                .body(data.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            b["files"][0]["sha256"],
            hex::encode(sha2::Sha256::digest(&data))
        );
    }

    drop(sock);
    let db = sqlx::PgPool::connect(&backend.db.url()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reserved: i64 =
            sqlx::query_scalar("SELECT count(*) FROM reservations WHERE user_id = 't'")
                .fetch_one(&db)
                .await
                .unwrap();
        let spooled = files_under(&roots[0].path().join(".spool"));
        if backend.s3.open_uploads() == 0 && reserved == 0 && spooled.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left: {} uploads, {reserved} reservations, spool {spooled:?}",
            backend.s3.open_uploads()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, listing) = send(app.get("/v1/files/all?user_id=t").as_service()).await;
    assert_eq!(listing["total_count"], 0, "{listing}");
    assert!(backend.s3.file("storage/v").is_dir());
    assert!(
        !backend.s3.file("storage/t").exists(),
        "an object of the cut upload is in the bucket"
    );
}
