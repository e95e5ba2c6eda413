//! The S3 bytes module (`store::s3`) against a real S3 server that keeps bytes on disk:
//! `s3s-fs` (`s3_server`), one per test, on 127.0.0.1 with a temp root.

use std::time::{Duration, Instant};

use crate::s3_server::{S3Server as S3Fs, ACCESS_KEY, BUCKET, SECRET_KEY};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use upload_server::store::s3::{
    Assembly, GetRange, PartInfo, S3Bytes, S3Config, S3Error, DEFAULT_BUFFER_BUDGET,
};
use upload_server::store::sink::Sink;

const MIB: usize = 1 << 20;

/// The test S3 server, with what these tests ask of it.
trait S3FsExt {
    fn config(&self) -> S3Config;
    async fn client(&self) -> S3Bytes;
    async fn assert_no_open_uploads(&self);
}

impl S3FsExt for S3Fs {
    fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SecretString::from(SECRET_KEY),
            prefix: "tenant-a".into(),
            path_style: true,
            allow_http: true,
            buffer_budget: DEFAULT_BUFFER_BUDGET,
        }
    }

    /// A new client, as another instance would make.
    async fn client(&self) -> S3Bytes {
        S3Bytes::connect(&self.config()).await.unwrap()
    }

    /// Waits (up to 5 s) for the server to hold no open multipart upload: aborts of
    /// dropped writes run on a spawned task.
    async fn assert_no_open_uploads(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.open_uploads() > 0 {
            assert!(
                Instant::now() < deadline,
                "a multipart upload was left open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `n` bytes that do not repeat in any short period (xorshift).
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn local_hashes(b: &[u8]) -> (String, u32) {
    (hex::encode(Sha256::digest(b)), crc32fast::hash(b))
}

/// A body of `chunk`-sized pieces, as a request would stream it.
fn body(
    b: &[u8],
    chunk: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let pieces: Vec<Result<Bytes, std::io::Error>> = b
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(pieces)
}

async fn read_all(s3: &S3Bytes, key: &str, range: Option<GetRange>) -> Vec<u8> {
    let got = s3.get_range(key, range).await.unwrap();
    let chunks: Vec<Bytes> = got.stream.try_collect().await.unwrap();
    chunks.concat()
}

const KEY: &str = "storage/u1/photos/0a1b2c3d_holiday.jpg";

#[tokio::test]
async fn put_stream_small_is_one_put_with_the_right_hashes() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let bytes = data(300_001, 1);

    let w = s3
        .put_stream(KEY, body(&bytes, 64 * 1024), 1 << 30)
        .await
        .unwrap();

    assert_eq!(w.size, bytes.len() as u64);
    assert_eq!((w.sha256, w.crc32), local_hashes(&bytes));
    assert_eq!(read_all(&s3, KEY, None).await, bytes);
    // The bucket holds the same tree as UPLOAD_ROOT/storage, below the prefix.
    assert!(srv.file(&format!("tenant-a/{KEY}")).is_file());
    assert_eq!(s3.head(KEY).await.unwrap().size, bytes.len() as u64);
}

#[tokio::test]
async fn put_stream_large_goes_in_parts_with_the_right_hashes() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let bytes = data(12 * MIB + 7, 2);

    let w = s3
        .put_stream(KEY, body(&bytes, 64 * 1024), 1 << 30)
        .await
        .unwrap();

    assert_eq!(w.size, bytes.len() as u64);
    assert_eq!((w.sha256, w.crc32), local_hashes(&bytes));
    assert_eq!(read_all(&s3, KEY, None).await, bytes);
    // A multipart ETag ends in "-{parts}": 5 MiB, then the last 7 MiB + 7 bytes.
    let etag = s3.head(KEY).await.unwrap().etag.unwrap();
    assert!(etag.trim_matches('"').ends_with("-2"), "{etag}");
    assert_eq!(srv.open_uploads(), 0);
}

/// Parts go out beside each other while the budget has room (several in flight), one at a
/// time when it has only the writer's share: either way in order, whole, the budget given
/// back, and a body failing with parts in flight leaves no upload open.
#[tokio::test]
async fn put_stream_with_parts_in_flight_keeps_their_order_and_the_budget() {
    let srv = S3Fs::start();
    let bytes = data(40 * MIB + 3, 9);
    for budget in [DEFAULT_BUFFER_BUDGET, 0] {
        let s3 = S3Bytes::connect(&S3Config {
            buffer_budget: budget,
            ..srv.config()
        })
        .await
        .unwrap();
        let free = s3.budget().free_writers();
        let w = s3
            .put_stream(KEY, body(&bytes, 256 * 1024), 1 << 30)
            .await
            .unwrap();
        assert_eq!((w.sha256, w.crc32), local_hashes(&bytes), "budget {budget}");
        assert_eq!(read_all(&s3, KEY, None).await, bytes, "budget {budget}");
        // Seven parts of 5 MiB, the last of 5 MiB + 3 bytes.
        let etag = s3.head(KEY).await.unwrap().etag.unwrap();
        assert!(etag.trim_matches('"').ends_with("-8"), "{etag}");
        assert_eq!(s3.budget().free_writers(), free, "the budget is given back");
        assert_eq!(srv.open_uploads(), 0);

        let failing = body(&bytes[..30 * MIB], 256 * 1024).chain(stream::once(async {
            Err(std::io::Error::other("connection reset"))
        }));
        let err = s3.put_stream("other", failing, 1 << 30).await.unwrap_err();
        assert!(matches!(err, S3Error::Body(_)), "{err:?}");
        srv.assert_no_open_uploads().await;
        assert!(matches!(s3.head("other").await, Err(S3Error::NotFound)));
        // The parts still in flight when it failed give their share back as they stop.
        let deadline = Instant::now() + Duration::from_secs(5);
        while s3.budget().free_writers() != free {
            assert!(Instant::now() < deadline, "budget not given back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn put_stream_over_the_limit_or_failing_leaves_nothing() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let bytes = data(11 * MIB, 3);

    // Over the limit, after a part went out.
    let err = s3
        .put_stream(KEY, body(&bytes, 256 * 1024), 10 * MIB as u64 + 1)
        .await
        .unwrap_err();
    assert!(matches!(err, S3Error::TooLarge), "{err:?}");
    srv.assert_no_open_uploads().await;

    // The body fails midway (a client that went away).
    let failing = body(&bytes, 256 * 1024).chain(stream::once(async {
        Err(std::io::Error::other("connection reset"))
    }));
    let err = s3.put_stream(KEY, failing, 1 << 30).await.unwrap_err();
    assert!(matches!(err, S3Error::Body(_)), "{err:?}");
    srv.assert_no_open_uploads().await;

    assert!(matches!(s3.head(KEY).await, Err(S3Error::NotFound)));
}

#[tokio::test]
async fn put_stream_dropped_midway_aborts_its_upload() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let bytes = data(11 * MIB, 4);
    // 11 MiB, then a body that never ends.
    let stalled = body(&bytes, 256 * 1024).chain(stream::pending());
    let writer = s3.clone();
    let write = tokio::spawn(async move { writer.put_stream(KEY, stalled, 1 << 30).await });
    // A part goes out once 10 MiB are buffered: the multipart upload is open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.open_uploads() == 0 {
        assert!(Instant::now() < deadline, "no multipart upload was begun");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The client goes away: the request's future is dropped.
    write.abort();
    assert!(write.await.unwrap_err().is_cancelled());

    srv.assert_no_open_uploads().await;
    assert!(matches!(s3.head(KEY).await, Err(S3Error::NotFound)));
}

/// Writes `bytes` into `sink` in 256 KiB chunks.
async fn fill(sink: &mut Sink, bytes: &[u8]) {
    for c in bytes.chunks(256 * 1024) {
        sink.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
}

/// Waits (up to 10 s) for `cond`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A one-request upload's spool goes to the bucket while its sink still writes it: parts
/// leave once the file holds two parts past them, and while the writer waits (a client
/// that stalls) no part buffer is held. Once the file is whole the object has the right
/// bytes and hashes.
#[tokio::test]
async fn put_spool_sends_parts_while_the_file_grows_and_holds_nothing_while_it_waits() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let bytes = data(23 * MIB + 5, 10);
    let free = s3.budget().free_writers();

    let mut sink = Sink::spool(path.clone(), 1 << 30).await.unwrap();
    let progress = sink.watch();
    let (sender, at) = (s3.clone(), path.clone());
    let send = tokio::spawn(async move { sender.put_spool(KEY, &at, progress, 1 << 30).await });
    // 16 MiB on disk: two parts of 8 MiB went, then the sender waits for 24 MiB. The
    // upload is open, its parts' memory given back.
    fill(&mut sink, &bytes[..16 * MIB]).await;
    eventually("no multipart upload begun while the file grows", || {
        srv.open_uploads() == 1
    })
    .await;
    eventually("the sender holds budget while it waits", || {
        s3.budget().free_writers() == free
    })
    .await;
    assert!(!send.is_finished());
    assert!(matches!(s3.head(KEY).await, Err(S3Error::NotFound)));

    fill(&mut sink, &bytes[16 * MIB..]).await;
    let (size, spool) = sink.close().await.unwrap();
    assert_eq!(size, bytes.len() as u64);
    let w = send.await.unwrap().unwrap();
    drop(spool);
    assert_eq!(w.size, bytes.len() as u64);
    assert_eq!((w.sha256, w.crc32), local_hashes(&bytes));
    assert_eq!(read_all(&s3, KEY, None).await, bytes);
    // Parts of 8 MiB at 0 and 8 MiB, then the last 7 MiB + 5 bytes.
    let etag = s3.head(KEY).await.unwrap().etag.unwrap();
    assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");
    assert_eq!(srv.open_uploads(), 0);
    assert_eq!(s3.budget().free_writers(), free);
    assert!(!path.exists(), "the spool file is removed with its guard");
}

/// A spool whose sink stops before the file is whole (the client went away), one over the
/// limit, and small or empty ones (one PUT, no multipart upload); a spool already whole
/// is sent as it is.
#[tokio::test]
async fn put_spool_cut_short_or_too_large_leaves_nothing_and_small_ones_are_one_put() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(13 * MIB, 11);

    // Cut after a part went out: the upload is aborted, nothing is stored.
    let path = dir.path().join("cut");
    let mut sink = Sink::spool(path.clone(), 1 << 30).await.unwrap();
    let progress = sink.watch();
    let (sender, at) = (s3.clone(), path.clone());
    let send = tokio::spawn(async move { sender.put_spool(KEY, &at, progress, 1 << 30).await });
    fill(&mut sink, &bytes).await;
    eventually("no multipart upload begun", || srv.open_uploads() == 1).await;
    drop(sink);
    let err = send.await.unwrap().unwrap_err();
    assert!(matches!(err, S3Error::Body(_)), "{err:?}");
    srv.assert_no_open_uploads().await;
    assert!(matches!(s3.head(KEY).await, Err(S3Error::NotFound)));
    assert!(!path.exists());

    // Over the limit: TooLarge, nothing stored.
    let path = dir.path().join("large");
    let mut sink = Sink::spool(path.clone(), 1 << 30).await.unwrap();
    let progress = sink.watch();
    let (sender, at) = (s3.clone(), path.clone());
    let limit = 12 * MIB as u64;
    let send = tokio::spawn(async move { sender.put_spool(KEY, &at, progress, limit).await });
    fill(&mut sink, &bytes).await;
    let (_, spool) = sink.close().await.unwrap();
    let err = send.await.unwrap().unwrap_err();
    drop(spool);
    assert!(matches!(err, S3Error::TooLarge), "{err:?}");
    srv.assert_no_open_uploads().await;
    assert!(matches!(s3.head(KEY).await, Err(S3Error::NotFound)));

    // Whole before the send starts, under two parts, and empty: one PUT each.
    for (n, len) in [(0, 9 * MIB + 1), (1, 0)] {
        let path = dir.path().join(format!("whole-{n}"));
        let mut sink = Sink::spool(path.clone(), 1 << 30).await.unwrap();
        let progress = sink.watch();
        fill(&mut sink, &bytes[..len]).await;
        let (size, _spool) = sink.close().await.unwrap();
        assert_eq!(size, len as u64);
        let key = format!("{KEY}.{n}");
        let w = s3.put_spool(&key, &path, progress, 1 << 30).await.unwrap();
        assert_eq!((w.sha256, w.crc32), local_hashes(&bytes[..len]));
        assert_eq!(read_all(&s3, &key, None).await, &bytes[..len]);
        let etag = s3.head(&key).await.unwrap().etag.unwrap();
        assert!(!etag.contains('-'), "one PUT: {etag}");
    }
    assert_eq!(srv.open_uploads(), 0);
}

#[tokio::test]
async fn the_server_refuses_small_parts_which_is_why_they_are_staged() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let id = s3.begin_multipart(KEY).await.unwrap();
    let mut parts = Vec::new();
    for n in 1..=2 {
        let part = Bytes::from(data(MIB, n.into()));
        parts.push(s3.put_part(KEY, &id, n, part).await.unwrap());
    }

    let err = s3.complete(KEY, &id, &parts).await.unwrap_err();

    assert!(err.to_string().contains("EntityTooSmall"), "{err}");
    // s3s-fs forgets the upload when it refuses the complete (AWS keeps it open for
    // another try); aborting counts either as done.
    s3.abort_uploads(&[(KEY.to_owned(), id)]).await.unwrap();
    assert_eq!(srv.open_uploads(), 0);
}

#[tokio::test]
async fn a_multipart_upload_goes_on_from_another_client() {
    let srv = S3Fs::start();
    let (a, b, c) = (srv.client().await, srv.client().await, srv.client().await);
    let bytes = data(6 * MIB + 3, 5);

    // Instance A begins and sends part 1; what the catalog keeps is plain JSON.
    let id = a.begin_multipart(KEY).await.unwrap();
    let p1 = a
        .put_part(KEY, &id, 1, Bytes::copy_from_slice(&bytes[..5 * MIB]))
        .await
        .unwrap();
    let stored = serde_json::to_string(&(&id, vec![&p1])).unwrap();
    // Instance B sends part 2.
    let (id, mut parts): (_, Vec<PartInfo>) = serde_json::from_str(&stored).unwrap();
    let p2 = b
        .put_part(KEY, &id, 2, Bytes::copy_from_slice(&bytes[5 * MIB..]))
        .await
        .unwrap();
    parts.push(p2);
    // Instance C completes, parts given in any order.
    parts.reverse();
    c.complete(KEY, &id, &parts).await.unwrap();

    assert_eq!(read_all(&c, KEY, None).await, bytes);
    assert_eq!(
        parts.iter().map(|p| p.size).sum::<u64>(),
        bytes.len() as u64
    );
    assert_eq!(srv.open_uploads(), 0);
    // Gaps are refused before the server is asked.
    let id = a.begin_multipart("storage/u1/other").await.unwrap();
    let p = a
        .put_part("storage/u1/other", &id, 2, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let err = a.complete("storage/u1/other", &id, &[p]).await.unwrap_err();
    assert!(matches!(err, S3Error::Invalid(_)), "{err:?}");
    a.abort("storage/u1/other", &id).await.unwrap();
    assert_eq!(srv.open_uploads(), 0);
}

/// Carries an assembly through JSON, as the catalog stores it between requests.
fn through_catalog(a: &Assembly) -> Assembly {
    serde_json::from_str(&serde_json::to_string(a).unwrap()).unwrap()
}

#[tokio::test]
async fn small_parts_are_staged_then_combined_across_instances() {
    let srv = S3Fs::start();
    let clients = [srv.client().await, srv.client().await, srv.client().await];
    let bytes = data(12 * MIB, 6);
    let session = "0b8e4c1a-33f4-4b0e-9d7a-1f2e3d4c5b6a";

    let mut a = clients[0]
        .begin_assembly(KEY, session, Some(bytes.len() as u64))
        .await
        .unwrap();
    for (i, part) in bytes.chunks(MIB).enumerate() {
        // Each 1 MiB part reaches another instance.
        let s3 = &clients[i % 3];
        let out = s3
            .append(&through_catalog(&a), body(part, 64 * 1024), 1 << 30)
            .await
            .unwrap();
        // The catalog stores the new state, then removes what it no longer needs.
        a = out.assembly;
        s3.remove_staged(&out.obsolete).await.unwrap();
        if i == 2 {
            // Three parts staged, none sent yet, each staging object on the server.
            assert_eq!(a.parts.len(), 0);
            assert_eq!(a.staged.len(), 3);
            for s in &a.staged {
                assert!(s
                    .object
                    .starts_with(&format!("tenant-a/.staging/{session}/")));
                assert!(srv.file(&s.object).is_file());
            }
        }
    }
    // 5 + 5 MiB, then the last 2 MiB (the declared length ended it).
    let sizes: Vec<u64> = a.parts.iter().map(|p| p.size).collect();
    assert_eq!(sizes, [5 * MIB as u64, 5 * MIB as u64, 2 * MIB as u64]);
    assert!(a.staged.is_empty());

    let w = clients[1].finish(&through_catalog(&a)).await.unwrap();

    assert_eq!(w.size, bytes.len() as u64);
    assert_eq!((w.sha256, w.crc32), local_hashes(&bytes));
    assert_eq!(read_all(&clients[2], KEY, None).await, bytes);
    let left: Vec<_> = clients[0]
        .list_prefix(".staging")
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "staging objects left: {left:?}");
    assert_eq!(srv.open_uploads(), 0);
}

#[tokio::test]
async fn large_parts_in_order_go_straight_and_out_of_order_parts_wait_staged() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let bytes = data(13 * MIB + 5, 7);
    let (p1, rest) = bytes.split_at(6 * MIB);
    let (p2, p3) = rest.split_at(6 * MIB);
    // Length deferred (tus): nothing says which part is the last.
    let a = s3.begin_assembly(KEY, "s1", None).await.unwrap();

    // Part 3 arrives first: stored apart, hashed alone.
    let early = s3
        .stage_part("s1", body(p3, 64 * 1024), 1 << 30)
        .await
        .unwrap();
    assert_eq!(early.size, p3.len() as u64);
    assert_eq!((early.sha256.clone(), early.crc32), local_hashes(p3));
    // Parts 1 and 2 (6 MiB each, in order) become S3 parts directly: nothing staged.
    let out = s3.append(&a, body(p1, 64 * 1024), 1 << 30).await.unwrap();
    let out = s3
        .append(&out.assembly, body(p2, 64 * 1024), 1 << 30)
        .await
        .unwrap();
    let sizes: Vec<u64> = out.assembly.parts.iter().map(|p| p.size).collect();
    assert_eq!(sizes, [6 * MIB as u64, 6 * MIB as u64]);
    assert!(out.assembly.staged.is_empty() && out.obsolete.is_empty());
    // Part 3's turn: read back, and staged as the short tail (the length is unknown).
    let out = s3
        .append_staged(&out.assembly, &early, 1 << 30)
        .await
        .unwrap();
    assert_eq!(out.obsolete, std::slice::from_ref(&early.object));
    assert_eq!(out.assembly.staged.len(), 1);

    let w = s3.finish(&out.assembly).await.unwrap();

    assert_eq!((w.size, w.sha256, w.crc32), {
        let (s, c) = local_hashes(&bytes);
        (bytes.len() as u64, s, c)
    });
    assert_eq!(read_all(&s3, KEY, None).await, bytes);
    assert!(!srv.file(&early.object).exists());
    assert!(!srv.file(&out.assembly.staged[0].object).exists());
}

