//! File records: one row per stored file, the sidecar as jsonb; listing newest first with
//! the tie-break of `store/list.rs` (keys bytewise), paged, with totals.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use super::{not_found, to_i64, to_u64, CatalogError, CatalogResult, PgCatalog};
use crate::store::key::{FolderPath, Key, UserId};
use crate::store::read::Listed;
use crate::store::sidecar::{guess_mime, Meta};
use crate::store::Missing;

/// A stored file as the catalog keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    /// Its key (`storage/{user}/{folder}/{stored name}`): owner, folder and stored name
    /// are read from it.
    pub key: Key,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256, when known.
    pub sha256: Option<String>,
    /// CRC-32, when known.
    pub crc32: Option<u32>,
    /// MIME type.
    pub mime: String,
    /// The sidecar.
    pub meta: Meta,
    /// When it was stored: the listing's order.
    pub created_at: DateTime<Utc>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListPage<T = FileRecord> {
    /// The page's files, newest first, ties by key.
    pub files: Vec<T>,
    /// Files in the whole listing (not only this page).
    pub total_files: u64,
    /// Their bytes together.
    pub total_bytes: u64,
}

/// The columns a [`FileRecord`] is read from; the sidecar as text, parsed once by
/// [`Meta::from_json`] (a jsonb value would be built and then serialised again).
pub(super) const FILE_COLUMNS: &str =
    "key, size, sha256, crc32, mime, meta::text AS meta, created_at";

/// The columns a [`Listed`] is read from: each sidecar field only when it is a string, as
/// `Meta::from_json` takes it, else the same fallback (the key's file name, a type guessed
/// from the name, the row's time).
const LISTED_COLUMNS: &str = "key, size, created_at,
    CASE WHEN jsonb_typeof(meta->'original_name') = 'string' THEN meta->>'original_name' END AS name,
    CASE WHEN jsonb_typeof(meta->'mime') = 'string' THEN meta->>'mime' END AS mime,
    CASE WHEN jsonb_typeof(meta->'created_at') = 'string' THEN meta->>'created_at' END AS meta_created";

fn listed_from_row(row: &PgRow) -> CatalogResult<Listed> {
    let key_text: String = row.try_get("key")?;
    let key = Key::parse(&key_text)
        .map_err(|e| CatalogError::Corrupt(format!("key {key_text:?}: {e}")))?;
    let name: Option<String> = row.try_get("name")?;
    let original_name = name.unwrap_or_else(|| key.file_name().to_owned());
    let mime: Option<String> = row.try_get("mime")?;
    let mime = mime.unwrap_or_else(|| guess_mime(&original_name, None));
    let created_at = match row.try_get::<Option<String>, _>("meta_created")? {
        Some(c) => c,
        None => row
            .try_get::<DateTime<Utc>, _>("created_at")?
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    };
    Ok(Listed {
        size: to_u64(row.try_get("size")?)?,
        key,
        original_name,
        mime,
        created_at,
    })
}

impl FileRecord {
    /// The owner.
    pub fn user(&self) -> &UserId {
        self.key.owner()
    }

    pub(super) fn from_row(row: &PgRow) -> CatalogResult<Self> {
        let key_text: String = row.try_get("key")?;
        let key = Key::parse(&key_text)
            .map_err(|e| CatalogError::Corrupt(format!("key {key_text:?}: {e}")))?;
        let meta: &str = row.try_get("meta")?;
        let meta = Meta::from_json(meta.as_bytes(), key.file_name(), key.owner().as_str())
            .ok_or_else(|| CatalogError::Corrupt(format!("meta of {key_text} is no object")))?;
        let crc32: Option<i64> = row.try_get("crc32")?;
        Ok(Self {
            size: to_u64(row.try_get("size")?)?,
            sha256: row.try_get("sha256")?,
            crc32: crc32
                .map(|c| u32::try_from(c).map_err(|_| CatalogError::Corrupt(format!("crc {c}"))))
                .transpose()?,
            mime: row.try_get("mime")?,
            created_at: row.try_get("created_at")?,
            meta,
            key,
        })
    }

    fn meta_json(&self) -> CatalogResult<Value> {
        json_of(&self.meta)
    }
}

