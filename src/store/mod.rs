//! The filesystem store: files, sidecars, upload sessions and quotas under `UPLOAD_ROOT`.
//! Knows nothing of HTTP: in go keys, names and byte streams; out come `Meta`, sizes and
//! [`StoreError`]s.
//!
//! Publishing is atomic: data and sidecar are written under temporary names inside the
//! claimed session folder, fsynced, then renamed into place, sidecar first, and the folder
//! fsynced, so no reader sees a partial file or data without metadata.

pub mod batch;
pub mod key;
pub mod quota;
pub mod read;
pub mod sessions;
pub mod sidecar;
pub mod sink;
pub mod staging;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};

use self::key::{FileName, FolderPath, Key, UserId};
use self::quota::Quotas;
use self::sessions::{FileSpec, SessionDirs, SessionId, SessionInfo};
use self::sidecar::Meta;
use self::sink::{Hashes, Sink, TempGuard, Written};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such file or session.
    #[error("{0}")]
    NotFound(String),
    /// A name or request the store refuses.
    #[error("{0}")]
    Invalid(String),
    /// The joined parts do not add up to the declared size.
    #[error("Size mismatch: expected {expected} bytes, got {actual}")]
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
    #[error("Quota exceeded: {used} of {quota} bytes used, {requested} more requested")]
    Quota {
        /// Bytes in use (stored and reserved).
        used: u64,
        /// The quota.
        quota: u64,
        /// Bytes asked for.
        requested: u64,
    },
    /// More bytes than allowed (declared size or `MAX_BODY_MB`).
    #[error("Upload exceeds the allowed size")]
    TooLarge,
    /// The disk (or the filesystem quota) is full.
    #[error("Insufficient storage")]
    DiskFull,
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
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
    pub filename: Option<String>,
    /// `meta.folder`, overriding the init folder.
    pub folder: Option<String>,
    /// Expected hex SHA-256, when given.
    pub sha256: Option<String>,
    /// The client's other `meta` fields.
    pub extra: Map<String, Value>,
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
    list_cache: std::sync::Arc<read::ListCache>,
    /// Sidecars of files being served (see `read::MetaCache`).
    meta_cache: std::sync::Arc<read::MetaCache>,
    /// `UPLOAD_ROOT`, open once: every read resolves below it with `openat2`.
    root_fd: std::sync::Arc<std::os::fd::OwnedFd>,
    /// Bytes of JSON parts staged before their session is known.
    staging: std::sync::Arc<staging::StagingBudget>,
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

impl FileStore {
    /// A store over `root`, creating its folders.
    pub fn open(
        root: &Path,
        quota_bytes: u64,
        session_ttl: Duration,
        max_file: u64,
    ) -> std::io::Result<Self> {
        let storage = root.join("storage");
        let parts = root.join(".parts");
        for d in [
            &storage,
            &parts,
            &parts.join(".staging"),
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
            staging: std::sync::Arc::default(),
        })
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

    // ---- sessions ----