#[tokio::test]
async fn appends_past_the_declared_length_and_aborts_leave_nothing() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let a = s3.begin_assembly(KEY, "s2", Some(10)).await.unwrap();
    let err = s3
        .append(&a, body(&data(11, 8), 4), 1 << 30)
        .await
        .unwrap_err();
    assert!(matches!(err, S3Error::TooLarge), "{err:?}");

    let b = s3.begin_assembly(KEY, "s3", None).await.unwrap();
    let out = s3
        .append(&b, body(&data(1000, 9), 100), 1 << 30)
        .await
        .unwrap();
    assert_eq!(out.assembly.staged.len(), 1);
    s3.abort_assembly(&out.assembly).await.unwrap();
    s3.abort_assembly(&a).await.unwrap();
    // Aborting again is harmless.
    s3.abort_assembly(&a).await.unwrap();

    assert_eq!(srv.open_uploads(), 0);
    assert!(!srv.file(&out.assembly.staged[0].object).exists());
    assert!(matches!(s3.head(KEY).await, Err(S3Error::NotFound)));

    // An empty file: no append at all, then finish.
    let empty = s3.begin_assembly(KEY, "s4", Some(0)).await.unwrap();
    let w = s3.finish(&empty).await.unwrap();
    assert_eq!((w.size, (w.sha256, w.crc32)), (0, local_hashes(b"")));
    assert_eq!(s3.head(KEY).await.unwrap().size, 0);
    assert_eq!(srv.open_uploads(), 0);
}

