//! Streaming bytes from async code to a file written by a blocking thread (faster than
//! `tokio::fs` here), hashing on the way when asked, with a byte limit, and a guard that
//! removes the file unless the caller keeps it.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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
    path: Option<PathBuf>,
}

impl TempGuard {
    /// Guards `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path: Some(path) }
    }
    /// The guarded path.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }
    /// Stops guarding: the file stays.
    pub fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Hashes for a stream of bytes: SHA-256 and CRC-32 in one pass.
#[derive(Default)]
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
}

/// A file being written from async code.
pub struct Sink {
    tx: Option<mpsc::Sender<Bytes>>,
    handle: JoinHandle<Result<Written, StoreError>>,
    limit: u64,
    sent: u64,
    guard: TempGuard,
}

impl Sink {
    /// Creates `path` (which must not exist) and starts its writer. Writing more than `limit`
    /// bytes fails with `TooLarge`.
    pub async fn create(path: PathBuf, hash: bool, limit: u64) -> Result<Self, StoreError> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?
            .into_std()
            .await;
        let guard = TempGuard::new(path);
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let handle = tokio::task::spawn_blocking(move || {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let mut hashes = hash.then(Hashes::default);
            let mut size = 0u64;
            while let Some(chunk) = rx.blocking_recv() {
                if let Some(h) = hashes.as_mut() {
                    h.update(&chunk);
                }
                out.write_all(&chunk)?;
                size += chunk.len() as u64;
            }
            let file: File = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let (sha256, crc32) = match hashes.map(Hashes::finish) {
                Some((s, c)) => (Some(s), Some(c)),
                None => (None, None),
            };
            Ok(Written {
                size,
                sha256,
                crc32,
            })
        });
        Ok(Self {
            tx: Some(tx),
            handle,
            limit,
            sent: 0,
            guard,
        })
    }

    /// The bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.sent
    }

    /// Raises or lowers the limit.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Queues bytes for writing.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.sent += chunk.len() as u64;
        if self.sent > self.limit {
            return Err(StoreError::TooLarge);
        }
        let Some(tx) = &self.tx else {
            return Err(StoreError::Io(std::io::Error::other("sink closed")));
        };
        if tx.send(chunk).await.is_err() {
            // The writer stopped: its error says why.
            self.tx = None;
            return Err(self.fail().await);
        }
        Ok(())
    }

    async fn fail(&mut self) -> StoreError {
        match (&mut self.handle).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => StoreError::Io(std::io::Error::other("writer stopped early")),
            Err(e) => StoreError::Io(std::io::Error::other(e.to_string())),
        }
    }

    /// Flushes and fsyncs; the file stays guarded until the caller keeps it.
    pub async fn finish(mut self) -> Result<(Written, TempGuard), StoreError> {
        self.tx = None;
        let written = match (&mut self.handle).await {
            Ok(r) => r?,
            Err(e) => return Err(StoreError::Io(std::io::Error::other(e.to_string()))),
        };
        Ok((written, self.guard))
    }
}
