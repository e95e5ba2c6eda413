//! The bytes of stored files in an S3-compatible bucket (issue 14): the same tree as
//! `UPLOAD_ROOT/storage` under an optional prefix, each file's JSON sidecar beside it at
//! `key + ".meta"`. Knows no HTTP and no catalog: in go file keys, byte streams and plain
//! data the catalog stores (upload ids, [`PartInfo`]s, [`Assembly`]s); out come sizes,
//! hashes, streams and [`S3Error`]s.
//!
//! - `connect` checks the bucket with one LIST and names the setting that is wrong.
//! - Writes are bounded in memory: every writer holds a reservation of a per-instance
//!   [`buffer::Budget`] for its part buffer (`object_store` sends a part from memory).
//! - Uploads that span requests and instances are driven through [`assembly`]: an
//!   [`Assembly`] is all the state there is, so any instance can carry one on.
//! - The sweep's helpers are in [`sweep`]: S3 servers without `ListMultipartUploads`
//!   (s3s-fs) leave the catalog to remember every upload id it started.

pub mod assembly;
pub mod buffer;
mod spool;
pub mod sweep;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore as _};
use object_store::multipart::{MultipartStore as _, PartId};
use object_store::path::Path;
use object_store::signer::Signer as _;
use object_store::{
    GetOptions, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, RetryConfig,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

pub use self::assembly::{Appended, Assembly, StagedPart};
pub use self::buffer::Budget;
pub use object_store::GetRange;

use self::buffer::Buffer;
use super::sink::Hashes;

/// S3 wants every part but the last to hold at least this many bytes.
pub const MIN_PART: usize = 5 << 20;
/// S3 numbers parts 1 to 10,000.
pub const MAX_PARTS: u32 = 10_000;
/// The part size this module writes: parts are cut at `PART` bytes and the last one of a
/// stream takes up to `2 × PART - 1`, so no part is ever below S3's minimum.
pub(crate) const PART: usize = MIN_PART;
/// What a writer reserves of the [`Budget`]: its part buffer may grow to `2 × PART` plus
/// one incoming chunk before a part is cut off.
pub(crate) const WRITER_RESERVATION: usize = 2 * PART + (1 << 20);
/// Parts one writer keeps in flight at most, each with a part's worth of the [`Budget`]
/// beyond the writer's share while the budget has it (so one large upload on a quiet
/// instance overlaps its parts, as `aws s3 cp` does, and a busy instance sends one at a
/// time within the same memory).
const MAX_IN_FLIGHT: usize = 2;

/// Where the bucket is and how to reach it (`S3_*` settings).
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `S3_ENDPOINT`: the server's URL (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://127.0.0.1:9000`); `None` for AWS's default endpoint of the region.
    pub endpoint: Option<String>,
    /// `S3_BUCKET`.
    pub bucket: String,
    /// `S3_REGION` (`us-east-1` when a server does not care).
    pub region: String,
    /// `S3_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `S3_SECRET_ACCESS_KEY`: never logged, redacted by `Debug`.
    pub secret_access_key: SecretString,
    /// `S3_PREFIX`: prepended to every object key (`tenant-a/` keeps files at
    /// `tenant-a/storage/...`); empty for the bucket's root. A missing trailing `/` is added.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO, Garage, s3s-fs and most
    /// self-hosted servers need; `false`: virtual-hosted (`bucket.endpoint/key`), as AWS
    /// prefers.
    pub path_style: bool,
    /// Allow a plain `http://` endpoint (a server on the same host or network).
    pub allow_http: bool,
    /// Bytes this instance may hold in part buffers at once, over all uploads; a writer
    /// waits for its share (about 11 MiB) when the budget is spent. At least one writer's
    /// share is always granted.
    pub buffer_budget: usize,
}

/// The default [`S3Config::buffer_budget`]: three writers at once (33 MiB), which leaves
/// room under issue 14's 64 MiB of peak RSS for the rest of the process.
pub const DEFAULT_BUFFER_BUDGET: usize = 3 * WRITER_RESERVATION;

