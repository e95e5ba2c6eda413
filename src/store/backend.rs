//! The store the routes hold: the filesystem under `UPLOAD_ROOT` (`STORAGE_BACKEND=fs`, the
//! default) or a bucket with a PostgreSQL catalog (`s3`). Routes call these methods and
//! never learn which is in use; what the s3 backend does not do answers
//! [`StoreError::Unsupported`] (501) through [`Store::fs`].

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};

use super::cloud::{CloudStore, CloudUpload, NewFile, Page, Unreachable};
use super::key::ClientFileName;
use super::key::{FolderPath, Key, UserId};
use super::read::{FileEntry, Listed};
use super::sidecar::Meta;
use super::sink::{Sink, TempGuard, Written};
use super::DirectUpload;
use serde_json::{Map, Value};

use super::batch::BatchToken;
use super::cloud_resumable::CloudAppend;
use super::resumable::{NewResumable, Progress};
use super::sessions::{FileSpec, PartNumber, Session, SessionId, UploadMode};
use super::{CompleteRequest, FileStore, PartUpload, StoreError, Stored};
use crate::zip_stream::Source;

/// Files, sessions and quotas, wherever they live.
#[derive(Debug, Clone)]
pub enum Store {
    /// Under `UPLOAD_ROOT`.
    Fs(FileStore),
    /// In a bucket and PostgreSQL.
    Cloud(CloudStore),
}

/// A file opened for reading.
#[derive(Debug)]
pub enum Opened {
    /// A file on disk, open (renames cannot pull it away).
    File(std::fs::File, FileEntry),
    /// An object in the bucket; its bytes are fetched by range.
    Object(FileEntry),
}

impl Opened {
    /// What the catalog or sidecar says of it.
    pub fn entry(&self) -> &FileEntry {
        match self {
            Self::File(_, e) | Self::Object(e) => e,
        }
    }
}

/// A one-request upload of one or more files (multipart form).
pub enum Upload {
    /// Into a work folder under `UPLOAD_ROOT`.
    Fs(DirectUpload),
    /// Spooled locally, then into the bucket.
    Cloud(CloudUpload),
}

impl Upload {
    /// Starts a file of this upload.
    pub async fn begin_file(&self) -> Result<Sink, StoreError> {
        match self {
            Self::Fs(u) => u.begin_file().await,
            Self::Cloud(u) => u.begin_file().await,
        }
    }

    /// Writes a chunk of the current file under the quota; `total_before`: the bytes of this
    /// upload's earlier files.
    pub async fn write(
        &mut self,
        sink: &mut Sink,
        chunk: Bytes,
        total_before: u64,
    ) -> Result<(), StoreError> {
        match self {
            Self::Fs(u) => u.write(sink, chunk, total_before).await,
            Self::Cloud(u) => u.write(sink, chunk, total_before).await,
        }
    }

    /// Checks a finished file's SHA-256 and publishes it.
    pub async fn publish_file(
        &mut self,
        file: (Written, TempGuard),
        name: ClientFileName,
        folder: Option<FolderPath>,
        declared_mime: Option<String>,
        expected_sha: Option<String>,
        extra: Map<String, Value>,
    ) -> Result<Stored, StoreError> {
        match self {
            Self::Fs(u) => {
                u.publish_file(file, name, folder, declared_mime, expected_sha, extra)
                    .await
            }
            Self::Cloud(u) => {
                u.publish_file(file, name, folder, declared_mime, expected_sha, extra)
                    .await
            }
        }
    }

    /// Releases what is still reserved.
    pub async fn finish(self) {
        match self {
            Self::Fs(u) => u.finish().await,
            Self::Cloud(u) => u.finish().await,
        }
    }
}

/// An append to a resumable upload on its way (tus `PATCH`, draft `PATCH`/`POST`).
pub enum Append {
    /// Into the session's data file under `UPLOAD_ROOT/.parts`.
    Fs(PartUpload),
    /// Spooled locally, then to a segment object in the bucket.
    Cloud(CloudAppend),
}

impl Append {
    /// Writes a chunk of the request's bytes.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        match self {
            Self::Fs(p) => p.write(chunk).await,
            Self::Cloud(c) => c.write(chunk).await,
        }
    }
}

impl Store {
    /// Starts a one-request upload for `user`.
    pub async fn begin_upload(&self, user: &UserId) -> Result<Upload, StoreError> {
        match self {
            Self::Fs(fs) => Ok(Upload::Fs(fs.begin_upload(user).await?)),
            Self::Cloud(c) => Ok(Upload::Cloud(c.begin_upload(user))),
        }
    }

