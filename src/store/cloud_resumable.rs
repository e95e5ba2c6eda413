//! `STORAGE_BACKEND=s3`: tus 1.0 and the IETF resumable-upload draft over the bucket and
//! the catalog, for any number of instances. A resumable upload is a catalog session whose
//! progress is its chain of segments (`pg/sessions.rs`): each append is spooled to the local
//! disk, sent to an object of its own (`parts/{session}/seg-{offset}-{uuid}`) and then
//! recorded at the offset it started from. The catalog takes exactly one of racing appends at
//! an offset, whichever instance they reached; the loser deletes its object (409, as on the
//! filesystem). Each segment keeps the SHA-256 state at its end, so an append carries the
//! hash on from where the chain ends and the whole file's SHA-256 is known at finish.
//!
//! Finishing claims the session (a lease renewed while publishing, as a three-step
//! complete), joins the segments through this instance into the file's object (one
//! segment: copied inside the bucket), writes the sidecar and publishes row, quota and
//! finished session in one transaction. A finished session stays for `HEAD` until it
//! expires, as `.parts/.finished` does on the filesystem.
//!
//! tus concatenation: partial uploads are sessions never published; the final upload joins
//! their segments into its file once all are complete (at its creation, or when the last
//! partial upload completes), then the partial uploads go with their reservations.

use bytes::Bytes;
use serde_json::json;

use super::cloud::CloudStore;
use super::key::Key;
use super::pg::{SegmentRecord, SessionState};
use super::publish::check_sha;
use super::resumable::{resumable_session, Finished, NewResumable, Progress};
use super::sessions::{Concat, SegmentHashes, Session, SessionId};
use super::sink::{Hashes, Sink};
use super::{CompleteRequest, Missing, StoreError, Stored};

/// An append on its way: the request's bytes spooled to the local disk, then sent to a
/// segment object hashed on from `from`, the chain's end. Dropped, the spool goes and
/// nothing is recorded.
pub struct CloudAppend {
    sink: Sink,
    from: Hashes,
    offset: u64,
}

impl std::fmt::Debug for CloudAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudAppend")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl CloudAppend {
    /// Writes a chunk of the request's bytes (past the room the upload has: `TooLarge`).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.sink.write(chunk).await
    }
}

/// The object a segment's bytes are in.
fn object_of(segment: &SegmentRecord) -> Result<String, StoreError> {
    segment
        .part_info
        .as_ref()
        .and_then(|i| i.get("object"))
        .and_then(|o| o.as_str())
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Backend(format!("segment {} names no object", segment.number)))
}

impl CloudStore {
    /// Begins a resumable upload: one session, its length reserved when known (over the
    /// quota or `MAX_BODY_MB`: refused, nothing made).
    pub async fn create_resumable(&self, new: NewResumable) -> Result<Session, StoreError> {
        let length = new.length;
        let concat = new.partial.then_some(Concat::Partial);
        let session = resumable_session(
            new,
            length,
            concat,
            self.limits.max_file,
            self.limits.session_ttl,
        )?;
        self.catalog
            .create_session(&session, length.unwrap_or(0), self.quota)
            .await?;
        Ok(session)
    }

    /// Where the upload `id` stands, from the catalog (any instance may ask).
    pub async fn progress(&self, id: &SessionId) -> Result<Progress, StoreError> {
        let r = self.catalog.session(*id).await?;
        if r.session.resumable.is_none() {
            return Err(StoreError::WrongProtocol);
        }
        match (r.state, r.finished) {
            (SessionState::Finished, Some((key, size))) => Ok(Progress::Finished(Finished {
                session: r.session,
                key,
                size,
            })),
            (SessionState::Finished, None) => Err(StoreError::NotFound(Missing::Session)),
            (SessionState::Live | SessionState::Claimed, _) => {
                Ok(Progress::Open(r.session, r.offset))
            }
        }
    }

