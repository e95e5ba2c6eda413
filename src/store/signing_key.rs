//! The signing key kept in `UPLOAD_ROOT/.signing_key` when `UPLOAD_SIGNING_KEY` is not set
//! (API.md §1): made once, mode 0600, and shared by every instance using the root.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use super::{FileStore, StoreError};

/// The key file in the root.
const KEY_FILE: &str = ".signing_key";

/// Where the key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read from the file an earlier start (or another instance) made.
    Kept,
    /// Made now (a warning is due: signed URLs die with the file).
    Made,
}

impl FileStore {
    /// The root's signing key (its text, trimmed), made when absent: 32 random bytes as hex,
    /// written to a temporary file and hard-linked into place, which fails if another
    /// instance made it first (then its key is read). Blocking.
    pub fn load_or_create_signing_key(&self) -> Result<(Vec<u8>, KeyOrigin), StoreError> {
        let path = self.root.join(KEY_FILE);
        let read = |p: &Path| -> Result<Vec<u8>, StoreError> {
            let text = std::fs::read_to_string(p)?;
            let key = text.trim();
            if key.is_empty() {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "{} is empty",
                    p.display()
                ))));
            }
            Ok(key.as_bytes().to_vec())
        };
        if path.exists() {
            return Ok((read(&path)?, KeyOrigin::Kept));
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("no randomness: {e}"))))?;
        let tmp = self
            .root
            .join(format!("{KEY_FILE}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(hex::encode(raw).as_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        let origin = match linked {
            Ok(()) => KeyOrigin::Made,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => KeyOrigin::Kept,
            Err(e) => return Err(e.into()),
        };
        Ok((read(&path)?, origin))
    }
}
