//! `STORAGE_BACKEND=s3`: the catalog in PostgreSQL (`pg`), the bytes in a bucket (`s3`), for
//! any number of instances. The bucket holds the tree of `UPLOAD_ROOT/storage`: object key =
//! file key, the sidecar JSON beside it at `key.meta`; the catalog row is what makes a file
//! visible (a file is listed and served only once its row is committed, after its bytes and
//! sidecar are in the bucket and checked).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use serde_json::{Map, Value};

use super::batch::BatchToken;
use super::key::{ClientFileName, FolderPath, Key, UserId};
use super::pg::{FileRecord, PgCatalog, SessionState};
use super::publish::check_sha;
use super::read::{FileEntry, Listed};
use super::s3::{GetRange, Ranged, S3Bytes, S3Error};
use super::sessions::{FileSpec, Session, SessionId, UploadMode};
use super::sidecar::Meta;
use super::sink::Sink;
use super::{Missing, StoreError, Stored};
use crate::config::CloudSettings;
use crate::zip_stream::Source;

mod parts;

/// How long a presigned read URL (`S3_PRESIGN_READS=1`) stays valid.
pub const PRESIGN_TTL: Duration = Duration::from_secs(300);

/// How long a complete waits for another complete of the same session (on any instance)
/// before answering 423: under the 60 s a proxy commonly waits for an answer.
pub const COMPLETE_WAIT: Duration = Duration::from_secs(45);

/// How often a waiting complete looks at the claim.
const CLAIM_POLL: Duration = Duration::from_millis(250);

/// The bucket and the catalog together.
#[derive(Clone)]
pub struct CloudStore {
    pub(super) bytes: S3Bytes,
    pub(super) catalog: PgCatalog,
    pub(super) quota: u64,
    presign_reads: bool,
    pub(super) limits: Limits,
    /// Expired sessions this instance's sweeps removed (`/metrics`).
    swept: Arc<std::sync::atomic::AtomicU64>,
    /// This instance's part commits, queued per session.
    pub(super) turns: Turns,
}

/// Per session, this instance's part commits and aborts in a queue, first come first
/// served: each waits for its turn here holding nothing (no memory, no connection), and only
/// then asks PostgreSQL for the session's row, which commits on other instances share by
/// polling. Without the queue, commits of one session polling side by side on one instance
/// could overtake one another until one gave up.
#[derive(Clone, Default)]
pub(super) struct Turns(Arc<Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>>);

/// A commit's turn on its session, given to the next when dropped.
pub(super) struct Turn {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    turns: Turns,
    id: SessionId,
}

impl Turns {
    /// Waits for session `id`'s turn.
    pub(super) async fn take(&self, id: SessionId) -> Turn {
        let queue = match self.0.lock() {
            Ok(mut map) => map.entry(id).or_default().clone(),
            Err(poisoned) => poisoned.into_inner().entry(id).or_default().clone(),
        };
        Turn {
            guard: Some(queue.lock_owned().await),
            turns: self.clone(),
            id,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        // The last one out removes the session's queue (a waiter holds a handle on it).
        if let Ok(mut map) = self.turns.0.lock() {
            if map.get(&self.id).is_some_and(|q| Arc::strong_count(q) == 1) {
                map.remove(&self.id);
            }
        }
    }
}

/// What the settings bound, and where parts wait on the local disk.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `MAX_BODY_MB` in bytes: the largest file.
    pub max_file: u64,
    /// `UPLOAD_SESSION_TTL_HOURS`.
    pub session_ttl: Duration,
    /// A folder for parts on their way to the bucket (`UPLOAD_ROOT/.spool`).
    pub spool: PathBuf,
}

impl std::fmt::Debug for CloudStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudStore")
            .field("catalog", &self.catalog)
            .field("quota", &self.quota)
            .field("presign_reads", &self.presign_reads)
            .finish_non_exhaustive()
    }
}

