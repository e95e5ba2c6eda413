//! `STORAGE_BACKEND=s3`: the catalog in PostgreSQL (`pg`), the bytes in a bucket (`s3`), for
//! any number of instances. The bucket holds the tree of `UPLOAD_ROOT/storage`: object key =
//! file key, the sidecar JSON beside it at `key.meta`; the catalog row is what makes a file
//! visible (a file is listed and served only once its row is committed, after its bytes and
//! sidecar are in the bucket and checked).

use std::time::Duration;

use bytes::Bytes;

use super::key::{FolderPath, Key, UserId};
use super::pg::{FileRecord, PgCatalog};
use super::read::FileEntry;
use super::s3::{GetRange, Ranged, S3Bytes, S3Error};
use super::sidecar::Meta;
use super::{Missing, StoreError};
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
