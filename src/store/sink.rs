//! Streaming bytes from async code to a file written by short blocking tasks (`std::fs`
//! writes in batches beat `tokio::fs` here), hashing on the way when asked, with a byte
//! limit, and a guard that removes the file unless the caller keeps it. A sink may also
//! append to an existing file, carrying on the hashes of the bytes before it.

use std::fs::File;
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use bytes::Bytes;
use sha2::digest::common::hazmat::SerializableState as _;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::StoreError;

/// What a finished write produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes written.
    pub size: u64,
    /// Hex SHA-256, when hashing was asked for.
    pub sha256: Option<String>,
    /// CRC-32, when hashing was asked for.
    pub crc32: Option<u32>,
}

/// Removes a path on drop unless [`TempGuard::keep`] was called: no half-written file
/// survives an error or a client that went away.
#[derive(Debug)]
pub struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl TempGuard {
    /// Guards `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }
    /// The guarded path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Stops guarding: the file stays.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Hashes for a stream of bytes: SHA-256 and CRC-32 in one pass.
#[derive(Default, Clone)]
pub struct Hashes {
    sha: Sha256,
    crc: crc32fast::Hasher,
}

impl Hashes {
    /// Feeds bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.sha.update(b);
        self.crc.update(b);
    }
    /// Hex SHA-256 and CRC-32.
    pub fn finish(self) -> (String, u32) {
        (hex::encode(self.sha.finalize()), self.crc.finalize())
    }
    /// The state so far, to be saved and carried on later with [`Hashes::resume`]: the
    /// SHA-256 state as `sha2` serialises it (hex; stable across `sha2` 0.11.x), and the
    /// CRC-32 of the bytes so far.
    pub fn state(&self) -> (String, u32) {
        (
            hex::encode(self.sha.serialize()),
            self.crc.clone().finalize(),
        )
    }
    /// Hashes that carry on from a saved [`Hashes::state`]; `None` if it does not parse.
    pub fn resume(sha_state: &str, crc32: u32) -> Option<Self> {
        let bytes = hex::decode(sha_state).ok()?;
        let sha = Sha256::deserialize(bytes.as_slice().try_into().ok()?).ok()?;
        // CRC-32 resumes from its value: the hasher keeps nothing else between updates.
        Some(Self {
            sha,
            crc: crc32fast::Hasher::new_with_initial(crc32),
        })
    }
}

/// A file being written from async code. Chunks are gathered up to `FLUSH_AT` (1 MiB) and
/// then written (and hashed) by one short blocking task, so memory stays bounded and no
/// thread is held while the client is slow: thousands of concurrent uploads cannot starve
/// the blocking pool that every other file operation needs. One such task runs while the
/// next batch is gathered (and, for JSON parts, decoded): receiving and writing overlap.
pub struct Sink {
    /// The file and hashes, when no write is in flight.
    state: Option<Open>,
    /// The write in flight, which gives them back.
    in_flight: Option<tokio::task::JoinHandle<Result<Open, StoreError>>>,
    pending: Vec<Bytes>,
    pending_len: usize,
    limit: u64,
    sent: u64,
    /// The file a created sink writes, removed unless kept; `None` for an appending sink
    /// (the file is not its own).
    guard: Option<TempGuard>,
    /// Whether the file must outlive a crash: fsynced at the end, its write-back started
    /// batch by batch. A spool only passes bytes on, so it is neither.
    durable: bool,
    /// Told the bytes on disk after each batch, for a reader following the file.
    progress: Option<Arc<watch::Sender<Spooled>>>,
}

/// How far a spool file is: growing, with this many bytes on disk (readable through
/// another handle), or whole. A sink that fails or is dropped closes the channel while
/// `Growing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spooled {
    /// Bytes on disk so far; more may come.
    Growing(u64),
    /// All the bytes are on disk.
    Whole(u64),
}

