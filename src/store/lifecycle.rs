//! Upload sessions begun and ended: one per file at init (quota reserved), read back,
//! listed and aborted (API.md §3.1, §3.2). Their on-disk records are `sessions.rs`.

use serde_json::{Map, Value};

use super::key::{FolderPath, UserId};
use super::sessions::{self, FileSpec, Session, SessionId, UploadMode};
use super::{blocking, FileStore, Missing, StoreError};

impl FileStore {
    /// Opens one session per file, reserving their declared sizes against the quota
    /// together (all or none).
    pub async fn create_sessions(
        &self,
        user: &UserId,
        mode: UploadMode,
        files: Vec<FileSpec>,
        folder: Option<FolderPath>,
        meta: Map<String, Value>,
    ) -> Result<Vec<Session>, StoreError> {
        if files.iter().any(|f| f.size > self.max_file) {
            return Err(StoreError::TooLarge);
        }
        let infos = Session::for_files(user, mode, files, folder, meta, self.session_ttl);
        let this = self.clone();
        let user = user.as_str().to_owned();
        let out = infos.clone();
        blocking(move || {
            this.quotas.with_ledger(&user, |ledger| {
                let requested: u64 = infos.iter().map(|i| i.file.size).sum();
                let used = ledger.used + ledger.reserved.values().sum::<u64>();
                if used.saturating_add(requested) > this.quotas.limit {
                    return Err(StoreError::Quota {
                        used,
                        quota: this.quotas.limit,
                        requested,
                    });
                }
                for info in &infos {
                    let dir = this.dirs.live(&info.upload_id);
                    std::fs::create_dir(&dir)?;
                    if let Err(e) = sessions::write_info(&dir, info) {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e.into());
                    }
                    ledger
                        .reserved
                        .insert(info.upload_id.to_string(), info.file.size);
                }
                Ok(())
            })
        })
        .await
        .inspect_err(|_| {
            // A failure part-way leaves no session behind.
            for info in &out {
                let _ = std::fs::remove_dir_all(self.dirs.live(&info.upload_id));
            }
        })?;
        Ok(out)
    }

    /// A live session (not expired), for its owner.
    pub async fn session(&self, id: &SessionId) -> Result<Session, StoreError> {
        let dir = self.dirs.live(id);
        let info = blocking(move || sessions::read_info(&dir)).await?;
        if info.expired() {
            return Err(StoreError::NotFound(Missing::Session));
        }
        Ok(info)
    }

    /// A session's parts and their sizes.
    pub async fn session_parts(&self, id: &SessionId) -> Result<Vec<(u32, u64)>, StoreError> {
        let dir = self.dirs.live(id);
        blocking(move || sessions::list_parts(&dir)).await
    }

    /// Removes a session and frees its reservation.
    pub async fn abort(&self, info: &Session) -> Result<(), StoreError> {
        let id = info.upload_id;
        let this = self.clone();
        let user = info.user_id.as_str().to_owned();
        blocking(move || {
            let dir = this.dirs.live(&id);
            let doomed = this
                .dirs
                .parts
                .join(format!(".aborted-{id}-{}", uuid::Uuid::new_v4().simple()));
            match std::fs::rename(&dir, &doomed) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(Missing::Session))
                }
                Err(e) => return Err(e.into()),
            }
            let _ = std::fs::remove_dir_all(&doomed);
            this.quotas.with_ledger(&user, |l| {
                l.reserved.remove(&id.to_string());
                Ok(())
            })
        })
        .await
    }
}
