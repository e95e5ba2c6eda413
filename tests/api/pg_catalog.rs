//! The PostgreSQL catalog (`store::pg`) against a real PostgreSQL on 127.0.0.1 (`pg_server`),
//! a database per test.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone as _, Utc};
use serde_json::{json, Map};
use upload_server::store::batch::BatchToken;
use upload_server::store::key::{ClientFileName, FolderPath, Key, UserId};
use upload_server::store::pg::{Claim, FileRecord, PgCatalog, Publish, SessionState};
use upload_server::store::sessions::{
    FileSpec, Protocol, Resumable, SegmentHashes, Session, SessionId, UploadMode,
};
use upload_server::store::sidecar::Meta;
use upload_server::store::signing_key::KeyOrigin;
use upload_server::store::{Missing, StoreError};

use upload_server::store::pg::CatalogError;

use crate::pg_server::{free_port, TestDb};

// ---- builders ---------------------------------------------------------------------------

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn file(
    u: &str,
    folder: Option<&str>,
    name: &str,
    size: u64,
    created: DateTime<Utc>,
) -> FileRecord {
    let folder = folder.and_then(FolderPath::sanitize);
    let key = Key::new(&user(u), folder.as_ref(), name);
    let mut extra = Map::new();
    extra.insert("album".into(), json!("summer"));
    FileRecord {
        size,
        sha256: Some("ab".repeat(32)),
        crc32: Some(0xdead_beef),
        mime: "image/png".into(),
        meta: Meta {
            original_name: name.into(),
            mime: "image/png".into(),
            sha256: Some("ab".repeat(32)),
            crc32: Some(0xdead_beef),
            user_id: u.into(),
            size: Some(size),
            created_at: Some(created.to_rfc3339()),
            extra,
        },
        created_at: created,
        key,
    }
}

fn session(u: &str, size: Option<u64>, expires_in: chrono::Duration) -> Session {
    let now = Utc::now();
    Session {
        upload_id: SessionId::new(),
        user_id: user(u),
        mode: UploadMode::Single,
        file: FileSpec {
            name: ClientFileName::parse("a.bin").unwrap(),
            size: size.unwrap_or(0),
            mime: None,
        },
        folder: None,
        meta: Map::new(),
        created_at: now,
        expires_at: now + expires_in,
        resumable: Some(Resumable {
            protocol: Protocol::Tus,
            length_deferred: size.is_none(),
            concat: None,
            metadata: None,
            grant: None,
        }),
    }
}

fn hour() -> chrono::Duration {
    chrono::Duration::hours(1)
}

fn hashes(n: u32) -> SegmentHashes {
    SegmentHashes {
        sha_state: format!("state-{n}"),
        crc32: n,
    }
}

fn store_err(e: CatalogError) -> StoreError {
    match e {
        CatalogError::Store(s) => s,
        other => panic!("expected a store outcome, got {other}"),
    }
}

// ---- the tests --------------------------------------------------------------------------

