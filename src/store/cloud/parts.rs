//! Three-step parts in the bucket (issue #14), and the complete that joins them.
//!
//! Where a part goes when it is committed:
//!
//! - **Direct**: a part of 5 MiB and more (or the last one: it ends at the declared size)
//!   whose lower-numbered parts are all direct already is sent as S3 part `number + 1` of the
//!   session's multipart upload, begun by part 0 at the file key the init's name and folder
//!   give. It is hashed on from the previous part's end state ([`Hashes::resume`]) while it
//!   is read from the spool, and its row keeps the state before and after it (its chain).
//!   A complete that finds every part direct and every chain link equal knows the file's
//!   SHA-256 and CRC-32 without reading a byte, checks the client's SHA-256 first (a
//!   mismatch changes nothing), and only completes the multipart upload: S3 joins the parts
//!   itself, nothing is copied.
//! - **Own object** (`parts/{session}/{n}-{uuid}`), as before: a smaller part in the middle,
//!   one sent before the parts in front of it (parallel or out of order), one larger than
//!   [`S3Bytes::direct_part_max`] (a direct part is sent from memory). Complete joins them
//!   through the instance (one part alone: a copy inside the bucket).
//!
//! Invariant kept under the session's row lock: the direct parts are numbers `0..m`, all but
//! the last of at least 5 MiB, so the multipart upload can always be completed as it is.
//! When a part would break that (a part re-sent small or as an own object while direct
//! parts follow it), or when a complete cannot take the fast path (a broken chain: a part
//! re-sent with other bytes, or own-object parts mixed in), the multipart upload is
//! completed into a staging object `parts/{session}/mpu-{uuid}` and its parts become ranges
//! of it, joined through the instance like own objects: the slow path costs one more
//! server-side copy of the direct parts and one pass of every byte through the instance.
//! A SHA-256 mismatch there keeps the ranges, so the client can re-send a part and complete
//! again.
//!
//! Memory: a direct part is read from the spool into memory to be sent (16 MiB at most,
//! drawn from the instance's part-buffer budget); everything else streams.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};

use super::super::key::Key;
use super::super::parts::PartUpload;
use super::super::pg::FileRecord;
use super::super::pg::Publish;
use super::super::pg::{
    Claim, ClaimToken, PartRecord, PartsLock, Place, SegmentRecord, SessionRecord, SessionState,
    CLAIM_LEASE,
};
use super::super::publish::check_sha;
use super::super::s3::{GetRange, PartInfo, S3Bytes, S3Error, UploadId, MAX_PARTS, MIN_PART};
use super::super::sessions::{PartNumber, Session, SessionId};
use super::super::sidecar::Meta;
use super::super::sink::{Hashes, Sink};
use super::super::{fresh_key, CompleteRequest, Missing, StoreError, Stored};
use super::{CloudStore, CLAIM_POLL, COMPLETE_WAIT};

/// A hash state as a part row keeps it: `{sha state hex}:{crc32}`.
fn state_text(h: &Hashes) -> String {
    let (sha, crc) = h.state();
    format!("{sha}:{crc}")
}

/// Hashes carried on from a state kept by [`state_text`].
fn resume(text: &str) -> Option<Hashes> {
    let (sha, crc) = text.rsplit_once(':')?;
    Hashes::resume(sha, crc.parse().ok()?)
}

/// How a part joins the session's multipart upload.
#[derive(Debug, PartialEq, Eq)]
struct DirectPlan {
    /// The upload to add it to (`(key, upload id)`); `None`: begin one.
    upload: Option<(String, String)>,
    /// The hash state before the part; `None`: the file's start.
    from: Option<String>,
}

/// Whether part `number` of `size` bytes may go into the multipart upload, given the parts
/// there are (by number) and the declared size: its lower-numbered parts are all direct and
/// of at least [`MIN_PART`] bytes, and it is too, or it ends the file.
fn direct_plan(parts: &[PartRecord], number: u32, size: u64, declared: u64) -> Option<DirectPlan> {
    let before: Vec<&PartRecord> = parts.iter().filter(|p| p.number < number).collect();
    // S3 numbers parts 1 to 10,000: part 9,999 is the last that fits.
    if size == 0 || number >= MAX_PARTS || before.len() != number as usize {
        return None;
    }
    let mut upload: Option<(String, String)> = None;
    for p in &before {
        let (key, id) = p.upload()?;
        if p.size < MIN_PART as u64 {
            return None;
        }
        upload = Some((key.to_owned(), id.to_owned()));
    }
    let offset: u64 = before.iter().map(|p| p.size).sum();
    if size < MIN_PART as u64 && offset + size != declared {
        return None;
    }
    let upload = upload.or_else(|| {
        parts
            .iter()
            .find_map(|p| p.upload().map(|(k, i)| (k.to_owned(), i.to_owned())))
    });
    let from = match before.last().map(|p| &p.place) {
        Some(Place::Multipart { chain, .. }) => Some(chain.1.clone()),
        _ => None,
    };
    Some(DirectPlan { upload, from })
}