/// What can go wrong with the bucket. Typed, not worded for clients.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// A setting is wrong or the bucket cannot be reached with it; the text names the
    /// setting (`S3_ENDPOINT`, `S3_BUCKET`, the credentials) in one line.
    #[error("{0}")]
    Config(String),
    /// No such object.
    #[error("object not found")]
    NotFound,
    /// `put_if_absent` on a key that exists.
    #[error("object already exists")]
    AlreadyExists,
    /// A range that starts at or past the end of the object.
    #[error("range not satisfiable: the object has {size} bytes")]
    Range {
        /// The object's size.
        size: u64,
    },
    /// More bytes than the limit, or more than 10,000 parts.
    #[error("upload exceeds the allowed size")]
    TooLarge,
    /// Part numbers or an [`Assembly`] that do not fit together.
    #[error("invalid upload state: {0}")]
    Invalid(String),
    /// The body being stored failed (the client went away, a read error).
    #[error("reading the body: {0}")]
    Body(#[source] std::io::Error),
    /// Any other failure of the object store.
    #[error("object store: {0}")]
    Store(#[source] object_store::Error),
}

impl From<object_store::Error> for S3Error {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Self::NotFound,
            object_store::Error::AlreadyExists { .. } => Self::AlreadyExists,
            e => Self::Store(e),
        }
    }
}

/// A multipart upload's id, as the S3 server gave it: the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UploadId(pub String);

/// One part of a multipart upload, as `complete` needs it again: the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// S3's part number, 1 to 10,000.
    pub number: u32,
    /// The part's ETag.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a streamed write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Bytes stored.
    pub size: u64,
    /// Hex SHA-256 of them.
    pub sha256: String,
    /// Their CRC-32.
    pub crc32: u32,
}

/// An object's size and validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object key inside the bucket, prefix included.
    pub location: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modified.
    pub last_modified: chrono::DateTime<chrono::Utc>,
    /// The ETag, when the server gave one.
    pub etag: Option<String>,
}

impl From<object_store::ObjectMeta> for ObjectInfo {
    fn from(m: object_store::ObjectMeta) -> Self {
        Self {
            location: m.location.to_string(),
            size: m.size,
            last_modified: m.last_modified,
            etag: m.e_tag,
        }
    }
}

/// A range being read: where it lies and its bytes as they arrive.
pub struct Ranged {
    /// The bytes' place in the object (end exclusive).
    pub range: Range<u64>,
    /// The object's size.
    pub size: u64,
    /// The bytes, streamed from the server a chunk at a time.
    pub stream: BoxStream<'static, Result<Bytes, S3Error>>,
}

impl std::fmt::Debug for Ranged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranged")
            .field("range", &self.range)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The bucket, as one instance sees it. Cheap to clone; clones share the connection pool
/// and the [`Budget`].
#[derive(Clone)]
pub struct S3Bytes {
    store: Arc<AmazonS3>,
    prefix: String,
    bucket: String,
    endpoint: String,
    budget: Budget,
}