#[tokio::test]
async fn ranges_stream_and_past_the_end_is_refused() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let bytes = data(1000, 10);
    s3.put_stream(KEY, body(&bytes, 300), 1 << 20)
        .await
        .unwrap();

    assert_eq!(
        read_all(&s3, KEY, Some(GetRange::Bounded(0..1))).await,
        &bytes[..1]
    );
    let mid = s3
        .get_range(KEY, Some(GetRange::Bounded(100..200)))
        .await
        .unwrap();
    assert_eq!((mid.range.clone(), mid.size), (100..200, 1000));
    let mid: Vec<Bytes> = mid.stream.try_collect().await.unwrap();
    assert_eq!(mid.concat(), &bytes[100..200]);
    assert_eq!(
        read_all(&s3, KEY, Some(GetRange::Suffix(10))).await,
        &bytes[990..]
    );
    assert_eq!(
        read_all(&s3, KEY, Some(GetRange::Offset(995))).await,
        &bytes[995..]
    );
    // A range running past the end is cut there.
    assert_eq!(
        read_all(&s3, KEY, Some(GetRange::Bounded(990..5000))).await,
        &bytes[990..]
    );

    for past in [GetRange::Offset(1000), GetRange::Bounded(2000..3000)] {
        let err = s3.get_range(KEY, Some(past)).await.unwrap_err();
        assert!(matches!(err, S3Error::Range { size: 1000 }), "{err:?}");
    }
    let err = s3.get_range("storage/u1/missing", None).await.unwrap_err();
    assert!(matches!(err, S3Error::NotFound), "{err:?}");
}

