//! Per-user quota: a small ledger file per user under `UPLOAD_ROOT/.quota/`, changed only
//! under an exclusive `flock`, so every instance sharing the root sees the same numbers and
//! concurrent uploads can never together pass the quota. The ledger holds the bytes of stored
//! files and the bytes reserved by uploads in flight; it is computed by walking the user's
//! directory when absent (files of the old service included) and again at start.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;

/// The ledger of one user.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ledger {
    /// The user the ledger is for.
    pub user_id: String,
    /// Bytes of the user's stored files.
    pub used: u64,
    /// Bytes held by uploads in flight, by reservation id (a session id or an upload id).
    pub reserved: BTreeMap<String, u64>,
}

impl Ledger {
    /// Bytes reserved, leaving out one reservation.
    pub fn reserved_except(&self, id: &str) -> u64 {
        self.reserved
            .iter()
            .filter(|(k, _)| k.as_str() != id)
            .map(|(_, v)| *v)
            .sum()
    }
}

/// The quota ledgers of all users.
#[derive(Debug, Clone)]
pub struct Quotas {
    dir: PathBuf,
    storage: PathBuf,
    /// The quota in bytes.
    pub limit: u64,
}

impl Quotas {
    /// Ledgers in `dir`, counting files under `storage`.
    pub fn new(dir: PathBuf, storage: PathBuf, limit: u64) -> Self {
        Self {
            dir,
            storage,
            limit,
        }
    }

    fn file_stem(user: &str) -> String {
        // Hashed: a 255-byte user id plus a suffix would not fit a file name.
        hex::encode(&Sha256::digest(user.as_bytes())[..16])
    }

