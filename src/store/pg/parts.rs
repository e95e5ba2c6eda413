//! Parts of three-step uploads: numbered, sent in any order, sent again to replace, each
//! kept as an object of its own. Every change locks the session row, so the parts never pass
//! the declared size together and a complete never takes a session half-way through a part.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use super::files::lock_quota;
use super::quota::release_locked;
use super::sessions::{
    lock_claimed, lock_live, session_uuid, when_unlocked, ClaimToken, SessionRecord,
};
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
    /// The object holding them; for a part in a multipart upload, the key that upload
    /// ends at.
    pub object: String,
    /// Where the bytes are, when not the whole of `object`.
    pub place: Place,
}

/// Where a part's bytes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The whole of its object.
    Object,
    /// `offset..offset + size` of its object (a staging object several parts share).
    Range {
        /// Where the part starts.
        offset: u64,
    },
    /// S3 part `number + 1` of the multipart upload `upload_id` at `object`.
    Multipart {
        /// The upload.
        upload_id: String,
        /// The S3 part's ETag.
        etag: String,
        /// The file's hash state before the part and after it (`{sha state}:{crc32}`):
        /// equal ends from part to part mean the part was hashed on from the one before.
        chain: (String, String),
    },
}

impl PartRecord {
    /// The multipart upload holding the part (`(key, upload id)`), if one does.
    pub fn upload(&self) -> Option<(&str, &str)> {
        match &self.place {
            Place::Multipart { upload_id, .. } => Some((&self.object, upload_id)),
            _ => None,
        }
    }
}

const PART_COLUMNS: &str =
    "number, size, sha256, crc32, object, etag, upload_id, chain_start, chain_end, start_offset";

