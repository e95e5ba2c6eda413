//! The signing key every instance shares (signed URLs verify on any of them): one row,
//! made by the first instance to ask.

use sqlx::Row as _;

use super::{CatalogResult, PgCatalog};
use crate::store::signing_key::KeyOrigin;
use crate::store::StoreError;

impl PgCatalog {
    /// The shared signing key (32 random bytes as hex, as `UPLOAD_ROOT/.signing_key`
    /// holds it), made when absent. Of instances asking at once, one inserts its key and
    /// every one reads that row back.
    pub async fn signing_key_get_or_create(&self) -> CatalogResult<(Vec<u8>, KeyOrigin)> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("no randomness: {e}"))))?;
        let made = sqlx::query(
            "INSERT INTO signing_key (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(hex::encode(raw))
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        let key: String = sqlx::query("SELECT key FROM signing_key WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let origin = if made {
            KeyOrigin::Made
        } else {
            KeyOrigin::Kept
        };
        Ok((key.trim().as_bytes().to_vec(), origin))
    }
}