fn json_of(meta: &Meta) -> CatalogResult<Value> {
    let bytes = meta
        .to_json()
        .map_err(|e| CatalogError::Corrupt(format!("meta: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| CatalogError::Corrupt(format!("meta: {e}")))
}

/// Makes sure the user has a quota row and locks it (the per-user lock of every ledger
/// change). Returns `(used, files, reserved)`.
pub(super) async fn lock_quota(
    conn: &mut PgConnection,
    user: &str,
) -> CatalogResult<(i64, i64, i64)> {
    sqlx::query("INSERT INTO quota (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user)
        .execute(&mut *conn)
        .await?;
    let row = sqlx::query("SELECT used, files, reserved FROM quota WHERE user_id = $1 FOR UPDATE")
        .bind(user)
        .fetch_one(&mut *conn)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// Inserts `file` unless its key exists (`false` then) and adds it to the owner's `used`
/// and `files`. The caller holds the owner's quota row ([`lock_quota`]).
pub(super) async fn insert_locked(
    conn: &mut PgConnection,
    file: &FileRecord,
) -> CatalogResult<bool> {
    let inserted = sqlx::query(
        "INSERT INTO files (key, user_id, folder, stored_name, size, sha256, crc32, mime, meta, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(file.key.to_string())
    .bind(file.user().as_str())
    .bind(file.key.folder().unwrap_or_default())
    .bind(file.key.file_name())
    .bind(to_i64(file.size)?)
    .bind(file.sha256.as_deref())
    .bind(file.crc32.map(i64::from))
    .bind(&file.mime)
    .bind(file.meta_json()?)
    .bind(file.created_at)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        sqlx::query("UPDATE quota SET used = used + $2, files = files + 1 WHERE user_id = $1")
            .bind(file.user().as_str())
            .bind(to_i64(file.size)?)
            .execute(&mut *conn)
            .await?;
    }
    Ok(inserted)
}

/// The bounds of "this folder and its subfolders" over `folder` (collation "C"):
/// the folder itself, or `folder/` ≤ f < `folder0` (`0` follows `/`).
fn folder_range(folder: &FolderPath) -> (String, String, String) {
    let f = folder.as_string();
    (f.clone(), format!("{f}/"), format!("{f}0"))
}

impl PgCatalog {
    /// Records a stored file unless its key is taken; `true` when recorded. The owner's
    /// usage grows by its size in the same transaction (no quota check: for imports such as
    /// `migrate` and `reindex`; uploads go through [`PgCatalog::publish`]).
    pub async fn insert_file(&self, file: &FileRecord) -> CatalogResult<bool> {
        let mut tx = self.pool.begin().await?;
        lock_quota(&mut tx, file.user().as_str()).await?;
        let inserted = insert_locked(&mut tx, file).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// The keys (as stored) and creation times of at most `limit` files, in key order
    /// (bytewise), after `after` (from the first when `None`): the whole catalog walked page
    /// by page, for `reindex --prune`.
    pub async fn file_keys_after(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> CatalogResult<Vec<(String, DateTime<Utc>)>> {
        let rows = sqlx::query(
            "SELECT key, created_at FROM files WHERE $1::text IS NULL OR key > $1
             ORDER BY key LIMIT $2",
        )
        .bind(after)
        .bind(to_i64(limit)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key")?, r.try_get("created_at")?)))
            .collect()
    }

    /// The file at `key`.
    pub async fn file(&self, key: &Key) -> CatalogResult<FileRecord> {
        let row = sqlx::query(&format!("SELECT {FILE_COLUMNS} FROM files WHERE key = $1"))
            .bind(key.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found(Missing::File))?;
        FileRecord::from_row(&row)
    }

    /// Removes the file at `key`, returning its record; the owner's usage shrinks in the
    /// same transaction.
    pub async fn delete_file(&self, key: &Key) -> CatalogResult<FileRecord> {
        let mut tx = self.pool.begin().await?;
        let user = key.owner().as_str();
        lock_quota(&mut tx, user).await?;
        let row = sqlx::query(&format!(
            "DELETE FROM files WHERE key = $1 RETURNING {FILE_COLUMNS}"
        ))
        .bind(key.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found(Missing::File))?;
        let record = FileRecord::from_row(&row)?;
        sqlx::query("UPDATE quota SET used = used - $2, files = files - 1 WHERE user_id = $1")
            .bind(user)
            .bind(to_i64(record.size)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Replaces the sidecar of the file at `key` (and the columns read from it: MIME type,
    /// SHA-256, CRC-32).
    pub async fn update_meta(&self, key: &Key, meta: &Meta) -> CatalogResult<()> {
        let updated = sqlx::query(
            "UPDATE files SET meta = $2, mime = $3, sha256 = $4, crc32 = $5 WHERE key = $1",
        )
        .bind(key.to_string())
        .bind(json_of(meta)?)
        .bind(&meta.mime)
        .bind(meta.sha256.as_deref())
        .bind(meta.crc32.map(i64::from))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(not_found(Missing::File));
        }
        Ok(())
    }

    /// A page of `user`'s files (with `folder`: that folder and its subfolders), newest
    /// first, ties by key bytewise (as `store/list.rs`), skipping `offset` and returning at
    /// most `limit`, with the totals of the whole listing. The page reads the
    /// `(user_id, created_at DESC, key)` index; the totals of a whole user come from the
    /// quota row, of a folder from one indexed range.
    pub async fn list_files(
        &self,
        user: &UserId,
        folder: Option<&FolderPath>,
        limit: u64,
        offset: u64,
    ) -> CatalogResult<ListPage> {
        let (rows, total_files, total_bytes) = self
            .list_rows(FILE_COLUMNS, user, folder, limit, offset)
            .await?;
        Ok(ListPage {
            files: rows
                .iter()
                .map(FileRecord::from_row)
                .collect::<CatalogResult<_>>()?,
            total_files,
            total_bytes,
        })
    }

    /// The same page as [`PgCatalog::list_files`], with only what a listing shows of each
    /// file: the sidecar's name, type and date are picked out by PostgreSQL, not shipped
    /// whole and parsed (the whole sidecar made a 10,000-file listing cost the server ~45 ms
    /// of CPU, mostly allocation and JSON).
    pub async fn list_listed(
        &self,
        user: &UserId,
        folder: Option<&FolderPath>,
        limit: u64,
        offset: u64,
    ) -> CatalogResult<ListPage<Listed>> {
        let (rows, total_files, total_bytes) = self
            .list_rows(LISTED_COLUMNS, user, folder, limit, offset)
            .await?;
        Ok(ListPage {
            files: rows
                .iter()
                .map(listed_from_row)
                .collect::<CatalogResult<_>>()?,
            total_files,
            total_bytes,
        })
    }

    /// The rows (`columns` of each) and totals of a listing page, read in one snapshot.
    async fn list_rows(
        &self,
        columns: &str,
        user: &UserId,
        folder: Option<&FolderPath>,
        limit: u64,
        offset: u64,
    ) -> CatalogResult<(Vec<PgRow>, u64, u64)> {
        let limit = to_i64(limit)?;
        let offset = to_i64(offset)?;
        // One snapshot for the page and the totals: an upload committed between two
        // statements would be counted but not listed (found by the distributed bench).
        let mut conn = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *conn)
            .await?;
        let (rows, total_files, total_bytes) = match folder {
            None => {
                let rows = sqlx::query(&format!(
                    "SELECT {columns} FROM files WHERE user_id = $1
                     ORDER BY created_at DESC, key LIMIT $2 OFFSET $3"
                ))
                .bind(user.as_str())
                .bind(limit)
                .bind(offset)
                .fetch_all(&mut *conn)
                .await?;
                let totals = sqlx::query("SELECT files, used FROM quota WHERE user_id = $1")
                    .bind(user.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                let (files, bytes): (i64, i64) = match totals {
                    Some(r) => (r.try_get(0)?, r.try_get(1)?),
                    None => (0, 0),
                };
                (rows, files, bytes)
            }
            Some(folder) => {
                let (exact, lo, hi) = folder_range(folder);
                let filter = "user_id = $1 AND (folder = $2 OR (folder >= $3 AND folder < $4))";
                let rows = sqlx::query(&format!(
                    "SELECT {columns} FROM files WHERE {filter}
                     ORDER BY created_at DESC, key LIMIT $5 OFFSET $6"
                ))
                .bind(user.as_str())
                .bind(&exact)
                .bind(&lo)
                .bind(&hi)
                .bind(limit)
                .bind(offset)
                .fetch_all(&mut *conn)
                .await?;
                let r = sqlx::query(&format!(
                    "SELECT count(*), coalesce(sum(size), 0)::bigint FROM files WHERE {filter}"
                ))
                .bind(user.as_str())
                .bind(&exact)
                .bind(&lo)
                .bind(&hi)
                .fetch_one(&mut *conn)
                .await?;
                (rows, r.try_get(0)?, r.try_get(1)?)
            }
        };
        conn.commit().await?;
        Ok((rows, to_u64(total_files)?, to_u64(total_bytes)?))
    }
}