    /// Opens one session per file, reserving their declared sizes against the quota
    /// together (all or none).
    pub async fn create_sessions(
        &self,
        user: &UserId,
        mode: &str,
        files: Vec<FileSpec>,
        folder: Option<String>,
        meta: Map<String, Value>,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        for f in &files {
            key::validate_client_filename(&f.name).map_err(|e| StoreError::Invalid(e.0))?;
            if f.size > self.max_file {
                return Err(StoreError::TooLarge);
            }
        }
        let created_at = Utc::now();
        let expires_at = created_at
            + chrono::Duration::from_std(self.session_ttl).unwrap_or(chrono::Duration::hours(24));
        let infos: Vec<SessionInfo> = files
            .into_iter()
            .map(|file| SessionInfo {
                upload_id: SessionId::new().to_string(),
                user_id: user.as_str().to_owned(),
                mode: mode.to_owned(),
                file,
                folder: folder.clone(),
                meta: meta.clone(),
                created_at,
                expires_at,
            })
            .collect();
        let this = self.clone();
        let user = user.as_str().to_owned();
        let out = infos.clone();
        blocking(move || {
            this.quotas.with_ledger(&user, |ledger| {
                let requested: u64 = infos.iter().map(|i| i.file.size).sum();
                let used = ledger.used + ledger.reserved.values().sum::<u64>();
                if used.saturating_add(requested) > this.quotas.limit {
                    return Err(StoreError::Quota {
                        used,
                        quota: this.quotas.limit,
                        requested,
                    });
                }
                for info in &infos {
                    let id = SessionId::parse(&info.upload_id)?;
                    let dir = this.dirs.live(&id);
                    std::fs::create_dir(&dir)?;
                    let written = (|| -> std::io::Result<()> {
                        let mut f = std::fs::File::create(dir.join("session.json"))?;
                        f.write_all(&serde_json::to_vec_pretty(info).unwrap_or_default())?;
                        f.sync_all()?;
                        fsync_dir(&dir)
                    })();
                    if let Err(e) = written {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e.into());
                    }
                    ledger
                        .reserved
                        .insert(info.upload_id.clone(), info.file.size);
                }
                Ok(())
            })
        })
        .await
        .inspect_err(|_| {
            // A failure part-way leaves no session behind.
            for info in &out {
                if let Ok(id) = SessionId::parse(&info.upload_id) {
                    let _ = std::fs::remove_dir_all(self.dirs.live(&id));
                }
            }
        })?;
        Ok(out)
    }

    /// A live session (not expired), for its owner.
    pub async fn session(&self, id: &SessionId) -> Result<SessionInfo, StoreError> {
        let dir = self.dirs.live(id);
        let info = blocking(move || sessions::read_info(&dir)).await?;
        if info.expired() {
            return Err(StoreError::NotFound("Upload session not found".to_owned()));
        }
        Ok(info)
    }

    /// A session's parts and their sizes.
    pub async fn session_parts(&self, id: &SessionId) -> Result<Vec<(u32, u64)>, StoreError> {
        let dir = self.dirs.live(id);
        blocking(move || sessions::list_parts(&dir)).await
    }

    /// Removes a session and frees its reservation.
    pub async fn abort(&self, info: &SessionInfo) -> Result<(), StoreError> {
        let id = SessionId::parse(&info.upload_id)?;
        let this = self.clone();
        let user = info.user_id.clone();
        blocking(move || {
            let dir = this.dirs.live(&id);
            let doomed = this
                .dirs
                .parts
                .join(format!(".aborted-{id}-{}", uuid::Uuid::new_v4().simple()));
            match std::fs::rename(&dir, &doomed) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound("Upload session not found".to_owned()))
                }
                Err(e) => return Err(e.into()),
            }
            let _ = std::fs::remove_dir_all(&doomed);
            this.quotas.with_ledger(&user, |l| {
                l.reserved.remove(&id.to_string());
                Ok(())
            })
        })
        .await
    }

    /// Starts receiving a part of `session`, at most the declared size minus the other
    /// parts' bytes. A part that comes in order (every part received so far has a lower
    /// number and they all lie back to back in the session's data file) is appended to the
    /// data file, hashed on from the state recorded after the part before it, so that
    /// complete has nothing left to copy or hash. Any other part (out of order, a part
    /// sent again, or one arriving while another is being appended) goes to a temporary
    /// file in the session's folder.
    pub async fn begin_part(
        &self,
        info: &SessionInfo,
        number: u32,
    ) -> Result<PartUpload, StoreError> {
        check_part_number(number)?;
        let id = SessionId::parse(&info.upload_id)?;
        let dir = self.dirs.live(&id);
        let declared = info.file.size;
        let (room, append) = blocking(move || {
            let _lock = lock_live_session(&dir)?;
            let parts = sessions::read_parts(&dir)?;
            let others: u64 = parts
                .iter()
                .filter(|p| p.number != number)
                .map(|p| p.size)
                .sum();
            Ok((
                declared.saturating_sub(others),
                open_append(&dir, &parts, number)?,
            ))
        })
        .await?;
        if let Some((file, offset, hashes)) = append {
            return Ok(PartUpload {
                sink: Sink::append(file, hashes, room),
                append_at: Some((offset, AppendGuard(Some(self.dirs.live(&id))))),
                staging: None,
            });
        }
        let tmp = self
            .dirs
            .live(&id)
            .join(format!(".tmp-{number}-{}", uuid::Uuid::new_v4().simple()));
        let sink = Sink::create(tmp, true, room).await.map_err(|e| match e {
            StoreError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => not_found(),
            other => other,
        })?;
        Ok(PartUpload {
            sink,
            append_at: None,
            staging: None,
        })
    }

    /// Starts receiving a JSON part whose session is not known yet (its `uploadId` comes
    /// after the data): bytes go to `.parts/.staging/`, within the staging budget of `who`
    /// (a user, or `None` for service callers; see [`staging`]).
    pub async fn begin_staged_part(&self, who: Option<&UserId>) -> Result<PartUpload, StoreError> {
        let limit = match who {
            Some(user) => {
                let quotas = self.quotas.clone();
                let user = user.as_str().to_owned();
                blocking(move || quotas.with_ledger(&user, |l| Ok(l.reserved.values().sum())))
                    .await?
            }
            None => self.max_file,
        };
        let charge = self.staging.charge(who.cloned(), limit);
        let tmp = self
            .dirs
            .staging()
            .join(uuid::Uuid::new_v4().simple().to_string());
        Ok(PartUpload {
            sink: Sink::create(tmp, true, limit.min(self.max_file)).await?,
            append_at: None,
            staging: Some(charge),
        })
    }

    /// Makes a received part count, replacing an earlier part of the same number, unless
    /// the parts would then pass the declared size: an appended part gets its segment
    /// record, any other is renamed to `part_{n}`.
    pub async fn commit_part(
        &self,
        info: &SessionInfo,
        number: u32,
        part: PartUpload,
    ) -> Result<u64, StoreError> {
        check_part_number(number)?;
        let id = SessionId::parse(&info.upload_id)?;
        let dir = self.dirs.live(&id);
        let declared = info.file.size;
        // Parts of one session may arrive in parallel: the checks and the renames happen
        // under the session's lock, so committed parts never pass the declared size and a
        // complete never takes a session half-way through a commit.
        let fits = move |dir: &Path, size: u64| -> Result<(), StoreError> {
            let others: u64 = sessions::read_parts(dir)?
                .iter()
                .filter(|p| p.number != number)
                .map(|p| p.size)
                .sum();
            if others + size > declared {
                return Err(StoreError::TooLarge);
            }
            Ok(())
        };
        if let Some((offset, mut guard)) = part.append_at {
            let (size, hashes, data) = part.sink.finish_open().await?;
            let (sha_state, crc32) = hashes.state();
            let segment = sessions::Segment { offset, size };
            let hashes = sessions::SegmentHashes { sha_state, crc32 };
            let size = blocking(move || {
                let _lock = lock_live_session(&dir)?;
                fits(&dir, size)?;
                sessions::write_segment(&dir, number, &segment, &hashes)?;
                // Only a request for the same part number sent alongside this one can have
                // made a part file meanwhile; this part, committed later, replaces it.
                sessions::remove_part_file(&dir, number)?;
                fsync_dir(&dir)?;
                // The data file's lock goes only now: the next part may append after this one.
                drop(data);
                Ok(size)
            })
            .await?;
            guard.0 = None;
            return Ok(size);
        }
        let (written, guard) = part.sink.finish().await?;
        blocking(move || {
            let _lock = lock_live_session(&dir)?;
            fits(&dir, written.size)?;
            let dest = dir.join(sessions::part_file_name(number));
            std::fs::rename(guard.path(), &dest).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    not_found()
                } else {
                    e.into()
                }
            })?;
            guard.keep();
            // A segment of the same number is replaced: out of the chain, so complete joins.
            // (Should this fail, or the process die before it, the part file still wins
            // over the segment.)
            let _ = sessions::remove_segment(&dir, number);
            // Its hashes, tied to this very file (inode, mtime, size): complete can then
            // take a single part as it is.
            sessions::write_sum(&dest, &written);
            fsync_dir(&dir)?;
            Ok(written.size)
        })
        .await
    }

    /// Joins a session's parts into its file and publishes it (API.md §3.1 complete).
    pub async fn complete(
        &self,
        id: &SessionId,
        req: CompleteRequest,
    ) -> Result<Stored, StoreError> {
        let this = self.clone();
        let id = *id;
        blocking(move || this.complete_blocking(&id, req)).await
    }

    fn complete_blocking(
        &self,
        id: &SessionId,
        req: CompleteRequest,
    ) -> Result<Stored, StoreError> {
        let live = self.dirs.live(id);
        let claimed = self.dirs.claimed(id);
        let info = sessions::read_info(&live)?;
        if info.expired() {
            return Err(StoreError::NotFound("Upload session not found".to_owned()));
        }
        // The folder's lock marks the claim as alive for as long as this complete runs (the
        // kernel drops it if the process dies, whichever host or PID); it also waits for a
        // part being committed. Then, of two completes, only one renames the folder.
        let _lock = lock_dir(&live).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_found(),
            _ => e.into(),
        })?;
        match std::fs::rename(&live, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(e.into()),
        }
        let result = self.publish_claimed(&claimed, &info, req);
        // A failure after the file went into place (the folder's fsync, the ledger's write)
        // must not give the session back: its parts may be that very file (a hard link),
        // and a second complete would store a second copy. The complete took effect.
        let in_place = result.is_err() && published_data(&claimed).is_some();
        if in_place {
            tracing::error!(session = %id, "complete failed after its file was in place: the session ends");
        }
        if result.is_ok() || in_place {
            self.end_claim(id, &claimed);
        } else {
            // Keep the parts so the client can fix them and complete again.
            let _ = std::fs::remove_file(claimed.join("publish.json"));
            if let Err(e) = std::fs::rename(&claimed, &live) {
                tracing::error!(error = %e, session = %id, "cannot give a claimed session back");
            }
        }
        result
    }

    /// Removes the folder of a claim that took effect.
    fn end_claim(&self, id: &SessionId, claimed: &Path) {
        // Out of the way first: a crash half-way through deleting must not leave a
        // claimed folder that looks like a complete to give back (a second copy).
        let doomed = self
            .dirs
            .parts
            .join(format!(".aborted-{id}-{}", uuid::Uuid::new_v4().simple()));
        match std::fs::rename(claimed, &doomed) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&doomed);
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(claimed);
            }
        }
    }

    fn publish_claimed(
        &self,
        claimed: &Path,
        info: &SessionInfo,
        req: CompleteRequest,
    ) -> Result<Stored, StoreError> {
        let parts = sessions::read_parts(claimed)?;
        let total: u64 = parts.iter().map(|p| p.size).sum();
        if total != info.file.size {
            return Err(StoreError::SizeMismatch {
                expected: info.file.size,
                actual: total,
            });
        }
        let user = UserId::parse(&info.user_id).map_err(|e| StoreError::Invalid(e.0))?;
        let original_name = req
            .filename
            .clone()
            .unwrap_or_else(|| info.file.name.clone());
        key::validate_client_filename(&original_name).map_err(|e| StoreError::Invalid(e.0))?;
        let folder = req
            .folder
            .as_deref()
            .or(info.folder.as_deref())
            .and_then(FolderPath::sanitize);
        let mut extra = info.meta.clone();
        extra.extend(req.extra);
        let publish = |written: Written, tmp: TempGuard| {
            self.publish(
                &user,
                folder.as_ref(),
                &original_name,
                info.file.mime.as_deref(),
                extra,
                written,
                tmp,
                claimed,
                &info.upload_id,
            )
        };

        let tmp = TempGuard::new(claimed.join(".joined"));
        // The usual case: the parts came in order and lie back to back in the data file,
        // hashed as they came. The data file becomes the file, by a hard link: complete
        // copies and hashes nothing, and the parts stay should the complete fail. Its lock
        // is held until the file is in place, so no append can touch it (an append still
        // running means a part is in flight: then the parts are joined instead).
        if let Some((n, last)) = sessions::chain(&parts) {
            if let (Some(data), Some(hashes)) = (
                lock_data_file(claimed, false)?,
                sessions::read_segment_hashes(claimed, n, &last)
                    .and_then(|h| Hashes::resume(&h.sha_state, h.crc32)),
            ) {
                let (sha256, crc32) = hashes.finish();
                check_sha(req.sha256.as_deref(), &sha256)?;
                let len = data.metadata()?.len();
                if len < total {
                    return Err(StoreError::Io(std::io::Error::other(format!(
                        "the data file holds {len} bytes, its segments {total}"
                    ))));
                }
                if len > total {
                    // What a cut append left past the last part.
                    data.set_len(total)?;
                }
                data.sync_all()?;
                std::fs::hard_link(claimed.join(sessions::DATA_FILE), tmp.path())?;
                let stored = publish(
                    Written {
                        size: total,
                        sha256: Some(sha256),
                        crc32: Some(crc32),
                    },
                    tmp,
                );
                drop(data);
                return stored;
            }
        }
        // One part file whose hashes were taken as it arrived: the part itself becomes the
        // file, by a hard link.
        if let [sessions::Part {
            number,
            size,
            kind: sessions::PartKind::File,
        }] = parts.as_slice()
        {
            let part = claimed.join(sessions::part_file_name(*number));
            if let Some(sum) = sessions::read_sum(&part, *size) {
                check_sha(req.sha256.as_deref(), &sum.sha256)?;
                std::fs::hard_link(&part, tmp.path())?;
                let written = Written {
                    size: total,
                    sha256: Some(sum.sha256),
                    crc32: Some(sum.crc32),
                };
                return publish(written, tmp);
            }
        }
        // Otherwise join in part order, hashing in the same pass.
        let mut hashes = Hashes::default();
        {
            use std::io::Seek as _;
            let out = std::fs::File::create(tmp.path())?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            let mut buf = vec![0u8; 1 << 20];
            let mut data: Option<std::fs::File> = None;
            for part in &parts {
                let mut src = match &part.kind {
                    sessions::PartKind::File => {
                        std::fs::File::open(claimed.join(sessions::part_file_name(part.number)))?
                    }
                    sessions::PartKind::Segment(seg) => {
                        let data = match &mut data {
                            Some(d) => d,
                            None => {
                                data.insert(std::fs::File::open(claimed.join(sessions::DATA_FILE))?)
                            }
                        };
                        let mut d = data.try_clone()?;
                        d.seek(std::io::SeekFrom::Start(seg.offset))?;
                        d
                    }
                }
                .take(part.size);
                let mut copied = 0;
                loop {
                    let k = src.read(&mut buf)?;
                    if k == 0 {
                        break;
                    }
                    hashes.update(&buf[..k]);
                    out.write_all(&buf[..k])?;
                    copied += k as u64;
                }
                if copied != part.size {
                    return Err(StoreError::Io(std::io::Error::other(format!(
                        "part {} holds {copied} bytes, {} expected",
                        part.number, part.size
                    ))));
                }
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        let (sha256, crc32) = hashes.finish();
        check_sha(req.sha256.as_deref(), &sha256)?;
        let written = Written {
            size: total,
            sha256: Some(sha256),
            crc32: Some(crc32),
        };
        publish(written, tmp)
    }

    /// Moves a finished temporary file into place with its sidecar, charging the quota
    /// (the file's bytes leave the reservation `reservation` in the same step).
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        user: &UserId,
        folder: Option<&FolderPath>,
        original_name: &str,
        declared_mime: Option<&str>,
        extra: Map<String, Value>,
        written: Written,
        data: TempGuard,
        work_dir: &Path,
        reservation: &str,
    ) -> Result<Stored, StoreError> {
        let name = FileName::sanitize(original_name);
        let mime = sidecar::guess_mime(original_name, declared_mime);
        let mut meta = Meta {
            original_name: original_name.to_owned(),
            mime,
            sha256: written.sha256,
            crc32: written.crc32,
            user_id: user.as_str().to_owned(),
            size: Some(written.size),
            created_at: Some(now_rfc3339()),
            extra,
        };
        meta.extra
            .insert("filename".into(), Value::from(original_name));
        if let Some(f) = folder {
            meta.extra
                .insert("folder".into(), Value::from(f.as_string()));
        }
        let sidecar_tmp = TempGuard::new(work_dir.join(".sidecar"));
        {
            let mut f = std::fs::File::create(sidecar_tmp.path())?;
            f.write_all(&meta.to_json())?;
            f.sync_all()?;
        }
        let user_dir = self.storage.join(user.as_str());
        let dest_dir = match folder {
            Some(f) => f.segments().iter().fold(user_dir, |p, s| p.join(s)),
            None => user_dir,
        };
        std::fs::create_dir_all(&dest_dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
                StoreError::Invalid("Folder conflicts with an existing file".to_owned())
            }
            _ => e.into(),
        })?;
        self.quotas.with_ledger(user.as_str(), |ledger| {
            // This file's bytes come out of its own reservation; what the reservation holds
            // beyond them (other files of the same request) stays counted.
            let held = ledger.reserved.get(reservation).copied().unwrap_or(0);
            let others = ledger.used
                + ledger.reserved_except(reservation)
                + held.saturating_sub(written.size);
            if others.saturating_add(written.size) > self.quotas.limit {
                return Err(StoreError::Quota {
                    used: others,
                    quota: self.quotas.limit,
                    requested: written.size,
                });
            }
            // A fresh prefix; `create_new` on the sidecar name settles a collision.
            let key = loop {
                let key = Key::new(
                    user,
                    folder,
                    &format!("{}_{}", random_prefix(), name.as_str()),
                );
                let path = self.data_path(&key);
                if !path.exists() && !Meta::path_for(&path).exists() {
                    break key;
                }
            };
            let data_path = self.data_path(&key);
            let sidecar_path = Meta::path_for(&data_path);
            std::fs::write(
                work_dir.join("publish.json"),
                serde_json::json!({ "data": data_path, "sidecar": sidecar_path }).to_string(),
            )?;
            std::fs::rename(sidecar_tmp.path(), &sidecar_path)?;
            sidecar_tmp.keep();
            if let Err(e) = std::fs::rename(data.path(), &data_path) {
                let _ = std::fs::remove_file(&sidecar_path);
                return Err(e.into());
            }
            data.keep();
            fsync_dir(&dest_dir)?;
            ledger.used += written.size;
            if held > written.size {
                ledger
                    .reserved
                    .insert(reservation.to_owned(), held - written.size);
            } else {
                ledger.reserved.remove(reservation);
            }
            Ok(Stored { key, meta })
        })
    }

    // ---- one-request upload ----

    /// Starts a one-request upload for `user`: a work folder, and a reservation that grows
    /// with the bytes received ([`DirectUpload::write`]).
    pub async fn begin_upload(&self, user: &UserId) -> Result<DirectUpload, StoreError> {
        let id = SessionId::new();
        let dir = self.dirs.upload(&id);
        tokio::fs::create_dir(&dir).await?;
        // Whose reservation this is, for the sweep should the process die.
        tokio::fs::write(dir.join("owner"), user.as_str()).await?;
        let lock_path = dir.clone();
        let lock = match tokio::task::spawn_blocking(move || lock_dir(&lock_path)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let _ = tokio::fs::remove_dir(&dir).await;
                return Err(e.into());
            }
            Err(e) => return Err(StoreError::Io(std::io::Error::other(e.to_string()))),
        };
        Ok(DirectUpload {
            _lock: lock,
            store: self.clone(),
            user: user.clone(),
            reservation: format!("upload-{id}"),
            dir: DirGuard(Some(dir)),
            reserved: 0,
            released: false,
        })
    }

    // ---- housekeeping ----

    /// Removes expired sessions, recovers completes and uploads cut short by a crash, and
    /// (when `reconcile`) recomputes every ledger from the disk.
    pub async fn sweep(&self, reconcile: bool) -> Result<(), StoreError> {
        let this = self.clone();
        blocking(move || this.sweep_blocking(reconcile)).await
    }

    fn sweep_blocking(&self, reconcile: bool) -> Result<(), StoreError> {
        let parts = &self.dirs.parts;
        for entry in std::fs::read_dir(parts)?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_prefix(".claimed-")
                .and_then(|s| SessionId::parse(s).ok())
            {
                if claim_is_dead(&path) {
                    self.recover_claim(&id, &path);
                }
            } else if name.starts_with(".upload-") || name.starts_with(".aborted-") {
                // A one-request upload locks its folder just after making it: give it a
                // moment before an unlocked folder counts as abandoned.
                if name.starts_with(".aborted-") {
                    let _ = std::fs::remove_dir_all(&path);
                } else if claim_is_dead(&path) && older_than(&path, Duration::from_secs(60)) {
                    self.drop_dead_upload(&name, &path);
                }
            } else if name == ".staging" {
                remove_older_than(&path, Duration::from_secs(3600));
            } else if let Ok(id) = SessionId::parse(&name) {
                match sessions::read_info(&path) {
                    Ok(info) if info.expired() => {
                        tracing::info!(session = %id, user = %info.user_id, "upload session expired");
                        let doomed =
                            parts.join(format!(".aborted-{id}-{}", uuid::Uuid::new_v4().simple()));
                        if std::fs::rename(&path, &doomed).is_ok() {
                            let _ = std::fs::remove_dir_all(&doomed);
                            let _ = self.quotas.with_ledger(&info.user_id, |l| {
                                l.reserved.remove(&info.upload_id);
                                Ok(())
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // No readable session.json: a session whose init died half-way.
                        if older_than(&path, self.session_ttl) {
                            let _ = std::fs::remove_dir_all(&path);
                        }
                    }
                }
            }
        }
        self.sweep_batches();
        if reconcile {
            let dirs = self.dirs.clone();
            self.quotas.reconcile(|res| {
                if let Some(id) = res
                    .strip_prefix("upload-")
                    .and_then(|s| SessionId::parse(s).ok())
                {
                    return dirs.upload(&id).exists();
                }
                SessionId::parse(res)
                    .is_ok_and(|id| dirs.live(&id).exists() || dirs.claimed(&id).exists())
            })?;
        }
        Ok(())
    }

    /// A one-request upload whose process died: a sidecar published without its data is
    /// removed, the reservation released, the work folder deleted.
    fn drop_dead_upload(&self, name: &str, dir: &Path) {
        remove_unpaired_sidecar(dir, &self.storage);
        if let Ok(owner) = std::fs::read_to_string(dir.join("owner")) {
            let reservation = format!("upload-{}", name.trim_start_matches(".upload-"));
            let _ = self.quotas.with_ledger(owner.trim(), |l| {
                l.reserved.remove(&reservation);
                Ok(())
            });
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A complete interrupted by a crash: finished if its file is in place, else undone and
    /// the session given back.
    fn recover_claim(&self, id: &SessionId, claimed: &Path) {
        #[derive(serde::Deserialize)]
        struct Publish {
            data: PathBuf,
            sidecar: PathBuf,
        }
        let publish: Option<Publish> = std::fs::read(claimed.join("publish.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(p) = &publish {
            if p.data.exists() && p.sidecar.exists() {
                tracing::info!(session = %id, "recovered a complete that had finished");
                let _ = std::fs::remove_dir_all(claimed);
                return;
            }
            // The data never arrived: the sidecar alone must not stay.
            if !p.data.exists() && p.sidecar.starts_with(&self.storage) {
                let _ = std::fs::remove_file(&p.sidecar);
            }
        }
        for f in ["publish.json", ".joined", ".sidecar"] {
            let _ = std::fs::remove_file(claimed.join(f));
        }
        match std::fs::rename(claimed, self.dirs.live(id)) {
            Ok(()) => {
                tracing::info!(session = %id, "gave back a session whose complete was cut short")
            }
            Err(e) => {
                tracing::error!(session = %id, error = %e, "cannot recover a claimed session")
            }
        }
    }
}

/// The data file a work folder's `publish.json` names, when it is in place.
fn published_data(work_dir: &Path) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Publish {
        data: PathBuf,
    }
    let publish: Publish =
        serde_json::from_slice(&std::fs::read(work_dir.join("publish.json")).ok()?).ok()?;
    publish.data.exists().then_some(publish.data)
}

/// After a crash between the two renames of a publish (sidecar, then data), the sidecar
/// named in the work folder's `publish.json` stands alone: remove it.
fn remove_unpaired_sidecar(work_dir: &Path, storage: &Path) {
    #[derive(serde::Deserialize)]
    struct Publish {
        data: PathBuf,
        sidecar: PathBuf,
    }
    let publish: Option<Publish> = std::fs::read(work_dir.join("publish.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(p) = publish {
        if !p.data.exists() && p.sidecar.starts_with(storage) {
            let _ = std::fs::remove_file(&p.sidecar);
        }
    }
}

fn check_part_number(number: u32) -> Result<(), StoreError> {
    if number > sessions::MAX_PART_NUMBER {
        return Err(StoreError::Invalid(format!(
            "partNumber must be between 0 and {}",
            sessions::MAX_PART_NUMBER
        )));
    }
    Ok(())
}

fn check_sha(expected: Option<&str>, actual: &str) -> Result<(), StoreError> {
    match expected.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) if !e.eq_ignore_ascii_case(actual) => Err(StoreError::ShaMismatch),
        _ => Ok(()),
    }
}

fn not_found() -> StoreError {
    StoreError::NotFound("Upload session not found".to_owned())
}

/// Takes a live session's lock (waiting for it) and checks the session is still live: a
/// complete may have claimed it while we waited.
fn lock_live_session(dir: &Path) -> Result<std::fs::File, StoreError> {
    let lock = lock_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_found(),
        _ => e.into(),
    })?;
    if !dir.join("session.json").exists() {
        return Err(not_found());
    }
    Ok(lock)
}