/// Which backend is down (`/healthz`, start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// `database` or `object storage`.
    pub backend: &'static str,
    /// Why, in one line, naming the setting to look at (never a secret).
    pub reason: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.backend, self.reason)
    }
}

impl From<S3Error> for StoreError {
    fn from(e: S3Error) -> Self {
        match e {
            S3Error::NotFound => Self::NotFound(Missing::File),
            S3Error::TooLarge => Self::TooLarge,
            S3Error::Body(io) => Self::Io(io),
            other => Self::Backend(format!("object storage: {other}")),
        }
    }
}

impl CloudStore {
    /// Connects to the database (applying its migrations) and to the bucket, each checked:
    /// the first that cannot be reached is named.
    pub async fn connect(
        s: &CloudSettings,
        quota: u64,
        limits: Limits,
    ) -> Result<Self, Unreachable> {
        use secrecy::ExposeSecret as _;
        std::fs::create_dir_all(&limits.spool).map_err(|e| Unreachable {
            backend: "local disk",
            reason: format!("UPLOAD_ROOT: cannot make {}: {e}", limits.spool.display()),
        })?;
        let catalog = PgCatalog::connect(s.database_url.expose_secret(), s.pool_size)
            .await
            .map_err(|e| Unreachable {
                backend: "database",
                reason: e.to_string(),
            })?;
        let bytes = S3Bytes::connect(&s.s3).await.map_err(|e| Unreachable {
            backend: "object storage",
            reason: e.to_string(),
        })?;
        Ok(Self {
            bytes,
            catalog,
            quota,
            presign_reads: s.presign_reads,
            limits,
            swept: Arc::default(),
            turns: Turns::default(),
        })
    }

    /// The catalog (signing key, tools).
    pub fn catalog(&self) -> &PgCatalog {
        &self.catalog
    }

    /// The bucket.
    pub fn bytes(&self) -> &S3Bytes {
        &self.bytes
    }

    /// Expired sessions this instance's sweeps removed.
    pub fn expired_sessions_swept(&self) -> u64 {
        self.swept.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether reads answer with a presigned URL.
    pub fn presign_reads(&self) -> bool {
        self.presign_reads
    }

    /// Both backends answering? The first that does not, named.
    pub async fn health(&self) -> Result<(), Unreachable> {
        let (db, s3) = tokio::join!(self.catalog.health(), self.bytes.health());
        db.map_err(|e| Unreachable {
            backend: "database",
            reason: e.to_string(),
        })?;
        s3.map_err(|e| Unreachable {
            backend: "object storage",
            reason: e.to_string(),
        })
    }

    /// The catalog's entry for `key`.
    pub async fn entry(&self, key: &Key) -> Result<FileEntry, StoreError> {
        Ok(entry_of(self.catalog.file(key).await?))
    }

    /// A page of `user`'s files (with `folder`: that folder and its subfolders), newest first.
    pub async fn list_page(
        &self,
        user: &UserId,
        folder: Option<&FolderPath>,
        offset: u64,
        limit: u64,
    ) -> Result<Page, StoreError> {
        // "All of them" is as many as a bigint counts.
        let cap = i64::MAX as u64;
        let page = self
            .catalog
            .list_listed(user, folder, limit.min(cap), offset.min(cap))
            .await?;
        Ok(Page {
            total_count: page.total_files,
            total_size: page.total_bytes,
            files: page.files,
        })
    }

    /// Removes the file: its row first (it stops being visible and its bytes leave the
    /// quota at once), then its object and sidecar.
    pub async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.catalog.delete_file(key).await?;
        if let Err(e) = self.bytes.delete(&key.to_string()).await {
            // The row is gone: the object is an orphan the sweep removes.
            tracing::warn!(key = %key, error = %e, "deleted from the catalog, not yet from the bucket");
        }
        Ok(())
    }