    /// Runs `f` on the user's ledger under the user's exclusive lock, then saves it.
    /// Blocking: call from `spawn_blocking`.
    pub fn with_ledger<R>(
        &self,
        user: &str,
        f: impl FnOnce(&mut Ledger) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        std::fs::create_dir_all(&self.dir)?;
        let stem = Self::file_stem(user);
        let lock = lock_file(&self.dir.join(format!("{stem}.lock")))?;
        let path = self.dir.join(format!("{stem}.json"));
        let mut ledger = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Ledger>(&bytes) {
                Ok(l) if l.user_id == user => l,
                _ => self.fresh(user)?,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.fresh(user)?,
            Err(e) => return Err(e.into()),
        };
        let before = ledger.clone();
        let out = f(&mut ledger)?;
        if ledger != before || !path.exists() {
            let tmp = self
                .dir
                .join(format!(".{stem}.{}.tmp", uuid::Uuid::new_v4().simple()));
            let written = (|| -> std::io::Result<()> {
                let mut file = File::create(&tmp)?;
                file.write_all(&serde_json::to_vec(&ledger)?)?;
                file.sync_data()?;
                std::fs::rename(&tmp, &path)
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        }
        drop(lock);
        Ok(out)
    }

    /// Drops reservation `id` (about `bytes`) from `user`'s ledger. A failure is logged with
    /// the user and the bytes, never dropped: those bytes stay counted against the quota
    /// until the next reconcile (at start, and hourly) recounts the ledger.
    /// Blocking: call from `spawn_blocking`.
    pub fn release(&self, user: &str, id: &str, bytes: u64) {
        let released = self.with_ledger(user, |l| {
            l.reserved.remove(id);
            Ok(())
        });
        if let Err(e) = released {
            tracing::error!(user, reservation = id, bytes, error = %e, "cannot release a quota reservation; the next reconcile will");
        }
    }

    fn fresh(&self, user: &str) -> Result<Ledger, StoreError> {
        Ok(Ledger {
            user_id: user.to_owned(),
            used: dir_usage(&self.storage.join(user))?,
            reserved: BTreeMap::new(),
        })
    }

    /// Recomputes `used` from the disk and drops reservations `alive` says are gone, for
    /// every user with a ledger; first removes the temporary ledgers killed writers left.
    /// Run at start and by the sweep.
    pub fn reconcile(&self, alive: impl Fn(&str) -> bool) -> Result<(), StoreError> {
        self.remove_stale_temps();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(ledger) = serde_json::from_slice::<Ledger>(&bytes) else {
                continue;
            };
            let storage = self.storage.join(&ledger.user_id);
            self.with_ledger(&ledger.user_id, |l| {
                l.used = dir_usage(&storage)?;
                l.reserved.retain(|id, _| alive(id));
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Removes temporary ledgers (`.{stem}.{uuid}.tmp`) left by a process killed while
    /// saving a ledger. A writer makes and renames its temporary file only while it holds
    /// the user's `{stem}.lock`, so one whose lock is free belongs to nobody; it is removed
    /// under that lock, and one whose lock is held (a writer at work, here or in another
    /// instance sharing the root) is left alone.
    pub fn remove_stale_temps(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_prefix('.'))
                .and_then(|n| n.strip_suffix(".tmp"))
                .and_then(|n| n.split_once('.'))
                .map(|(stem, _)| stem)
                .filter(|stem| stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
            else {
                continue;
            };
            let Ok(lock) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.dir.join(format!("{stem}.lock")))
            else {
                continue;
            };
            if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_ok()
            {
                tracing::info!(file = %entry.path().display(), "removed a temporary ledger left by a crash");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn lock_file(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| StoreError::Io(e.into()))?;
    Ok(file)
}

/// A hidden name for a file while it is being deleted (short: stored names can be 249
/// bytes long already).
pub fn deleting_name() -> String {
    format!(".{}{DELETING}", uuid::Uuid::new_v4().simple())
}

const DELETING: &str = ".deleting";

/// Bytes of the stored files under `dir` (a user's folder): regular files, not sidecars,
/// not dot-files (temporary names), symlinks not followed. Finishes what a crash cut short:
/// hidden `*.deleting` files of a delete are removed, and so are sidecars whose data is
/// gone.
///
/// Call only under the user's ledger lock ([`Quotas::with_ledger`]), which is why this is
/// private: a publish renames the sidecar and then the data into place under that lock
/// (here or in another instance sharing the root), and a delete hides the data and
/// unlinks the sidecar under it, so a sidecar without data seen here is no publish half
/// done: it is what a process killed between those steps left, and goes at once.
fn dir_usage(dir: &Path) -> Result<u64, StoreError> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                if name.ends_with(DELETING) {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            // A sidecar is a regular file named `{data}.meta`; a folder so named (the old
            // sanitiser let one through) is walked like any other, so its files count.
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if !ft.is_file() {
                continue;
            } else if let Some(data) = name.strip_suffix(".meta") {
                let gone = matches!(std::fs::symlink_metadata(d.join(data)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound);
                if gone {
                    tracing::info!(file = %entry.path().display(), "removed a sidecar a crash left without its data");
                    let _ = std::fs::remove_file(entry.path());
                }
            } else {
                match entry.metadata() {
                    Ok(md) => total += md.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reconcile_removes_temporary_ledgers_no_writer_holds() {
        let root = std::env::temp_dir().join(format!("quota-{}", uuid::Uuid::new_v4().simple()));
        let dir = root.join(".quota");
        std::fs::create_dir_all(&dir).unwrap();
        let quotas = Quotas::new(dir.clone(), root.join("storage"), 1 << 30);
        quotas
            .with_ledger("a", |l| {
                l.used = 1;
                Ok(())
            })
            .unwrap();
        let tmp = |user: &str| {
            dir.join(format!(
                ".{}.{}.tmp",
                Quotas::file_stem(user),
                uuid::Uuid::new_v4().simple()
            ))
        };
        // Left by a writer killed mid-save.
        let stale = tmp("a");
        std::fs::write(&stale, b"{").unwrap();
        // Being written right now: its writer holds the user's lock.
        let busy = tmp("b");
        let held = lock_file(&dir.join(format!("{}.lock", Quotas::file_stem("b")))).unwrap();
        std::fs::write(&busy, b"{").unwrap();
        let other = dir.join(".not-a-ledger.tmp");
        std::fs::write(&other, b"x").unwrap();

        quotas.reconcile(|_| true).unwrap();
        assert!(!stale.exists(), "a stale temporary ledger is removed");
        assert!(busy.exists(), "a ledger being written is left alone");
        assert!(other.exists(), "only ledger temporaries are touched");
        drop(held);
        quotas.reconcile(|_| true).unwrap();
        assert!(!busy.exists(), "removed once its writer is gone");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn usage_counts_data_and_finishes_cut_short_deletes() {
        let dir = std::env::temp_dir().join(format!("usage-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("1a2b3c4d_x.txt"), b"12345").unwrap();
        std::fs::write(dir.join("1a2b3c4d_x.txt.meta"), b"{}").unwrap();
        std::fs::write(dir.join("sub/legacy.png"), b"123").unwrap();
        std::fs::write(dir.join(deleting_name()), b"gone").unwrap();
        let orphan = dir.join("sub/00000000_gone.bin.meta");
        std::fs::write(&orphan, b"{}").unwrap();
        // Just written: under the ledger lock no publish is between its renames, so a lone
        // sidecar is a crash's, however young.
        let young_orphan = dir.join("00000000_new.bin.meta");
        std::fs::write(&young_orphan, b"{}").unwrap();

        assert_eq!(dir_usage(&dir).unwrap(), 8);
        assert!(!orphan.exists(), "a lone sidecar is removed");
        assert!(
            !young_orphan.exists(),
            "a young lone sidecar is removed too"
        );
        assert!(dir.join("1a2b3c4d_x.txt.meta").exists());
        let hidden: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(DELETING))
            .collect();
        assert!(hidden.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