/// Opens the data file of a session, with its exclusive `flock` (held by whoever appends to
/// it, and by a complete that publishes it), without waiting: `None` when another holds it.
fn lock_data_file(dir: &Path, create: bool) -> Result<Option<std::fs::File>, StoreError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .open(dir.join(sessions::DATA_FILE))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(StoreError::Io(e.into())),
    }
}

/// For part `number` of the session in `dir` (whose lock the caller holds, `parts` read
/// under it): the data file, placed where the part goes, and the hashes to carry on, when
/// the part comes in order and no other part is being appended.
fn open_append(
    dir: &Path,
    parts: &[sessions::Part],
    number: u32,
) -> Result<Option<(std::fs::File, u64, Hashes)>, StoreError> {
    use std::io::Seek as _;
    if parts.iter().any(|p| p.number >= number) {
        return Ok(None);
    }
    let (end, hashes) = if parts.is_empty() {
        (0, Hashes::default())
    } else {
        let Some((n, last)) = sessions::chain(parts) else {
            return Ok(None);
        };
        let Some(hashes) = sessions::read_segment_hashes(dir, n, &last)
            .and_then(|h| Hashes::resume(&h.sha_state, h.crc32))
        else {
            return Ok(None);
        };
        (last.end(), hashes)
    };
    let Some(mut file) = lock_data_file(dir, true)? else {
        return Ok(None);
    };
    if file.metadata()?.len() < end {
        // Shorter than its segments say: never appended to again.
        return Ok(None);
    }
    // Bytes past the last segment are a cut append's: the chain holds every live part, so
    // nothing past its end counts.
    file.set_len(end)?;
    file.seek(std::io::SeekFrom::Start(end))?;
    Ok(Some((file, end, hashes)))
}

