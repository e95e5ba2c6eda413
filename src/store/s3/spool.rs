//! A spool file sent to the bucket while its sink still writes it (a one-request upload:
//! the client's body goes to the local disk as it arrives, and on to the bucket from
//! there as soon as whole parts of it are on disk).
//!
//! The sender waits for the writer holding nothing but the file: a part's memory (from
//! the instance's [`super::Budget`]) is taken only once the part is on disk, then read,
//! hashed and sent at once. A client that stalls therefore holds no part buffer, as when
//! the file was sent only once whole, and a fast one has its upload finished moments after
//! its last byte instead of one whole send later.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::MultipartStore as _;
use object_store::{ObjectStoreExt as _, PutPayload};
use tokio::sync::watch;

use super::{AbortOnDrop, InFlight, S3Bytes, S3Error, Written, MAX_IN_FLIGHT, MIN_PART};
use crate::store::sink::{Hashes, Spooled};

/// Bytes read per `pread` (and per chunk of a part's payload).
const READ: usize = 1 << 20;

/// The size of every part but the last: what `aws s3 cp` sends. Fewer, larger parts than
/// [`super::PART`] cost the server less per byte (Garage's CPU per GiB fell to `aws s3 cp`'s);
/// the memory is the same, as a part is only held while it is read and sent.
const SPOOL_PART: usize = 8 << 20;
const _: () = assert!(SPOOL_PART >= MIN_PART);

impl S3Bytes {
    /// Stores spool file `file` under `key` as its sink writes it (`progress`: the sink's
    /// [`crate::store::sink::Sink::watch`]), hashing on the way. A part of `SPOOL_PART`
    /// (8 MiB) goes as soon as the file holds it; once the file is whole, what is left goes
    /// as the last part, or the whole file as one PUT when it is under two parts and no
    /// part went yet. Up to `MAX_IN_FLIGHT` parts are sent beside each other, each holding
    /// its bytes of the budget until it is sent.
    ///
    /// Past `limit` bytes: `TooLarge`. The sink stopping before the file is whole (the
    /// channel closed while growing): `Body`. On any error, and when the future is dropped,
    /// the multipart upload is aborted: the key shows the new object only once whole.
    pub async fn put_spool(
        &self,
        key: &str,
        file: &FsPath,
        progress: watch::Receiver<Spooled>,
        limit: u64,
    ) -> Result<Written, S3Error> {
        let (size, hashes) = self
            .put_spool_from(key, file, progress, limit, Hashes::default())
            .await?;
        let (sha256, crc32) = hashes.finish();
        Ok(Written {
            size,
            sha256,
            crc32,
        })
    }

    /// [`S3Bytes::put_spool`], hashing on from `hashes` (the bytes before the file's, as a
    /// resumable upload's chain of segments has them): the bytes stored and the hashes
    /// carried on to their end, unfinished.
    pub async fn put_spool_from(
        &self,
        key: &str,
        file: &FsPath,
        mut progress: watch::Receiver<Spooled>,
        limit: u64,
        mut hashes: Hashes,
    ) -> Result<(u64, Hashes), S3Error> {
        let path = self.path(key)?;
        let file = Arc::new(
            tokio::fs::File::open(file)
                .await
                .map_err(S3Error::Body)?
                .into_std()
                .await,
        );
        let part = SPOOL_PART as u64;
        let mut offset = 0u64;
        let mut upload: Option<AbortOnDrop> = None;
        let mut parts = Vec::new();
        let mut flight = InFlight::default();
        let whole = loop {
            let state = *progress
                .wait_for(|s| match *s {
                    Spooled::Growing(n) => n >= offset + part,
                    Spooled::Whole(_) => true,
                })
                .await
                .map_err(|_| {
                    S3Error::Body(std::io::Error::other(
                        "the body stopped before it was whole",
                    ))
                })?;
            let on_disk = match state {
                Spooled::Growing(n) | Spooled::Whole(n) => n,
            };
            if on_disk > limit {
                return Err(S3Error::TooLarge);
            }
            let done = matches!(state, Spooled::Whole(_));
            if on_disk < offset + part || (done && upload.is_none() && on_disk < 2 * part) {
                // Whole, with less than a part left (the last part), or small enough for
                // one PUT.
                break on_disk;
            }
            let (guard, idx) = self
                .begun_upload(&mut upload, &path, parts.len() + flight.len())
                .await?;
            if flight.len() >= MAX_IN_FLIGHT {
                if let Some(done) = flight.next().await {
                    parts.push(done?);
                }
            }
            let memory = self.budget.reserve_bytes(SPOOL_PART).await;
            let payload;
            (payload, hashes) = read_hashed_at(file.clone(), offset, SPOOL_PART, hashes).await?;
            offset += part;
            let (store, path, id) = (self.store.clone(), path.clone(), guard.id.clone());
            flight.0.push_back(tokio::spawn(async move {
                let _memory = memory;
                store.put_part(&path, &id, idx, payload).await
            }));
        };
        let rest = usize::try_from(whole - offset).map_err(|_| S3Error::TooLarge)?;
        let memory = self.budget.reserve_bytes(rest).await;
        let payload;
        (payload, hashes) = read_hashed_at(file, offset, rest, hashes).await?;
        match upload {
            None => {
                self.store.put(&path, payload).await?;
            }
            Some(mut guard) => {
                while let Some(done) = flight.next().await {
                    parts.push(done?);
                }
                if rest > 0 {
                    let idx = parts.len();
                    parts.push(self.store.put_part(&path, &guard.id, idx, payload).await?);
                }
                self.store
                    .complete_multipart(&path, &guard.id, parts)
                    .await?;
                guard.armed = false;
            }
        }
        drop(memory);
        Ok((whole, hashes))
    }
}

/// `len` bytes of `file` from `offset`, hashed on from `hashes`, read on a blocking task.
async fn read_hashed_at(
    file: Arc<File>,
    offset: u64,
    len: usize,
    hashes: Hashes,
) -> Result<(PutPayload, Hashes), S3Error> {
    let (chunks, hashes) =
        tokio::task::spawn_blocking(move || read_range_hashed(&file, offset, len, hashes))
            .await
            .map_err(|e| S3Error::Body(std::io::Error::other(e)))?
            .map_err(S3Error::Body)?;
    Ok((chunks.into_iter().collect(), hashes))
}

/// `len` bytes of `file` from `offset` in pieces of [`READ`] bytes, hashed on from
/// `hashes`; fewer bytes than that is an error (a spool file holds what its sink said).
pub(super) fn read_range_hashed(
    file: &File,
    offset: u64,
    len: usize,
    mut hashes: Hashes,
) -> std::io::Result<(Vec<Bytes>, Hashes)> {
    let mut chunks = Vec::with_capacity(len.div_ceil(READ));
    let mut at = offset;
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; left.min(READ)];
        file.read_exact_at(&mut buf, at)?;
        hashes.update(&buf);
        at += buf.len() as u64;
        left -= buf.len();
        chunks.push(Bytes::from(buf));
    }
    Ok((chunks, hashes))
}