    /// Replaces the sidecar: the object beside the file, then the row.
    pub async fn update_meta(&self, key: &Key, meta: Meta) -> Result<(), StoreError> {
        self.catalog.file(key).await?;
        let json = Bytes::from(meta.to_json()?);
        let sidecar = format!("{key}.meta");
        self.bytes
            .put_stream(
                &sidecar,
                futures_util::stream::iter([Ok::<_, std::io::Error>(json)]),
                u64::MAX,
            )
            .await?;
        self.catalog.update_meta(key, &meta).await?;
        Ok(())
    }

    /// Bytes stored and reserved by `user`.
    pub async fn usage(&self, user: &UserId) -> Result<(u64, u64), StoreError> {
        let u = self.catalog.usage(user).await?;
        Ok((u.used, u.reserved))
    }

    /// The bytes `start..end` of the file at `key`, streamed from the bucket.
    pub async fn read_range(&self, key: &Key, start: u64, end: u64) -> Result<Ranged, StoreError> {
        Ok(self
            .bytes
            .get_range(&key.to_string(), Some(GetRange::Bounded(start..end)))
            .await?)
    }

    /// A URL of the object that works without credentials for [`PRESIGN_TTL`].
    pub async fn presigned(&self, key: &Key) -> Result<url::Url, StoreError> {
        Ok(self
            .bytes
            .presigned_get(&key.to_string(), PRESIGN_TTL)
            .await?)
    }
}

/// Quota is reserved ahead of the bytes: at least this much more at a time.
const RESERVE_STEP: u64 = 8 << 20;
/// ... and at most this much more: the step doubles with the reservation up to it (a 1 GiB
/// upload takes 35 reservations, not 128), while what is reserved ahead of the bytes, which
/// another upload of the same user cannot have, stays small.
const RESERVE_MAX_STEP: u64 = 32 << 20;

/// The reservation `reserved` of `user`'s upload `id` grown to cover `need` bytes: a step
/// ahead of them, or exactly `need` when the step would pass `quota` (413 only when that
/// does too). The new size.
async fn reserve_ahead(
    catalog: &PgCatalog,
    (user, id): (&UserId, &str),
    reserved: u64,
    need: u64,
    quota: u64,
) -> Result<u64, StoreError> {
    let want = need.max(reserved + reserved.clamp(RESERVE_STEP, RESERVE_MAX_STEP));
    match catalog.reserve(user, id, want, quota).await {
        Ok(()) => Ok(want),
        Err(_) => {
            catalog.reserve(user, id, need, quota).await?;
            Ok(need)
        }
    }
}

/// A file to store in one go: who, where, under which name, and what to check.
#[derive(Debug)]
pub struct NewFile {
    /// The owner.
    pub user: UserId,
    /// The name the client gave.
    pub name: ClientFileName,
    /// The folder, if any.
    pub folder: Option<FolderPath>,
    /// The MIME type the client declared.
    pub declared_mime: Option<String>,
    /// Expected hex SHA-256, when given.
    pub expected_sha: Option<String>,
    /// The client's `meta` fields.
    pub extra: Map<String, Value>,
}

impl NewFile {
    /// A new key for the file.
    fn new_key(&self) -> Key {
        super::fresh_key(&self.user, self.folder.as_ref(), &self.name)
    }
}

/// A quota reservation of a one-request upload, given back when the upload ends without
/// publishing.
struct Reservation {
    catalog: PgCatalog,
    id: String,
    armed: bool,
}

impl Reservation {
    fn new(catalog: &PgCatalog) -> Self {
        Self {
            catalog: catalog.clone(),
            id: format!("upload-{}", uuid::Uuid::new_v4().simple()),
            armed: true,
        }
    }

    /// Gives the reservation back now (an error's answer then finds the quota free); a
    /// release cut short is still made on drop.
    async fn give_back(mut self) {
        let released = self.catalog.release(&self.id).await;
        self.armed = false;
        if let Err(e) = released {
            tracing::warn!(reservation = self.id, error = %e, "cannot release a quota reservation; the sweep will");
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let catalog = self.catalog.clone();
        let id = std::mem::take(&mut self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = catalog.release(&id).await {
                    tracing::warn!(reservation = id, error = %e, "cannot release a quota reservation; the sweep will");
                }
            });
        }
    }
}