/// Opens a folder and takes its exclusive `flock`, waiting for it. The lock lives as long as
/// the returned handle, and dies with the process.
fn lock_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::File::open(dir)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(std::io::Error::from)?;
    Ok(f)
}

/// Is a claimed or in-progress folder abandoned, its lock free (its holder gone)?
fn claim_is_dead(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir) else {
        return false;
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|e| e > age)
}

fn remove_older_than(dir: &Path, age: Duration) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if older_than(&e.path(), age) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A part being received.
pub struct PartUpload {
    // (Dropped first: the data file's lock goes before the guard tidies.)
    sink: Sink,
    /// Where the part starts in the session's data file, when it is being appended there
    /// (the sink then holds the data file's lock).
    append_at: Option<(u64, AppendGuard)>,
    /// A part staged before its session was known holds this much of its caller's staging
    /// budget, until it is committed or dropped.
    staging: Option<staging::StagingCharge>,
}

/// The folder of a session whose part is being appended; dropped armed (the part was cut
/// short or refused), it cuts off what the part left in the data file, off the async
/// threads. Should that not happen (a crash), the next append or the complete does it.
struct AppendGuard(Option<PathBuf>);

impl Drop for AppendGuard {
    fn drop(&mut self) {
        if let (Some(dir), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || tidy_data_file(&dir));
        }
    }
}

