//! The filesystem store: files, sidecars, upload sessions and quotas under `UPLOAD_ROOT`.
//! Knows nothing of HTTP: in go keys, names and byte streams; out come `Meta`, sizes and
//! [`StoreError`]s.
//!
//! Publishing is atomic: data and sidecar are written under temporary names inside the
//! claimed session folder, fsynced, then renamed into place, sidecar first, and the folder
//! fsynced, so no reader sees a partial file or data without metadata.
//!
//! One module per concern: names (`key`), sessions begun and ended (`lifecycle`) and their
//! records on disk (`sessions`), `parts`, `complete`, `publish`, `one_request`, reading
//! (`read`, `pagecache`), `list`, changes after publish (`modify`), CRC-32s recorded late
//! (`crc`), `quota`, `staging`, `batch` tokens, crash recovery and sweeps (`recover`), the
//! `lock`s that order them, the root's `signing_key` and what the health check asks of the
//! disk (`health`), and what `upload-server check` asks of a root, read-only (`audit`).
//! `pg` is the same catalog (records, quotas, sessions, tokens, key) in PostgreSQL, for
//! several instances without a shared disk (issue #14; not wired yet).
//! `s3` holds the bytes of files in an S3-compatible bucket instead (issue 14): a
//! standalone component for now, to sit behind the bytes seam.

pub mod audit;
pub mod backend;
pub mod batch;
pub mod cloud;
pub mod cloud_resumable;
mod complete;
mod crc;
pub mod health;
pub mod key;
mod lifecycle;
mod list;
mod lock;
mod modify;
mod one_request;
pub mod pagecache;
mod parts;
pub mod pg;
mod publish;
pub mod quota;
pub mod read;
mod recover;
pub mod resumable;
pub mod s3;
pub mod sessions;
pub mod sidecar;
pub mod signing_key;
pub mod sink;
pub mod staging;
mod totals;

pub use backend::Store;
pub use one_request::DirectUpload;
pub use parts::PartUpload;
pub use resumable::{Finished, NewResumable};
pub use totals::StoredTotals;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};

use self::key::{Key, UserId};
use self::quota::Quotas;
use self::sessions::SessionDirs;
use self::sidecar::Meta;

/// What can go wrong in the store. Typed, not worded: `error.rs` gives clients the words.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such thing (or an upload session past its time).
    #[error("{0:?} not found")]
    NotFound(Missing),
    /// A name the store refuses.
    #[error(transparent)]
    InvalidName(#[from] key::InvalidName),
    /// The file's folder (or one of its parents) is an existing file.
    #[error("folder conflicts with an existing file")]
    FolderConflict,
    /// The joined parts do not add up to the declared size.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Declared at init.
        expected: u64,
        /// Received.
        actual: u64,
    },
    /// The bytes do not hash to the SHA-256 the client gave.
    #[error("SHA256 mismatch")]
    ShaMismatch,
    /// The user's quota would be passed.
    #[error("quota exceeded: {used} of {quota} bytes used, {requested} more requested")]
    Quota {
        /// Bytes in use (stored and reserved).
        used: u64,
        /// The quota.
        quota: u64,
        /// Bytes asked for.
        requested: u64,
    },
    /// More bytes than allowed (declared size, `MAX_BODY_MB` or the staging budget).
    #[error("upload exceeds the allowed size")]
    TooLarge,
    /// The disk (or the filesystem quota) is full.
    #[error("insufficient storage")]
    DiskFull,
    /// An append at an offset other than where the upload ends.
    #[error("offset mismatch: the upload is at {offset}")]
    OffsetMismatch {
        /// Where the upload ends.
        offset: u64,
    },
    /// Another request is appending to the upload, or completing it.
    #[error("another request is appending to or completing this upload")]
    Busy,
    /// A request of one protocol on a session of another (a three-step part on a tus
    /// upload, a tus `PATCH` on a three-step session).
    #[error("the upload belongs to another protocol")]
    WrongProtocol,
    /// A length that contradicts the one declared, or is below the bytes received.
    #[error("inconsistent length: declared {declared:?}, received {offset}")]
    LengthMismatch {
        /// The length declared before, if any.
        declared: Option<u64>,
        /// Bytes received so far.
        offset: u64,
    },
    /// Bytes sent to a final concatenation, which has none of its own.
    #[error("a final concatenation takes no bytes")]
    ConcatFinal,
    /// A concatenation that names uploads which are not partial uploads of the same user.
    #[error("not a partial upload: {0}")]
    NotPartial(String),
    /// The database or the object storage (`STORAGE_BACKEND=s3`) failed or cannot be
    /// reached; the text names which.
    #[error("storage backend unavailable: {0}")]
    Backend(String),
    /// An operation this backend does not do (yet).
    #[error("not available with STORAGE_BACKEND=s3: {0}")]
    Unsupported(&'static str),
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

/// What was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// An upload session (unknown, expired, completed or aborted).
    Session,
    /// A stored file.
    File,
    /// A batch-download token.
    BatchToken,
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        match e.raw_os_error() {
            Some(ENOSPC | EDQUOT) => Self::DiskFull,
            _ => Self::Io(e),
        }
    }
}