    /// Starts an append to `session` at `offset`, which must be where its chain ends
    /// ([`StoreError::OffsetMismatch`] otherwise; checked again when it is recorded). The
    /// bytes may reach the declared length (deferred: `MAX_BODY_MB` and what the quota
    /// leaves free).
    pub async fn begin_append(
        &self,
        session: &Session,
        offset: u64,
    ) -> Result<CloudAppend, StoreError> {
        if session.concat_parts().is_some() {
            return Err(StoreError::ConcatFinal);
        }
        let id = session.upload_id;
        let r = self.catalog.session(id).await?;
        match r.state {
            SessionState::Live => {}
            SessionState::Claimed => return Err(StoreError::Busy),
            SessionState::Finished => return Err(StoreError::NotFound(Missing::Session)),
        }
        if r.offset != offset {
            return Err(StoreError::OffsetMismatch { offset: r.offset });
        }
        let limit = match r.session.length() {
            Some(len) => len,
            None => {
                let u = self.catalog.usage(&session.user_id).await?;
                self.limits
                    .max_file
                    .min(self.quota.saturating_sub(u.used + u.reserved))
            }
        };
        let hashes = if offset == 0 {
            Hashes::default()
        } else {
            let segments = self.catalog.segments(id).await?;
            segments
                .last()
                .filter(|s| s.offset + s.size == offset)
                .and_then(|s| Hashes::resume(&s.hashes.sha_state, s.hashes.crc32))
                .ok_or_else(|| {
                    StoreError::Backend(format!(
                        "the segments of {id} do not carry a hash state to {offset}"
                    ))
                })?
        };
        Ok(CloudAppend {
            sink: Sink::spool(self.spool_path(), limit.saturating_sub(offset)).await?,
            from: hashes,
            offset,
        })
    }

    /// Records an append (also one cut short: its bytes count): its spool goes to a
    /// segment object, then the catalog records it at the offset it began at. Of racing
    /// appends at one offset one is recorded; the others get
    /// [`StoreError::OffsetMismatch`] and their objects are deleted. Returns the new offset.
    pub async fn commit_append(
        &self,
        session: &Session,
        append: CloudAppend,
    ) -> Result<u64, StoreError> {
        let CloudAppend {
            mut sink,
            from,
            offset,
        } = append;
        let id = session.upload_id;
        let whole = sink.watch();
        let (size, spool) = sink.close().await?;
        if size == 0 {
            drop(spool);
            let (sha_state, crc32) = from.state();
            let hashes = SegmentHashes { sha_state, crc32 };
            let done = self
                .catalog
                .append_segment(id, offset, 0, &hashes, None)
                .await?;
            return Ok(done.end);
        }
        let object = format!("parts/{id}/seg-{offset}-{}", uuid::Uuid::new_v4().simple());
        // Hashed once, as it is sent: on from the chain's end.
        let (_, hashes) = self
            .bytes
            .put_spool_from(&object, spool.path(), whole, size, from)
            .await?;
        drop(spool);
        let (sha_state, crc32) = hashes.state();
        let hashes = SegmentHashes { sha_state, crc32 };
        let info = json!({ "object": object });
        match self
            .catalog
            .append_segment(id, offset, size, &hashes, Some(&info))
            .await
        {
            Ok(done) => Ok(done.end),
            Err(e) => {
                if let Err(d) = self.bytes.delete_object(&object).await {
                    tracing::warn!(object, error = %d, "cannot delete an unrecorded segment; the sweep will");
                }
                Err(e.into())
            }
        }
    }

    /// Declares the length of an upload whose length was deferred, reserving it.
    pub async fn declare_length(
        &self,
        session: &Session,
        length: u64,
    ) -> Result<Session, StoreError> {
        if session.length() == Some(length) {
            return Ok(session.clone());
        }
        if length > self.limits.max_file {
            return Err(StoreError::TooLarge);
        }
        Ok(self
            .catalog
            .declare_length(session.upload_id, length, self.quota)
            .await?)
    }