/// Cuts the data file of a live session back to the end of its last segment (removes it
/// when it holds none). The cut part's last write may still hold the data file's lock for
/// a moment: wait for it a little, never holding the folder's lock while waiting (an
/// appender takes that one while holding the data file's). A part being appended by then
/// has cut the file itself.
fn tidy_data_file(dir: &Path) {
    for _ in 0..50 {
        let Ok(lock) = lock_live_session(dir) else {
            return;
        };
        match lock_data_file(dir, false) {
            Ok(Some(data)) => return cut_data_file(dir, &data),
            Ok(None) if dir.join(sessions::DATA_FILE).exists() => {}
            _ => return,
        }
        drop(lock);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The work of [`tidy_data_file`], under both locks.
fn cut_data_file(dir: &Path, data: &std::fs::File) {
    let Ok(parts) = sessions::read_parts(dir) else {
        return;
    };
    let end = parts
        .iter()
        .filter_map(|p| match p.kind {
            sessions::PartKind::Segment(seg) => Some(seg.end()),
            sessions::PartKind::File => None,
        })
        .max();
    let _ = match end {
        Some(end) => data.set_len(end),
        // Under both locks: no append can have opened it.
        None => std::fs::remove_file(dir.join(sessions::DATA_FILE)),
    };
}

impl PartUpload {
    /// Writes decoded bytes.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        if let Some(charge) = &mut self.staging {
            charge.take(chunk.len() as u64)?;
        }
        self.sink.write(chunk).await
    }
    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.sink.written()
    }
}