/// The multipart upload and the file's hashes, when every part is direct, numbered from 0
/// without a gap, in one upload, and each hashed on from the one before.
fn fast_chain(parts: &[PartRecord]) -> Option<(String, UploadId, Vec<PartInfo>, Hashes)> {
    let mut expected = state_text(&Hashes::default());
    let mut infos = Vec::with_capacity(parts.len());
    let first = parts.first()?.upload()?;
    for (i, p) in parts.iter().enumerate() {
        let Place::Multipart {
            upload_id,
            etag,
            chain,
        } = &p.place
        else {
            return None;
        };
        if p.number as usize != i || *upload_id != first.1 || p.object != first.0 {
            return None;
        }
        if chain.0 != expected {
            return None;
        }
        expected = chain.1.clone();
        infos.push(PartInfo {
            number: p.number + 1,
            etag: etag.clone(),
            size: p.size,
        });
    }
    Some((
        first.0.to_owned(),
        UploadId(first.1.to_owned()),
        infos,
        resume(&expected)?,
    ))
}

/// What the parts in `before` name that those in `after` do not: objects to delete and
/// multipart uploads to abort.
fn leftovers(before: &[PartRecord], after: &[PartRecord]) -> Leftovers {
    let named = |parts: &[PartRecord]| {
        let mut objects = BTreeSet::new();
        let mut uploads = BTreeSet::new();
        for p in parts {
            match p.upload() {
                Some((k, i)) => {
                    uploads.insert((k.to_owned(), i.to_owned()));
                }
                None => {
                    objects.insert(p.object.clone());
                }
            }
        }
        (objects, uploads)
    };
    let (objects, uploads) = named(before);
    let (kept_objects, kept_uploads) = named(after);
    Leftovers {
        objects: objects.difference(&kept_objects).cloned().collect(),
        uploads: uploads.difference(&kept_uploads).cloned().collect(),
    }
}

/// Objects and multipart uploads no part names any more.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Leftovers {
    objects: Vec<String>,
    uploads: Vec<(String, String)>,
}

/// `before` with `part` in place of the part of its number.
fn replaced(before: &[PartRecord], part: &PartRecord) -> Vec<PartRecord> {
    let mut after: Vec<PartRecord> = before
        .iter()
        .filter(|p| p.number != part.number)
        .cloned()
        .collect();
    after.push(part.clone());
    after
}

impl CloudStore {
    /// Ends a session unfinished: its parts' objects go, its multipart upload is aborted,
    /// its reservation is released.
    pub async fn abort(&self, info: &Session) -> Result<(), StoreError> {
        if info.resumable.is_some() {
            // Its bytes are segments, which the catalog's abort names.
            return self.terminate(info).await;
        }
        let _turn = self.turns.take(info.upload_id).await;
        let parts = self.catalog.abort_parts(info.upload_id).await?;
        self.delete_parts(&parts).await;
        Ok(())
    }

    /// Removes what `parts` keep in the bucket (the session is gone).
    pub(in crate::store) async fn delete_parts(&self, parts: &[PartRecord]) {
        self.remove(leftovers(parts, &[])).await;
    }

    async fn remove(&self, left: Leftovers) {
        for o in &left.objects {
            if let Err(e) = self.bytes.delete_object(o).await {
                tracing::warn!(object = o, error = %e, "cannot delete a part; the sweep will");
            }
        }
        for (key, id) in left.uploads {
            if let Err(e) = self.bytes.abort_if_open(&key, &UploadId(id)).await {
                tracing::warn!(key, error = %e, "cannot abort a session's multipart upload; the bucket's lifecycle rule will");
            }
        }
    }

    /// Starts receiving part `number` of `session` (at most the declared size less the
    /// other parts): into a spool file, sent to the bucket at commit.
    pub async fn begin_part(
        &self,
        session: &Session,
        number: PartNumber,
    ) -> Result<PartUpload, StoreError> {
        if session.resumable.is_some() {
            return Err(StoreError::WrongProtocol);
        }
        let others: u64 = self
            .catalog
            .parts(session.upload_id)
            .await?
            .iter()
            .filter(|p| p.number != number.get())
            .map(|p| p.size)
            .sum();
        let room = session.file.size.saturating_sub(others);
        Ok(PartUpload::spooled(self.spool_sink(room).await?, None))
    }

    /// Starts receiving a JSON part whose session is not known yet: for a user, at most
    /// what its sessions have reserved (a part can only be for one of them); for a service
    /// caller, the largest file.
    pub async fn begin_staged_part(
        &self,
        who: Option<&super::UserId>,
    ) -> Result<PartUpload, StoreError> {
        let limit = match who {
            Some(user) => self.catalog.usage(user).await?.reserved,
            None => self.limits.max_file,
        };
        Ok(PartUpload::spooled(
            self.spool_sink(limit.min(self.limits.max_file)).await?,
            None,
        ))
    }

    /// A hashed spool file for a part of at most `limit` bytes.
    async fn spool_sink(&self, limit: u64) -> Result<Sink, StoreError> {
        Sink::create(self.spool_path(), true, limit).await
    }

