//! Parts of three-step uploads: numbered, sent in any order, sent again to replace, each
//! kept as an object of its own. Every change locks the session row, so the parts never pass
//! the declared size together and a complete never takes a session half-way through a part.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use super::files::lock_quota;
use super::quota::release_locked;
use super::sessions::{lock_live, session_uuid, SessionRecord};
use super::{to_i64, to_u64, CatalogError, CatalogResult, PgCatalog};
use crate::store::sessions::{Session, SessionId};
use crate::store::StoreError;

/// A received part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    /// Its number.
    pub number: u32,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// CRC-32 of its bytes.
    pub crc32: u32,
    /// The object holding them.
    pub object: String,
}

const PART_COLUMNS: &str = "number, size, sha256, crc32, object";

fn part_from_row(row: &PgRow) -> CatalogResult<PartRecord> {
    let number: i32 = row.try_get("number")?;
    let crc: i64 = row.try_get("crc32")?;
    Ok(PartRecord {
        number: u32::try_from(number)
            .map_err(|_| CatalogError::Corrupt(format!("part number {number}")))?,
        size: to_u64(row.try_get("size")?)?,
        sha256: row.try_get("sha256")?,
        crc32: u32::try_from(crc).map_err(|_| CatalogError::Corrupt(format!("crc {crc}")))?,
        object: row.try_get("object")?,
    })
}

/// The parts of session `id`, by number.
pub(super) async fn parts_of(
    conn: &mut PgConnection,
    id: uuid::Uuid,
) -> CatalogResult<Vec<PartRecord>> {
    sqlx::query(&format!(
        "SELECT {PART_COLUMNS} FROM parts WHERE session_id = $1 ORDER BY number"
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(part_from_row)
    .collect()
}

impl PgCatalog {
    /// Opens one session per file, their declared sizes reserved together against `limit`
    /// (all or none: [`StoreError::Quota`] with the sum requested).
    pub async fn create_sessions(&self, sessions: &[Session], limit: u64) -> CatalogResult<()> {
        let Some(first) = sessions.first() else {
            return Ok(());
        };
        let user = first.user_id.as_str();
        let mut tx = self.pool.begin().await?;
        let (used, _, reserved) = lock_quota(&mut tx, user).await?;
        let in_use = to_u64(used)? + to_u64(reserved)?;
        let requested: u64 = sessions.iter().map(|s| s.file.size).sum();
        if in_use.saturating_add(requested) > limit {
            return Err(StoreError::Quota {
                used: in_use,
                quota: limit,
                requested,
            }
            .into());
        }
        for s in sessions {
            super::sessions::insert_session(&mut tx, s).await?;
            sqlx::query("INSERT INTO reservations (id, user_id, bytes) VALUES ($1, $2, $3)")
                .bind(s.upload_id.to_string())
                .bind(user)
                .bind(to_i64(s.file.size)?)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE quota SET reserved = reserved + $2 WHERE user_id = $1")
            .bind(user)
            .bind(to_i64(requested)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records part `number` of live session `id`, replacing a part of the same number,
    /// unless the parts would then pass the session's declared size ([`StoreError::TooLarge`]).
    /// Returns the object of the part it replaced, for the caller to delete.
    pub async fn put_part(
        &self,
        id: SessionId,
        part: &PartRecord,
    ) -> CatalogResult<Option<String>> {
        let sid = session_uuid(id)?;
        let mut tx = self.pool.begin().await?;
        let record: SessionRecord = lock_live(&mut tx, id).await?;
        let others: i64 = sqlx::query(
            "SELECT coalesce(sum(size), 0)::bigint FROM parts WHERE session_id = $1 AND number <> $2",
        )
        .bind(sid)
        .bind(i32::try_from(part.number).map_err(|_| StoreError::TooLarge)?)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if to_u64(others)?.saturating_add(part.size) > record.session.file.size {
            return Err(StoreError::TooLarge.into());
        }
        let old: Option<String> =
            sqlx::query("SELECT object FROM parts WHERE session_id = $1 AND number = $2")
                .bind(sid)
                .bind(i32::try_from(part.number).map_err(|_| StoreError::TooLarge)?)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        sqlx::query(&format!(
            "INSERT INTO parts (session_id, {PART_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (session_id, number) DO UPDATE SET size = EXCLUDED.size,
             sha256 = EXCLUDED.sha256, crc32 = EXCLUDED.crc32, object = EXCLUDED.object"
        ))
        .bind(sid)
        .bind(i32::try_from(part.number).map_err(|_| StoreError::TooLarge)?)
        .bind(to_i64(part.size)?)
        .bind(&part.sha256)
        .bind(i64::from(part.crc32))
        .bind(&part.object)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(old)
    }

    /// The parts of session `id`, by number.
    pub async fn parts(&self, id: SessionId) -> CatalogResult<Vec<PartRecord>> {
        let mut conn = self.pool.acquire().await?;
        parts_of(&mut conn, session_uuid(id)?).await
    }

    /// Ends a live three-step session unfinished (abort): its row and parts go, its
    /// reservation is released. Returns the part objects to delete.
    pub async fn abort_parts(&self, id: SessionId) -> CatalogResult<Vec<PartRecord>> {
        let sid = session_uuid(id)?;
        let mut tx = self.pool.begin().await?;
        let record = lock_live(&mut tx, id).await?;
        let parts = parts_of(&mut tx, sid).await?;
        let user = record.session.user_id.as_str().to_owned();
        lock_quota(&mut tx, &user).await?;
        release_locked(&mut tx, &user, &id.to_string()).await?;
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(parts)
    }
}