#[tokio::test]
async fn a_presigned_get_serves_the_bytes_and_a_tampered_one_is_refused() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let bytes = data(70_000, 11);
    s3.put_stream(KEY, body(&bytes, 8192), 1 << 20)
        .await
        .unwrap();

    let url = s3
        .presigned_get(KEY, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!url.as_str().contains(SECRET_KEY));
    let http = reqwest::Client::new();
    let res = http.get(url.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap(), bytes);

    // Another signature, or the same one for another object, is refused.
    let sig = url
        .query_pairs()
        .find(|(k, _)| k == "X-Amz-Signature")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    let tampered = url.as_str().replace(&sig, &flipped);
    let res = http.get(&tampered).send().await.unwrap();
    assert_eq!(res.status(), 403, "{}", res.text().await.unwrap());
    let other = url.as_str().replace("holiday.jpg", "holiday.png");
    let res = http.get(&other).send().await.unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn delete_removes_the_file_and_its_sidecar_and_sidecars_are_written_once() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    let sidecar = format!("{KEY}.meta");
    s3.put_stream(KEY, body(b"hello", 5), 100).await.unwrap();
    s3.put_if_absent(&sidecar, Bytes::from_static(b"{\"v\":1}"))
        .await
        .unwrap();

    let again = s3
        .put_if_absent(&sidecar, Bytes::from_static(b"{\"v\":2}"))
        .await
        .unwrap_err();
    assert!(matches!(again, S3Error::AlreadyExists), "{again:?}");
    assert_eq!(read_all(&s3, &sidecar, None).await, b"{\"v\":1}");

    s3.delete(KEY).await.unwrap();
    assert!(matches!(s3.head(KEY).await, Err(S3Error::NotFound)));
    assert!(matches!(s3.head(&sidecar).await, Err(S3Error::NotFound)));
    assert!(!srv.file(&format!("tenant-a/{sidecar}")).exists());
    // Deleting what is gone is fine (a retried delete).
    s3.delete(KEY).await.unwrap();
}