    /// Makes a received part count, replacing any part of the same number (what only the
    /// old one named is removed), unless the parts would pass the declared size (413,
    /// nothing kept). A part that qualifies goes straight into the session's multipart
    /// upload (see the module's notes); any other into an object of its own.
    pub async fn commit_part(
        &self,
        session: &Session,
        number: PartNumber,
        part: PartUpload,
    ) -> Result<u64, StoreError> {
        let (written, spool) = part.into_sink().finish().await?;
        let n = number.get();
        if written.size > 0 && written.size <= self.bytes.direct_part_max() {
            let turn = self.turns.take(session.upload_id).await;
            // The memory to send it, before the lock: a commit never waits for the budget
            // while it holds the session and a database connection.
            let _memory = self
                .bytes
                .budget()
                .reserve_bytes(written.size as usize)
                .await;
            let lock = self.catalog.lock_parts(session.upload_id).await?;
            lock.check_room(n, written.size)?;
            if let Some(plan) = direct_plan(lock.parts(), n, written.size, lock.declared()) {
                let sha256 = written.sha256.clone().unwrap_or_default();
                let crc32 = written.crc32.unwrap_or_default();
                let part = (n, written.size, sha256, crc32);
                // Carried through on a task of its own: a client that goes away must not
                // cut it between replacing the S3 part and recording its ETag.
                let (store, session) = (self.clone(), session.clone());
                return detached(async move {
                    let done = store
                        .commit_direct(&session, lock, plan, part, spool.path())
                        .await;
                    drop((spool, _memory, turn));
                    done
                })
                .await;
            }
        }
        let object = format!(
            "parts/{}/{}-{}",
            session.upload_id,
            n,
            uuid::Uuid::new_v4().simple()
        );
        let file = tokio::fs::File::open(spool.path()).await?;
        let sent = self
            .bytes
            .put_stream(
                &object,
                tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
                written.size,
            )
            .await?;
        drop(spool);
        let record = PartRecord {
            number: n,
            size: sent.size,
            sha256: sent.sha256,
            crc32: sent.crc32,
            object: object.clone(),
            place: Place::Object,
        };
        // On a task of its own: cut between completing a multipart upload and recording
        // its staging object, the parts would be lost.
        let (store, id, kept) = (self.clone(), session.upload_id, record.clone());
        let recorded = detached(async move { store.record_part(id, &kept).await }).await;
        match recorded {
            Ok(()) => Ok(record.size),
            Err(e) => {
                let _ = self.bytes.delete_object(&object).await;
                Err(e)
            }
        }
    }

    /// Records a part kept in an object of its own. Direct parts numbered above it would
    /// stand behind a part that is not direct: the multipart upload is then completed into
    /// a staging object first and they become ranges of it.
    async fn record_part(&self, id: SessionId, record: &PartRecord) -> Result<(), StoreError> {
        let _turn = self.turns.take(id).await;
        let mut lock = self.catalog.lock_parts(id).await?;
        lock.check_room(record.number, record.size)?;
        if lock
            .parts()
            .iter()
            .any(|p| p.upload().is_some() && p.number > record.number)
        {
            let staging = self.materialize(id, lock.parts()).await?;
            if let Err(e) = lock.rebase(&staging).await {
                tracing::error!(session = %id, staging, error = %e, "completed a session's multipart upload but cannot record it; its parts are lost");
                return Err(e.into());
            }
        }
        let before = lock.put(record).await?;
        self.remove(leftovers(&before, &replaced(&before, record)))
            .await;
        Ok(())
    }

    /// Sends part `part` (number, size, SHA-256, CRC-32) from `spool` as S3 part
    /// `number + 1` of the session's multipart upload (begun here when there is none),
    /// hashed on from the previous part, and records it, still under `lock`.
    async fn commit_direct(
        &self,
        session: &Session,
        lock: PartsLock,
        plan: DirectPlan,
        (number, size, sha256, crc32): (u32, u64, String, u32),
        spool: &std::path::Path,
    ) -> Result<u64, StoreError> {
        let corrupt = || StoreError::Backend("a part's hash state does not parse".into());
        let hashes = match &plan.from {
            None => Hashes::default(),
            Some(s) => resume(s).ok_or_else(corrupt)?,
        };
        let start = state_text(&hashes);
        let began = plan.upload.is_none();
        let (key, upload_id) = match plan.upload {
            Some((key, id)) => (key, UploadId(id)),
            None => {
                let key = fresh_key(
                    &session.user_id,
                    session.folder.as_ref(),
                    &session.file.name,
                );
                let key = key.to_string();
                let id = self.bytes.begin_multipart(&key).await?;
                (key, id)
            }
        };
        let abort_new = |bytes: S3Bytes, key: String, id: UploadId| async move {
            if began {
                if let Err(e) = bytes.abort_if_open(&key, &id).await {
                    tracing::warn!(key, error = %e, "cannot abort a multipart upload; the bucket's lifecycle rule will");
                }
            }
        };
        let sent = self
            .bytes
            .put_part_from_file(
                &key,
                &upload_id,
                number + 1,
                spool.to_path_buf(),
                size,
                hashes,
            )
            .await;
        let (info, end) = match sent {
            Ok(s) => s,
            Err(e) => {
                abort_new(self.bytes.clone(), key, upload_id).await;
                return Err(e.into());
            }
        };
        let record = PartRecord {
            number,
            size,
            sha256,
            crc32,
            object: key.clone(),
            place: Place::Multipart {
                upload_id: upload_id.0.clone(),
                etag: info.etag,
                chain: (start, state_text(&end)),
            },
        };
        match lock.put(&record).await {
            Ok(before) => {
                self.remove(leftovers(&before, &replaced(&before, &record)))
                    .await;
                Ok(size)
            }
            Err(e) => {
                abort_new(self.bytes.clone(), key, upload_id).await;
                Err(e.into())
            }
        }
    }

