//! Batch-download tokens: the same JSON as `UPLOAD_ROOT/.batch/{token}.json`, a row each.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row as _;

use super::{not_found, CatalogError, CatalogResult, PgCatalog};
use crate::store::batch::BatchToken;
use crate::store::{Missing, StoreError};

/// Tokens are 256 random bits, base64url: 43 characters (as `store/batch.rs` makes them).
fn valid_token(t: &str) -> bool {
    t.len() == 43
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl PgCatalog {
    /// Saves a token for `batch`, returning it.
    pub async fn create_batch(&self, batch: &BatchToken) -> CatalogResult<String> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let json = serde_json::to_value(batch)
            .map_err(|e| CatalogError::Corrupt(format!("batch JSON: {e}")))?;
        sqlx::query("INSERT INTO batch_tokens (token, batch, expires_at) VALUES ($1, $2, $3)")
            .bind(&token)
            .bind(json)
            .bind(batch.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// The batch behind a token; unknown, malformed and expired tokens are all not found.
    pub async fn batch(&self, token: &str) -> CatalogResult<BatchToken> {
        if !valid_token(token) {
            return Err(not_found(Missing::BatchToken));
        }
        let row =
            sqlx::query("SELECT batch FROM batch_tokens WHERE token = $1 AND expires_at > now()")
                .bind(token)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| not_found(Missing::BatchToken))?;
        let json: Value = row.try_get(0)?;
        serde_json::from_value(json).map_err(|e| CatalogError::Corrupt(format!("batch JSON: {e}")))
    }

    /// Removes a token; `true` when there was one.
    pub async fn delete_batch(&self, token: &str) -> CatalogResult<bool> {
        Ok(sqlx::query("DELETE FROM batch_tokens WHERE token = $1")
            .bind(token)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    /// Removes the tokens expired at `now`, returning how many.
    pub async fn sweep_batches(&self, now: DateTime<Utc>) -> CatalogResult<u64> {
        Ok(
            sqlx::query("DELETE FROM batch_tokens WHERE expires_at <= $1")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
