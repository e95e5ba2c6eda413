//! `STORAGE_BACKEND=s3`: the catalog in PostgreSQL (`pg`), the bytes in a bucket (`s3`), for
//! any number of instances. The bucket holds the tree of `UPLOAD_ROOT/storage`: object key =
//! file key, the sidecar JSON beside it at `key.meta`; the catalog row is what makes a file
//! visible (a file is listed and served only once its row is committed, after its bytes and
//! sidecar are in the bucket and checked).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use serde_json::{Map, Value};

use super::key::{ClientFileName, FileName, FolderPath, Key, UserId};
use super::pg::{FileRecord, PgCatalog};
use super::publish::check_sha;
use super::read::FileEntry;
use super::s3::{GetRange, Ranged, S3Bytes, S3Error};
use super::sidecar::Meta;
use super::{Missing, StoreError, Stored};
use crate::config::CloudSettings;

/// How long a presigned read URL (`S3_PRESIGN_READS=1`) stays valid.
pub const PRESIGN_TTL: Duration = Duration::from_secs(300);

/// The bucket and the catalog together.
#[derive(Clone)]
pub struct CloudStore {
    bytes: S3Bytes,
    catalog: PgCatalog,
    quota: u64,
    presign_reads: bool,
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
    pub async fn connect(s: &CloudSettings, quota: u64) -> Result<Self, Unreachable> {
        use secrecy::ExposeSecret as _;
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
        let page = self.catalog.list_files(user, folder, limit, offset).await?;
        Ok(Page {
            total_count: page.total_files,
            total_size: page.total_bytes,
            files: page.files.into_iter().map(entry_of).collect(),
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
    pub files: Vec<FileEntry>,
    /// Files in the whole listing.
    pub total_count: u64,
    /// Their bytes together.
    pub total_size: u64,
}

fn entry_of(r: FileRecord) -> FileEntry {
    let modified: std::time::SystemTime = r.created_at.into();
    FileEntry::new(r.key, r.meta, r.size, modified)
}