    /// Completes the multipart upload of the direct `parts` (numbers `0..m` by the
    /// invariant) and moves the object to a staging key of session `id`: the key it was
    /// begun at is a file key, which the orphan sweep would take for a crash's leftover.
    async fn materialize(&self, id: SessionId, parts: &[PartRecord]) -> Result<String, StoreError> {
        let direct: Vec<&PartRecord> = parts.iter().filter(|p| p.upload().is_some()).collect();
        let Some((key, upload)) = direct.first().and_then(|p| p.upload()) else {
            return Err(StoreError::Backend(
                "no multipart upload to complete".into(),
            ));
        };
        let infos: Vec<PartInfo> = direct
            .iter()
            .filter_map(|p| match &p.place {
                Place::Multipart { etag, .. } => Some(PartInfo {
                    number: p.number + 1,
                    etag: etag.clone(),
                    size: p.size,
                }),
                _ => None,
            })
            .collect();
        let key = key.to_owned();
        let size = infos.iter().map(|p| p.size).sum();
        let staging = staging_key(id, upload);
        if self.staged(&staging, size).await {
            // Moved there by a commit or complete cut before it could record it.
            return Ok(staging);
        }
        self.complete_upload(&key, &UploadId(upload.to_owned()), &infos, size)
            .await?;
        self.move_object(&key, &staging, size).await?;
        Ok(staging)
    }

    /// Whether the staging object `staging` is there, `size` bytes long.
    async fn staged(&self, staging: &str, size: u64) -> bool {
        self.bytes.head(staging).await.is_ok_and(|o| o.size == size)
    }

    /// Completes multipart upload `id` at `key` from `parts` (`size` bytes together). An
    /// error whose request the server may still have carried out (the answer lost, a
    /// retry finding the upload gone) counts as done when the object is there whole.
    async fn complete_upload(
        &self,
        key: &str,
        id: &UploadId,
        parts: &[PartInfo],
        size: u64,
    ) -> Result<(), StoreError> {
        match self.bytes.complete(key, id, parts).await {
            Ok(()) => Ok(()),
            Err(e) => match self.bytes.head(key).await {
                Ok(o) if o.size == size => {
                    tracing::warn!(key, error = %e, "completing a multipart upload failed, yet its object is there whole: carrying on");
                    Ok(())
                }
                _ => Err(e.into()),
            },
        }
    }

    /// Copies `from` to `to` inside the bucket (through this instance when the server
    /// cannot), then deletes `from`.
    async fn move_object(&self, from: &str, to: &str, size: u64) -> Result<(), StoreError> {
        self.copy_object(from, to, size).await?;
        if let Err(e) = self.bytes.delete_object(from).await {
            tracing::warn!(key = from, error = %e, "cannot delete a moved object; the sweep will");
        }
        Ok(())
    }

    /// Copies `from` (`size` bytes) to `to` inside the bucket, through this instance when the
    /// server cannot.
    async fn copy_object(&self, from: &str, to: &str, size: u64) -> Result<(), StoreError> {
        if let Err(e) = self.bytes.copy(from, to).await {
            tracing::warn!(error = %e, "CopyObject failed; copying through this instance");
            let source = vec![(from.to_owned(), None)];
            self.bytes
                .put_stream(to, joined(self.bytes.clone(), source), size)
                .await?;
        }
        Ok(())
    }

    /// Completes a session: of racing completes on any instances one claims it; its parts
    /// are joined in number order into the file's object (all direct and chained: S3 joins
    /// them; one part: copied inside the bucket; else through this instance), checked, the
    /// sidecar written, and the row committed with the quota charged and the session
    /// finished. A failed check gives the claim back with the parts kept.
    ///
    /// The claim is a lease, renewed while the publish runs: a complete whose instance dies
    /// leaves a claim the next complete takes over once it lapses. A complete that finds the
    /// session claimed waits for the holder (as the filesystem's lock does): finished, it
    /// answers not found (completing again); given back, it claims and completes itself;
    /// still held after [`COMPLETE_WAIT`], [`StoreError::Busy`].
    pub async fn complete(
        &self,
        info: &Session,
        req: CompleteRequest,
    ) -> Result<Stored, StoreError> {
        // On a task of its own: a client that goes away must not cut a complete between
        // completing the multipart upload (or moving its object) and recording what became
        // of the parts, which would leave rows naming an upload that is gone. Its claim is
        // given back or the file published either way, so a retry need not wait for the
        // lease to lapse.
        let (store, info) = (self.clone(), info.clone());
        detached(async move {
            let id = info.upload_id;
            let (_, _, token) = store.claim_waiting(id).await?;
            let (stored, left) = store
                .run_claimed(id, token, store.publish_claimed(&info, req, token))
                .await?;
            store.remove(left).await;
            Ok(stored)
        })
        .await
    }