impl CloudStore {
    /// A new spool file's path (not created).
    pub(super) fn spool_path(&self) -> PathBuf {
        self.limits
            .spool
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Stores `body` as a new file of `new.user` (at most `limit` bytes). The body goes to
    /// a spool file on the local disk as it arrives, under a quota reservation in the
    /// catalog grown ahead of the bytes (413 as soon as the quota would be passed, whichever
    /// instance holds the user's other uploads); whole parts of it go on to the bucket as
    /// soon as they are on disk (see [`S3Bytes::put_spool`]: a client that stalls holds no
    /// part buffer). The object is written at its final key, its SHA-256 checked, its
    /// sidecar written beside it, and only then is the row committed, which makes it
    /// visible. On any error (or when the future is dropped) the object goes, the
    /// reservation is given back, the spool file is removed, nothing is listed.
    pub async fn put_file<S>(&self, new: NewFile, body: S, limit: u64) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, StoreError>> + Send,
    {
        let reservation = Reservation::new(&self.catalog);
        let key = new.new_key();
        let path = self.spool_path();
        let mut sink = Sink::spool(path.clone(), limit).await?;
        let progress = sink.watch();
        let receive = async {
            let mut body = std::pin::pin!(body);
            let mut reserved = 0;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                let need = sink.written() + chunk.len() as u64;
                if need > reserved {
                    let id = (&new.user, reservation.id.as_str());
                    reserved = reserve_ahead(&self.catalog, id, reserved, need, self.quota).await?;
                }
                sink.write(chunk).await?;
            }
            sink.close().await
        };
        let send = async {
            let object = key.to_string();
            Ok::<_, StoreError>(
                self.bytes
                    .put_spool(&object, &path, progress, limit)
                    .await?,
            )
        };
        // The first error stops both: the body is read no further, the multipart upload is
        // aborted, the spool file removed.
        let ((_, spool), written) = match tokio::try_join!(receive, send) {
            Ok(done) => done,
            Err(e) => {
                reservation.give_back().await;
                return Err(e);
            }
        };
        drop(spool);
        self.publish_put(new, key, written, reservation).await
    }

    /// Publishes the object `written` at `key` as `new`: its SHA-256 checked, its sidecar
    /// written, its row committed with the quota charged from `reservation`. On any error
    /// the object goes again.
    async fn publish_put(
        &self,
        new: NewFile,
        key: Key,
        written: super::s3::Written,
        mut reservation: Reservation,
    ) -> Result<Stored, StoreError> {
        let object = key.to_string();
        let published = async {
            check_sha(new.expected_sha.as_deref(), &written.sha256)?;
            let meta = Meta::for_upload(
                &new.user,
                &new.name,
                new.folder.as_ref(),
                new.declared_mime.as_deref(),
                new.extra,
                (
                    written.size,
                    Some(written.sha256.clone()),
                    Some(written.crc32),
                ),
            );
            self.put_sidecar(&object, &meta).await?;
            let record = FileRecord {
                key: key.clone(),
                size: written.size,
                sha256: Some(written.sha256.clone()),
                crc32: Some(written.crc32),
                mime: meta.mime.clone(),
                created_at: chrono::Utc::now(),
                meta: meta.clone(),
            };
            self.catalog
                .publish_checked(&record, &reservation.id, self.quota)
                .await?;
            Ok::<_, StoreError>(Stored {
                key: key.clone(),
                meta,
            })
        }
        .await;
        match published {
            Ok(stored) => {
                reservation.armed = false;
                Ok(stored)
            }
            Err(e) => {
                if let Err(d) = self.bytes.delete(&object).await {
                    tracing::warn!(key = object, error = %d, "cannot remove an unpublished object; the sweep will");
                }
                reservation.give_back().await;
                Err(e)
            }
        }
    }
}