#[tokio::test]
async fn listing_and_the_sweep_helpers() {
    let srv = S3Fs::start();
    let s3 = srv.client().await;
    for key in ["storage/u1/a_1", "storage/u1/f/b_2", "storage/u10/c_3"] {
        s3.put_stream(key, body(b"x", 1), 10).await.unwrap();
    }
    let mut u1: Vec<String> = s3
        .list_prefix("storage/u1")
        .map_ok(|o| o.location)
        .try_collect()
        .await
        .unwrap();
    u1.sort();
    // On a `/` boundary: u10 is not u1's.
    assert_eq!(u1, ["tenant-a/storage/u1/a_1", "tenant-a/storage/u1/f/b_2"]);

    // A session a crash ended: its staging object and its upload id.
    let a = s3.begin_assembly(KEY, "crashed", None).await.unwrap();
    let out = s3.append(&a, body(b"tail", 2), 100).await.unwrap();
    assert!(s3
        .list_orphans(Duration::from_secs(3600))
        .await
        .unwrap()
        .is_empty());
    let orphans = s3.list_orphans(Duration::ZERO).await.unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].session, "crashed");
    assert_eq!(orphans[0].objects, [out.assembly.staged[0].object.clone()]);
    assert_eq!(orphans[0].bytes, 4);
    s3.clear_staging(&orphans[0].session).await.unwrap();
    assert!(s3.list_orphans(Duration::ZERO).await.unwrap().is_empty());

    let remembered = [(KEY.to_owned(), a.upload_id.clone())];
    assert_eq!(s3.abort_uploads(&remembered).await.unwrap(), 1);
    assert_eq!(s3.abort_uploads(&remembered).await.unwrap(), 0);
    assert_eq!(srv.open_uploads(), 0);
}