/// The file being written and the hashes of what it holds (when asked for).
type Open = (File, Option<Hashes>);

/// Bytes gathered before a write.
const FLUSH_AT: usize = 1 << 20;

impl Sink {
    /// Creates `path` (which must not exist). Writing more than `limit` bytes fails with
    /// `TooLarge`.
    pub async fn create(path: PathBuf, hash: bool, limit: u64) -> Result<Self, StoreError> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?
            .into_std()
            .await;
        Ok(Self {
            state: Some((file, hash.then(Hashes::default))),
            in_flight: None,
            pending: Vec::new(),
            pending_len: 0,
            limit,
            sent: 0,
            guard: Some(TempGuard::new(path)),
            durable: true,
            progress: None,
        })
    }

    /// Creates spool file `path` (which must not exist): bytes on their way elsewhere,
    /// neither hashed (the sender hashes what it sends) nor fsynced. Writing more than
    /// `limit` bytes fails with `TooLarge`.
    pub async fn spool(path: PathBuf, limit: u64) -> Result<Self, StoreError> {
        let mut sink = Self::create(path, false, limit).await?;
        sink.durable = false;
        Ok(sink)
    }

    /// Follows the bytes on disk, batch by batch; [`Sink::close`] sends
    /// [`Spooled::Whole`].
    pub fn watch(&mut self) -> watch::Receiver<Spooled> {
        let (tx, rx) = watch::channel(Spooled::Growing(0));
        self.progress = Some(Arc::new(tx));
        rx
    }

    /// A sink that writes at `file`'s current position (the caller has placed it), carrying
    /// on `hashes`. Nothing is removed on drop: bytes past what the caller records as
    /// committed are the caller's to ignore or cut.
    pub fn append(file: File, hashes: Hashes, limit: u64) -> Self {
        Self {
            state: Some((file, Some(hashes))),
            in_flight: None,
            pending: Vec::new(),
            pending_len: 0,
            limit,
            sent: 0,
            guard: None,
            durable: true,
            progress: None,
        }
    }

    /// The bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.sent
    }

    /// Raises or lowers the limit.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Takes bytes for writing.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.sent += chunk.len() as u64;
        if self.sent > self.limit {
            return Err(StoreError::TooLarge);
        }
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= FLUSH_AT {
            // Waits for the previous batch only: this one is written while the next is
            // gathered.
            let (file, hashes) = self.take_file().await?;
            let chunks = std::mem::take(&mut self.pending);
            self.pending_len = 0;
            let (hint, progress, end) = (self.durable, self.progress.clone(), self.sent);
            self.in_flight = Some(tokio::task::spawn_blocking(move || {
                let open = write_batch(file, hashes, &chunks, Ending::Batch { hint })?;
                if let Some(p) = progress {
                    p.send_replace(Spooled::Growing(end));
                }
                Ok(open)
            }));
        }
        Ok(())
    }

    /// The file and hashes, once the write in flight (if any) is done.
    async fn take_file(&mut self) -> Result<Open, StoreError> {
        if let Some(task) = self.in_flight.take() {
            return task
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        }
        self.state
            .take()
            .ok_or_else(|| StoreError::Io(std::io::Error::other("an earlier write failed")))
    }

    /// Writes what is left, then fsyncs when the file is durable.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let (file, hashes) = self.take_file().await?;
        let chunks = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let ending = if self.durable {
            Ending::Sync
        } else {
            Ending::Batch { hint: false }
        };
        let (file, hashes) =
            tokio::task::spawn_blocking(move || write_batch(file, hashes, &chunks, ending))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        self.state = Some((file, hashes));
        Ok(())
    }

    /// Writes what is left and fsyncs; the file stays guarded until the caller keeps it.
    /// For a sink made by [`Sink::create`] (an appending one finishes with
    /// [`Sink::finish_open`]).
    pub async fn finish(mut self) -> Result<(Written, TempGuard), StoreError> {
        let guard = self.guard.take().ok_or_else(|| {
            StoreError::Io(std::io::Error::other(
                "an appending sink has no file of its own",
            ))
        })?;
        self.flush().await?;
        let (sha256, crc32) = match self.state.take().and_then(|(_, h)| h).map(Hashes::finish) {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let written = Written {
            size: self.sent,
            sha256,
            crc32,
        };
        Ok((written, guard))
    }

    /// Writes what is left of a spool and tells its watchers it is whole; the file stays
    /// guarded until the caller drops the guard.
    pub async fn close(mut self) -> Result<(u64, TempGuard), StoreError> {
        let guard = self.guard.take().ok_or_else(|| {
            StoreError::Io(std::io::Error::other(
                "an appending sink has no file of its own",
            ))
        })?;
        self.flush().await?;
        if let Some(p) = &self.progress {
            p.send_replace(Spooled::Whole(self.sent));
        }
        Ok((self.sent, guard))
    }

    /// Writes what is left and fsyncs, then gives back the bytes written, the hashes (not
    /// finished: they may carry on) and the file, still open (and so still locked, when
    /// the caller locked it).
    pub async fn finish_open(mut self) -> Result<(u64, Hashes, File), StoreError> {
        self.flush().await?;
        let (file, hashes) = self
            .state
            .take()
            .ok_or_else(|| StoreError::Io(std::io::Error::other("an earlier write failed")))?;
        Ok((self.sent, hashes.unwrap_or_default(), file))
    }
}