/// The result of publishing a file.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its key.
    pub key: Key,
    /// Its metadata, as written to the sidecar.
    pub meta: Meta,
}

/// What `complete` takes besides the session id.
#[derive(Debug, Clone, Default)]
pub struct CompleteRequest {
    /// `meta.filename`, overriding the init name.
    pub filename: Option<key::ClientFileName>,
    /// `meta.folder`, overriding the init folder: `Some(None)` puts the file at the user's
    /// top level.
    pub folder: Option<Option<key::FolderPath>>,
    /// Expected hex SHA-256, when given.
    pub sha256: Option<String>,
    /// The client's other `meta` fields.
    pub extra: Map<String, Value>,
}

impl CompleteRequest {
    /// The name and folder the completed file of `session` gets: the init's, unless this
    /// request overrides them.
    pub fn placement<'a>(
        &'a self,
        session: &'a sessions::Session,
    ) -> (&'a key::ClientFileName, Option<&'a key::FolderPath>) {
        let name = self.filename.as_ref().unwrap_or(&session.file.name);
        let folder = match &self.folder {
            Some(chosen) => chosen.as_ref(),
            None => session.folder.as_ref(),
        };
        (name, folder)
    }
}

/// The filesystem store.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    storage: PathBuf,
    dirs: SessionDirs,
    quotas: Quotas,
    session_ttl: Duration,
    max_file: u64,
    list_cache: std::sync::Arc<list::ListCache>,
    /// Sidecars of files being served (see `read::MetaCache`).
    meta_cache: std::sync::Arc<read::MetaCache>,
    /// How long a cached sidecar is trusted (`SIDECAR_CACHE_SECS`).
    sidecar_ttl: Duration,
    /// `UPLOAD_ROOT`, open once: every read resolves below it with `openat2`.
    root_fd: std::sync::Arc<std::os::fd::OwnedFd>,
    /// Bytes of JSON parts staged before their session is known.
    staging: std::sync::Arc<staging::StagingBudget>,
    /// Expired sessions the sweeps removed (`/metrics`).
    swept: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An 8-hex-digit prefix, as the old service made.
fn random_prefix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// A new key for a file its client named `name`, in `folder` of `user`: a fresh random
/// prefix and the sanitized name (`{prefix}_{name}`, as the old service stored files).
fn fresh_key(user: &UserId, folder: Option<&key::FolderPath>, name: &key::ClientFileName) -> Key {
    let stored_name = format!(
        "{}_{}",
        random_prefix(),
        key::FileName::sanitize(name.as_str()).as_str()
    );
    Key::new(user, folder, &stored_name)
}

impl FileStore {
    /// A store over `root`, creating its folders; a sidecar read for a download is trusted
    /// for `sidecar_ttl` before it is read again.
    pub fn open(
        root: &Path,
        quota_bytes: u64,
        session_ttl: Duration,
        max_file: u64,
        sidecar_ttl: Duration,
    ) -> std::io::Result<Self> {
        let storage = root.join("storage");
        let parts = root.join(".parts");
        for d in [
            &storage,
            &parts,
            &parts.join(".staging"),
            &parts.join(".finished"),
            &root.join(".quota"),
        ] {
            std::fs::create_dir_all(d)?;
        }
        let root_fd = std::sync::Arc::new(std::os::fd::OwnedFd::from(std::fs::File::open(root)?));
        Ok(Self {
            root_fd,
            root: root.to_path_buf(),
            quotas: Quotas::new(root.join(".quota"), storage.clone(), quota_bytes),
            storage,
            dirs: SessionDirs { parts },
            session_ttl,
            max_file,
            list_cache: std::sync::Arc::default(),
            meta_cache: std::sync::Arc::default(),
            sidecar_ttl,
            staging: std::sync::Arc::default(),
            swept: std::sync::Arc::default(),
        })
    }

    /// A store over `root` for unit tests: 1 GiB quota and files, sessions of an hour,
    /// sidecars cached 10 s.
    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    pub(crate) fn for_tests(root: &Path) -> Self {
        Self::open(
            root,
            1 << 30,
            Duration::from_secs(3600),
            1 << 30,
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// `UPLOAD_ROOT`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The quota in bytes.
    pub fn quota_limit(&self) -> u64 {
        self.quotas.limit
    }

    /// The absolute path of a key's data file.
    pub fn data_path(&self, key: &Key) -> PathBuf {
        self.root.join(key.relative_path())
    }

    /// Bytes the user stores plus bytes reserved by its uploads in flight.
    pub async fn usage(&self, user: &UserId) -> Result<(u64, u64), StoreError> {
        let quotas = self.quotas.clone();
        let user = user.as_str().to_owned();
        blocking(move || quotas.with_ledger(&user, |l| Ok((l.used, l.reserved.values().sum()))))
            .await
    }
}

fn not_found() -> StoreError {
    StoreError::NotFound(Missing::Session)
}