    /// Claims session `id` (see [`CloudStore::complete`]): waits for a complete holding it
    /// on any instance; finished meanwhile, not found; still held after
    /// [`COMPLETE_WAIT`], [`StoreError::Busy`].
    pub(in crate::store) async fn claim_waiting(
        &self,
        id: SessionId,
    ) -> Result<(SessionRecord, Vec<SegmentRecord>, ClaimToken), StoreError> {
        let waiting = tokio::time::Instant::now();
        loop {
            match self.catalog.claim(id).await? {
                Claim::Won(record, segments, token) => return Ok((record, segments, token)),
                Claim::Lost(SessionState::Claimed) if waiting.elapsed() < COMPLETE_WAIT => {
                    tokio::time::sleep(CLAIM_POLL).await;
                }
                Claim::Lost(SessionState::Claimed) => return Err(StoreError::Busy),
                Claim::Lost(_) => return Err(StoreError::NotFound(Missing::Session)),
            }
        }
    }

    /// Runs `publish` under the claim `token` holds on session `id`, renewing its lease
    /// meanwhile; on failure (or when the claim is lost) gives the claim back, so the
    /// session is live again with its bytes.
    pub(in crate::store) async fn run_claimed<T>(
        &self,
        id: SessionId,
        token: ClaimToken,
        publish: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let outcome = tokio::select! {
            done = publish => done,
            lost = self.hold_claim(id, token) => Err(lost),
        };
        if outcome.is_err() {
            if let Err(u) = self.catalog.unclaim(id, token).await {
                tracing::warn!(session = %id, error = %u, "cannot give a claim back; its lease lapses");
            }
        }
        outcome
    }

