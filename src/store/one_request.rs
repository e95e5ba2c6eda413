//! One-request uploads (API.md §3.3): files stream into a work folder while a quota
//! reservation grows ahead of them, then are published; dropped, nothing is left.

use std::path::PathBuf;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::key::{ClientFileName, FolderPath, UserId};
use super::lock::lock_dir;
use super::publish::check_sha;
use super::sessions::SessionId;
use super::sink::{Sink, TempGuard, Written};
use super::{blocking, FileStore, StoreError, Stored};

/// Reserve quota in steps of this much, so the ledger is not touched for every chunk.
const RESERVE_STEP: u64 = 8 << 20;

impl FileStore {
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
            dir: DirGuard(dir),
            reserved: 0,
            released: false,
        })
    }
}

/// Removes a work folder on drop unless disarmed.
#[derive(Debug)]
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
        let bytes = self.reserved;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || quotas.release(&user, &id, bytes));
            }
            Err(_) => tracing::error!(
                user,
                reservation = id,
                bytes,
                "no runtime to release a quota reservation; the next reconcile will"
            ),
        }
    }
}

impl DirectUpload {
    /// Starts a file of this upload.
    pub async fn begin_file(&self) -> Result<Sink, StoreError> {
        let dir = self.dir.0.clone();
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
    pub(super) async fn reserve(&mut self, need: u64, want: u64) -> Result<(), StoreError> {
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
        original_name: ClientFileName,
        folder: Option<FolderPath>,
        declared_mime: Option<String>,
        expected_sha: Option<String>,
        extra: Map<String, Value>,
    ) -> Result<Stored, StoreError> {
        let (written, guard) = file;
        check_sha(
            expected_sha.as_deref(),
            written.sha256.as_deref().unwrap_or(""),
        )?;
        let store = self.store.clone();
        let user = self.user.clone();
        let dir = self.dir.0.clone();
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
        let bytes = self.reserved;
        let released = tokio::task::spawn_blocking(move || quotas.release(&user, &id, bytes)).await;
        if let Err(e) = released {
            tracing::error!(user = %self.user, reservation = self.reservation, bytes, error = %e, "cannot release a quota reservation; the next reconcile will");
        }
        self.reserved = 0;
        self.released = true;
    }
}
