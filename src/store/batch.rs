//! Batch-download tokens, kept on disk under `UPLOAD_ROOT/.batch/` so they survive a
//! restart and work from any instance sharing the root.

use std::path::PathBuf;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{blocking, FileStore, Missing, StoreError};

/// What a token grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchToken {
    /// The keys, in order (a key may repeat).
    pub keys: Vec<String>,
    /// Deflate compressible entries.
    pub compress: bool,
    /// Who asked for it (for the logs).
    pub requested_by: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Tokens are 256 random bits, base64url: 43 characters.
fn valid_token(t: &str) -> bool {
    t.len() == 43
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FileStore {
    fn batch_dir(&self) -> PathBuf {
        self.root.join(".batch")
    }

    /// Saves a token for `batch`, returning it.
    pub async fn create_batch(&self, batch: BatchToken) -> Result<String, StoreError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let dir = self.batch_dir();
        let path = dir.join(format!("{token}.json"));
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{token}.tmp"));
            std::fs::write(
                &tmp,
                serde_json::to_vec(&batch).map_err(std::io::Error::from)?,
            )?;
            std::fs::rename(&tmp, &path)?;
            Ok(token)
        })
        .await
    }

    /// The batch behind a token; unknown, malformed and expired tokens are all not found.
    pub async fn batch(&self, token: &str) -> Result<BatchToken, StoreError> {
        let not_found = || StoreError::NotFound(Missing::BatchToken);
        if !valid_token(token) {
            return Err(not_found());
        }
        let path = self.batch_dir().join(format!("{token}.json"));
        let bytes = blocking(move || std::fs::read(&path).map_err(StoreError::from))
            .await
            .map_err(|_| not_found())?;
        let batch: BatchToken = serde_json::from_slice(&bytes).map_err(|_| not_found())?;
        if Utc::now() >= batch.expires_at {
            return Err(not_found());
        }
        Ok(batch)
    }

    /// Removes expired tokens.
    pub(super) fn sweep_batches(&self) {
        let Ok(entries) = std::fs::read_dir(self.batch_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            match serde_json::from_slice::<BatchToken>(&bytes) {
                Ok(b) if Utc::now() < b.expires_at => {}
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}