#[tokio::test]
async fn pg_migrations_are_idempotent_and_safe_from_two_connections_at_once() {
    let db = TestDb::new().await;
    // Two instances starting together: both connect and migrate.
    let url = db.url();
    let (a, b) = tokio::join!(PgCatalog::connect(&url, 2), PgCatalog::connect(&url, 2));
    let (a, b) = (a.unwrap(), b.unwrap());
    // Again, and the SQL itself a second time: nothing changes, nothing fails.
    a.migrate().await.unwrap();
    for sql in [
        include_str!("../../migrations/0001_catalog.sql"),
        include_str!("../../migrations/0002_parts.sql"),
        include_str!("../../migrations/0003_claim_lease.sql"),
        include_str!("../../migrations/0004_parts_multipart.sql"),
        include_str!("../../migrations/0005_parts_object_index.sql"),
    ] {
        sqlx::raw_sql(sql).execute(a.pool()).await.unwrap();
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(b.pool())
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(applied as usize, files, "each migration applied once");
    a.health().await.unwrap();
    b.health().await.unwrap();
}

#[tokio::test]
async fn pg_an_unreachable_database_is_named_without_its_password() {
    let port = free_port();
    let url = format!("postgres://app:s3cret-pw@127.0.0.1:{port}/upload");
    let err = PgCatalog::connect(&url, 1).await.unwrap_err().to_string();
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
    let err = PgCatalog::connect("mysql://x:s3cret-pw@h/db", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DATABASE_URL") && !err.contains("s3cret-pw"),
        "{err}"
    );
}

#[tokio::test]
async fn pg_reservations_from_16_connections_never_pass_the_limit() {
    let db = TestDb::new().await;
    let u = user("quota-user");
    let limit = 1_000;
    // 16 tasks, each its own pool of one connection (16 instances, as far as PostgreSQL
    // can tell), 5 reservations of 30 bytes each: 2,400 bytes asked for, 1,000 allowed.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let catalog = db.catalog(1).await;
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..5 {
                let id = format!("r-{t}-{i}");
                match catalog.reserve(&u, &id, 30, limit).await {
                    Ok(()) => won.push(id),
                    Err(CatalogError::Store(StoreError::Quota { quota, .. })) => {
                        assert_eq!(quota, limit)
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            won
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        won.extend(t.await.unwrap());
    }
    let catalog = db.catalog(2).await;
    let usage = catalog.usage(&u).await.unwrap();
    assert_eq!(
        won.len(),
        33,
        "exactly as many as fit: 33 × 30 ≤ 1,000 < 34 × 30"
    );
    assert_eq!(usage.reserved, 30 * won.len() as u64);
    assert!(usage.reserved <= limit);
    assert_eq!(catalog.reconcile(&u).await.unwrap(), usage);
    for id in &won {
        assert_eq!(catalog.release(id).await.unwrap(), 30);
    }
    assert_eq!(catalog.release("r-unknown").await.unwrap(), 0);
    assert_eq!(catalog.usage(&u).await.unwrap().reserved, 0);
}

#[tokio::test]
async fn pg_of_two_racing_claims_exactly_one_wins() {
    let db = TestDb::new().await;
    let (a, b) = (db.catalog(2).await, db.catalog(2).await);
    for _ in 0..20 {
        let s = session("claimer", Some(10), hour());
        a.create_session(&s, 10, 1 << 20).await.unwrap();
        let id = s.upload_id;
        let (x, y) = tokio::join!(a.claim(id), b.claim(id));
        let outcomes = [x.unwrap(), y.unwrap()];
        let won = outcomes
            .iter()
            .filter(|c| matches!(c, Claim::Won(..)))
            .count();
        let lost = outcomes
            .iter()
            .filter(|c| matches!(c, Claim::Lost(SessionState::Claimed)))
            .count();
        assert_eq!((won, lost), (1, 1));
    }
    // A claim given back can be won again; an unknown session is not found.
    let s = session("claimer", Some(10), hour());
    a.create_session(&s, 10, 1 << 20).await.unwrap();
    let Claim::Won(_, _, token) = a.claim(s.upload_id).await.unwrap() else {
        panic!("claim lost")
    };
    a.unclaim(s.upload_id, token).await.unwrap();
    assert!(matches!(
        b.claim(s.upload_id).await.unwrap(),
        Claim::Won(..)
    ));
    let missing = store_err(a.claim(SessionId::new()).await.unwrap_err());
    assert!(matches!(missing, StoreError::NotFound(Missing::Session)));
}

/// A claim is a lease: renewed, it holds; lapsed (its instance died mid-complete), the next
/// claim takes it over with a new token, and the old holder's token no longer publishes,
/// renews or gives the claim back.
#[tokio::test]
async fn pg_a_lapsed_claim_is_taken_over_and_its_old_holder_is_fenced() {
    let db = TestDb::new().await;
    let (a, b) = (db.catalog(2).await, db.catalog(2).await);
    let s = session("leaser", Some(10), hour());
    a.create_session(&s, 10, 1 << 20).await.unwrap();
    let id = s.upload_id;
    let sid = uuid::Uuid::parse_str(&id.to_string()).unwrap();
    let Claim::Won(_, _, old) = a.claim(id).await.unwrap() else {
        panic!("claim lost")
    };
    // Held: another claim loses, a renewal keeps it.
    assert!(matches!(
        b.claim(id).await.unwrap(),
        Claim::Lost(SessionState::Claimed)
    ));
    assert!(a.renew(id, old).await.unwrap());
    let lease: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT lease_until FROM sessions WHERE id = $1")
            .bind(sid)
            .fetch_one(a.pool())
            .await
            .unwrap();
    let ahead = lease - Utc::now();
    let want = chrono::Duration::from_std(upload_server::store::pg::CLAIM_LEASE).unwrap();
    assert!(
        ahead > want - chrono::Duration::seconds(5) && ahead <= want,
        "lease {ahead} ahead"
    );
    // The holder dies: its lease lapses; the next claim takes over.
    sqlx::query("UPDATE sessions SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(sid)
        .execute(a.pool())
        .await
        .unwrap();
    let Claim::Won(record, _, new) = b.claim(id).await.unwrap() else {
        panic!("a lapsed claim was not taken over")
    };
    assert_eq!(record.state, SessionState::Claimed);
    assert_ne!(old, new);
    // The old holder, back from its stall, changes nothing.
    assert!(!a.renew(id, old).await.unwrap());
    let gone = store_err(a.unclaim(id, old).await.unwrap_err());
    assert!(
        matches!(gone, StoreError::NotFound(Missing::Session)),
        "{gone:?}"
    );
    let f = file("leaser", None, "22222222_late.bin", 10, at(3));
    let rid = id.to_string();
    let fenced = a
        .publish(Publish {
            file: &f,
            reservation: Some(&rid),
            session: Some((id, old)),
        })
        .await
        .unwrap_err();
    assert!(matches!(store_err(fenced), StoreError::Busy));
    assert_eq!(a.usage(&user("leaser")).await.unwrap().files, 0);
    assert!(matches!(
        a.finish(id, old, "leaser/x", 10).await.unwrap_err(),
        CatalogError::Store(StoreError::Busy)
    ));
    // The new holder publishes.
    b.publish(Publish {
        file: &f,
        reservation: Some(&rid),
        session: Some((id, new)),
    })
    .await
    .unwrap();
    assert_eq!(a.session(id).await.unwrap().state, SessionState::Finished);
    assert!(matches!(
        a.claim(id).await.unwrap(),
        Claim::Lost(SessionState::Finished)
    ));
}

#[tokio::test]
async fn pg_of_two_racing_appends_at_one_offset_exactly_one_wins() {
    let db = TestDb::new().await;
    let (a, b) = (db.catalog(2).await, db.catalog(2).await);
    for _ in 0..20 {
        let s = session("appender", Some(100), hour());
        a.create_session(&s, 100, 1 << 20).await.unwrap();
        let id = s.upload_id;
        a.append_segment(id, 0, 10, &hashes(1), None).await.unwrap();
        let etag = json!({"etag": "\"x\""});
        let (h2, h3) = (hashes(2), hashes(3));
        let (x, y) = tokio::join!(
            a.append_segment(id, 10, 5, &h2, Some(&etag)),
            b.append_segment(id, 10, 7, &h3, None)
        );
        let (winner, loser) = match (x, y) {
            (Ok(w), Err(l)) => (w, l),
            (Err(l), Ok(w)) => (w, l),
            other => panic!("not exactly one winner: {other:?}"),
        };
        assert_eq!(winner.number, 2);
        match store_err(loser) {
            StoreError::OffsetMismatch { offset } => assert_eq!(offset, winner.end),
            other => panic!("{other:?}"),
        }
        let segs = a.segments(id).await.unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(
            (segs[1].offset, segs[1].offset + segs[1].size),
            (10, winner.end)
        );
        assert_eq!(a.session(id).await.unwrap().offset, winner.end);
    }
    // Past the declared length: refused; a claimed session is busy.
    let s = session("appender", Some(4), hour());
    a.create_session(&s, 4, 1 << 20).await.unwrap();
    let too_far = store_err(
        a.append_segment(s.upload_id, 0, 5, &hashes(1), None)
            .await
            .unwrap_err(),
    );
    assert!(matches!(too_far, StoreError::TooLarge));
    a.claim(s.upload_id).await.unwrap();
    let busy = store_err(
        a.append_segment(s.upload_id, 0, 4, &hashes(1), None)
            .await
            .unwrap_err(),
    );
    assert!(matches!(busy, StoreError::Busy));
}

#[tokio::test]
async fn pg_publish_is_one_transaction() {
    let db = TestDb::new().await;
    let c = db.catalog(4).await;
    let u = user("publisher");
    let taken = file("publisher", None, "00000000_taken.png", 50, at(0));
    assert!(c.insert_file(&taken).await.unwrap());
    assert!(
        !c.insert_file(&taken).await.unwrap(),
        "insert only if absent"
    );

    let s = session("publisher", Some(100), hour());
    c.create_session(&s, 100, 1_000).await.unwrap();
    let id = s.upload_id;
    c.append_segment(id, 0, 100, &hashes(1), Some(&json!({"etag": "e1"})))
        .await
        .unwrap();
    let Claim::Won(_, _, token) = c.claim(id).await.unwrap() else {
        panic!("claim lost")
    };
    let before = c.usage(&u).await.unwrap();
    assert_eq!((before.used, before.files, before.reserved), (50, 1, 100));

    // Kill point: the file insert fails (its key is taken) after the reservation was
    // dropped in the same transaction: all of it stays as it was.
    let mut clash = file("publisher", None, "00000000_taken.png", 100, at(1));
    clash.sha256 = Some("cd".repeat(32));
    let rid = id.to_string();
    let err = c
        .publish(Publish {
            file: &clash,
            reservation: Some(&rid),
            session: Some((id, token)),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::KeyTaken), "{err}");
    assert_eq!(c.usage(&u).await.unwrap(), before);
    assert_eq!(c.reconcile(&u).await.unwrap(), before, "the rows agree");
    let rec = c.session(id).await.unwrap();
    assert_eq!(rec.state, SessionState::Claimed);
    assert_eq!(c.segments(id).await.unwrap().len(), 1);
    assert_eq!(
        c.file(&taken.key).await.unwrap(),
        taken,
        "the old file untouched"
    );

    // The same publish under a free key: charged, reservation gone, session finished.
    let fresh = file("publisher", Some("docs"), "11111111_new.png", 100, at(2));
    c.publish(Publish {
        file: &fresh,
        reservation: Some(&rid),
        session: Some((id, token)),
    })
    .await
    .unwrap();
    let after = c.usage(&u).await.unwrap();
    assert_eq!((after.used, after.files, after.reserved), (150, 2, 0));
    assert_eq!(c.reconcile(&u).await.unwrap(), after);
    let rec = c.session(id).await.unwrap();
    assert_eq!(rec.state, SessionState::Finished);
    assert_eq!(rec.finished, Some((fresh.key.to_string(), 100)));
    assert!(c.segments(id).await.unwrap().is_empty());
    assert!(matches!(
        c.claim(id).await.unwrap(),
        Claim::Lost(SessionState::Finished)
    ));
    assert_eq!(c.file(&fresh.key).await.unwrap(), fresh);

    // Meta updates and deletes keep the ledger with them.
    let mut meta = fresh.meta.clone();
    meta.crc32 = Some(7);
    c.update_meta(&fresh.key, &meta).await.unwrap();
    assert_eq!(c.file(&fresh.key).await.unwrap().crc32, Some(7));
    assert_eq!(c.delete_file(&fresh.key).await.unwrap().size, 100);
    let gone = store_err(c.delete_file(&fresh.key).await.unwrap_err());
    assert!(matches!(gone, StoreError::NotFound(Missing::File)));
    assert_eq!(c.usage(&u).await.unwrap().used, 50);
}

#[tokio::test]
async fn pg_deferred_length_and_abort_move_the_reservation() {
    let db = TestDb::new().await;
    let c = db.catalog(2).await;
    let u = user("deferrer");
    let s = session("deferrer", None, hour());
    c.create_session(&s, 0, 1_000).await.unwrap();
    let id = s.upload_id;
    c.append_segment(id, 0, 40, &hashes(1), None).await.unwrap();
    let over = store_err(c.declare_length(id, 2_000, 1_000).await.unwrap_err());
    assert!(matches!(over, StoreError::Quota { .. }));
    let below = store_err(c.declare_length(id, 39, 1_000).await.unwrap_err());
    assert!(matches!(
        below,
        StoreError::LengthMismatch {
            declared: None,
            offset: 40
        }
    ));
    let declared = c.declare_length(id, 500, 1_000).await.unwrap();
    assert_eq!(declared.length(), Some(500));
    assert_eq!(
        c.declare_length(id, 500, 1_000).await.unwrap().length(),
        Some(500)
    );
    let other = store_err(c.declare_length(id, 501, 1_000).await.unwrap_err());
    assert!(matches!(
        other,
        StoreError::LengthMismatch {
            declared: Some(500),
            ..
        }
    ));
    assert_eq!(c.usage(&u).await.unwrap().reserved, 500);
    assert_eq!(c.session(id).await.unwrap().session.length(), Some(500));

    let removed = c.abort(id).await.unwrap();
    assert_eq!(removed.released, 500);
    assert_eq!(removed.segments.len(), 1);
    assert_eq!(c.usage(&u).await.unwrap().reserved, 0);
    let gone = store_err(c.session(id).await.unwrap_err());
    assert!(matches!(gone, StoreError::NotFound(Missing::Session)));
}

#[tokio::test]
async fn pg_listing_is_newest_first_ties_by_key_paged_with_totals() {
    let db = TestDb::new().await;
    let c = db.catalog(2).await;
    let u = user("lister");
    // Folders that share a prefix with "a" but are not under it: "a0" ('0' follows '/'),
    // "a.b" ('.' precedes '/'), "ab".
    let files = [
        file("lister", None, "00_top.png", 1, at(5)),
        file("lister", Some("a"), "01_x.png", 2, at(5)),
        file("lister", Some("a/b"), "02_y.png", 4, at(7)),
        file("lister", Some("a/b/c"), "03_z.png", 8, at(5)),
        file("lister", Some("a0"), "04_w.png", 16, at(9)),
        file("lister", Some("a.b"), "05_v.png", 32, at(5)),
        file("lister", Some("ab"), "06_u.png", 64, at(1)),
        file("lister", Some("a"), "B_upper.png", 128, at(5)),
        file("other", None, "07_not_mine.png", 256, at(9)),
    ];
    for f in &files {
        assert!(c.insert_file(f).await.unwrap());
    }
    let mut expected: Vec<&FileRecord> = files.iter().filter(|f| f.user() == &u).collect();
    expected.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.key.cmp_text(&b.key))
    });
    let keys = |v: &[FileRecord]| v.iter().map(|f| f.key.to_string()).collect::<Vec<_>>();
    let want: Vec<String> = expected.iter().map(|f| f.key.to_string()).collect();

    let all = c.list_files(&u, None, 100, 0).await.unwrap();
    assert_eq!(keys(&all.files), want);
    assert_eq!((all.total_files, all.total_bytes), (8, 255));
    assert_eq!(all.files[0], *expected[0], "records come back whole");
    // What the listing route reads: the same page, only the fields it shows.
    let listed = c.list_listed(&u, None, 100, 0).await.unwrap();
    assert_eq!((listed.total_files, listed.total_bytes), (8, 255));
    assert_eq!(listed.files.len(), all.files.len());
    for (l, f) in listed.files.iter().zip(&all.files) {
        let created = f.meta.created_at.clone().unwrap_or_else(|| {
            f.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        });
        assert_eq!(
            (&l.key, &l.original_name, &l.mime, l.size, &l.created_at),
            (
                &f.key,
                &f.meta.original_name,
                &f.meta.mime,
                f.size,
                &created
            )
        );
    }

    let mut paged = Vec::new();
    for page in 0..3 {
        let p = c.list_files(&u, None, 3, page * 3).await.unwrap();
        assert_eq!(p.total_files, 8, "totals are the whole listing's");
        paged.extend(keys(&p.files));
    }
    assert_eq!(paged, want);

    let a = FolderPath::sanitize("a").unwrap();
    let under_a = c.list_files(&u, Some(&a), 100, 0).await.unwrap();
    assert_eq!(
        keys(&under_a.files),
        [
            "storage/lister/a/b/02_y.png",
            "storage/lister/a/01_x.png",
            "storage/lister/a/B_upper.png",
            "storage/lister/a/b/c/03_z.png",
        ]
    );
    assert_eq!(
        (under_a.total_files, under_a.total_bytes),
        (4, 2 + 4 + 8 + 128)
    );
    let page = c.list_files(&u, Some(&a), 2, 2).await.unwrap();
    assert_eq!(keys(&page.files), keys(&under_a.files[2..]));
    assert_eq!(page.total_files, 4);
    let none = c.list_files(&user("nobody"), None, 10, 0).await.unwrap();
    assert_eq!(
        (none.files.len(), none.total_files, none.total_bytes),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn pg_listing_10000_files_timing() {
    let db = TestDb::new().await;
    let c = db.catalog(2).await;
    let u = user("big");
    // Bulk rows (the API would take 10,000 transactions), then the ledger recounted.
    let start = Instant::now();
    sqlx::query(
        "INSERT INTO files (key, user_id, folder, stored_name, size, mime, meta, created_at)
         SELECT 'storage/big/' || f || '/' || lpad(i::text, 8, '0') || '_f.bin', 'big', f,
                lpad(i::text, 8, '0') || '_f.bin', i, 'application/octet-stream',
                jsonb_build_object('original_name', 'f.bin', 'mime', 'application/octet-stream',
                                   'user_id', 'big', 'size', i),
                timestamptz '2026-01-01' + (i % 5000) * interval '1 second'
         FROM generate_series(1, 10000) AS i,
              LATERAL (SELECT CASE WHEN i % 10 = 0 THEN 'ten' ELSE 'rest' END AS f) AS folder",
    )
    .execute(c.pool())
    .await
    .unwrap();
    sqlx::query("ANALYZE files")
        .execute(c.pool())
        .await
        .unwrap();
    let usage = c.reconcile(&u).await.unwrap();
    assert_eq!(usage.files, 10_000);
    eprintln!("pg catalog: 10,000 rows inserted in {:?}", start.elapsed());

    let time = |label: &'static str, d: Duration| eprintln!("pg catalog: {label}: {d:?}");
    let mut first = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let p = c.list_files(&u, None, 100, 0).await.unwrap();
        first.push(t.elapsed());
        assert_eq!((p.files.len(), p.total_files), (100, 10_000));
    }
    first.sort();
    time("first page of 100 (median of 5)", first[2]);
    let t = Instant::now();
    let all = c.list_files(&u, None, 10_000, 0).await.unwrap();
    time("all 10,000 in one page", t.elapsed());
    assert_eq!(all.files.len(), 10_000);
    assert!(all
        .files
        .windows(2)
        .all(|w| w[0].created_at > w[1].created_at
            || (w[0].created_at == w[1].created_at && w[0].key.cmp_text(&w[1].key).is_lt())));
    let mut listed = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let l = c.list_listed(&u, None, 10_000, 0).await.unwrap();
        listed.push(t.elapsed());
        assert_eq!(l.files.len(), 10_000);
        assert_eq!(l.files[0].original_name, "f.bin");
    }
    listed.sort();
    time(
        "all 10,000, the listing's fields only (median of 5)",
        listed[2],
    );
    let t = Instant::now();
    let last = c.list_files(&u, None, 100, 9_900).await.unwrap();
    time("last page of 100 (offset 9,900)", t.elapsed());
    assert_eq!(last.files.len(), 100);
    let ten = FolderPath::sanitize("ten").unwrap();
    let t = Instant::now();
    let folder = c.list_files(&u, Some(&ten), 100, 0).await.unwrap();
    time("a folder of 1,000, first page", t.elapsed());
    assert_eq!(folder.total_files, 1_000);
    let t = Instant::now();
    c.usage(&u).await.unwrap();
    time("usage", t.elapsed());
}

#[tokio::test]
async fn pg_two_sweeps_at_once_remove_each_expired_session_exactly_once() {
    let db = TestDb::new().await;
    let (a, b) = (db.catalog(3).await, db.catalog(3).await);
    let mut expired = std::collections::BTreeSet::new();
    for i in 0..60 {
        // Three users, so the sweeps lock several quota rows.
        let s = session(&format!("sweep{}", i % 3), Some(10), hour());
        a.create_session(&s, 10, 1 << 20).await.unwrap();
        a.append_segment(s.upload_id, 0, 3, &hashes(1), Some(&json!({"part": i})))
            .await
            .unwrap();
        expired.insert(s.upload_id.to_string());
    }
    // One claimed (a complete in progress): not swept while its lease holds.
    let claimed = session("sweep1", Some(10), hour());
    a.create_session(&claimed, 10, 1 << 20).await.unwrap();
    a.claim(claimed.upload_id).await.unwrap();
    let live = session("sweep0", Some(10), hour() * 24);
    a.create_session(&live, 10, 1 << 20).await.unwrap();
    // Two hours on, the first 60 sessions have expired; the complete holding the claim is
    // still renewing it (its lease is judged by the database's clock, which set it).
    let now = Utc::now() + hour() * 2;
    let sweep = |c: PgCatalog| async move {
        let mut mine = Vec::new();
        loop {
            let got = c.sweep_expired(now, 7).await.unwrap();
            if got.is_empty() {
                return mine;
            }
            mine.extend(got);
        }
    };
    let (x, y) = tokio::join!(
        tokio::spawn(sweep(a.clone())),
        tokio::spawn(sweep(b.clone()))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut seen: Vec<String> = x
        .iter()
        .chain(&y)
        .map(|r| r.record.session.upload_id.to_string())
        .collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(total, seen.len(), "no session removed twice");
    assert_eq!(
        seen.into_iter().collect::<std::collections::BTreeSet<_>>(),
        expired
    );
    assert!(x.iter().chain(&y).all(|r| r.released == 10
        && r.segments.len() == 1
        && r.segments[0]
            .part_info
            .as_ref()
            .is_some_and(|p| p.get("part").is_some())));
    eprintln!("pg catalog: sweeps removed {} and {}", x.len(), y.len());
    for u in ["sweep0", "sweep1", "sweep2"] {
        let usage = a.usage(&user(u)).await.unwrap();
        let want = if u == "sweep2" { 0 } else { 10 };
        assert_eq!(usage.reserved, want, "{u}");
        assert_eq!(a.reconcile(&user(u)).await.unwrap(), usage);
    }
    assert_eq!(
        a.session(live.upload_id).await.unwrap().state,
        SessionState::Live
    );
    // Once its lease lapsed (the complete stopped renewing: it crashed), it goes too.
    sqlx::query("UPDATE sessions SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&claimed.upload_id.to_string()).unwrap())
        .execute(a.pool())
        .await
        .unwrap();
    let later = now + chrono::Duration::minutes(11);
    let swept = a.sweep_expired(later, 100).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].record.state, SessionState::Claimed);
    assert_eq!(a.usage(&user("sweep1")).await.unwrap().reserved, 0);
}

#[tokio::test]
async fn pg_signing_key_is_the_same_from_two_catalogs() {
    let db = TestDb::new().await;
    let (a, b) = (db.catalog(1).await, db.catalog(1).await);
    let (x, y) = tokio::join!(a.signing_key_get_or_create(), b.signing_key_get_or_create());
    let ((kx, ox), (ky, oy)) = (x.unwrap(), y.unwrap());
    assert_eq!(kx, ky);
    assert_eq!(kx.len(), 64);
    let made = [ox, oy].iter().filter(|o| **o == KeyOrigin::Made).count();
    assert_eq!(made, 1);
    let (again, origin) = a.signing_key_get_or_create().await.unwrap();
    assert_eq!((again, origin), (kx, KeyOrigin::Kept));
}

#[tokio::test]
async fn pg_batch_tokens_are_kept_until_they_expire() {
    let db = TestDb::new().await;
    let c = db.catalog(1).await;
    let batch = |expires_at| BatchToken {
        keys: vec!["storage/u/a.png".into(), "storage/u/a.png".into()],
        compress: true,
        requested_by: "u".into(),
        created_at: Utc::now(),
        expires_at,
    };
    let live = c.create_batch(&batch(Utc::now() + hour())).await.unwrap();
    let old = c.create_batch(&batch(Utc::now() - hour())).await.unwrap();
    assert_eq!(live.len(), 43);
    let got = c.batch(&live).await.unwrap();
    assert_eq!(got.keys.len(), 2);
    assert!(got.compress);
    for bad in [old.as_str(), "short", &"x".repeat(43)] {
        let e = store_err(c.batch(bad).await.unwrap_err());
        assert!(matches!(e, StoreError::NotFound(Missing::BatchToken)));
    }
    assert_eq!(c.sweep_batches(Utc::now()).await.unwrap(), 1);
    assert!(c.delete_batch(&live).await.unwrap());
    assert!(!c.delete_batch(&live).await.unwrap());
}

/// Regression (review of session 8): a part commit holds its session's row while it sends
/// the part to the bucket, and every other commit of the session waited on that row lock
/// inside a transaction, each holding a pooled connection: a few parallel parts drained the
/// instance's pool and stalled every other request. They poll now, holding none, and a
/// complete's claim finds the session busy instead of blocking.
#[tokio::test]
async fn pg_waiting_for_a_session_a_part_commit_holds_takes_no_connection() {
    let db = TestDb::new().await;
    let a = db.catalog(2).await;
    let b = db.catalog(2).await;
    let s = session("locker", Some(10), hour());
    a.create_session(&s, 10, 1 << 20).await.unwrap();
    let id = s.upload_id;
    let held = a.lock_parts(id).await.unwrap();
    // Five more commits of the session wait on the same instance, whose pool has one
    // connection left...
    let waiting: Vec<_> = (0..5)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.lock_parts(id).await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... which still serves everything else.
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), a.usage(&user("locker")))
            .await
            .expect("the waiting commits drained the pool")
            .unwrap();
    }
    let claim = tokio::time::timeout(Duration::from_secs(5), b.claim(id))
        .await
        .expect("a claim blocked behind a part commit")
        .unwrap();
    assert!(matches!(claim, Claim::Lost(SessionState::Claimed)));
    // Given back, the lock goes to each waiting commit in turn, then to a claim.
    drop(held);
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    assert!(matches!(b.claim(id).await.unwrap(), Claim::Won(..)));
}
