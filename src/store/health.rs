//! What the health check and the metrics ask of the disk: can the root be written, how much
//! room is left, how many upload sessions are open.

use super::{blocking, FileStore};

/// What writing a probe file in the root gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Written and removed.
    Written,
    /// The root takes writes, but the disk (or the filesystem quota) is full.
    Full,
    /// The root refuses writes: missing, not a folder, permissions, read-only mount.
    Refused,
}

/// The disk as the health check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskHealth {
    /// Whether a file could be written in the root.
    pub probe: Probe,
    /// Bytes free for the service's user; `None` when the root cannot be examined.
    pub free_bytes: Option<u64>,
}

impl FileStore {
    /// Writes and removes a small file in the root (the only honest writability test:
    /// permission bits say nothing to root, nor about a read-only mount or a full disk),
    /// and reads the free space.
    pub async fn disk_health(&self) -> DiskHealth {
        let this = self.clone();
        blocking(move || {
            Ok(DiskHealth {
                probe: this.probe_writable(),
                free_bytes: this.free_bytes(),
            })
        })
        .await
        .unwrap_or(DiskHealth {
            probe: Probe::Refused,
            free_bytes: None,
        })
    }

    /// Writes and removes a probe file in the root. Blocking.
    pub fn probe_writable(&self) -> Probe {
        use std::io::Write as _;
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        let probe = self
            .root
            .join(format!(".healthz-{}", uuid::Uuid::new_v4().simple()));
        let written = std::fs::File::create_new(&probe).and_then(|mut f| f.write_all(b"ok"));
        let _ = std::fs::remove_file(&probe);
        match written {
            Ok(()) => Probe::Written,
            Err(e) if matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT)) => Probe::Full,
            Err(_) => Probe::Refused,
        }
    }

    /// Bytes free in the root's filesystem for an unprivileged user. Blocking (a `statvfs`).
    pub fn free_bytes(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.root).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Upload sessions on disk: folders in `.parts` named by a session id (a UUID); staging,
    /// claimed and one-request folders have other names and are not sessions. Blocking.
    pub fn sessions_on_disk(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir(&self.dirs.parts) else {
            return 0;
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| uuid::Uuid::try_parse(n).is_ok())
            })
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn sessions_are_uuid_folders_and_the_probe_writes() {
        let root = tempfile::tempdir().unwrap();
        let store = FileStore::for_tests(root.path());
        let parts = root.path().join(".parts");
        std::fs::create_dir_all(parts.join("0b6d4b39-6a34-4d1c-9f77-1b0c9a3e2f10")).unwrap();
        std::fs::create_dir_all(parts.join("1c7e5c4a-7b45-4e2d-8a88-2c1d0b4f3a21")).unwrap();
        std::fs::create_dir_all(parts.join(".claimed-0b6d4b39-6a34-4d1c-9f77-1b0c9a3e2f10"))
            .unwrap();
        std::fs::write(parts.join("2d8f6d5b-8c56-4f3e-9b99-3d2e1c5a4b32"), b"").unwrap();
        assert_eq!(store.sessions_on_disk(), 2);
        let health = store.disk_health().await;
        assert_eq!(health.probe, Probe::Written);
        assert!(health.free_bytes.is_some_and(|b| b > 0));
        // The probe leaves nothing behind.
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".healthz"))
            .collect();
        assert!(left.is_empty());
    }
}