// The client holds the credentials: only what helps an operator is printed.
impl std::fmt::Debug for S3Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Bytes")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Bytes {
    /// A client for `cfg`, once one LIST of the bucket (at most one key, below the prefix)
    /// has answered: a wrong endpoint, bucket or key pair fails here with one line naming
    /// the setting.
    pub async fn connect(cfg: &S3Config) -> Result<Self, S3Error> {
        let s3 = Self::new(cfg)?;
        s3.health().await?;
        Ok(s3)
    }

    /// A client for `cfg` without asking the server anything.
    pub fn new(cfg: &S3Config) -> Result<Self, S3Error> {
        if cfg.bucket.trim().is_empty() {
            return Err(S3Error::Config("S3_BUCKET is empty".into()));
        }
        // The AWS environment (AWS_ACCESS_KEY_ID, web identity, instance metadata) unless
        // the keys are given.
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region);
        if !cfg.access_key_id.is_empty() {
            b = b
                .with_access_key_id(&cfg.access_key_id)
                .with_secret_access_key(cfg.secret_access_key.expose_secret());
        }
        let mut b = b
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_allow_http(cfg.allow_http)
            // A few quick retries: a server that is down fails start-up and `/healthz`
            // within seconds instead of object_store's default of minutes.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            });
        if let Some(endpoint) = &cfg.endpoint {
            let url = url::Url::parse(endpoint).map_err(|e| {
                S3Error::Config(format!("S3_ENDPOINT {endpoint:?} is not a URL: {e}"))
            })?;
            if url.scheme() == "http" && !cfg.allow_http {
                return Err(S3Error::Config(format!(
                    "S3_ENDPOINT {endpoint:?} is plain http, which is not allowed"
                )));
            }
            b = b.with_endpoint(endpoint);
        }
        let store = b
            .build()
            .map_err(|e| S3Error::Config(format!("S3 settings: {e}")))?;
        let mut prefix = cfg.prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(Self {
            store: Arc::new(store),
            prefix,
            bucket: cfg.bucket.clone(),
            endpoint: cfg
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("AWS region {}", cfg.region)),
            budget: Budget::new(cfg.buffer_budget),
        })
    }

    /// Is the bucket reachable with these settings? One LIST of at most one key; the
    /// error names the setting to look at (for `/healthz` and start-up).
    pub async fn health(&self) -> Result<(), S3Error> {
        let opts = PaginatedListOptions {
            max_keys: Some(1),
            ..Default::default()
        };
        let prefix = (!self.prefix.is_empty()).then_some(self.prefix.as_str());
        match self.store.list_paginated(prefix, opts).await {
            Ok(_) => Ok(()),
            Err(e) => Err(S3Error::Config(self.explain(&e))),
        }
    }

    /// One line on why the bucket cannot be used, naming the setting.
    fn explain(&self, e: &object_store::Error) -> String {
        use object_store::Error as E;
        let bucket = &self.bucket;
        let endpoint = &self.endpoint;
        match e {
            E::NotFound { .. } => format!("S3_BUCKET {bucket:?} does not exist at {endpoint}"),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => format!(
                "S3 credentials (S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY) refused for bucket {bucket:?}"
            ),
            e => {
                // A request that never got an answer (refused, DNS, TLS) failed in the
                // HTTP client: that is the endpoint's. One that got an answer names its
                // status as "status code: NNN"; the elapsed time in the same text may
                // hold any digits, so only that phrase counts.
                let text = e.to_string();
                let unanswered = chain(e).any(|s| s.is::<object_store::client::HttpError>());
                let answered = |code: &str, names: &[&str]| {
                    text.contains(&format!("status code: {code}"))
                        || names.iter().any(|n| text.contains(n))
                };
                if !unanswered
                    && answered(
                        "403",
                        &["SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"],
                    )
                {
                    format!("S3 credentials (S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY) refused for bucket {bucket:?}")
                } else if !unanswered && answered("404", &["NoSuchBucket"]) {
                    format!("S3_BUCKET {bucket:?} does not exist at {endpoint}")
                } else {
                    let first = text.lines().next().unwrap_or("");
                    format!("S3_ENDPOINT {endpoint} unreachable: {first}")
                }
            }
        }
    }

    /// The bucket key of a file key (`storage/{user}/...`).
    pub fn object_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The object path of a file key, checked.
    fn path(&self, key: &str) -> Result<Path, S3Error> {
        Path::parse(self.object_key(key))
            .map_err(|e| S3Error::Invalid(format!("not an object key: {e}")))
    }

    /// The object path of a key already carrying the prefix (from a listing or an
    /// [`Assembly`]).
    fn raw_path(location: &str) -> Result<Path, S3Error> {
        Path::parse(location).map_err(|e| S3Error::Invalid(format!("not an object key: {e}")))
    }

    /// The prefix every object key starts with (`""` or ending in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The instance's part-buffer budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Stores a stream under `key`, hashing it on the way, and fails with `TooLarge` past
    /// `limit` bytes. Under [`PART`] bytes it is one PUT; larger bodies go as a multipart
    /// upload with parts of 5 to 10 MiB, so the buffer never holds more than about 11 MiB.
    /// On any error, and when the future is dropped, the multipart upload is aborted:
    /// nothing half-written stays, and the key shows the new object only once whole.
    pub async fn put_stream<S, E>(&self, key: &str, body: S, limit: u64) -> Result<Written, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = self.path(key)?;
        self.put_stream_at(path, body, limit).await
    }

    /// [`S3Bytes::put_stream`] at an object path.
    async fn put_stream_at<S, E>(&self, path: Path, body: S, limit: u64) -> Result<Written, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _permit = self.budget.reserve().await;
        let mut body = std::pin::pin!(body);
        let mut hashes = Hashes::default();
        let mut buf = Buffer::default();
        let mut size = 0u64;
        let mut upload: Option<AbortOnDrop> = None;
        // Parts sent, in order, and the ones still in flight after them.
        let mut parts: Vec<PartId> = Vec::new();
        let mut flight = InFlight::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| S3Error::Body(std::io::Error::other(e)))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(S3Error::TooLarge);
            }
            hashes.update(&chunk);
            buf.push(chunk);
            while buf.len() >= 2 * PART {
                let (guard, idx) = self
                    .begun_upload(&mut upload, &path, parts.len() + flight.len())
                    .await?;
                let payload = buf.take(PART);
                // A part in flight holds its bytes beside the buffer refilling: it needs
                // a part's worth more of the budget. When none is free, the oldest part in
                // flight is waited for; with none in flight, the part goes inline, within
                // the writer's own share (what a busy instance does).
                loop {
                    if flight.len() < MAX_IN_FLIGHT {
                        if let Some(extra) = self.budget.try_extra(PART) {
                            let (store, path, id) =
                                (self.store.clone(), path.clone(), guard.id.clone());
                            flight.0.push_back(tokio::spawn(async move {
                                let _extra = extra;
                                store.put_part(&path, &id, idx, payload).await
                            }));
                            break;
                        }
                    }
                    match flight.next().await {
                        Some(done) => parts.push(done?),
                        None => {
                            parts.push(self.store.put_part(&path, &guard.id, idx, payload).await?);
                            break;
                        }
                    }
                }
            }
        }
        while let Some(done) = flight.next().await {
            parts.push(done?);
        }
        match upload {
            None => {
                // Small enough for one PUT (up to 2 × PART - 1 bytes).
                self.store.put(&path, buf.take_all()).await?;
            }
            Some(mut guard) => {
                if buf.len() > 0 {
                    let idx = parts.len();
                    parts.push(
                        self.store
                            .put_part(&path, &guard.id, idx, buf.take_all())
                            .await?,
                    );
                }
                self.store
                    .complete_multipart(&path, &guard.id, parts)
                    .await?;
                guard.armed = false;
            }
        }
        let (sha256, crc32) = hashes.finish();
        Ok(Written {
            size,
            sha256,
            crc32,
        })
    }

    /// The multipart upload at `path` in `upload`, begun on first use, and the index of
    /// its next part after the `taken` ones (sent or in flight); `TooLarge` when that
    /// would leave no part number for the last part.
    async fn begun_upload<'a>(
        &self,
        upload: &'a mut Option<AbortOnDrop>,
        path: &Path,
        taken: usize,
    ) -> Result<(&'a mut AbortOnDrop, usize), S3Error> {
        if taken >= MAX_PARTS as usize - 1 {
            return Err(S3Error::TooLarge);
        }
        let guard = match upload {
            Some(g) => g,
            None => upload.insert(AbortOnDrop {
                id: self.store.create_multipart(path).await?,
                store: self.store.clone(),
                path: path.clone(),
                armed: true,
            }),
        };
        Ok((guard, taken))
    }

    /// Stores `bytes` at `key` unless an object is there (`If-None-Match: *`): for
    /// sidecars, so a file's metadata is written once. `AlreadyExists` otherwise.
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<(), S3Error> {
        let path = self.path(key)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&path, PutPayload::from_bytes(bytes), opts)
            .await?;
        Ok(())
    }

    /// Size, date and ETag of the object at `key`.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo, S3Error> {
        let path = self.path(key)?;
        Ok(self.store.head(&path).await?.into())
    }

    /// A range of the object at `key`, streamed as the server sends it (bounded memory).
    /// A range starting at or past the end is `Range { size }`; one reaching past the end
    /// is cut there. `None` reads the whole object.
    pub async fn get_range(&self, key: &str, range: Option<GetRange>) -> Result<Ranged, S3Error> {
        let path = self.path(key)?;
        let opts = GetOptions {
            range: range.clone(),
            ..Default::default()
        };
        match self.store.get_opts(&path, opts).await {
            Ok(got) => {
                let range = got.range.clone();
                let size = got.meta.size;
                let stream = got.into_stream().map_err(S3Error::from).boxed();
                Ok(Ranged {
                    range,
                    size,
                    stream,
                })
            }
            Err(e @ object_store::Error::NotFound { .. }) => Err(e.into()),
            Err(e) => {
                // S3 answers an unsatisfiable range with 416, which object_store does not
                // tell apart: ask for the size to say which it was.
                let size = self.store.head(&path).await?.size;
                let unsatisfiable = match range {
                    Some(GetRange::Bounded(r)) => r.start >= size || r.start >= r.end,
                    Some(GetRange::Offset(o)) => o >= size,
                    Some(GetRange::Suffix(n)) => n == 0 || size == 0,
                    None => false,
                };
                if unsatisfiable {
                    Err(S3Error::Range { size })
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// A URL that GETs the object at `key` without credentials for `expires` (SigV4 query
    /// signature; S3 caps it at 7 days). The object's existence is not checked.
    pub async fn presigned_get(&self, key: &str, expires: Duration) -> Result<url::Url, S3Error> {
        let path = self.path(key)?;
        Ok(self
            .store
            .signed_url(object_store::signer::Method::GET, &path, expires)
            .await?)
    }

    /// Copies the object at `from` to `to`, inside the bucket (no byte passes through here).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), S3Error> {
        let (a, b) = (self.path(from)?, self.path(to)?);
        self.store.copy(&a, &b).await?;
        Ok(())
    }

    /// Deletes the object at `key` alone (a part, a staging object).
    pub async fn delete_object(&self, key: &str) -> Result<(), S3Error> {
        let path = self.path(key)?;
        self.store.delete(&path).await?;
        Ok(())
    }

    /// Deletes the file at `key` and its sidecar (`key + ".meta"`). Deleting what is not
    /// there succeeds (S3 semantics): a repeated delete is harmless.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let data = self.path(key)?;
        let meta = self.path(&format!("{key}.meta"))?;
        // Sidecar last: a crash in between leaves a sidecar without data, which the
        // sweep and `reindex` treat as a deleted file, never data without its metadata.
        self.store.delete(&data).await?;
        self.store.delete(&meta).await?;
        Ok(())
    }

    /// Every object whose key (without the bucket prefix) starts with `key_prefix` on a
    /// `/` boundary (`storage/u1` lists `storage/u1/...`), as a stream of pages the server
    /// sends: memory stays bounded however large the bucket. Locations carry the prefix.
    pub fn list_prefix(&self, key_prefix: &str) -> BoxStream<'static, Result<ObjectInfo, S3Error>> {
        match self.path(key_prefix) {
            Ok(p) => self
                .store
                .list(Some(&p))
                .map_ok(ObjectInfo::from)
                .map_err(S3Error::from)
                .boxed(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    /// Begins a multipart upload at `key`; the id is the catalog's to keep.
    pub async fn begin_multipart(&self, key: &str) -> Result<UploadId, S3Error> {
        let path = self.path(key)?;
        self.begin_at(&path).await
    }

    async fn begin_at(&self, path: &Path) -> Result<UploadId, S3Error> {
        Ok(UploadId(self.store.create_multipart(path).await?))
    }

    /// Stores part `part_number` (1 to 10,000) of an upload; sending a number again
    /// replaces that part. Every part but the last must hold at least 5 MiB by the time
    /// of `complete` (the server checks there).
    pub async fn put_part(
        &self,
        key: &str,
        upload_id: &UploadId,
        part_number: u32,
        bytes: Bytes,
    ) -> Result<PartInfo, S3Error> {
        let path = self.path(key)?;
        self.put_part_at(&path, upload_id, part_number, PutPayload::from_bytes(bytes))
            .await
    }

    async fn put_part_at(
        &self,
        path: &Path,
        upload_id: &UploadId,
        part_number: u32,
        payload: PutPayload,
    ) -> Result<PartInfo, S3Error> {
        if !(1..=MAX_PARTS).contains(&part_number) {
            return Err(S3Error::Invalid(format!(
                "part number {part_number} is outside 1 to {MAX_PARTS}"
            )));
        }
        let size = payload.content_length() as u64;
        let part = self
            .store
            .put_part(path, &upload_id.0, part_number as usize - 1, payload)
            .await?;
        Ok(PartInfo {
            number: part_number,
            etag: part.content_id,
            size,
        })
    }

    /// Stores part `part_number` of an upload from the first `size` bytes of the file at
    /// `file`, hashing them on from `hashes` (which it returns carried on). The part is
    /// sent from memory (`object_store` wants a payload): the caller holds `size` bytes of
    /// the instance's [`Budget`] ([`Budget::reserve_bytes`]) meanwhile, and keeps parts
    /// sent this way small ([`S3Bytes::direct_part_max`]).
    pub async fn put_part_from_file(
        &self,
        key: &str,
        upload_id: &UploadId,
        part_number: u32,
        file: std::path::PathBuf,
        size: u64,
        hashes: Hashes,
    ) -> Result<(PartInfo, Hashes), S3Error> {
        let path = self.path(key)?;
        let len = usize::try_from(size).map_err(|_| S3Error::TooLarge)?;
        let (chunks, hashes) = tokio::task::spawn_blocking(move || {
            spool::read_range_hashed(&std::fs::File::open(file)?, 0, len, hashes)
        })
        .await
        .map_err(|e| S3Error::Body(std::io::Error::other(e)))?
        .map_err(S3Error::Body)?;
        let payload: PutPayload = chunks.into_iter().collect();
        let info = self
            .put_part_at(&path, upload_id, part_number, payload)
            .await?;
        Ok((info, hashes))
    }

    /// The largest part [`S3Bytes::put_part_from_file`] is given: 16 MiB, or the budget
    /// when smaller.
    pub fn direct_part_max(&self) -> u64 {
        self.budget.bytes().min(16 << 20) as u64
    }

    /// Completes an upload from its parts, which must be numbered 1 to n without a gap
    /// (in any order: they are sorted here). The object appears whole, at once.
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &UploadId,
        parts: &[PartInfo],
    ) -> Result<(), S3Error> {
        let path = self.path(key)?;
        self.complete_at(&path, upload_id, parts).await
    }

    async fn complete_at(
        &self,
        path: &Path,
        upload_id: &UploadId,
        parts: &[PartInfo],
    ) -> Result<(), S3Error> {
        let mut sorted: Vec<&PartInfo> = parts.iter().collect();
        sorted.sort_by_key(|p| p.number);
        for (i, p) in sorted.iter().enumerate() {
            if p.number as usize != i + 1 {
                return Err(S3Error::Invalid(format!(
                    "parts must be numbered 1 to {} without gaps or repeats",
                    sorted.len()
                )));
            }
        }
        let ids = sorted
            .into_iter()
            .map(|p| PartId {
                content_id: p.etag.clone(),
            })
            .collect();
        self.store
            .complete_multipart(path, &upload_id.0, ids)
            .await?;
        Ok(())
    }

    /// Aborts an upload: its parts are deleted. An id already completed or aborted is an
    /// error here (`NotFound` on AWS, a 403 on s3s-fs); [`S3Bytes::abort_uploads`] and
    /// [`S3Bytes::abort_assembly`] count it as done.
    pub async fn abort(&self, key: &str, upload_id: &UploadId) -> Result<(), S3Error> {
        let path = self.path(key)?;
        Ok(self.store.abort_multipart(&path, &upload_id.0).await?)
    }
}

/// Aborts a multipart upload when dropped armed: an upload cut short (an error, or the
/// request's future dropped because the client went away) leaves no parts behind. The
/// abort runs on a spawned task, since `Drop` cannot wait.
/// Parts of one upload sent beside each other, oldest first; dropped (an error, a client
/// gone), the ones still running are stopped (their multipart upload is aborted too).
#[derive(Default)]
struct InFlight(std::collections::VecDeque<tokio::task::JoinHandle<object_store::Result<PartId>>>);

impl InFlight {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// The oldest part's outcome, once it is sent; `None` when none is in flight.
    async fn next(&mut self) -> Option<Result<PartId, S3Error>> {
        let task = self.0.pop_front()?;
        Some(match task.await {
            Ok(sent) => sent.map_err(S3Error::from),
            Err(e) => Err(S3Error::Body(std::io::Error::other(e))),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct AbortOnDrop {
    store: Arc<AmazonS3>,
    path: Path,
    id: String,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, path, id) = (self.store.clone(), self.path.clone(), self.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.abort_multipart(&path, &id).await {
                    tracing::warn!(%path, error = %e, "aborting a multipart upload failed; the sweep retries");
                }
            });
        }
    }
}

/// An error and its sources, outermost first.
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bytes() -> S3Bytes {
        S3Bytes::new(&S3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            bucket: "uploads".into(),
            region: "us-east-1".into(),
            access_key_id: "key".into(),
            secret_access_key: SecretString::from("secret"),
            prefix: String::new(),
            path_style: true,
            allow_http: true,
            buffer_budget: DEFAULT_BUFFER_BUDGET,
        })
        .unwrap()
    }

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.into(),
        }
    }

    #[test]
    fn digits_of_the_elapsed_time_are_not_a_status() {
        // CI once read "in 1.403s" of a refused connection as a 403.
        let s3 = bytes();
        let refused = generic(
            "Error performing GET http://127.0.0.1:9/uploads in 1.403404s - error sending request",
        );
        assert!(s3.explain(&refused).starts_with("S3_ENDPOINT"));
        let forbidden = generic(
            "Error performing GET http://x/uploads in 404ms - Server returned non-2xx status code: 403 Forbidden: ",
        );
        assert!(s3.explain(&forbidden).starts_with("S3 credentials"));
        let missing = generic(
            "Error performing GET http://x/uploads in 403ms - Server returned non-2xx status code: 404 Not Found: <Code>NoSuchBucket</Code>",
        );
        assert!(s3.explain(&missing).starts_with("S3_BUCKET"));
    }
}
