//! Housekeeping and crash recovery: expired sessions and dead uploads swept, claims a
//! crash cut short finished or given back, the quota ledgers reconciled.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::lock::claim_is_dead;
use super::sessions::{self, SessionId};
use super::{blocking, FileStore, StoreError};

impl FileStore {
    /// Removes expired sessions, recovers completes and uploads cut short by a crash, and
    /// (when `reconcile`) recomputes every ledger from the disk.
    pub async fn sweep(&self, reconcile: bool) -> Result<(), StoreError> {
        let this = self.clone();
        blocking(move || this.sweep_blocking(reconcile)).await
    }

    pub(super) fn sweep_blocking(&self, reconcile: bool) -> Result<(), StoreError> {
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
            } else if name == ".finished" {
                self.sweep_finished();
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
                            self.swept
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.quotas.release(
                                info.user_id.as_str(),
                                &id.to_string(),
                                info.file.size,
                            );
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
    pub(super) fn drop_dead_upload(&self, name: &str, dir: &Path) {
        remove_unpaired_sidecar(dir, &self.storage);
        if let Ok(owner) = std::fs::read_to_string(dir.join("owner")) {
            let reservation = format!("upload-{}", name.trim_start_matches(".upload-"));
            // What it reserved is not known here; the reconcile after a sweep recounts it.
            self.quotas.release(owner.trim(), &reservation, 0);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A complete interrupted by a crash: finished if its file is in place, else undone and
    /// the session given back.
    pub(super) fn recover_claim(&self, id: &SessionId, claimed: &Path) {
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
                self.record_recovered(claimed, &p.data);
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

impl FileStore {
    /// A resumable upload whose complete finished before a crash: its finished record, so
    /// that `HEAD` says so (from the session in the claimed folder and the published file).
    fn record_recovered(&self, claimed: &Path, data: &Path) {
        let Ok(info) = sessions::read_info(claimed) else {
            return;
        };
        if info.resumable.is_none() {
            return;
        }
        let (Ok(rel), Ok(md)) = (data.strip_prefix(&self.root), std::fs::metadata(data)) else {
            return;
        };
        if let Some(key) = rel.to_str() {
            self.record_finished(&info, key, md.len());
        }
    }
}

/// The data file a work folder's `publish.json` names, when it is in place.
pub(super) fn published_data(work_dir: &Path) -> Option<PathBuf> {
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
pub(super) fn remove_unpaired_sidecar(work_dir: &Path, storage: &Path) {
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

pub(super) fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|e| e > age)
}

pub(super) fn remove_older_than(dir: &Path, age: Duration) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if older_than(&e.path(), age) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