    /// Renews the claim `token` holds on session `id` until the claim is lost (another
    /// complete took it over after a renewal came too late), which it returns as the
    /// publish's error. A renewal that fails (the database unreachable a moment) is retried:
    /// the publish itself is fenced by the token, so a late one changes nothing.
    async fn hold_claim(&self, id: SessionId, token: ClaimToken) -> StoreError {
        // The lease runs from the last renewal the database took: past two thirds of it
        // without one, this complete stops itself, before another can take the claim over
        // (a holder that carried on could undo the new holder's work in the bucket).
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(CLAIM_LEASE / 6).await;
            match tokio::time::timeout(CLAIM_LEASE / 6, self.catalog.renew(id, token)).await {
                Ok(Ok(true)) => renewed = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!(session = %id, "lost the claim of a complete in progress (its lease lapsed and another took it over); stopping it");
                    return StoreError::Busy;
                }
                Ok(Err(e)) => {
                    tracing::warn!(session = %id, error = %e, "cannot renew a complete's claim; retrying")
                }
                Err(_) => {
                    tracing::warn!(session = %id, "renewing a complete's claim timed out; retrying")
                }
            }
            if renewed.elapsed() >= CLAIM_LEASE * 2 / 3 {
                tracing::warn!(session = %id, "cannot renew a complete's claim before its lease lapses; stopping it (the client's retry takes the claim over)");
                return StoreError::Busy;
            }
        }
    }

    /// Publishes the claimed session; what is left to remove once it is published.
    async fn publish_claimed(
        &self,
        info: &Session,
        req: CompleteRequest,
        token: ClaimToken,
    ) -> Result<(Stored, Leftovers), StoreError> {
        let mut parts = self.catalog.parts(info.upload_id).await?;
        let total: u64 = parts.iter().map(|p| p.size).sum();
        if total != info.file.size {
            return Err(StoreError::SizeMismatch {
                expected: info.file.size,
                actual: total,
            });
        }
        let (original_name, folder) = req.placement(info);
        let new_key = || fresh_key(&info.user_id, folder, original_name);
        'fast: {
            if let Some((mpu_key, upload_id, infos, hashes)) = fast_chain(&parts) {
                let (sha256, crc32) = hashes.finish();
                // Checked before the upload is completed: a mismatch leaves every part as it was.
                check_sha(req.sha256.as_deref(), &sha256)?;
                let joining = std::time::Instant::now();
                if let Err(e) = self
                    .complete_upload(&mpu_key, &upload_id, &infos, total)
                    .await
                {
                    // A complete cut (its instance died) after a failed publish moved the
                    // object to the staging key: the parts are ranges of it, as `rescue` meant.
                    let staging = staging_key(info.upload_id, &upload_id.0);
                    if !self.staged(&staging, total).await {
                        return Err(e);
                    }
                    tracing::warn!(session = %info.upload_id, staging, "found a session's completed multipart upload at its staging key: joining the parts from there");
                    parts = self
                        .catalog
                        .rebase_claimed(info.upload_id, token, &staging)
                        .await?;
                    break 'fast;
                }
                tracing::info!(
                    session = %info.upload_id,
                    parts = infos.len(),
                    bytes = total,
                    server_ms = joining.elapsed().as_millis() as u64,
                    "complete: the bucket joined the parts of the multipart upload, none passed through this instance"
                );
                // Begun at the init's name and folder: the complete may ask for others.
                let same_place = *original_name == info.file.name && folder == info.folder.as_ref();
                let key = if same_place {
                    Key::parse(&mpu_key).ok()
                } else {
                    None
                };
                let (key, copied) = match key {
                    Some(k) => (k, false),
                    None => {
                        // Copied, not moved: until the file's row is committed the object
                        // stays where the parts' rows say, so a complete cut meanwhile (its
                        // instance died) is carried on by the retry, which finds the upload
                        // completed there. It goes once the file is published.
                        let key = new_key();
                        self.copy_object(&mpu_key, &key.to_string(), total).await?;
                        (key, true)
                    }
                };
                let published = self
                    .publish_file(info, &req, token, &key, (total, sha256, crc32))
                    .await;
                return match published {
                    Ok(stored) if copied => Ok((
                        stored,
                        Leftovers {
                            objects: vec![mpu_key],
                            uploads: Vec::new(),
                        },
                    )),
                    Ok(stored) => Ok((stored, Leftovers::default())),
                    Err(e) => {
                        if copied {
                            let object = key.to_string();
                            if let Err(d) = self.bytes.delete(&object).await {
                                tracing::warn!(key = object, error = %d, "cannot remove an unpublished object; the sweep will");
                            }
                        }
                        self.rescue(info.upload_id, token, (&mpu_key, &upload_id.0), total)
                            .await;
                        Err(e)
                    }
                };
            }
        }
        if parts.iter().any(|p| p.upload().is_some()) {
            let staging = self.materialize(info.upload_id, &parts).await?;
            parts = self
                .catalog
                .rebase_claimed(info.upload_id, token, &staging)
                .await?;
        }
        // One part in an object of its own is copied inside the bucket, its hashes known.
        let known = match parts.as_slice() {
            [one] if one.place == Place::Object => Some((one.sha256.clone(), one.crc32)),
            _ => None,
        };
        let sources = parts
            .iter()
            .map(|p| match p.place {
                Place::Range { offset } => (p.object.clone(), Some(offset..offset + p.size)),
                _ => (p.object.clone(), None),
            })
            .collect();
        let stored = self
            .publish_joined(info, &req, token, sources, total, known)
            .await?;
        Ok((stored, leftovers(&parts, &[])))
    }

    /// Joins `sources` (objects, or ranges of them: `total` bytes in all) into a new file
    /// of session `info`, placed as `req` says, and publishes it under `token` (see
    /// [`CloudStore::publish_file`]). `known`: the SHA-256 and CRC-32 the records of the
    /// parts or segments give, checked against `req.sha256` before a byte moves; a single
    /// whole source is then copied inside the bucket. Otherwise the bytes pass through
    /// this instance, hashed on the way, and must match `known` or else `req.sha256`. On
    /// failure the new object goes.
    pub(in crate::store) async fn publish_joined(
        &self,
        info: &Session,
        req: &CompleteRequest,
        token: ClaimToken,
        sources: Vec<(String, Option<std::ops::Range<u64>>)>,
        total: u64,
        known: Option<(String, u32)>,
    ) -> Result<Stored, StoreError> {
        if let Some((sha256, _)) = &known {
            check_sha(req.sha256.as_deref(), sha256)?;
        }
        let (name, folder) = req.placement(info);
        let key = fresh_key(&info.user_id, folder, name);
        let object = key.to_string();
        let copied = match (sources.as_slice(), &known) {
            ([(one, None)], Some(_)) => match self.bytes.copy(one, &object).await {
                Ok(()) => true,
                Err(e) => {
                    // A server without CopyObject (or one that fails it on a long name, as
                    // s3s-fs does past 255 bytes with its temp names): the bytes go through.
                    tracing::warn!(error = %e, "CopyObject failed; copying through this instance");
                    false
                }
            },
            _ => false,
        };
        let (sha256, crc32) = match known {
            Some(hashes) if copied => hashes,
            known => {
                let w = self
                    .bytes
                    .put_stream(&object, joined(self.bytes.clone(), sources), total)
                    .await?;
                let checked = if w.size != total
                    || known
                        .as_ref()
                        .is_some_and(|(sha256, _)| *sha256 != w.sha256)
                {
                    Err(StoreError::Io(std::io::Error::other(
                        "a stored part changed in the bucket",
                    )))
                } else {
                    check_sha(req.sha256.as_deref(), &w.sha256)
                };
                if let Err(e) = checked {
                    let _ = self.bytes.delete_object(&object).await;
                    return Err(e);
                }
                (w.sha256, w.crc32)
            }
        };
        let published = self
            .publish_file(info, req, token, &key, (total, sha256, crc32))
            .await;
        if published.is_err() {
            if let Err(d) = self.bytes.delete(&object).await {
                tracing::warn!(key = object, error = %d, "cannot remove an unpublished object; the sweep will");
            }
        }
        published
    }

    /// A fast complete failed after its multipart upload was completed into `object`: the
    /// object moves to a staging key and the parts become ranges of it, so the next
    /// complete finds them.
    async fn rescue(
        &self,
        id: SessionId,
        token: ClaimToken,
        (object, upload): (&str, &str),
        size: u64,
    ) {
        let rescued = async {
            // Only while the claim is still this complete's (renewed for a whole lease
            // now): once another holds it, the object may be its published file.
            if !self.catalog.renew(id, token).await? {
                tracing::warn!(session = %id, object, "a failed complete lost its claim: its object is left to the new holder");
                return Ok(());
            }
            if let Err(e) = self.bytes.delete_object(&format!("{object}.meta")).await {
                tracing::warn!(object, error = %e, "cannot delete an unpublished sidecar");
            }
            let staging = staging_key(id, upload);
            self.move_object(object, &staging, size).await?;
            self.catalog.rebase_claimed(id, token, &staging).await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = rescued {
            tracing::error!(session = %id, object, error = %e, "a failed complete cannot keep its parts; the client must send them again");
        }
    }

    /// Writes the sidecar beside `key`'s object and commits the row (the quota charged,
    /// the session finished under `token`): the name, folder and metadata of the session,
    /// with what `req` overrides.
    pub(in crate::store) async fn publish_file(
        &self,
        info: &Session,
        req: &CompleteRequest,
        token: ClaimToken,
        key: &Key,
        (size, sha256, crc32): (u64, String, u32),
    ) -> Result<Stored, StoreError> {
        let (original_name, folder) = req.placement(info);
        let mut extra = info.meta.clone();
        extra.extend(req.extra.clone());
        let meta = Meta::for_upload(
            &info.user_id,
            original_name,
            folder,
            info.file.mime.as_deref(),
            extra,
            (size, Some(sha256.clone()), Some(crc32)),
        );
        let record = FileRecord {
            key: key.clone(),
            size,
            sha256: Some(sha256),
            crc32: Some(crc32),
            mime: meta.mime.clone(),
            created_at: chrono::Utc::now(),
            meta: meta.clone(),
        };
        let reservation = info.upload_id.to_string();
        let object = key.to_string();
        self.put_sidecar(&object, &meta).await?;
        self.catalog
            .publish(Publish {
                file: &record,
                reservation: Some(&reservation),
                session: Some((info.upload_id, token)),
            })
            .await?;
        Ok(Stored {
            key: key.clone(),
            meta,
        })
    }

    /// Writes the sidecar object beside the file's.
    pub(in crate::store) async fn put_sidecar(
        &self,
        object: &str,
        meta: &Meta,
    ) -> Result<(), StoreError> {
        let json = Bytes::from(meta.to_json()?);
        self.bytes
            .put_stream(
                &format!("{object}.meta"),
                futures_util::stream::iter([Ok::<_, std::io::Error>(json)]),
                u64::MAX,
            )
            .await?;
        Ok(())
    }
}

