//! The quota ledger: per user, bytes stored (`used`, following the file rows) and bytes
//! reserved by uploads in flight (a row per reservation id). Every change locks the user's
//! quota row first, so reservations from any number of instances never pass the limit
//! together. Publishing is one transaction: charge, drop the reservation, record the file,
//! finish the session.

use sqlx::{PgConnection, Row as _};

use super::files::{insert_locked, lock_quota, FileRecord};
use super::sessions::{finish_locked, ClaimToken};
use super::{to_i64, to_u64, CatalogError, CatalogResult, PgCatalog};
use crate::store::key::UserId;
use crate::store::sessions::SessionId;
use crate::store::StoreError;

/// A user's ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of stored files.
    pub used: u64,
    /// Stored files.
    pub files: u64,
    /// Bytes reserved by uploads in flight.
    pub reserved: u64,
}

/// A publish: the file to record, the reservation it settles and the session it ends.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// The file.
    pub file: &'a FileRecord,
    /// The reservation its bytes were held under (dropped; its bytes become `used`).
    pub reservation: Option<&'a str>,
    /// The session that made it, claimed by the caller under the token (left finished).
    pub session: Option<(SessionId, ClaimToken)>,
}

/// Reserves `bytes` for `id` under the user's lock held by the caller: refused
/// ([`StoreError::Quota`]) when stored plus reserved (other than `id`'s own reservation,
/// which is replaced) plus `bytes` would pass `limit`.
pub(super) async fn reserve_locked(
    conn: &mut PgConnection,
    user: &str,
    id: &str,
    bytes: u64,
    limit: u64,
    (used, reserved): (i64, i64),
) -> CatalogResult<()> {
    let own: i64 = sqlx::query("SELECT bytes FROM reservations WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(0);
    let in_use = to_u64(used)? + to_u64(reserved - own)?;
    if in_use.saturating_add(bytes) > limit {
        return Err(CatalogError::Store(StoreError::Quota {
            used: in_use,
            quota: limit,
            requested: bytes,
        }));
    }
    let bytes = to_i64(bytes)?;
    sqlx::query(
        "INSERT INTO reservations (id, user_id, bytes) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET bytes = EXCLUDED.bytes, created_at = now()",
    )
    .bind(id)
    .bind(user)
    .bind(bytes)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE quota SET reserved = reserved - $2 + $3 WHERE user_id = $1")
        .bind(user)
        .bind(own)
        .bind(bytes)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Drops reservation `id` of `user` (whose quota row the caller holds); its bytes.
pub(super) async fn release_locked(
    conn: &mut PgConnection,
    user: &str,
    id: &str,
) -> CatalogResult<u64> {
    let bytes: Option<i64> =
        sqlx::query("DELETE FROM reservations WHERE id = $1 AND user_id = $2 RETURNING bytes")
            .bind(id)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
    let Some(bytes) = bytes else { return Ok(0) };
    sqlx::query("UPDATE quota SET reserved = reserved - $2 WHERE user_id = $1")
        .bind(user)
        .bind(bytes)
        .execute(&mut *conn)
        .await?;
    to_u64(bytes)
}

impl PgCatalog {
    /// Reserves `bytes` for upload `id` of `user`, atomically across connections and
    /// instances; a reservation of the same id is replaced (a deferred length declared).
    /// Over `limit`: [`StoreError::Quota`], nothing changed.
    pub async fn reserve(
        &self,
        user: &UserId,
        id: &str,
        bytes: u64,
        limit: u64,
    ) -> CatalogResult<()> {
        let mut tx = self.pool.begin().await?;
        let (used, _, reserved) = lock_quota(&mut tx, user.as_str()).await?;
        reserve_locked(&mut tx, user.as_str(), id, bytes, limit, (used, reserved)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops reservation `id`, returning its bytes (0 when there was none).
    pub async fn release(&self, id: &str) -> CatalogResult<u64> {
        let Some(user) = sqlx::query("SELECT user_id FROM reservations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?
        else {
            return Ok(0);
        };
        let mut tx = self.pool.begin().await?;
        lock_quota(&mut tx, &user).await?;
        let bytes = release_locked(&mut tx, &user, id).await?;
        tx.commit().await?;
        Ok(bytes)
    }

    /// The user's ledger: one row read.
    pub async fn usage(&self, user: &UserId) -> CatalogResult<Usage> {
        let row = sqlx::query("SELECT used, files, reserved FROM quota WHERE user_id = $1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(Usage::default());
        };
        Ok(Usage {
            used: to_u64(row.try_get(0)?)?,
            files: to_u64(row.try_get(1)?)?,
            reserved: to_u64(row.try_get(2)?)?,
        })
    }

    /// Recomputes the user's `used`, `files` and `reserved` from the file and reservation
    /// rows (under the user's lock), returning the ledger as it now is.
    pub async fn reconcile(&self, user: &UserId) -> CatalogResult<Usage> {
        let mut tx = self.pool.begin().await?;
        lock_quota(&mut tx, user.as_str()).await?;
        let row = sqlx::query(
            "UPDATE quota SET
                used = (SELECT coalesce(sum(size), 0) FROM files WHERE user_id = $1),
                files = (SELECT count(*) FROM files WHERE user_id = $1),
                reserved = (SELECT coalesce(sum(bytes), 0) FROM reservations WHERE user_id = $1)
             WHERE user_id = $1 RETURNING used, files, reserved",
        )
        .bind(user.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Usage {
            used: to_u64(row.try_get(0)?)?,
            files: to_u64(row.try_get(1)?)?,
            reserved: to_u64(row.try_get(2)?)?,
        })
    }

    /// Publishes a file in one transaction: the session (if any) must be claimed and is
    /// locked; the owner's `used` grows by the file's size and its reservation is dropped;
    /// the file is recorded ([`CatalogError::KeyTaken`] if its key exists); the session is
    /// left finished with the key and size. Any failure leaves all of it as it was.
    pub async fn publish(&self, p: Publish<'_>) -> CatalogResult<()> {
        let mut tx = self.pool.begin().await?;
        if let Some((id, token)) = p.session {
            super::sessions::lock_claimed(&mut tx, id, token).await?;
        }
        let user = p.file.user().as_str();
        lock_quota(&mut tx, user).await?;
        if let Some(id) = p.reservation {
            release_locked(&mut tx, user, id).await?;
        }
        // The reservation goes before the insert: a refused insert must undo that too.
        if !insert_locked(&mut tx, p.file).await? {
            return Err(CatalogError::KeyTaken);
        }
        if let Some((id, _)) = p.session {
            finish_locked(&mut tx, id, &p.file.key.to_string(), p.file.size).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Publishes a file uploaded in one request, in one transaction: its reservation is
    /// dropped and its bytes charged, refused ([`StoreError::Quota`], nothing changed) when
    /// the user's stored bytes, other reservations and this file would pass `limit`; the
    /// file is recorded ([`CatalogError::KeyTaken`] if its key exists).
    pub async fn publish_checked(
        &self,
        file: &FileRecord,
        reservation: &str,
        limit: u64,
    ) -> CatalogResult<()> {
        let mut tx = self.pool.begin().await?;
        let user = file.user().as_str();
        let (used, _, reserved) = lock_quota(&mut tx, user).await?;
        let own = release_locked(&mut tx, user, reservation).await?;
        let others = to_u64(used)? + to_u64(reserved)?.saturating_sub(own);
        if others.saturating_add(file.size) > limit {
            return Err(CatalogError::Store(StoreError::Quota {
                used: others,
                quota: limit,
                requested: file.size,
            }));
        }
        if !insert_locked(&mut tx, file).await? {
            return Err(CatalogError::KeyTaken);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Releases the reservations of one-request uploads (ids `upload-…`) untouched for
    /// `idle`: an instance that died mid-upload left them. Returns how many.
    pub async fn sweep_stale_reservations(&self, idle: std::time::Duration) -> CatalogResult<u64> {
        let idle =
            chrono::Duration::from_std(idle).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        let stale: Vec<(String, String)> = sqlx::query(
            "SELECT id, user_id FROM reservations WHERE id LIKE 'upload-%' AND created_at < $1
             ORDER BY user_id",
        )
        .bind(chrono::Utc::now() - idle)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<CatalogResult<_>>()?;
        let mut n = 0;
        for (id, user) in stale {
            let mut tx = self.pool.begin().await?;
            lock_quota(&mut tx, &user).await?;
            if release_locked(&mut tx, &user, &id).await? > 0 {
                n += 1;
            }
            tx.commit().await?;
        }
        Ok(n)
    }

    /// Of `keys`, those the catalog names: a file's row, or a part's (a session's multipart
    /// upload is begun at a file key, and once completed its object is there before the
    /// file's row is committed, dated by the server as early as the upload's start).
    pub async fn existing_keys(&self, keys: &[String]) -> CatalogResult<Vec<String>> {
        Ok(sqlx::query(
            "SELECT key FROM files WHERE key = ANY($1)
             UNION SELECT object FROM parts WHERE object = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
    }

    /// Of session ids `ids`, those the catalog still has.
    pub async fn existing_sessions(&self, ids: &[uuid::Uuid]) -> CatalogResult<Vec<uuid::Uuid>> {
        Ok(sqlx::query("SELECT id FROM sessions WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Bytes and files stored, all users together, and sessions open (`/metrics`).
    pub async fn totals(&self) -> CatalogResult<(u64, u64, u64)> {
        let row = sqlx::query(
            "SELECT coalesce(sum(used), 0)::bigint, coalesce(sum(files), 0)::bigint,
                    (SELECT count(*) FROM sessions WHERE state <> 'finished' AND expires_at > now())
             FROM quota",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((
            to_u64(row.try_get(0)?)?,
            to_u64(row.try_get(1)?)?,
            to_u64(row.try_get(2)?)?,
        ))
    }
}
