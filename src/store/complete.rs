//! Completing a session: claimed by renaming its folder (of two completes one wins), then
//! published, or given back with its parts when the checks fail (API.md §3.1).

use std::path::Path;

use super::lock::lock_dir;
use super::recover::published_data;
use super::sessions::{Session, SessionId};
use super::{blocking, not_found, CompleteRequest, FileStore, StoreError, Stored};

impl FileStore {
    /// Joins a session's parts into its file and publishes it (API.md §3.1 complete). The
    /// session is the one [`FileStore::session`] read (its `session.json` never changes);
    /// whether it is still live is settled here, by claiming its folder.
    pub async fn complete(
        &self,
        session: &Session,
        req: CompleteRequest,
    ) -> Result<Stored, StoreError> {
        if session.expired() {
            return Err(not_found());
        }
        let this = self.clone();
        let session = session.clone();
        blocking(move || this.complete_blocking(&session, req)).await
    }

    fn complete_blocking(
        &self,
        info: &Session,
        req: CompleteRequest,
    ) -> Result<Stored, StoreError> {
        let id = &info.upload_id;
        let live = self.dirs.live(id);
        let claimed = self.dirs.claimed(id);
        // The folder's lock marks the claim as alive for as long as this complete runs (the
        // kernel drops it if the process dies, whichever host or PID); it also waits for a
        // part being committed. Then, of two completes, only one renames the folder.
        let _lock = lock_dir(&live).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_found(),
            _ => e.into(),
        })?;
        match std::fs::rename(&live, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(e.into()),
        }
        let result = self.publish_claimed(&claimed, info, req);
        // A failure after the file went into place (the folder's fsync, the ledger's write)
        // must not give the session back: its parts may be that very file (a hard link),
        // and a second complete would store a second copy. The complete took effect.
        let in_place = result.is_err() && published_data(&claimed).is_some();
        if in_place {
            tracing::error!(session = %id, "complete failed after its file was in place: the session ends");
        }
        if info.resumable.is_some() {
            if let Ok(stored) = &result {
                self.record_finished(info, &stored.key.to_string(), stored.meta.size.unwrap_or(0));
            }
        }
        if result.is_ok() || in_place {
            self.end_claim(id, &claimed);
        } else {
            // Keep the parts so the client can fix them and complete again.
            let _ = std::fs::remove_file(claimed.join("publish.json"));
            if let Err(e) = std::fs::rename(&claimed, &live) {
                tracing::error!(error = %e, session = %id, "cannot give a claimed session back");
            }
        }
        result
    }

    /// Removes the folder of a claim that took effect.
    pub(super) fn end_claim(&self, id: &SessionId, claimed: &Path) {
        // Out of the way first: a crash half-way through deleting must not leave a
        // claimed folder that looks like a complete to give back (a second copy).
        let doomed = self
            .dirs
            .parts
            .join(format!(".aborted-{id}-{}", uuid::Uuid::new_v4().simple()));
        match std::fs::rename(claimed, &doomed) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&doomed);
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(claimed);
            }
        }
    }
}