    /// The filesystem store, for what only it does so far: `what` names the operation in
    /// the 501 the s3 backend answers.
    pub fn fs(&self, what: &'static str) -> Result<&FileStore, StoreError> {
        match self {
            Self::Fs(fs) => Ok(fs),
            Self::Cloud(_) => Err(StoreError::Unsupported(what)),
        }
    }

    /// The filesystem store when that is the backend.
    pub fn as_fs(&self) -> Option<&FileStore> {
        match self {
            Self::Fs(fs) => Some(fs),
            Self::Cloud(_) => None,
        }
    }

    /// The bucket and catalog when they are the backend.
    pub fn as_cloud(&self) -> Option<&CloudStore> {
        match self {
            Self::Fs(_) => None,
            Self::Cloud(c) => Some(c),
        }
    }

    /// The quota in bytes.
    pub fn quota_limit(&self, fallback: u64) -> u64 {
        match self {
            Self::Fs(fs) => fs.quota_limit(),
            Self::Cloud(_) => fallback,
        }
    }

    /// The file at `key`, with its metadata.
    pub async fn entry(&self, key: &Key) -> Result<FileEntry, StoreError> {
        match self {
            Self::Fs(fs) => fs.entry(key).await,
            Self::Cloud(c) => c.entry(key).await,
        }
    }

    /// Opens the file at `key` for reading.
    pub async fn open_read(&self, key: &Key) -> Result<Opened, StoreError> {
        match self {
            Self::Fs(fs) => {
                let (file, entry) = match fs.try_open_cached(key)? {
                    Some(opened) => opened,
                    None => fs.open_file(key).await?,
                };
                Ok(Opened::File(file, entry))
            }
            Self::Cloud(c) => Ok(Opened::Object(c.entry(key).await?)),
        }
    }

    /// A page of `user`'s files, newest first (with `folder`: that folder and its
    /// subfolders), and the totals of the whole listing.
    pub async fn list_page(
        &self,
        user: &UserId,
        folder: Option<&FolderPath>,
        offset: u64,
        limit: u64,
    ) -> Result<Page, StoreError> {
        match self {
            Self::Fs(fs) => {
                let listing = fs.list(user, folder.map(FolderPath::segments)).await?;
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                let take = usize::try_from(limit).unwrap_or(usize::MAX);
                Ok(Page {
                    total_count: listing.files.len() as u64,
                    total_size: listing.total_size,
                    files: listing
                        .files
                        .iter()
                        .skip(skip)
                        .take(take)
                        .map(|e| Listed::from(&**e))
                        .collect(),
                })
            }
            Self::Cloud(c) => c.list_page(user, folder, offset, limit).await,
        }
    }