/// Where the multipart upload `upload` of session `id` is moved once completed, when its
/// parts cannot stay as they are (they become ranges of it): named by the upload, so a
/// commit or complete cut between the move and recording it finds the object again.
fn staging_key(id: SessionId, upload: &str) -> String {
    use sha2::Digest as _;
    let tag = hex::encode(&sha2::Sha256::digest(upload.as_bytes())[..8]);
    format!("parts/{id}/mpu-{tag}")
}

/// Runs `work` to its end on a task of its own, even when the caller is dropped.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(work)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
}

/// The objects (or ranges of them) one after the other, each streamed as the server sends
/// it.
fn joined(
    bytes: S3Bytes,
    sources: Vec<(String, Option<std::ops::Range<u64>>)>,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, S3Error>> {
    futures_util::stream::iter(sources)
        .then(move |(o, range)| {
            let bytes = bytes.clone();
            Box::pin(async move {
                match range {
                    Some(r) if r.is_empty() => Ok(futures_util::stream::empty().boxed()),
                    r => bytes
                        .get_range(&o, r.map(GetRange::Bounded))
                        .await
                        .map(|r| r.stream),
                }
            }) as futures_util::future::BoxFuture<'static, _>
        })
        .try_flatten()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MIN_PART as u64;

    fn direct(number: u32, size: u64, chain: (&str, &str)) -> PartRecord {
        PartRecord {
            number,
            size,
            sha256: String::new(),
            crc32: 0,
            object: "storage/u/f".into(),
            place: Place::Multipart {
                upload_id: "up".into(),
                etag: format!("e{number}"),
                chain: (chain.0.into(), chain.1.into()),
            },
        }
    }

    fn own(number: u32, size: u64, object: &str) -> PartRecord {
        PartRecord {
            number,
            size,
            sha256: String::new(),
            crc32: 0,
            object: object.into(),
            place: Place::Object,
        }
    }

    /// The chain states of `parts`, hashed one after the other from the start.
    fn chained(parts: &[&[u8]]) -> Vec<(String, String)> {
        let mut h = Hashes::default();
        parts
            .iter()
            .map(|p| {
                let start = state_text(&h);
                h.update(p);
                (start, state_text(&h))
            })
            .collect()
    }

    #[test]
    fn a_part_goes_direct_only_behind_direct_parts_of_the_minimum() {
        let declared = 3 * M;
        // Part 0 of 5 MiB: begins the upload, from the file's start.
        assert_eq!(
            direct_plan(&[], 0, M, declared),
            Some(DirectPlan {
                upload: None,
                from: None
            })
        );
        // Small and not the last: no.
        assert_eq!(direct_plan(&[], 0, M - 1, declared), None);
        // Behind direct part 0: into its upload, from its end state.
        let zero = direct(0, M, ("s0", "e0"));
        assert_eq!(
            direct_plan(std::slice::from_ref(&zero), 1, M, declared),
            Some(DirectPlan {
                upload: Some(("storage/u/f".into(), "up".into())),
                from: Some("e0".into())
            })
        );
        // The last part may be small.
        let one = direct(1, M, ("e0", "e1"));
        assert!(direct_plan(&[zero.clone(), one.clone()], 2, M - 7, declared - 7).is_some());
        assert_eq!(direct_plan(&[zero.clone(), one], 2, M - 7, declared), None);
        // A gap, or an own-object part in front: no.
        assert_eq!(
            direct_plan(std::slice::from_ref(&zero), 2, M, declared),
            None
        );
        let small = own(0, 10, "parts/x/0");
        assert_eq!(direct_plan(&[small], 1, M, declared), None);
        // A small direct part in front (a short last part, re-sent elsewhere): no.
        let short = direct(0, M - 1, ("s0", "e0"));
        assert_eq!(direct_plan(&[short], 1, M, declared), None);
        // Part 0 sent again while part 1 is direct: the same upload.
        let later = direct(1, M, ("e0", "e1"));
        assert_eq!(
            direct_plan(&[zero, later], 0, M, declared).map(|p| p.upload),
            Some(Some(("storage/u/f".into(), "up".into())))
        );
        // Nothing for an empty part, nor past S3's 10,000 parts.
        assert_eq!(direct_plan(&[], 0, 0, 0), None);
        let many: Vec<PartRecord> = (0..MAX_PARTS).map(|n| direct(n, M, ("a", "b"))).collect();
        let big = u64::from(MAX_PARTS + 1) * M;
        assert!(direct_plan(&many[..9_999], 9_999, M, big).is_some());
        assert_eq!(direct_plan(&many, MAX_PARTS, M, big), None);
    }

    #[test]
    fn the_fast_path_needs_every_part_direct_and_chained() {
        let (a, b) = (b"first part".as_slice(), b"second".as_slice());
        let c = chained(&[a, b]);
        let parts = vec![
            direct(0, a.len() as u64, (&c[0].0, &c[0].1)),
            direct(1, b.len() as u64, (&c[1].0, &c[1].1)),
        ];
        let (key, id, infos, hashes) = fast_chain(&parts).expect("a valid chain");
        assert_eq!((key.as_str(), id.0.as_str()), ("storage/u/f", "up"));
        assert_eq!(
            infos
                .iter()
                .map(|i| (i.number, i.etag.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "e0"), (2, "e1")]
        );
        let mut whole = Hashes::default();
        whole.update(b"first partsecond");
        assert_eq!(hashes.finish(), whole.finish());
        // Part 1 hashed on from another part 0: broken.
        let other = chained(&[b"other part", b]);
        let broken = vec![parts[0].clone(), direct(1, 6, (&other[1].0, &other[1].1))];
        assert!(fast_chain(&broken).is_none());
        // A gap, an own object, or no parts at all: no fast path.
        assert!(fast_chain(&parts[1..]).is_none());
        assert!(fast_chain(&[parts[0].clone(), own(1, 6, "parts/x/1")]).is_none());
        assert!(fast_chain(&[]).is_none());
    }

    #[test]
    fn leftovers_are_what_no_part_names_any_more() {
        let staged = |n: u32, offset: u64| PartRecord {
            place: Place::Range { offset },
            ..own(n, 5, "parts/s/mpu-1")
        };
        let before = vec![
            staged(0, 0),
            staged(1, 5),
            own(2, 5, "parts/s/2-a"),
            direct(3, 5, ("x", "y")),
        ];
        // Replacing a range keeps the staging object the other range still names.
        let after = replaced(&before, &own(0, 5, "parts/s/0-b"));
        assert_eq!(leftovers(&before, &after), Leftovers::default());
        // Replacing the own object and the direct part frees both.
        let after = replaced(
            &replaced(&before, &own(2, 5, "parts/s/2-b")),
            &own(3, 5, "parts/s/3-b"),
        );
        assert_eq!(
            leftovers(&before, &after),
            Leftovers {
                objects: vec!["parts/s/2-a".into()],
                uploads: vec![("storage/u/f".into(), "up".into())],
            }
        );
        // Everything, once.
        let all = leftovers(&before, &[]);
        assert_eq!(
            all.objects,
            vec!["parts/s/2-a".to_owned(), "parts/s/mpu-1".to_owned()]
        );
        assert_eq!(all.uploads.len(), 1);
    }
}
