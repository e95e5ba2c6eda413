//! Uploads that grow by appending at an offset: tus 1.0 and the IETF resumable-upload
//! draft. Each is an ordinary session (same folder, quota reservation, status and sweep);
//! its progress is the chain of segments appended to the session's data file, so the
//! offset is where the chain ends, every append is hashed on from the state recorded after
//! the one before, and finishing publishes the data file by a hard link, as a three-step
//! upload whose parts came in order.
//!
//! - An append is accepted only at the chain's end, and only while no other append runs
//!   (the data file's lock, taken without waiting): two requests never interleave bytes.
//! - An append cut short (the client went away) keeps what reached the disk: it is fsynced
//!   and recorded, so the next `HEAD` resumes there. One whose checksum fails keeps nothing.
//! - A finished upload is remembered in `.parts/.finished/{id}.json` (key and size) until
//!   the session would have expired, for `HEAD` and the session status.
//! - tus concatenation: partial uploads are sessions that are never published; the final
//!   upload joins their bytes into its own data file (hashing once) and publishes that. The
//!   partials' reservations move to the final upload in the same ledger step.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::key::{ClientFileName, FolderPath, UserId};
use super::lock::{lock_data_file, lock_live_session};
use super::parts::{AppendGuard, PartUpload};
use super::sessions::{
    self, Concat, FileSpec, Protocol, Resumable, Session, SessionId, UploadMode,
};
use super::sink::{Hashes, Sink};
use super::{blocking, fsync_dir, not_found, CompleteRequest, FileStore, StoreError, Stored};

/// A resumable upload to begin.
#[derive(Debug, Clone)]
pub struct NewResumable {
    /// Owner.
    pub user: UserId,
    /// Which protocol.
    pub protocol: Protocol,
    /// The client's file name.
    pub name: ClientFileName,
    /// The client's MIME type.
    pub mime: Option<String>,
    /// The length, `None` when deferred.
    pub length: Option<u64>,
    /// Where the file goes.
    pub folder: Option<FolderPath>,
    /// Fields for the sidecar.
    pub meta: Map<String, Value>,
    /// tus `Upload-Metadata` as sent.
    pub metadata: Option<String>,
    /// A partial upload of a concatenation (never published on its own).
    pub partial: bool,
    /// A length the upload may not pass (a signed upload URL's maximum), besides
    /// `MAX_BODY_MB`.
    pub max_length: Option<u64>,
    /// The fingerprint of the signed upload URL making it, if one is.
    pub grant: Option<String>,
}

/// A finished resumable upload, remembered until its session would have expired.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    /// The session as it was.
    pub session: Session,
    /// The stored file's key.
    pub key: String,
    /// Its size.
    pub size: u64,
}

/// Where a resumable upload stands.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per request, never stored
pub enum Progress {
    /// Receiving: the session and its offset.
    Open(Session, u64),
    /// Published (or, for a partial upload, complete and waiting for its final upload).
    Finished(Finished),
}

impl Progress {
    /// The session, live or as it was.
    pub fn session(&self) -> &Session {
        match self {
            Self::Open(s, _) => s,
            Self::Finished(f) => &f.session,
        }
    }
}

/// The session of a new resumable upload of `length` (`None`: deferred), refused when the
/// length passes `max_file` (`MAX_BODY_MB`) or the upload's own maximum; it expires `ttl`
/// after now. Both backends make their sessions so.
pub(super) fn resumable_session(
    new: NewResumable,
    length: Option<u64>,
    concat: Option<Concat>,
    max_file: u64,
    ttl: std::time::Duration,
) -> Result<Session, StoreError> {
    let max = new.max_length.unwrap_or(u64::MAX).min(max_file);
    if length.is_some_and(|l| l > max) {
        return Err(StoreError::TooLarge);
    }
    let created_at = Utc::now();
    Ok(Session {
        upload_id: SessionId::new(),
        user_id: new.user,
        mode: UploadMode::Single,
        file: FileSpec {
            name: new.name,
            size: length.unwrap_or(0),
            mime: new.mime,
        },
        folder: new.folder,
        meta: new.meta,
        created_at,
        expires_at: created_at
            + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(24)),
        resumable: Some(Resumable {
            protocol: new.protocol,
            length_deferred: length.is_none(),
            concat,
            metadata: new.metadata,
            grant: new.grant,
        }),
    })
}