/// What follows a batch's write.
#[derive(Clone, Copy)]
enum Ending {
    /// More batches come; `hint`: start writing this one back now.
    Batch { hint: bool },
    /// The last batch of a durable file: fsync.
    Sync,
}

/// Hashes and writes `chunks`, then what `ending` asks (a blocking task's work).
fn write_batch(
    mut file: File,
    mut hashes: Option<Hashes>,
    chunks: &[Bytes],
    ending: Ending,
) -> Result<Open, StoreError> {
    let sync = matches!(ending, Ending::Sync);
    // Best effort: a failed lseek only skips the write-back hint below.
    let start = matches!(ending, Ending::Batch { hint: true })
        .then(|| file.stream_position().ok())
        .flatten();
    for c in chunks {
        if let Some(h) = hashes.as_mut() {
            h.update(c);
        }
        file.write_all(c)?;
    }
    if sync {
        file.sync_all()?;
    } else if let Some(start) = start {
        // Start writing these bytes back now, so the fsync that ends the part or upload
        // waits for the last batch only instead of all of them (6 ms of every 8 MiB JSON
        // part, with the CPU idle). DONTNEED queues the range's write-back without waiting
        // and drops no dirty page; as side effects the kernel drains its per-CPU LRU
        // lists (cheap on few cores) and moves these pages to the inactive list, so under
        // memory pressure uploads leave the page cache before the files being read.
        // `sync_file_range(WRITE)` would do only the first, but it has no safe binding
        // (rustix lacks it) and the crate forbids unsafe code.
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        let _ = rustix::fs::fadvise(
            &file,
            start,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
    Ok((file, hashes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hashes_carry_on_from_a_saved_state() {
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 13 % 251) as u8).collect();
        let whole = {
            let mut h = Hashes::default();
            h.update(&data);
            h.finish()
        };
        // Cut anywhere, even inside a SHA-256 block: the saved state carries on.
        for cut in [0, 1, 63, 64, 65, 4096, 150_000, data.len()] {
            let mut h = Hashes::default();
            h.update(&data[..cut]);
            let (sha, crc) = h.state();
            let mut resumed = Hashes::resume(&sha, crc).unwrap();
            resumed.update(&data[cut..]);
            assert_eq!(resumed.finish(), whole, "cut at {cut}");
        }
        assert!(Hashes::resume("zz", 0).is_none());
        assert!(Hashes::resume("00", 0).is_none());
    }
}