    /// Deletes the file at `key` and its metadata.
    pub async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        match self {
            Self::Fs(fs) => fs.delete(key).await,
            Self::Cloud(c) => c.delete(key).await,
        }
    }

    /// Replaces the metadata of the file at `key`.
    pub async fn update_meta(&self, key: &Key, meta: Meta) -> Result<(), StoreError> {
        match self {
            Self::Fs(fs) => fs.update_meta(key, meta).await,
            Self::Cloud(c) => c.update_meta(key, meta).await,
        }
    }

    /// Bytes `user` stores, and bytes reserved by its uploads in flight.
    pub async fn usage(&self, user: &UserId) -> Result<(u64, u64), StoreError> {
        match self {
            Self::Fs(fs) => fs.usage(user).await,
            Self::Cloud(c) => c.usage(user).await,
        }
    }

    /// Stores `body` as a new file: a one-request upload of one file, at most `limit`
    /// bytes. The body goes to the local disk as it arrives (s3: a spool file, sent on to
    /// the bucket a part at a time as the parts are on disk), so a client that stalls holds
    /// no memory and no share of the bucket's transfer budget.
    pub async fn put_file<S>(&self, new: NewFile, body: S, limit: u64) -> Result<Stored, StoreError>
    where
        S: Stream<Item = Result<Bytes, StoreError>> + Send,
    {
        if let Self::Cloud(c) = self {
            return c.put_file(new, body, limit).await;
        }
        let mut upload = self.begin_upload(&new.user).await?;
        let result = async {
            let mut sink = upload.begin_file().await?;
            sink.set_limit(limit);
            let mut body = std::pin::pin!(body);
            while let Some(chunk) = body.next().await {
                upload.write(&mut sink, chunk?, 0).await?;
            }
            let file = sink.finish().await?;
            upload
                .publish_file(
                    file,
                    new.name,
                    new.folder,
                    new.declared_mime,
                    new.expected_sha,
                    new.extra,
                )
                .await
        }
        .await;
        upload.finish().await;
        result
    }

    /// Opens one session per file (API.md §3.1 init), quota reserved for all or none.
    pub async fn create_sessions(
        &self,
        user: &UserId,
        mode: UploadMode,
        files: Vec<FileSpec>,
        folder: Option<FolderPath>,
        meta: Map<String, Value>,
    ) -> Result<Vec<Session>, StoreError> {
        match self {
            Self::Fs(fs) => fs.create_sessions(user, mode, files, folder, meta).await,
            Self::Cloud(c) => c.create_sessions(user, mode, files, folder, meta).await,
        }
    }

    /// A live session.
    pub async fn session(&self, id: &SessionId) -> Result<Session, StoreError> {
        match self {
            Self::Fs(fs) => fs.session(id).await,
            Self::Cloud(c) => c.session(id).await,
        }
    }

    /// A session's parts: number and size.
    pub async fn session_parts(&self, id: &SessionId) -> Result<Vec<(u32, u64)>, StoreError> {
        match self {
            Self::Fs(fs) => fs.session_parts(id).await,
            Self::Cloud(c) => c.session_parts(id).await,
        }
    }

    /// Begins a resumable upload (tus, the IETF draft): one session, its length reserved
    /// when known.
    pub async fn create_resumable(&self, new: NewResumable) -> Result<Session, StoreError> {
        match self {
            Self::Fs(fs) => fs.create_resumable(new).await,
            Self::Cloud(c) => c.create_resumable(new).await,
        }
    }

    /// Where a resumable upload stands: open at an offset, or finished.
    pub async fn progress(&self, id: &SessionId) -> Result<Progress, StoreError> {
        match self {
            Self::Fs(fs) => fs.progress(id).await,
            Self::Cloud(c) => c.progress(id).await,
        }
    }

    /// Starts an append to `session` at `offset`, which must be where it ends
    /// ([`StoreError::OffsetMismatch`]); [`StoreError::Busy`] while another append holds it.
    pub async fn begin_append(&self, session: &Session, offset: u64) -> Result<Append, StoreError> {
        match self {
            Self::Fs(fs) => Ok(Append::Fs(fs.begin_append(session, offset).await?)),
            Self::Cloud(c) => Ok(Append::Cloud(c.begin_append(session, offset).await?)),
        }
    }

    /// Records an append (also one cut short); the new offset.
    pub async fn commit_append(
        &self,
        session: &Session,
        append: Append,
    ) -> Result<u64, StoreError> {
        match (self, append) {
            (Self::Fs(fs), Append::Fs(p)) => fs.commit_append(session, p).await,
            (Self::Cloud(c), Append::Cloud(a)) => c.commit_append(session, a).await,
            _ => Err(StoreError::Unsupported(
                "an append begun on another backend",
            )),
        }
    }

    /// Declares a deferred length, reserving it; the session as it now is.
    pub async fn declare_length(
        &self,
        session: &Session,
        length: u64,
    ) -> Result<Session, StoreError> {
        match self {
            Self::Fs(fs) => fs.declare_length(session, length).await,
            Self::Cloud(c) => c.declare_length(session, length).await,
        }
    }

    /// Publishes a resumable upload whose bytes are all there (see
    /// [`Store::finish_resumable_checked`]).
    pub async fn finish_resumable(&self, session: &Session) -> Result<Option<Stored>, StoreError> {
        self.finish_resumable_checked(session, None).await
    }

    /// Publishes a resumable upload whose bytes are all there, refusing a file whose
    /// SHA-256 is not `sha256` (hex) when given. A partial upload is not published: `None`,
    /// unless the final upload waiting for it now is.
    pub async fn finish_resumable_checked(
        &self,
        session: &Session,
        sha256: Option<&str>,
    ) -> Result<Option<Stored>, StoreError> {
        match self {
            Self::Fs(fs) => fs.finish_resumable_checked(session, sha256).await,
            Self::Cloud(c) => c.finish_resumable_checked(session, sha256).await,
        }
    }

    /// Forgets a finished resumable upload (its file stays).
    pub async fn forget_finished(&self, id: &SessionId) -> Result<(), StoreError> {
        match self {
            Self::Fs(fs) => fs.forget_finished(id).await,
            Self::Cloud(c) => c.forget_finished(id).await,
        }
    }

    /// Ends a resumable upload that is not finished, freeing its space.
    pub async fn terminate(&self, session: &Session) -> Result<(), StoreError> {
        match self {
            Self::Fs(fs) => fs.terminate(session).await,
            Self::Cloud(c) => c.terminate(session).await,
        }
    }

    /// A tus final upload of `parts`: published at once when they are all complete.
    pub async fn create_concat(
        &self,
        new: NewResumable,
        parts: Vec<SessionId>,
    ) -> Result<(Session, Option<Stored>), StoreError> {
        match self {
            Self::Fs(fs) => fs.create_concat(new, parts).await,
            Self::Cloud(c) => c.create_concat(new, parts).await,
        }
    }

    /// Publishes a final concatenation whose partial uploads are all complete; `None`
    /// while one is not.
    pub async fn finish_concat(&self, fin: &Session) -> Result<Option<Stored>, StoreError> {
        match self {
            Self::Fs(fs) => fs.finish_concat(fin).await,
            Self::Cloud(c) => c.finish_concat(fin).await,
        }
    }

    /// Ends a session unfinished, freeing its space.
    pub async fn abort(&self, info: &Session) -> Result<(), StoreError> {
        match self {
            Self::Fs(fs) => fs.abort(info).await,
            Self::Cloud(c) => c.abort(info).await,
        }
    }

    /// Starts receiving part `number` of `session`.
    pub async fn begin_part(
        &self,
        session: &Session,
        number: PartNumber,
    ) -> Result<PartUpload, StoreError> {
        match self {
            Self::Fs(fs) => fs.begin_part(session, number).await,
            Self::Cloud(c) => c.begin_part(session, number).await,
        }
    }

    /// Starts receiving a JSON part whose session is not known yet.
    pub async fn begin_staged_part(&self, who: Option<&UserId>) -> Result<PartUpload, StoreError> {
        match self {
            Self::Fs(fs) => fs.begin_staged_part(who).await,
            Self::Cloud(c) => c.begin_staged_part(who).await,
        }
    }

    /// Makes a received part count; its size.
    pub async fn commit_part(
        &self,
        session: &Session,
        number: PartNumber,
        part: PartUpload,
    ) -> Result<u64, StoreError> {
        match self {
            Self::Fs(fs) => fs.commit_part(session, number, part).await,
            Self::Cloud(c) => c.commit_part(session, number, part).await,
        }
    }

    /// Completes a session into a stored file.
    pub async fn complete(
        &self,
        info: &Session,
        req: CompleteRequest,
    ) -> Result<Stored, StoreError> {
        match self {
            Self::Fs(fs) => fs.complete(info, req).await,
            Self::Cloud(c) => c.complete(info, req).await,
        }
    }

    /// Keeps a batch-download token; its id.
    pub async fn create_batch(&self, batch: BatchToken) -> Result<String, StoreError> {
        match self {
            Self::Fs(fs) => fs.create_batch(batch).await,
            Self::Cloud(c) => c.create_batch(batch).await,
        }
    }

    /// A batch-download token, while it has not expired.
    pub async fn batch(&self, token: &str) -> Result<BatchToken, StoreError> {
        match self {
            Self::Fs(fs) => fs.batch(token).await,
            Self::Cloud(c) => c.batch(token).await,
        }
    }

    /// A file's CRC-32, computed and recorded when its metadata lacks it.
    pub async fn ensure_crc(&self, entry: &FileEntry) -> Result<u32, StoreError> {
        match self {
            Self::Fs(fs) => fs.ensure_crc(entry).await,
            Self::Cloud(c) => c.ensure_crc(entry).await,
        }
    }

    /// Where a ZIP entry's bytes come from.
    pub fn zip_source(&self, key: &Key) -> Source {
        match self {
            Self::Fs(fs) => Source::Disk(fs.data_opener(key)),
            Self::Cloud(c) => c.zip_source(key),
        }
    }

    /// The s3 backend's reachability (`/healthz`); the filesystem has its own probe.
    pub async fn backends_health(&self) -> Result<(), Unreachable> {
        match self {
            Self::Fs(_) => Ok(()),
            Self::Cloud(c) => c.health().await,
        }
    }
}
