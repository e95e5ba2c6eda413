//! Receiving parts: appended in order to the session's data file (hashed on the way), or
//! kept as part files when they come out of order; committed under the session's lock so
//! parts never pass the declared size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::key::UserId;
use super::lock::{lock_data_file, lock_live_session};
use super::sessions::{self, PartNumber, Session};
use super::sink::{Hashes, Sink};
use super::staging;
use super::{blocking, fsync_dir, not_found, FileStore, StoreError};

impl FileStore {
    /// Starts receiving a part of `session`, at most the declared size minus the other
    /// parts' bytes. A part that comes in order (every part received so far has a lower
    /// number and they all lie back to back in the session's data file) is appended to the
    /// data file, hashed on from the state recorded after the part before it, so that
    /// complete has nothing left to copy or hash. Any other part (out of order, a part
    /// sent again, or one arriving while another is being appended) goes to a temporary
    /// file in the session's folder.
    pub async fn begin_part(
        &self,
        session: &Session,
        number: PartNumber,
    ) -> Result<PartUpload, StoreError> {
        if session.resumable.is_some() {
            return Err(StoreError::WrongProtocol);
        }
        let number = number.get();
        let id = session.upload_id;
        let dir = self.dirs.live(&id);
        let declared = session.file.size;
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
                segment_number: None,
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
            segment_number: None,
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
            segment_number: None,
        })
    }

    /// Makes a received part count, replacing an earlier part of the same number, unless
    /// the parts would then pass the declared size: an appended part gets its segment
    /// record, any other is renamed to `part_{n}`.
    pub async fn commit_part(
        &self,
        session: &Session,
        number: PartNumber,
        part: PartUpload,
    ) -> Result<u64, StoreError> {
        let number = number.get();
        let dir = self.dirs.live(&session.upload_id);
        let declared = session.file.size;
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
}

/// For part `number` of the session in `dir` (whose lock the caller holds, `parts` read
/// under it): the data file, placed where the part goes, and the hashes to carry on, when
/// the part comes in order and no other part is being appended.
pub(super) fn open_append(
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

impl PartUpload {
    /// A resumable upload's append at `offset` (`resumable.rs`), to be recorded as segment
    /// `number`.
    pub(super) fn appending(sink: Sink, offset: u64, number: u32, guard: AppendGuard) -> Self {
        Self {
            sink,
            append_at: Some((offset, guard)),
            staging: None,
            segment_number: Some(number),
        }
    }

    /// The parts of an append: its offset, its segment's number, its sink and its guard.
    pub(super) fn into_append(self) -> Result<(u64, u32, Sink, AppendGuard), StoreError> {
        match (self.append_at, self.segment_number) {
            (Some((offset, guard)), Some(number)) => Ok((offset, number, self.sink, guard)),
            _ => Err(StoreError::Io(std::io::Error::other("not an append"))),
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
    /// A resumable append's segment number, found when it began (the data file's lock,
    /// held until the commit, keeps any other append from taking it); a three-step part's
    /// number comes with its request.
    segment_number: Option<u32>,
}

/// The folder of a session whose part is being appended; dropped armed (the part was cut
/// short or refused), it cuts off what the part left in the data file, off the async
/// threads. Should that not happen (a crash), the next append or the complete does it.
pub(super) struct AppendGuard(Option<PathBuf>);

impl AppendGuard {
    /// Armed for the session in `dir`.
    pub(super) fn new(dir: PathBuf) -> Self {
        Self(Some(dir))
    }
    /// The append was recorded: nothing to cut.
    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }
}

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
pub(super) fn tidy_data_file(dir: &Path) {
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
pub(super) fn cut_data_file(dir: &Path, data: &std::fs::File) {
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
    /// A part received into a file of its own (`STORAGE_BACKEND=s3` spools a part to the
    /// local disk, then sends it to the bucket whole).
    pub(super) fn spooled(sink: Sink, staging: Option<staging::StagingCharge>) -> Self {
        Self {
            sink,
            append_at: None,
            staging,
            segment_number: None,
        }
    }

    /// The spool of a part made by [`PartUpload::spooled`].
    pub(super) fn into_sink(self) -> Sink {
        self.sink
    }

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