impl CloudStore {
    /// Opens one session per file, their declared sizes reserved together in the catalog.
    pub async fn create_sessions(
        &self,
        user: &UserId,
        mode: UploadMode,
        files: Vec<FileSpec>,
        folder: Option<FolderPath>,
        meta: Map<String, Value>,
    ) -> Result<Vec<Session>, StoreError> {
        if files.iter().any(|f| f.size > self.limits.max_file) {
            return Err(StoreError::TooLarge);
        }
        let sessions = Session::for_files(user, mode, files, folder, meta, self.limits.session_ttl);
        self.catalog.create_sessions(&sessions, self.quota).await?;
        Ok(sessions)
    }

    /// A session not expired and not finished: live, or claimed by a complete in progress
    /// (on this instance or another, or one whose instance died: the next complete waits
    /// for it or takes it over; a part or an abort meanwhile is [`StoreError::Busy`]).
    pub async fn session(&self, id: &SessionId) -> Result<Session, StoreError> {
        let r = self.catalog.session(*id).await?;
        match r.state {
            SessionState::Live | SessionState::Claimed => Ok(r.session),
            SessionState::Finished => Err(StoreError::NotFound(Missing::Session)),
        }
    }

    /// The parts received: number and size (a resumable upload's: its segments).
    pub async fn session_parts(&self, id: &SessionId) -> Result<Vec<(u32, u64)>, StoreError> {
        let mut parts: Vec<(u32, u64)> = self
            .catalog
            .parts(*id)
            .await?
            .into_iter()
            .map(|p| (p.number, p.size))
            .collect();
        if parts.is_empty() {
            parts = self
                .catalog
                .segments(*id)
                .await?
                .into_iter()
                .map(|s| (s.number, s.size))
                .collect();
        }
        Ok(parts)
    }
}

/// A one-request upload of several files (multipart form): each file is spooled to the
/// local disk as it arrives, under a quota reservation in the catalog that grows ahead of
/// the bytes; once the form is read (its folder and `meta` may come after the files) each is
/// sent to the bucket and published. Dropped, its reservation is given back.
pub struct CloudUpload {
    store: CloudStore,
    user: UserId,
    reservation: Reservation,
    reserved: u64,
}

impl CloudStore {
    /// Starts a one-request upload for `user`.
    pub fn begin_upload(&self, user: &UserId) -> CloudUpload {
        CloudUpload {
            store: self.clone(),
            user: user.clone(),
            reservation: Reservation::new(&self.catalog),
            reserved: 0,
        }
    }
}

impl CloudUpload {
    /// Starts a file of this upload: a spool file, hashed when it is sent.
    pub async fn begin_file(&self) -> Result<Sink, StoreError> {
        Sink::spool(self.store.spool_path(), self.store.limits.max_file).await
    }

    /// Writes a chunk of the current file, reserving quota ahead of it (413 as soon as the
    /// quota would be passed); `total_before`: the bytes of this upload's earlier files.
    pub async fn write(
        &mut self,
        sink: &mut Sink,
        chunk: Bytes,
        total_before: u64,
    ) -> Result<(), StoreError> {
        let need = total_before + sink.written() + chunk.len() as u64;
        if need > self.reserved {
            let id = (&self.user, self.reservation.id.as_str());
            let (catalog, quota) = (&self.store.catalog, self.store.quota);
            self.reserved = reserve_ahead(catalog, id, self.reserved, need, quota).await?;
        }
        sink.write(chunk).await
    }

