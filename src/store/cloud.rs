//! `STORAGE_BACKEND=s3`: the catalog in PostgreSQL (`pg`), the bytes in a bucket (`s3`), for
//! any number of instances. The bucket holds the tree of `UPLOAD_ROOT/storage`: object key =
//! file key, the sidecar JSON beside it at `key.meta`; the catalog row is what makes a file
//! visible (a file is listed and served only once its row is committed, after its bytes and
//! sidecar are in the bucket and checked).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use serde_json::{Map, Value};

use super::batch::BatchToken;
use super::key::{ClientFileName, FileName, FolderPath, Key, UserId};
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

pub(super) use parts::joined;

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

/// Reserve quota ahead of the bytes in steps of this much.
const RESERVE_STEP: u64 = 8 << 20;

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

/// Gives a quota reservation back when an upload ends without publishing.
struct Reservation {
    catalog: PgCatalog,
    id: String,
    armed: bool,
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
    /// Streams `body` into the bucket as a new file of `new.user` (at most `limit` bytes):
    /// quota is reserved in the catalog ahead of the bytes (413 as soon as it would be
    /// passed, whichever instance holds the user's other uploads), the object is written at
    /// its final key, its SHA-256 checked, its sidecar written beside it, and only then is
    /// the row committed, which makes it visible. On any error (or when the future is
    /// dropped) the object goes, the reservation is given back, nothing is listed.
    pub async fn put_file<S>(&self, new: NewFile, body: S, limit: u64) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, StoreError>> + Send,
    {
        let id = format!("upload-{}", uuid::Uuid::new_v4().simple());
        let mut reservation = Reservation {
            catalog: self.catalog.clone(),
            id: id.clone(),
            armed: true,
        };
        let stored_name = format!(
            "{}_{}",
            super::random_prefix(),
            FileName::sanitize(new.name.as_str()).as_str()
        );
        let key = Key::new(&new.user, new.folder.as_ref(), &stored_name);
        let object = key.to_string();
        // The first error of the body or of the quota, kept whole (the object store sees
        // only that the body failed).
        let failed: Arc<Mutex<Option<StoreError>>> = Arc::default();
        let fail = failed.clone();
        let catalog = self.catalog.clone();
        let user = new.user.clone();
        let quota = self.quota;
        let body = Box::pin(body);
        let gated =
            futures_util::stream::unfold((body, 0u64, 0u64), move |(mut body, total, reserved)| {
                let catalog = catalog.clone();
                let user = user.clone();
                let id = id.clone();
                let fail = fail.clone();
                async move {
                    let chunk = match body.next().await? {
                        Ok(c) => c,
                        Err(e) => return Some((Err(remember(&fail, e)), (body, total, reserved))),
                    };
                    let total = total + chunk.len() as u64;
                    let mut reserved = reserved;
                    if total > reserved {
                        let want = total.max(reserved + RESERVE_STEP);
                        // Ask for the step; when that does not fit, exactly what is needed.
                        let got = match catalog.reserve(&user, &id, want, quota).await {
                            Ok(()) => Ok(want),
                            Err(_) => catalog
                                .reserve(&user, &id, total, quota)
                                .await
                                .map(|()| total),
                        };
                        match got {
                            Ok(n) => reserved = n,
                            Err(e) => {
                                return Some((
                                    Err(remember(&fail, e.into())),
                                    (body, total, reserved),
                                ))
                            }
                        }
                    }
                    Some((Ok(chunk), (body, total, reserved)))
                }
            });
        let written = match self.bytes.put_stream(&object, gated, limit).await {
            Ok(w) => w,
            Err(e) => {
                let kept = failed.lock().ok().and_then(|mut f| f.take());
                return Err(kept.unwrap_or_else(|| e.into()));
            }
        };
        // From here the object exists: any failure removes it again.
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
            let sidecar = Bytes::from(meta.to_json()?);
            self.bytes
                .put_stream(
                    &format!("{object}.meta"),
                    futures_util::stream::iter([Ok::<_, std::io::Error>(sidecar)]),
                    u64::MAX,
                )
                .await?;
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
            reservation: Reservation {
                catalog: self.catalog.clone(),
                id: format!("upload-{}", uuid::Uuid::new_v4().simple()),
                armed: true,
            },
            reserved: 0,
        }
    }
}

impl CloudUpload {
    /// Starts a file of this upload.
    pub async fn begin_file(&self) -> Result<Sink, StoreError> {
        self.store.spool_sink(self.store.limits.max_file).await
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
            let want = need.max(self.reserved + RESERVE_STEP);
            let c = &self.store.catalog;
            let (user, id, quota) = (&self.user, &self.reservation.id, self.store.quota);
            self.reserved = match c.reserve(user, id, want, quota).await {
                Ok(()) => want,
                Err(_) => {
                    c.reserve(user, id, need, quota).await?;
                    need
                }
            };
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
        check_sha(
            expected_sha.as_deref(),
            written.sha256.as_deref().unwrap_or(""),
        )?;
        let file = tokio::fs::File::open(spool.path()).await?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map(|r| r.map_err(StoreError::from));
        let new = NewFile {
            user: self.user.clone(),
            name,
            folder,
            declared_mime,
            expected_sha: written.sha256.clone(),
            extra,
        };
        // The file's bytes move from this upload's reservation to the file's own (which
        // `put_file` grows as it sends them): never held twice against the quota.
        self.reserved = self.reserved.saturating_sub(written.size);
        let c = &self.store.catalog;
        if let Err(e) = c
            .reserve(&self.user, &self.reservation.id, self.reserved, u64::MAX)
            .await
        {
            tracing::warn!(error = %e, "cannot shrink a quota reservation; it is released at the end");
        }
        let stored = self.store.put_file(new, body, written.size).await?;
        drop(spool);
        Ok(stored)
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

fn remember(slot: &Mutex<Option<StoreError>>, e: StoreError) -> std::io::Error {
    let text = e.to_string();
    if let Ok(mut s) = slot.lock() {
        s.get_or_insert(e);
    }
    std::io::Error::other(text)
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