#[tokio::test]
async fn connect_names_the_wrong_setting_and_never_prints_the_secret() {
    let srv = S3Fs::start();
    let ok = srv.config();
    let s3 = S3Bytes::connect(&ok).await.unwrap();
    s3.health().await.unwrap();
    for shown in [format!("{ok:?}"), format!("{s3:?}")] {
        assert!(!shown.contains(SECRET_KEY), "{shown}");
    }

    let cases = [
        (
            S3Config {
                bucket: "nope".into(),
                ..srv.config()
            },
            "S3_BUCKET",
        ),
        (
            S3Config {
                secret_access_key: SecretString::from("wrong"),
                ..srv.config()
            },
            "S3_SECRET_ACCESS_KEY",
        ),
        (
            S3Config {
                endpoint: Some("http://127.0.0.1:9".into()),
                ..srv.config()
            },
            "S3_ENDPOINT",
        ),
        (
            S3Config {
                allow_http: false,
                ..srv.config()
            },
            "S3_ENDPOINT",
        ),
    ];
    for (cfg, setting) in cases {
        let started = Instant::now();
        let err = S3Bytes::connect(&cfg).await.unwrap_err().to_string();
        assert!(err.contains(setting), "{setting}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(!err.contains(SECRET_KEY) && !err.contains("wrong"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{setting} took long"
        );
    }
}