    /// Sends a spooled file to the bucket and publishes it (see [`CloudStore::put_file`]).
    pub async fn publish_file(
        &mut self,
        (written, spool): (super::sink::Written, super::sink::TempGuard),
        name: ClientFileName,
        folder: Option<FolderPath>,
        declared_mime: Option<String>,
        expected_sha: Option<String>,
        extra: Map<String, Value>,
    ) -> Result<Stored, StoreError> {
        let new = NewFile {
            user: self.user.clone(),
            name,
            folder,
            declared_mime,
            expected_sha,
            extra,
        };
        // The file's bytes move from this upload's reservation to the file's own: never
        // held twice against the quota.
        self.reserved = self.reserved.saturating_sub(written.size);
        let c = &self.store.catalog;
        if let Err(e) = c
            .reserve(&self.user, &self.reservation.id, self.reserved, u64::MAX)
            .await
        {
            tracing::warn!(error = %e, "cannot shrink a quota reservation; it is released at the end");
        }
        let own = Reservation::new(c);
        c.reserve(&self.user, &own.id, written.size, self.store.quota)
            .await?;
        let key = new.new_key();
        let (_whole, progress) =
            tokio::sync::watch::channel(super::sink::Spooled::Whole(written.size));
        let sent = match self
            .store
            .bytes
            .put_spool(&key.to_string(), spool.path(), progress, written.size)
            .await
        {
            Ok(sent) => sent,
            Err(e) => {
                own.give_back().await;
                return Err(e.into());
            }
        };
        drop(spool);
        self.store.publish_put(new, key, sent, own).await
    }

    /// Releases what is still reserved.
    pub async fn finish(mut self) {
        self.reservation.armed = false;
        if let Err(e) = self.store.catalog.release(&self.reservation.id).await {
            tracing::warn!(reservation = self.reservation.id, error = %e, "cannot release a quota reservation; the sweep will");
        }
    }
}

impl CloudStore {
    /// Keeps a batch-download token in the catalog; its id.
    pub async fn create_batch(&self, batch: BatchToken) -> Result<String, StoreError> {
        Ok(self.catalog.create_batch(&batch).await?)
    }

    /// A batch-download token, while it has not expired.
    pub async fn batch(&self, token: &str) -> Result<BatchToken, StoreError> {
        Ok(self.catalog.batch(token).await?)
    }

    /// The CRC-32 of a file: from its row, else computed from the object and recorded.
    pub async fn ensure_crc(&self, entry: &FileEntry) -> Result<u32, StoreError> {
        if let (Some(crc), true) = (
            entry.meta.crc32,
            entry.meta.size.is_none_or(|s| s == entry.size),
        ) {
            return Ok(crc);
        }
        let mut stream = self
            .bytes
            .get_range(&entry.key.to_string(), None)
            .await?
            .stream;
        let mut h = crc32fast::Hasher::new();
        while let Some(chunk) = stream.next().await {
            h.update(&chunk?);
        }
        let crc = h.finalize();
        let mut meta = entry.meta.clone();
        meta.crc32 = Some(crc);
        meta.size = Some(entry.size);
        if let Err(e) = self.update_meta(&entry.key, meta).await {
            tracing::warn!(key = %entry.key, error = %e, "cannot record a CRC-32");
        }
        Ok(crc)
    }

    /// Where a ZIP entry's bytes come from: the object, by ranges.
    pub fn zip_source(&self, key: &Key) -> Source {
        let bytes = self.bytes.clone();
        let key = key.to_string();
        Source::Object(Arc::new(move |start, end| {
            let bytes = bytes.clone();
            let key = key.clone();
            Box::pin(async move {
                if start >= end {
                    return Ok(futures_util::stream::empty().boxed());
                }
                let got = bytes
                    .get_range(&key, Some(GetRange::Bounded(start..end)))
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(got.stream.map_err(std::io::Error::other).boxed())
            })
        }))
    }
}

/// How long an object may stand without its row before the sweep takes it for what a crash
/// left (a publish writes the object, its sidecar and its row within seconds).
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