/// Removes a work folder on drop unless disarmed.
#[derive(Debug)]
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A one-request upload in progress: each file streams into the work folder while the
/// quota reservation grows ahead of it; dropped, it leaves nothing behind.
pub struct DirectUpload {
    store: FileStore,
    user: UserId,
    reservation: String,
    dir: DirGuard,
    reserved: u64,
    released: bool,
    /// Held while the upload lives: the sweep of any instance leaves a locked folder alone.
    _lock: std::fs::File,
}

impl Drop for DirectUpload {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Cut short (an error, or the client went away): give the reservation back.
        let quotas = self.store.quotas.clone();
        let user = self.user.as_str().to_owned();
        let id = self.reservation.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || {
                let _ = quotas.with_ledger(&user, |l| {
                    l.reserved.remove(&id);
                    Ok(())
                });
            });
        }
    }
}

/// Reserve quota in steps of this much, so the ledger is not touched for every chunk.
const RESERVE_STEP: u64 = 8 << 20;

impl DirectUpload {
    /// Starts a file of this upload.
    pub async fn begin_file(&self) -> Result<Sink, StoreError> {
        let dir = self.dir.0.clone().unwrap_or_default();
        Sink::create(
            dir.join(uuid::Uuid::new_v4().simple().to_string()),
            true,
            self.store.max_file,
        )
        .await
    }