    /// Publishes an upload whose bytes are all there (a partial upload: publishes the
    /// final upload waiting for it, if that is now complete). Refused when `sha256` (hex) is
    /// given and differs ([`StoreError::ShaMismatch`]: the upload stays). Of racing finishes
    /// on any instances one publishes; the others find it finished.
    pub async fn finish_resumable_checked(
        &self,
        session: &Session,
        sha256: Option<&str>,
    ) -> Result<Option<Stored>, StoreError> {
        if session.is_partial() {
            return self.finish_waiting_final(session).await;
        }
        match self.publish_resumable(session.upload_id, sha256).await {
            Ok(stored) => Ok(Some(stored)),
            Err(StoreError::NotFound(_)) => match self.progress(&session.upload_id).await? {
                Progress::Finished(f) => {
                    let entry = self.entry(&Key::parse(&f.key)?).await?;
                    Ok(Some(Stored {
                        key: entry.key,
                        meta: entry.meta,
                    }))
                }
                Progress::Open(..) => Err(StoreError::NotFound(Missing::Session)),
            },
            Err(e) => Err(e),
        }
    }

    /// Claims session `id` and publishes its chain of segments.
    async fn publish_resumable(
        &self,
        id: SessionId,
        sha256: Option<&str>,
    ) -> Result<Stored, StoreError> {
        let (record, segments, token) = self.claim_waiting(id).await?;
        let info = record.session;
        let objects = segments
            .iter()
            .map(object_of)
            .collect::<Result<Vec<_>, _>>();
        let published = async {
            let objects = objects?;
            let total: u64 = segments.iter().map(|s| s.size).sum();
            if info.length() != Some(total) {
                return Err(StoreError::SizeMismatch {
                    expected: info.file.size,
                    actual: total,
                });
            }
            let chain = match segments.last() {
                Some(s) => {
                    Hashes::resume(&s.hashes.sha_state, s.hashes.crc32).ok_or_else(|| {
                        StoreError::Backend(format!("segment {} has no hash state", s.number))
                    })?
                }
                None => Hashes::default(),
            };
            let chain = chain.finish();
            check_sha(sha256, &chain.0)?;
            let stored = self
                .publish_objects(&info, &objects, total, Some(chain), token)
                .await?;
            Ok((stored, objects))
        };
        let (stored, objects) = self.run_claimed(id, token, published).await?;
        self.delete_objects(&objects).await;
        Ok(stored)
    }

    /// Joins segment objects `objects` (`total` bytes) into a new file of session `info`,
    /// claimed under `token`, and publishes it with the name, folder and metadata the
    /// upload was created with (see [`CloudStore::publish_joined`]). `chain`: the SHA-256
    /// and CRC-32 the segments' hash chain gives, which the bytes must match.
    async fn publish_objects(
        &self,
        info: &Session,
        objects: &[String],
        total: u64,
        chain: Option<(String, u32)>,
        token: super::pg::ClaimToken,
    ) -> Result<Stored, StoreError> {
        let sources = objects.iter().map(|o| (o.clone(), None)).collect();
        let plain = CompleteRequest::default();
        self.publish_joined(info, &plain, token, sources, total, chain)
            .await
    }

    /// Deletes objects whose rows are gone (a failure is left to the sweep).
    async fn delete_objects(&self, objects: &[String]) {
        for o in objects {
            if let Err(e) = self.bytes.delete_object(o).await {
                tracing::warn!(object = o, error = %e, "cannot delete a segment; the sweep will");
            }
        }
    }

    /// Deletes the objects of removed segments.
    pub(super) async fn delete_segments(&self, segments: &[SegmentRecord]) {
        let objects: Vec<String> = segments.iter().filter_map(|s| object_of(s).ok()).collect();
        self.delete_objects(&objects).await;
    }

    /// Forgets a finished upload (its file stays).
    pub async fn forget_finished(&self, id: &SessionId) -> Result<(), StoreError> {
        Ok(self.catalog.forget_finished(*id).await?)
    }