impl FileStore {
    /// Begins a resumable upload: one session, its length reserved against the quota when
    /// known (over the quota or `MAX_BODY_MB`: refused, nothing made).
    pub async fn create_resumable(&self, new: NewResumable) -> Result<Session, StoreError> {
        let length = new.length;
        let concat = new.partial.then_some(Concat::Partial);
        let session = self.new_session(new, length, concat)?;
        self.make_session(&session, length.unwrap_or(0)).await?;
        Ok(session)
    }

    /// The session of a new resumable upload (see [`resumable_session`]).
    fn new_session(
        &self,
        new: NewResumable,
        length: Option<u64>,
        concat: Option<Concat>,
    ) -> Result<Session, StoreError> {
        resumable_session(new, length, concat, self.max_file, self.session_ttl)
    }

    /// Writes a new session's folder and reserves `reserve` bytes for it (all or nothing).
    async fn make_session(&self, session: &Session, reserve: u64) -> Result<(), StoreError> {
        let this = self.clone();
        let info = session.clone();
        blocking(move || {
            this.quotas.with_ledger(info.user_id.as_str(), |ledger| {
                let used = ledger.used + ledger.reserved.values().sum::<u64>();
                if used.saturating_add(reserve) > this.quotas.limit {
                    return Err(StoreError::Quota {
                        used,
                        quota: this.quotas.limit,
                        requested: reserve,
                    });
                }
                let dir = this.dirs.live(&info.upload_id);
                std::fs::create_dir(&dir)?;
                if let Err(e) = sessions::write_info(&dir, &info) {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e.into());
                }
                if reserve > 0 {
                    ledger.reserved.insert(info.upload_id.to_string(), reserve);
                }
                Ok(())
            })
        })
        .await
    }

    /// Where the upload `id` stands, for its owner to resume (`HEAD`). A live session comes
    /// with its offset; a finished one with its record.
    pub async fn progress(&self, id: &SessionId) -> Result<Progress, StoreError> {
        let dir = self.dirs.live(id);
        let record = self.dirs.finished(id);
        blocking(move || {
            match sessions::read_info(&dir) {
                Ok(info) if info.resumable.is_none() => return Err(StoreError::WrongProtocol),
                Ok(info) if info.expired() => return Err(not_found()),
                Ok(info) => {
                    let offset = sessions::read_parts(&dir)?.iter().map(|p| p.size).sum();
                    return Ok(Progress::Open(info, offset));
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let finished: Finished = match std::fs::read(&record) {
                // A record a crash left unreadable says nothing: as if there were none.
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| not_found())?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
                Err(e) => return Err(e.into()),
            };
            if finished.session.expired() {
                return Err(not_found());
            }
            Ok(Progress::Finished(finished))
        })
        .await
    }

    /// Starts an append to `session` at `offset`, which must be where the upload ends
    /// ([`StoreError::OffsetMismatch`] otherwise), while no other append runs
    /// ([`StoreError::Busy`]). The bytes may reach the declared length (with a deferred
    /// length: `MAX_BODY_MB` and what the quota leaves free).
    pub async fn begin_append(
        &self,
        session: &Session,
        offset: u64,
    ) -> Result<PartUpload, StoreError> {
        if session.concat_parts().is_some() {
            return Err(StoreError::ConcatFinal);
        }
        let limit = match session.length() {
            Some(len) => len,
            None => {
                let (used, reserved) = self.usage(&session.user_id).await?;
                self.max_file
                    .min(self.quotas.limit.saturating_sub(used + reserved))
            }
        };
        let dir = self.dirs.live(&session.upload_id);
        let id = session.upload_id;
        let (file, hashes, number) = blocking(move || {
            let _lock = lock_live_session(&dir)?;
            let parts = sessions::read_parts(&dir)?;
            let end: u64 = parts.iter().map(|p| p.size).sum();
            if offset != end {
                return Err(StoreError::OffsetMismatch { offset: end });
            }
            let Some(mut file) = lock_data_file(&dir, true)? else {
                return Err(StoreError::Busy);
            };
            let hashes = chain_hashes(&dir, &parts, &file, end)?;
            // Bytes past the chain are a cut append's that never got recorded.
            file.set_len(end)?;
            file.seek(std::io::SeekFrom::Start(end))?;
            let number = parts.last().map_or(1, |p| p.number + 1);
            Ok((file, hashes, number))
        })
        .await?;
        let room = limit.saturating_sub(offset);
        Ok(PartUpload::appending(
            Sink::append(file, hashes, room),
            offset,
            number,
            AppendGuard::new(self.dirs.live(&id)),
        ))
    }

    /// Records an append: what reached the disk is fsynced and becomes the next segment.
    /// Returns the new offset. Also right for an append cut short: its bytes count.
    pub async fn commit_append(
        &self,
        session: &Session,
        upload: PartUpload,
    ) -> Result<u64, StoreError> {
        let dir = self.dirs.live(&session.upload_id);
        let (offset, number, sink, mut guard) = upload.into_append()?;
        let (size, hashes, data) = sink.finish_open().await?;
        let (sha_state, crc32) = hashes.state();
        let end = blocking(move || {
            // The folder's lock: the session is still live (not aborted or claimed).
            let folder = lock_live_session(&dir)?;
            if size > 0 {
                sessions::write_segment(
                    &dir,
                    number,
                    &sessions::Segment { offset, size },
                    &sessions::SegmentHashes { sha_state, crc32 },
                )?;
                folder.sync_all()?;
            }
            drop(data);
            Ok(offset + size)
        })
        .await?;
        guard.disarm();
        Ok(end)
    }

    /// Declares the length of an upload whose length was deferred, reserving it against the
    /// quota; the same length again is fine, another is [`StoreError::LengthMismatch`].
    /// Returns the session as it now is.
    pub async fn declare_length(
        &self,
        session: &Session,
        length: u64,
    ) -> Result<Session, StoreError> {
        if session.length() == Some(length) {
            return Ok(session.clone());
        }
        if length > self.max_file {
            return Err(StoreError::TooLarge);
        }
        let dir = self.dirs.live(&session.upload_id);
        let this = self.clone();
        let id = session.upload_id;
        blocking(move || {
            let _lock = lock_live_session(&dir)?;
            let mut info = sessions::read_info(&dir)?;
            let offset: u64 = sessions::read_parts(&dir)?.iter().map(|p| p.size).sum();
            if let Some(declared) = info.length() {
                return if declared == length {
                    Ok(info)
                } else {
                    Err(StoreError::LengthMismatch {
                        declared: Some(declared),
                        offset,
                    })
                };
            }
            if length < offset {
                return Err(StoreError::LengthMismatch {
                    declared: None,
                    offset,
                });
            }
            let user = info.user_id.as_str().to_owned();
            this.quotas.with_ledger(&user, |ledger| {
                let used = ledger.used + ledger.reserved_except(&id.to_string());
                if used.saturating_add(length) > this.quotas.limit {
                    return Err(StoreError::Quota {
                        used,
                        quota: this.quotas.limit,
                        requested: length,
                    });
                }
                info.file.size = length;
                if let Some(r) = info.resumable.as_mut() {
                    r.length_deferred = false;
                }
                sessions::write_info(&dir, &info)?;
                ledger.reserved.insert(id.to_string(), length);
                Ok(())
            })?;
            Ok(info)
        })
        .await
    }

    /// Publishes an upload whose bytes are all there. A partial upload is not published:
    /// `None`, unless its final upload was waiting for it and is now published. Of two
    /// racing finishes one publishes, the other finds the record.
    pub async fn finish_resumable(&self, session: &Session) -> Result<Option<Stored>, StoreError> {
        self.finish_resumable_checked(session, None).await
    }

    /// [`FileStore::finish_resumable`], refusing a file whose SHA-256 is not `sha256` (hex)
    /// when given ([`StoreError::ShaMismatch`]: not published, the upload stays).
    pub async fn finish_resumable_checked(
        &self,
        session: &Session,
        sha256: Option<&str>,
    ) -> Result<Option<Stored>, StoreError> {
        if session.is_partial() {
            return self.finish_waiting_final(session).await;
        }
        let req = CompleteRequest {
            sha256: sha256.map(str::to_owned),
            ..CompleteRequest::default()
        };
        match self.complete(session, req).await {
            Ok(stored) => Ok(Some(stored)),
            Err(StoreError::NotFound(_)) => match self.progress(&session.upload_id).await? {
                Progress::Finished(f) => {
                    let entry = self.entry(&super::key::Key::parse(&f.key)?).await?;
                    Ok(Some(Stored {
                        key: entry.key,
                        meta: entry.meta,
                    }))
                }
                Progress::Open(..) => Err(not_found()),
            },
            Err(e) => Err(e),
        }
    }

    /// Records a resumable upload as finished (`.parts/.finished/{id}.json`, fsynced) before
    /// its claim ends, so that a client asking after a crash learns it finished instead of
    /// uploading it again. Called by `complete` and by the recovery of a claim.
    pub(super) fn record_finished(&self, session: &Session, key: &str, size: u64) {
        let record = Finished {
            session: session.clone(),
            key: key.to_owned(),
            size,
        };
        let path = self.dirs.finished(&session.upload_id);
        let written = (|| -> std::io::Result<()> {
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&record)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            fsync_dir(&self.dirs.finished_dir())
        })();
        if let Err(e) = written {
            tracing::error!(session = %session.upload_id, error = %e, "cannot record a finished upload; HEAD will answer 404 for it");
        }
    }

    /// Forgets a finished upload (its file stays).
    pub async fn forget_finished(&self, id: &SessionId) -> Result<(), StoreError> {
        let path = self.dirs.finished(id);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_found()),
            other => Ok(other?),
        })
        .await
    }

    /// Removes the records of finished uploads past their session's expiry (the sweep).
    pub(super) fn sweep_finished(&self) {
        let Ok(entries) = std::fs::read_dir(self.dirs.finished_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let expired = match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Finished>(&b).ok())
            {
                Some(f) => f.session.expired(),
                // A temporary name a crash left, or a record that cannot be read.
                None => super::recover::older_than(&path, self.session_ttl),
            };
            if expired {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Ends a resumable upload that is not finished (tus termination, draft `DELETE`).
    pub async fn terminate(&self, session: &Session) -> Result<(), StoreError> {
        self.abort(session).await
    }

    /// A tus final upload of `parts` (partial uploads of `user`, in order). When they are
    /// all complete, their bytes are joined and published at once (`Ok(Some)`); otherwise
    /// the final upload waits as a session and is published when its last partial upload
    /// finishes (concatenation-unfinished).
    pub async fn create_concat(
        &self,
        new: NewResumable,
        parts: Vec<SessionId>,
    ) -> Result<(Session, Option<Stored>), StoreError> {
        if parts.is_empty() {
            return Err(StoreError::NotPartial("(none)".to_owned()));
        }
        let mut length = Some(0u64);
        for id in &parts {
            let p = self
                .session(id)
                .await
                .map_err(|_| StoreError::NotPartial(id.to_string()))?;
            if p.user_id != new.user || !p.is_partial() {
                return Err(StoreError::NotPartial(id.to_string()));
            }
            length = length.zip(p.length()).map(|(a, b)| a + b);
        }
        let concat = Concat::Final {
            parts: parts.clone(),
        };
        let session = self.new_session(new, length, Some(concat))?;
        // The partial uploads hold the reservations until the join moves them here.
        self.make_session(&session, 0).await?;
        // Each partial upload names the final one that waits for it.
        let this = self.clone();
        let final_id = session.upload_id;
        let ids = parts.clone();
        blocking(move || {
            for id in &ids {
                let dir = this.dirs.live(id);
                std::fs::write(dir.join(format!("final-{final_id}")), b"")?;
            }
            Ok(())
        })
        .await?;
        match self.try_join(&session).await {
            Ok(stored) => Ok((session, stored)),
            Err(e) => {
                // The client is told no upload was made: the final upload goes, and the
                // partial uploads get their reservations back, to be joined again.
                self.undo_final(&session, &parts).await;
                Err(e)
            }
        }
    }

    /// Removes a final upload that could not be published and gives its reservation back
    /// to its partial uploads.
    async fn undo_final(&self, fin: &Session, parts: &[SessionId]) {
        let this = self.clone();
        let fin = fin.clone();
        let parts = parts.to_vec();
        let undone = blocking(move || {
            let mut lengths = Vec::new();
            for id in &parts {
                if let Ok(p) = sessions::read_info(&this.dirs.live(id)) {
                    lengths.push((id.to_string(), p.length().unwrap_or(0)));
                }
            }
            this.quotas.with_ledger(fin.user_id.as_str(), |ledger| {
                ledger.reserved.remove(&fin.upload_id.to_string());
                for (id, len) in lengths {
                    ledger.reserved.insert(id, len);
                }
                Ok(())
            })?;
            this.remove_session_dir(&fin.upload_id);
            Ok(())
        })
        .await;
        if let Err(e) = undone {
            tracing::error!(session = %fin.upload_id, error = %e, "cannot undo a final concatenation; the sweep and the recount will");
        }
    }

    /// A partial upload has all its bytes: publishes the final upload waiting for it, if
    /// any, once every partial upload of it is complete.
    async fn finish_waiting_final(&self, partial: &Session) -> Result<Option<Stored>, StoreError> {
        let dir = self.dirs.live(&partial.upload_id);
        let finals: Vec<SessionId> = blocking(move || {
            Ok(std::fs::read_dir(&dir)?
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("final-")
                        .and_then(|s| SessionId::parse(s).ok())
                })
                .collect())
        })
        .await?;
        for id in finals {
            if let Ok(fin) = self.session(&id).await {
                if let Some(stored) = self.try_join(&fin).await? {
                    return Ok(Some(stored));
                }
            }
        }
        Ok(None)
    }

    /// Publishes a final concatenation whose partial uploads are all complete (after a
    /// crash or a failed publish nothing else would): `None` while one is not.
    pub async fn finish_concat(&self, fin: &Session) -> Result<Option<Stored>, StoreError> {
        self.try_join(fin).await
    }

    /// Removes a live session's folder (its reservation is someone else's business).
    fn remove_session_dir(&self, id: &SessionId) {
        let doomed = self
            .dirs
            .parts
            .join(format!(".aborted-{id}-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::rename(self.dirs.live(id), &doomed).is_ok() {
            let _ = std::fs::remove_dir_all(&doomed);
        }
    }

    /// Joins and publishes a final upload when all its partial uploads are complete;
    /// `None` while one is not.
    async fn try_join(&self, fin: &Session) -> Result<Option<Stored>, StoreError> {
        let Some(parts) = fin.concat_parts().map(<[SessionId]>::to_vec) else {
            return Ok(None);
        };
        let this = self.clone();
        let final_info = fin.clone();
        let ids = parts.clone();
        let joined = blocking(move || this.join_blocking(&final_info, &ids)).await?;
        let Some(fin) = joined else {
            return Ok(None);
        };
        let stored = match self.complete(&fin, CompleteRequest::default()).await {
            Ok(s) => s,
            // A racing finish published it.
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Only now are the partial uploads spent: had the publish failed, they would still be
        // there for the client to join again.
        let this = self.clone();
        blocking(move || {
            for id in &parts {
                this.remove_session_dir(id);
            }
            Ok(())
        })
        .await?;
        Ok(Some(stored))
    }

    /// Under every partial upload's lock (taken in id order), when all are complete: their
    /// bytes copied into the final upload's data file, hashed once, recorded as its one
    /// segment; the reservations moved to it. The partial uploads stay until the final
    /// upload is published. Returns the final session with its length.
    fn join_blocking(
        &self,
        fin: &Session,
        parts: &[SessionId],
    ) -> Result<Option<Session>, StoreError> {
        let final_dir = self.dirs.live(&fin.upload_id);
        let _final_lock = match lock_live_session(&final_dir) {
            Ok(l) => l,
            // Published (or being published) by a racing finish.
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Joined already (a racing finish, or before a crash or a failed publish): never
        // written again, so a publish in progress reads stable bytes.
        let current = sessions::read_info(&final_dir)?;
        let own: u64 = sessions::read_parts(&final_dir)?
            .iter()
            .map(|p| p.size)
            .sum();
        if current.length().is_some_and(|l| l == own) && !current.is_partial() && own > 0 {
            return Ok(Some(current));
        }
        let mut order: Vec<&SessionId> = parts.iter().collect();
        order.sort_by_key(|id| id.to_string());
        order.dedup();
        let mut locks = Vec::new();
        for id in &order {
            match lock_live_session(&self.dirs.live(id)) {
                Ok(l) => locks.push(l),
                // Gone: joined already (by a racing finish), or expired.
                Err(StoreError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let mut sources = Vec::new();
        for id in parts {
            let dir = self.dirs.live(id);
            let info = sessions::read_info(&dir)?;
            let got: Vec<sessions::Part> = sessions::read_parts(&dir)?;
            let received: u64 = got.iter().map(|p| p.size).sum();
            match info.length() {
                Some(len) if len == received => sources.push((dir, got, info)),
                _ => return Ok(None),
            }
        }
        let Some(mut out) = lock_data_file(&final_dir, true)? else {
            return Err(StoreError::Busy);
        };
        out.set_len(0)?;
        let mut hashes = Hashes::default();
        let mut total = 0u64;
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut out);
            let mut buf = vec![0u8; 1 << 20];
            for (dir, got, _) in &sources {
                let size: u64 = got.iter().map(|p| p.size).sum();
                if size == 0 {
                    continue;
                }
                let mut src = std::fs::File::open(dir.join(sessions::DATA_FILE))?.take(size);
                let mut copied = 0u64;
                loop {
                    let k = src.read(&mut buf)?;
                    if k == 0 {
                        break;
                    }
                    hashes.update(&buf[..k]);
                    w.write_all(&buf[..k])?;
                    copied += k as u64;
                }
                if copied != size {
                    return Err(StoreError::Io(std::io::Error::other(format!(
                        "a partial upload holds {copied} bytes, {size} expected"
                    ))));
                }
                total += size;
            }
            w.flush()?;
        }
        out.sync_all()?;
        let (sha_state, crc32) = hashes.state();
        let mut info = sessions::read_info(&final_dir)?;
        info.file.size = total;
        if let Some(r) = info.resumable.as_mut() {
            r.length_deferred = false;
        }
        sessions::write_info(&final_dir, &info)?;
        if total > 0 {
            sessions::write_segment(
                &final_dir,
                1,
                &sessions::Segment {
                    offset: 0,
                    size: total,
                },
                &sessions::SegmentHashes { sha_state, crc32 },
            )?;
        }
        fsync_dir(&final_dir)?;
        drop(out);
        // The partial uploads' reservations become the final upload's, in one step.
        self.quotas.with_ledger(info.user_id.as_str(), |ledger| {
            let moved: u64 = parts
                .iter()
                .filter_map(|id| ledger.reserved.remove(&id.to_string()))
                .sum();
            ledger
                .reserved
                .insert(info.upload_id.to_string(), moved.max(total));
            Ok(())
        })?;
        drop(locks);
        Ok(Some(info))
    }
}

/// The hash state at `end` of a chain of appended segments: from the last segment's
/// record, or (a record a power cut emptied) by reading the data file up to `end` again.
fn chain_hashes(
    dir: &Path,
    parts: &[sessions::Part],
    data: &std::fs::File,
    end: u64,
) -> Result<Hashes, StoreError> {
    if parts.is_empty() {
        return Ok(Hashes::default());
    }
    if let Some(h) = sessions::chain(parts)
        .and_then(|(n, last)| sessions::read_segment_hashes(dir, n, &last))
        .and_then(|h| Hashes::resume(&h.sha_state, h.crc32))
    {
        return Ok(h);
    }
    if data.metadata()?.len() < end {
        return Err(StoreError::Io(std::io::Error::other(format!(
            "the data file is shorter than its {end} recorded bytes"
        ))));
    }
    let mut hashes = Hashes::default();
    let mut src = data.try_clone()?;
    src.seek(std::io::SeekFrom::Start(0))?;
    let mut src = src.take(end);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = src.read(&mut buf)?;
        if k == 0 {
            break;
        }
        hashes.update(&buf[..k]);
    }
    Ok(hashes)
}