fn part_from_row(row: &PgRow) -> CatalogResult<PartRecord> {
    let number: i32 = row.try_get("number")?;
    let crc: i64 = row.try_get("crc32")?;
    let etag: Option<String> = row.try_get("etag")?;
    let upload_id: Option<String> = row.try_get("upload_id")?;
    let start: Option<String> = row.try_get("chain_start")?;
    let end: Option<String> = row.try_get("chain_end")?;
    let offset: Option<i64> = row.try_get("start_offset")?;
    let place = match (etag, upload_id, start, end, offset) {
        (Some(etag), Some(upload_id), Some(start), Some(end), None) => Place::Multipart {
            upload_id,
            etag,
            chain: (start, end),
        },
        (None, None, None, None, Some(o)) => Place::Range { offset: to_u64(o)? },
        (None, None, None, None, None) => Place::Object,
        _ => {
            return Err(CatalogError::Corrupt(format!(
                "part {number}: half a multipart upload"
            )))
        }
    };
    Ok(PartRecord {
        number: u32::try_from(number)
            .map_err(|_| CatalogError::Corrupt(format!("part number {number}")))?,
        size: to_u64(row.try_get("size")?)?,
        sha256: row.try_get("sha256")?,
        crc32: u32::try_from(crc).map_err(|_| CatalogError::Corrupt(format!("crc {crc}")))?,
        object: row.try_get("object")?,
        place,
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

    /// Locks live session `id` for a change of its parts ([`StoreError::Busy`] while a
    /// complete holds it) and reads them: the lock holds until [`PartsLock::put`] commits
    /// or the lock is dropped (nothing changed). Other part commits and aborts of the
    /// session wait meanwhile, on any instance, polling with no connection held (see
    /// [`LOCK_WAIT`](super::sessions::LOCK_WAIT)); a complete's claim finds the session
    /// busy and waits as for another complete.
    pub async fn lock_parts(&self, id: SessionId) -> CatalogResult<PartsLock> {
        let sid = session_uuid(id)?;
        when_unlocked(|| async {
            let mut tx = self.pool.begin().await?;
            let record: SessionRecord = lock_live(&mut tx, id).await?;
            let parts = parts_of(&mut tx, sid).await?;
            Ok(PartsLock {
                tx,
                sid,
                declared: record.session.file.size,
                parts,
            })
        })
        .await
    }

    /// For a complete holding claim `token` on session `id`: the parts kept in a multipart
    /// upload become ranges of `staging` (where the caller completed that upload). Returns
    /// the parts as they are now.
    pub async fn rebase_claimed(
        &self,
        id: SessionId,
        token: ClaimToken,
        staging: &str,
    ) -> CatalogResult<Vec<PartRecord>> {
        let sid = session_uuid(id)?;
        let mut tx = self.pool.begin().await?;
        lock_claimed(&mut tx, id, token).await?;
        let parts = parts_of(&mut tx, sid).await?;
        rebase_rows(&mut tx, sid, &parts, staging).await?;
        let parts = parts_of(&mut tx, sid).await?;
        tx.commit().await?;
        Ok(parts)
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
        when_unlocked(|| async {
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
        })
        .await
    }
}

/// The parts of a live session, locked for a change (see [`PgCatalog::lock_parts`]).
pub struct PartsLock {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    sid: uuid::Uuid,
    declared: u64,
    parts: Vec<PartRecord>,
}

impl std::fmt::Debug for PartsLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartsLock")
            .field("session", &self.sid)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl PartsLock {
    /// The session's declared size.
    pub fn declared(&self) -> u64 {
        self.declared
    }

    /// Its parts, by number.
    pub fn parts(&self) -> &[PartRecord] {
        &self.parts
    }

    /// Whether part `number` may hold `size` bytes: not when the parts would then pass the
    /// declared size ([`StoreError::TooLarge`]).
    pub fn check_room(&self, number: u32, size: u64) -> CatalogResult<()> {
        let others: u64 = self
            .parts
            .iter()
            .filter(|p| p.number != number)
            .map(|p| p.size)
            .sum();
        if others.saturating_add(size) > self.declared {
            return Err(StoreError::TooLarge.into());
        }
        Ok(())
    }

    /// The parts kept in a multipart upload become ranges of `staging`, where the caller
    /// completed that upload (their bytes one after the other, in number order).
    pub async fn rebase(&mut self, staging: &str) -> CatalogResult<()> {
        rebase_rows(&mut self.tx, self.sid, &self.parts, staging).await?;
        self.parts = parts_of(&mut self.tx, self.sid).await?;
        Ok(())
    }

    /// Records `part`, replacing a part of the same number, unless the parts would then
    /// pass the declared size ([`StoreError::TooLarge`]), and commits. Returns the parts
    /// as they were before, for the caller to remove what no part names any more.
    pub async fn put(mut self, part: &PartRecord) -> CatalogResult<Vec<PartRecord>> {
        self.check_room(part.number, part.size)?;
        let (etag, upload_id, start, end, offset) = match &part.place {
            Place::Object => (None, None, None, None, None),
            Place::Range { offset } => (None, None, None, None, Some(to_i64(*offset)?)),
            Place::Multipart {
                upload_id,
                etag,
                chain,
            } => (
                Some(etag.as_str()),
                Some(upload_id.as_str()),
                Some(chain.0.as_str()),
                Some(chain.1.as_str()),
                None,
            ),
        };
        sqlx::query(&format!(
            "INSERT INTO parts (session_id, {PART_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (session_id, number) DO UPDATE SET size = EXCLUDED.size,
             sha256 = EXCLUDED.sha256, crc32 = EXCLUDED.crc32, object = EXCLUDED.object,
             etag = EXCLUDED.etag, upload_id = EXCLUDED.upload_id,
             chain_start = EXCLUDED.chain_start, chain_end = EXCLUDED.chain_end,
             start_offset = EXCLUDED.start_offset"
        ))
        .bind(self.sid)
        .bind(i32::try_from(part.number).map_err(|_| StoreError::TooLarge)?)
        .bind(to_i64(part.size)?)
        .bind(&part.sha256)
        .bind(i64::from(part.crc32))
        .bind(&part.object)
        .bind(etag)
        .bind(upload_id)
        .bind(start)
        .bind(end)
        .bind(offset)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(self.parts)
    }
}

/// Rewrites the parts of session `sid` held in a multipart upload as ranges of `staging`.
async fn rebase_rows(
    conn: &mut PgConnection,
    sid: uuid::Uuid,
    parts: &[PartRecord],
    staging: &str,
) -> CatalogResult<()> {
    let mut offset = 0u64;
    for p in parts.iter().filter(|p| p.upload().is_some()) {
        sqlx::query(
            "UPDATE parts SET object = $3, start_offset = $4, etag = NULL, upload_id = NULL,
                    chain_start = NULL, chain_end = NULL
             WHERE session_id = $1 AND number = $2",
        )
        .bind(sid)
        .bind(i32::try_from(p.number).map_err(|_| StoreError::TooLarge)?)
        .bind(staging)
        .bind(to_i64(offset)?)
        .execute(&mut *conn)
        .await?;
        offset += p.size;
    }
    Ok(())
}