    /// Ends a resumable upload that is not finished: its segment objects go, its
    /// reservation is released.
    pub async fn terminate(&self, session: &Session) -> Result<(), StoreError> {
        let removed = self.catalog.abort(session.upload_id).await?;
        self.delete_segments(&removed.segments).await;
        self.delete_parts(&removed.parts).await;
        Ok(())
    }

    /// A tus final upload of `parts` (partial uploads of `new.user`, in order): published
    /// at once when they are all complete (`Ok(Some)`), else when the last completes.
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
            let p = match self.catalog.session(*id).await {
                Ok(r) if r.state != SessionState::Finished => r.session,
                _ => return Err(StoreError::NotPartial(id.to_string())),
            };
            if p.user_id != new.user || !p.is_partial() {
                return Err(StoreError::NotPartial(id.to_string()));
            }
            length = length.zip(p.length()).map(|(a, b)| a + b);
        }
        let concat = Concat::Final { parts };
        let session = resumable_session(
            new,
            length,
            Some(concat),
            self.limits.max_file,
            self.limits.session_ttl,
        )?;
        // The partial uploads hold the reservations until the publish charges the file.
        self.catalog.create_session(&session, 0, self.quota).await?;
        match self.try_join(&session).await {
            Ok(stored) => Ok((session, stored)),
            Err(e) => {
                // The client is told no upload was made: the final upload goes; the
                // partial uploads stay, to be joined again.
                if let Err(t) = self.terminate(&session).await {
                    tracing::warn!(session = %session.upload_id, error = %t, "cannot remove a final concatenation that failed; it expires");
                }
                Err(e)
            }
        }
    }

    /// Publishes a final concatenation whose partial uploads are all complete; `None`
    /// while one is not.
    pub async fn finish_concat(&self, fin: &Session) -> Result<Option<Stored>, StoreError> {
        self.try_join(fin).await
    }

    /// A partial upload has all its bytes: publishes a final upload waiting for it, once
    /// all of that one's partial uploads are complete.
    async fn finish_waiting_final(&self, partial: &Session) -> Result<Option<Stored>, StoreError> {
        let finals = self
            .catalog
            .finals_waiting_for(partial.user_id.as_str(), partial.upload_id)
            .await?;
        for fin in finals {
            if let Some(stored) = self.try_join(&fin).await? {
                return Ok(Some(stored));
            }
        }
        Ok(None)
    }

    /// When every partial upload of `fin` is complete: claims `fin`, joins their segments
    /// into its file (hashed as they pass) and publishes it; then the partial uploads go,
    /// with their reservations. `None` while one is not complete, or when a racing finish
    /// published it.
    async fn try_join(&self, fin: &Session) -> Result<Option<Stored>, StoreError> {
        let Some(parts) = fin.concat_parts().map(<[SessionId]>::to_vec) else {
            return Ok(None);
        };
        let mut objects = Vec::new();
        let mut total = 0u64;
        for id in &parts {
            let r = match self.catalog.session(*id).await {
                Ok(r) => r,
                Err(e) => match StoreError::from(e) {
                    StoreError::NotFound(_) => return Ok(None),
                    e => return Err(e),
                },
            };
            if r.state != SessionState::Live || r.session.length() != Some(r.offset) {
                return Ok(None);
            }
            for s in self.catalog.segments(*id).await? {
                objects.push(object_of(&s)?);
                total += s.size;
            }
        }
        let (record, _, token) = match self.claim_waiting(fin.upload_id).await {
            Ok(c) => c,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let stored = self
            .run_claimed(
                fin.upload_id,
                token,
                self.publish_objects(&record.session, &objects, total, None, token),
            )
            .await?;
        // Only now are the partial uploads spent: had the publish failed, they would still
        // be there for the client to join again.
        let mut spent = parts;
        spent.sort_by_key(SessionId::to_string);
        spent.dedup();
        for id in spent {
            match self.catalog.abort(id).await {
                Ok(removed) => self.delete_segments(&removed.segments).await,
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cannot remove a joined partial upload; it expires")
                }
            }
        }
        Ok(Some(stored))
    }
}