    /// Writes a chunk of the current file, reserving quota ahead of it; 413 as soon as the
    /// quota would be passed.
    pub async fn write(
        &mut self,
        sink: &mut Sink,
        chunk: Bytes,
        total_before: u64,
    ) -> Result<(), StoreError> {
        let need = total_before + sink.written() + chunk.len() as u64;
        if need > self.reserved {
            let want = need.max(self.reserved + RESERVE_STEP);
            self.reserve(need, want).await?;
        }
        sink.write(chunk).await
    }

    /// Reserves `want` bytes in all (at least `need`), or fails with the quota.
    async fn reserve(&mut self, need: u64, want: u64) -> Result<(), StoreError> {
        let quotas = self.store.quotas.clone();
        let user = self.user.as_str().to_owned();
        let id = self.reservation.clone();
        let got = blocking(move || {
            quotas.with_ledger(&user, |l| {
                let others = l.used + l.reserved_except(&id);
                let room = quotas.limit.saturating_sub(others);
                if room < need {
                    return Err(StoreError::Quota {
                        used: others,
                        quota: quotas.limit,
                        requested: need,
                    });
                }
                let got = want.min(room);
                l.reserved.insert(id.clone(), got);
                Ok(got)
            })
        })
        .await?;
        self.reserved = got;
        Ok(())
    }