impl CloudStore {
    /// Removes what expired or what a crash left: expired sessions (their reservations
    /// released, their parts deleted), expired batch tokens, reservations of one-request
    /// uploads whose instance died; with `deep`, also objects without a catalog row (files
    /// never published, parts of sessions gone). Safe with every instance sweeping at once:
    /// the catalog hands each expired session to one sweep, and deleting an object twice is
    /// harmless.
    pub async fn sweep(&self, deep: bool) -> Result<u64, StoreError> {
        let mut swept = 0u64;
        loop {
            let removed = self.catalog.sweep_expired(chrono::Utc::now(), 100).await?;
            if removed.is_empty() {
                break;
            }
            for r in &removed {
                self.delete_parts(&r.parts).await;
                self.delete_segments(&r.segments).await;
            }
            swept += removed.len() as u64;
        }
        self.swept
            .fetch_add(swept, std::sync::atomic::Ordering::Relaxed);
        self.catalog.sweep_batches(chrono::Utc::now()).await?;
        self.catalog.sweep_stale_reservations(ORPHAN_AGE).await?;
        if deep {
            self.sweep_orphans().await?;
        }
        Ok(swept)
    }

    async fn sweep_orphans(&self) -> Result<(), StoreError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(ORPHAN_AGE).unwrap_or(chrono::Duration::hours(1));
        let prefix = self.bytes.prefix().to_owned();
        // Files: data objects (not sidecars) without a row, by pages.
        let mut listing = self.bytes.list_prefix("storage");
        let mut page: Vec<String> = Vec::new();
        let mut removed = 0u64;
        while let Some(o) = listing.next().await {
            let o = o?;
            let key = o
                .location
                .strip_prefix(&prefix)
                .unwrap_or(&o.location)
                .to_owned();
            if o.last_modified > cutoff || key.ends_with(".meta") {
                continue;
            }
            page.push(key);
            if page.len() == 500 {
                removed += self.remove_unlisted(std::mem::take(&mut page)).await?;
            }
        }
        removed += self.remove_unlisted(page).await?;
        // Parts of sessions the catalog no longer has.
        let mut listing = self.bytes.list_prefix("parts");
        while let Some(o) = listing.next().await {
            let o = o?;
            let key = o
                .location
                .strip_prefix(&prefix)
                .unwrap_or(&o.location)
                .to_owned();
            let Some(id) = key
                .split('/')
                .nth(1)
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
            else {
                continue;
            };
            if o.last_modified > cutoff {
                continue;
            }
            if self.catalog.existing_sessions(&[id]).await?.is_empty() {
                let _ = self.bytes.delete_object(&key).await;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                objects = removed,
                "swept objects a crash left without a catalog row"
            );
        }
        Ok(())
    }

    async fn remove_unlisted(&self, keys: Vec<String>) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let known: std::collections::HashSet<String> = self
            .catalog
            .existing_keys(&keys)
            .await?
            .into_iter()
            .collect();
        let mut n = 0;
        for k in keys.iter().filter(|k| !known.contains(*k)) {
            let _ = self.bytes.delete(k).await;
            n += 1;
        }
        Ok(n)
    }
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// The page's files, newest first.
    pub files: Vec<Listed>,
    /// Files in the whole listing.
    pub total_count: u64,
    /// Their bytes together.
    pub total_size: u64,
}

fn entry_of(r: FileRecord) -> FileEntry {
    let modified: std::time::SystemTime = r.created_at.into();
    FileEntry::new(r.key, r.meta, r.size, modified)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn turns_are_first_come_first_served_and_leave_no_queue_behind() {
        let turns = Turns::default();
        let (id, other) = (SessionId::new(), SessionId::new());
        let first = turns.take(id).await;
        // Another session's turn does not wait for this one's.
        drop(turns.take(other).await);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for i in 0..5 {
            let (turns, order) = (turns.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let _turn = turns.take(id).await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }));
            // Queued in this order.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(order.lock().unwrap().is_empty());
        drop(first);
        for w in waiting {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert!(turns.0.lock().unwrap().is_empty(), "a queue was left");
    }
}