    /// Finishes a file: checks its SHA-256 and publishes it.
    pub async fn publish_file(
        &mut self,
        file: (Written, TempGuard),
        original_name: String,
        folder: Option<FolderPath>,
        declared_mime: Option<String>,
        expected_sha: Option<String>,
        extra: Map<String, Value>,
    ) -> Result<Stored, StoreError> {
        key::validate_client_filename(&original_name).map_err(|e| StoreError::Invalid(e.0))?;
        let (written, guard) = file;
        check_sha(
            expected_sha.as_deref(),
            written.sha256.as_deref().unwrap_or(""),
        )?;
        let store = self.store.clone();
        let user = self.user.clone();
        let dir = self.dir.0.clone().unwrap_or_default();
        let reservation = self.reservation.clone();
        let size = written.size;
        let stored = blocking(move || {
            store.publish(
                &user,
                folder.as_ref(),
                &original_name,
                declared_mime.as_deref(),
                extra,
                written,
                guard,
                &dir,
                &reservation,
            )
        })
        .await?;
        self.reserved = self.reserved.saturating_sub(size);
        Ok(stored)
    }

    /// Releases what is still reserved (on success or failure).
    pub async fn finish(mut self) {
        let quotas = self.store.quotas.clone();
        let user = self.user.as_str().to_owned();
        let id = self.reservation.clone();
        let _ = blocking(move || {
            quotas.with_ledger(&user, |l| {
                l.reserved.remove(&id);
                Ok(())
            })
        })
        .await;
        self.reserved = 0;
        self.released = true;
    }
}
