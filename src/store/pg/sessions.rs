//! Upload sessions and their segments. A session row holds the `Session` JSON (as
//! `session.json`), its state (live → claimed → finished) and where its chain of appended
//! segments ends. Appends, claims, aborts and sweeps each lock the session row, so of two
//! racing appends at one offset, or two racing claims, exactly one wins; sweeps skip rows
//! another instance holds (`FOR UPDATE SKIP LOCKED`).
//!
//! A claim is a lease: its holder renews it ([`PgCatalog::renew`]) while it publishes, and
//! a claim whose lease lapsed (its instance died mid-complete) is taken over by the next
//! claim. Each claim has its own token, which the holder shows to publish, finish or give
//! the claim back: a holder that lost its claim (it stalled past its lease and another took
//! over) changes nothing.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use super::files::lock_quota;
use super::quota::{release_locked, reserve_locked};
use super::{not_found, to_i64, to_u64, CatalogError, CatalogResult, PgCatalog};
use crate::store::sessions::{SegmentHashes, Session, SessionId};
use crate::store::{Missing, StoreError};

/// How long a claim holds without renewal: a complete renews it every sixth of this while
/// it publishes (and stops itself when two thirds pass without a renewal), so a claim left
/// by a dead instance is taken over by the next complete (or swept, once the session
/// expired) at most this long after the instance died.
pub const CLAIM_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

/// When a claim lapses, in SQL: rows claimed before leases existed (no `lease_until`) hold an
/// hour from their claim, as they did then.
const LEASE_END: &str = "coalesce(lease_until, claimed_at + interval '1 hour')";

/// A claim's fencing token: shown to publish, finish or give back the claim it came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimToken(uuid::Uuid);

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Receiving bytes.
    Live,
    /// A complete is publishing it.
    Claimed,
    /// Published; kept for `HEAD` and status until it expires.
    Finished,
}

impl SessionState {
    fn parse(s: &str) -> CatalogResult<Self> {
        match s {
            "live" => Ok(Self::Live),
            "claimed" => Ok(Self::Claimed),
            "finished" => Ok(Self::Finished),
            other => Err(CatalogError::Corrupt(format!("session state {other:?}"))),
        }
    }
}

/// A session as the catalog holds it.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The session (its `session.json`).
    pub session: Session,
    /// Where it stands.
    pub state: SessionState,
    /// Where the chain of appended segments ends.
    pub offset: u64,
    /// Once finished: the stored file's key and size.
    pub finished: Option<(String, u64)>,
}

/// A segment: where an appended part lies, and the hash state up to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    /// The part's number (1, 2, ... in append order).
    pub number: u32,
    /// Offset of its first byte.
    pub offset: u64,
    /// Its size.
    pub size: u64,
    /// SHA-256 state and CRC-32 of the upload up to the part's end.
    pub hashes: SegmentHashes,
    /// What the bytes backend keeps of the part (an S3 part's ETag, say).
    pub part_info: Option<Value>,
}

/// A recorded append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The segment's number.
    pub number: u32,
    /// The new offset (where the upload now ends).
    pub end: u64,
}

/// The outcome of a claim.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per complete, never stored
pub enum Claim {
    /// This caller won: the session and its segments, now claimed under the token.
    Won(SessionRecord, Vec<SegmentRecord>, ClaimToken),
    /// Another caller claimed it first (`Claimed`), or finished it (`Finished`).
    Lost(SessionState),
}

/// A session removed by an abort or a sweep, with what the bytes backend must delete.
#[derive(Debug, Clone)]
pub struct RemovedSession {
    /// The session as it was.
    pub record: SessionRecord,
    /// Its segments (their part info names the objects or parts to delete).
    pub segments: Vec<SegmentRecord>,
    /// Bytes its reservation held, now released.
    pub released: u64,
    /// Its three-step parts (their objects to delete).
    pub parts: Vec<super::parts::PartRecord>,
}

const SESSION_COLUMNS: &str = "session, state, end_offset, file_key, file_size";
const SEGMENT_COLUMNS: &str = "number, start_offset, size, sha_state, crc32, part_info";

fn session_from_row(row: &PgRow) -> CatalogResult<SessionRecord> {
    let json: Value = row.try_get("session")?;
    let session: Session = serde_json::from_value(json)
        .map_err(|e| CatalogError::Corrupt(format!("session JSON: {e}")))?;
    let state: String = row.try_get("state")?;
    let key: Option<String> = row.try_get("file_key")?;
    let size: Option<i64> = row.try_get("file_size")?;
    Ok(SessionRecord {
        session,
        state: SessionState::parse(&state)?,
        offset: to_u64(row.try_get("end_offset")?)?,
        finished: match (key, size) {
            (Some(k), Some(s)) => Some((k, to_u64(s)?)),
            _ => None,
        },
    })
}

fn segment_from_row(row: &PgRow) -> CatalogResult<SegmentRecord> {
    let number: i32 = row.try_get("number")?;
    let crc: i64 = row.try_get("crc32")?;
    Ok(SegmentRecord {
        number: u32::try_from(number)
            .map_err(|_| CatalogError::Corrupt(format!("segment number {number}")))?,
        offset: to_u64(row.try_get("start_offset")?)?,
        size: to_u64(row.try_get("size")?)?,
        hashes: SegmentHashes {
            sha_state: row.try_get("sha_state")?,
            crc32: u32::try_from(crc).map_err(|_| CatalogError::Corrupt(format!("crc {crc}")))?,
        },
        part_info: row.try_get("part_info")?,
    })
}

pub(super) fn session_uuid(id: SessionId) -> CatalogResult<uuid::Uuid> {
    uuid(id)
}

fn uuid(id: SessionId) -> CatalogResult<uuid::Uuid> {
    uuid::Uuid::parse_str(&id.to_string()).map_err(|e| CatalogError::Corrupt(e.to_string()))
}

/// Locks session `id` and reads it; not found when absent.
async fn lock_session(conn: &mut PgConnection, id: SessionId) -> CatalogResult<SessionRecord> {
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 FOR UPDATE"
    ))
    .bind(uuid(id)?)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| not_found(Missing::Session))?;
    session_from_row(&row)
}

/// Locks session `id`, which must be live and unexpired: a claimed one is
/// [`StoreError::Busy`], a finished or expired one is not found.
pub(super) async fn lock_live(
    conn: &mut PgConnection,
    id: SessionId,
) -> CatalogResult<SessionRecord> {
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS}, expires_at > now() AS open FROM sessions WHERE id = $1
         FOR UPDATE NOWAIT"
    ))
    .bind(uuid(id)?)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| not_found(Missing::Session))?;
    let open: bool = row.try_get("open")?;
    let record = session_from_row(&row)?;
    match record.state {
        _ if !open => Err(not_found(Missing::Session)),
        SessionState::Live => Ok(record),
        SessionState::Claimed => Err(StoreError::Busy.into()),
        SessionState::Finished => Err(not_found(Missing::Session)),
    }
}

/// Whether `e` is PostgreSQL's answer to `FOR UPDATE NOWAIT` on a row another transaction
/// holds (`55P03 lock_not_available`).
pub(super) fn locked(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

/// How long a change of a session's parts waits for another holding the session (a part
/// commit sending its part to the bucket under the lock) before it is
/// [`StoreError::Busy`].
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `attempt`, a transaction that locks a session row with `FOR UPDATE NOWAIT`, again
/// while another transaction holds that row. The wait polls with no connection held: a
/// commit holding a session while it sends a part to the bucket cannot drain the pool
/// with the requests queued behind it. Still held after [`LOCK_WAIT`]:
/// [`StoreError::Busy`].
pub(super) async fn when_unlocked<T, F, Fut>(mut attempt: F) -> CatalogResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CatalogResult<T>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match attempt().await {
            Err(CatalogError::Db(e)) if locked(&e) => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::Busy.into());
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

/// Inserts session `s` as live (the caller reserves its bytes).
pub(super) async fn insert_session(conn: &mut PgConnection, s: &Session) -> CatalogResult<()> {
    let json =
        serde_json::to_value(s).map_err(|e| CatalogError::Corrupt(format!("session JSON: {e}")))?;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, session, length, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid(s.upload_id)?)
    .bind(s.user_id.as_str())
    .bind(json)
    .bind(s.length().map(to_i64).transpose()?)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Locks session `id`, which must be claimed under `token` (by the caller, who is
/// publishing it). Claimed under another token, or live again (the caller's claim lapsed and
/// was taken over): [`StoreError::Busy`]; finished or gone: not found.
pub(super) async fn lock_claimed(
    conn: &mut PgConnection,
    id: SessionId,
    token: ClaimToken,
) -> CatalogResult<()> {
    let row = sqlx::query("SELECT state, claim_token FROM sessions WHERE id = $1 FOR UPDATE")
        .bind(uuid(id)?)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| not_found(Missing::Session))?;
    let holder: Option<uuid::Uuid> = row.try_get("claim_token")?;
    match SessionState::parse(&row.try_get::<String, _>("state")?)? {
        SessionState::Claimed if holder == Some(token.0) => Ok(()),
        SessionState::Claimed | SessionState::Live => Err(StoreError::Busy.into()),
        SessionState::Finished => Err(not_found(Missing::Session)),
    }
}

/// Marks the claimed session `id` (locked by the caller) finished with its file, and drops
/// its segments (the bytes are published).
pub(super) async fn finish_locked(
    conn: &mut PgConnection,
    id: SessionId,
    key: &str,
    size: u64,
) -> CatalogResult<()> {
    let id = uuid(id)?;
    let done = sqlx::query(
        "UPDATE sessions SET state = 'finished', file_key = $2, file_size = $3,
                claimed_at = NULL, claim_token = NULL, lease_until = NULL
         WHERE id = $1 AND state = 'claimed'",
    )
    .bind(id)
    .bind(key)
    .bind(to_i64(size)?)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if done == 0 {
        return Err(not_found(Missing::Session));
    }
    sqlx::query("DELETE FROM parts WHERE session_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM segments WHERE session_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn segments_of(conn: &mut PgConnection, id: uuid::Uuid) -> CatalogResult<Vec<SegmentRecord>> {
    sqlx::query(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM segments WHERE session_id = $1 ORDER BY number"
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(segment_from_row)
    .collect()
}

impl PgCatalog {
    /// Records a new live session and reserves `reserve` bytes for it (reservation id: the
    /// session id) against `limit`, all or nothing ([`StoreError::Quota`]).
    pub async fn create_session(
        &self,
        session: &Session,
        reserve: u64,
        limit: u64,
    ) -> CatalogResult<()> {
        let json = serde_json::to_value(session)
            .map_err(|e| CatalogError::Corrupt(format!("session JSON: {e}")))?;
        let user = session.user_id.as_str();
        let mut tx = self.pool.begin().await?;
        let (used, _, reserved) = lock_quota(&mut tx, user).await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, session, length, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid(session.upload_id)?)
        .bind(user)
        .bind(json)
        .bind(session.length().map(to_i64).transpose()?)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
        if reserve > 0 {
            let id = session.upload_id.to_string();
            reserve_locked(&mut tx, user, &id, reserve, limit, (used, reserved)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Session `id`, in any state, while it has not expired.
    pub async fn session(&self, id: SessionId) -> CatalogResult<SessionRecord> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 AND expires_at > now()"
        ))
        .bind(uuid(id)?)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found(Missing::Session))?;
        session_from_row(&row)
    }

    /// Session `id`'s segments, by number.
    pub async fn segments(&self, id: SessionId) -> CatalogResult<Vec<SegmentRecord>> {
        let mut conn = self.pool.acquire().await?;
        segments_of(&mut conn, uuid(id)?).await
    }

    /// Records an append of `size` bytes at `expected_offset` to live session `id`, which
    /// succeeds only when `expected_offset` is where the upload ends: otherwise
    /// [`StoreError::OffsetMismatch`] with the current offset. Past a declared length:
    /// [`StoreError::TooLarge`]. A claimed session is [`StoreError::Busy`]; a finished or
    /// expired one is not found. An empty append records nothing.
    pub async fn append_segment(
        &self,
        id: SessionId,
        expected_offset: u64,
        size: u64,
        hashes: &SegmentHashes,
        part_info: Option<&Value>,
    ) -> CatalogResult<Appended> {
        let sid = uuid(id)?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT state, end_offset, length, expires_at > now() AS open
             FROM sessions WHERE id = $1 FOR UPDATE",
        )
        .bind(sid)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found(Missing::Session))?;
        let open: bool = row.try_get("open")?;
        match SessionState::parse(&row.try_get::<String, _>("state")?)? {
            _ if !open => return Err(not_found(Missing::Session)),
            SessionState::Live => {}
            SessionState::Claimed => return Err(StoreError::Busy.into()),
            SessionState::Finished => return Err(not_found(Missing::Session)),
        }
        let end = to_u64(row.try_get("end_offset")?)?;
        if end != expected_offset {
            return Err(StoreError::OffsetMismatch { offset: end }.into());
        }
        let length: Option<i64> = row.try_get("length")?;
        let new_end = end.checked_add(size).ok_or(StoreError::TooLarge)?;
        if let Some(length) = length {
            if new_end > to_u64(length)? {
                return Err(StoreError::TooLarge.into());
            }
        }
        let last: Option<i32> =
            sqlx::query("SELECT max(number) FROM segments WHERE session_id = $1")
                .bind(sid)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let number = last.map_or(1, |n| n + 1);
        if size > 0 {
            sqlx::query(&format!(
                "INSERT INTO segments (session_id, {SEGMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(sid)
            .bind(number)
            .bind(to_i64(end)?)
            .bind(to_i64(size)?)
            .bind(&hashes.sha_state)
            .bind(i64::from(hashes.crc32))
            .bind(part_info)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE sessions SET end_offset = $2 WHERE id = $1")
                .bind(sid)
                .bind(to_i64(new_end)?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Appended {
            number: u32::try_from(number)
                .map_err(|_| CatalogError::Corrupt(format!("segment number {number}")))?,
            end: new_end,
        })
    }

    /// Declares the length of live session `id` whose length was deferred, reserving it
    /// against `limit` (replacing any reservation of the session). The same length again is
    /// fine; another, or one below the bytes received, is [`StoreError::LengthMismatch`].
    /// Returns the session as it now is.
    pub async fn declare_length(
        &self,
        id: SessionId,
        length: u64,
        limit: u64,
    ) -> CatalogResult<Session> {
        let mut tx = self.pool.begin().await?;
        let record = lock_session(&mut tx, id).await?;
        if record.state != SessionState::Live {
            return Err(not_found(Missing::Session));
        }
        let mut session = record.session;
        if let Some(declared) = session.length() {
            return if declared == length {
                Ok(session)
            } else {
                Err(StoreError::LengthMismatch {
                    declared: Some(declared),
                    offset: record.offset,
                }
                .into())
            };
        }
        if length < record.offset {
            return Err(StoreError::LengthMismatch {
                declared: None,
                offset: record.offset,
            }
            .into());
        }
        let user = session.user_id.as_str().to_owned();
        let (used, _, reserved) = lock_quota(&mut tx, &user).await?;
        reserve_locked(
            &mut tx,
            &user,
            &id.to_string(),
            length,
            limit,
            (used, reserved),
        )
        .await?;
        session.file.size = length;
        if let Some(r) = session.resumable.as_mut() {
            r.length_deferred = false;
        }
        let json = serde_json::to_value(&session)
            .map_err(|e| CatalogError::Corrupt(format!("session JSON: {e}")))?;
        sqlx::query("UPDATE sessions SET session = $2, length = $3 WHERE id = $1")
            .bind(uuid(id)?)
            .bind(json)
            .bind(to_i64(length)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(session)
    }

    /// Claims session `id` for a complete: of racing claims on any instances exactly one
    /// wins. A live session is claimed; so is a claimed one whose lease lapsed (the complete
    /// holding it died), taken over with a new token. The loser learns whether the session
    /// is being completed or finished; an unknown or expired session is not found.
    pub async fn claim(&self, id: SessionId) -> CatalogResult<Claim> {
        let sid = uuid(id)?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT state, expires_at > now() AS open, {LEASE_END} < now() AS lapsed, claimed_at
             FROM sessions WHERE id = $1 FOR UPDATE NOWAIT"
        ))
        .bind(sid)
        .fetch_optional(&mut *tx)
        .await;
        let row = match row {
            // A part commit holds the row while it sends the part to the bucket: the
            // session is busy as when claimed, and the caller polls (holding no connection).
            Err(e) if locked(&e) => return Ok(Claim::Lost(SessionState::Claimed)),
            row => row?.ok_or_else(|| not_found(Missing::Session))?,
        };
        if !row.try_get::<bool, _>("open")? {
            return Err(not_found(Missing::Session));
        }
        match SessionState::parse(&row.try_get::<String, _>("state")?)? {
            SessionState::Live => {}
            SessionState::Claimed if row.try_get::<Option<bool>, _>("lapsed")? == Some(true) => {
                let since: Option<DateTime<Utc>> = row.try_get("claimed_at")?;
                tracing::warn!(
                    session = %id,
                    claimed_at = ?since,
                    "taking over a claim whose lease lapsed (the complete holding it stopped)"
                );
            }
            state => return Ok(Claim::Lost(state)),
        }
        let token = ClaimToken(uuid::Uuid::new_v4());
        let row = sqlx::query(&format!(
            "UPDATE sessions SET state = 'claimed', claimed_at = now(), claim_token = $2,
                    lease_until = now() + make_interval(secs => $3)
             WHERE id = $1
             RETURNING {SESSION_COLUMNS}"
        ))
        .bind(sid)
        .bind(token.0)
        .bind(CLAIM_LEASE.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        let record = session_from_row(&row)?;
        let segments = segments_of(&mut tx, sid).await?;
        tx.commit().await?;
        Ok(Claim::Won(record, segments, token))
    }

    /// Renews the lease of the claim `token` holds on session `id` for another
    /// [`CLAIM_LEASE`]. False when the claim is no longer this token's (it lapsed and was
    /// taken over, or the session is gone).
    pub async fn renew(&self, id: SessionId, token: ClaimToken) -> CatalogResult<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET lease_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND state = 'claimed' AND claim_token = $2",
        )
        .bind(uuid(id)?)
        .bind(token.0)
        .bind(CLAIM_LEASE.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Gives the claim `token` holds back (a complete that failed, say on a SHA-256
    /// mismatch): the session is live again, its segments and reservation untouched. Not
    /// found when the claim is no longer this token's.
    pub async fn unclaim(&self, id: SessionId, token: ClaimToken) -> CatalogResult<()> {
        let done = sqlx::query(
            "UPDATE sessions SET state = 'live', claimed_at = NULL, claim_token = NULL,
                    lease_until = NULL
             WHERE id = $1 AND state = 'claimed' AND claim_token = $2",
        )
        .bind(uuid(id)?)
        .bind(token.0)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(not_found(Missing::Session));
        }
        Ok(())
    }

    /// Marks session `id`, claimed under `token`, finished with the file at `key` (`size` bytes), kept for
    /// `HEAD` until it expires; its segments go. (A publish does this itself, in its own
    /// transaction: see [`PgCatalog::publish`].)
    pub async fn finish(
        &self,
        id: SessionId,
        token: ClaimToken,
        key: &str,
        size: u64,
    ) -> CatalogResult<()> {
        let mut tx = self.pool.begin().await?;
        lock_claimed(&mut tx, id, token).await?;
        finish_locked(&mut tx, id, key, size).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends live session `id` unfinished (tus termination, draft `DELETE`, a three-step
    /// abort): the row and its segments go, its reservation is released. Returns what was
    /// removed, so the bytes backend can delete them. A claimed session is
    /// [`StoreError::Busy`]; a finished one is not found.
    pub async fn abort(&self, id: SessionId) -> CatalogResult<RemovedSession> {
        let sid = uuid(id)?;
        let mut tx = self.pool.begin().await?;
        let record = lock_session(&mut tx, id).await?;
        match record.state {
            SessionState::Live => {}
            SessionState::Claimed => return Err(StoreError::Busy.into()),
            SessionState::Finished => return Err(not_found(Missing::Session)),
        }
        let segments = segments_of(&mut tx, sid).await?;
        let parts = super::parts::parts_of(&mut tx, sid).await?;
        let user = record.session.user_id.as_str().to_owned();
        lock_quota(&mut tx, &user).await?;
        let released = release_locked(&mut tx, &user, &id.to_string()).await?;
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RemovedSession {
            record,
            segments,
            released,
            parts,
        })
    }

    /// Forgets finished session `id` (tus termination of a finished upload; its file
    /// stays). Not found unless it is finished.
    pub async fn forget_finished(&self, id: SessionId) -> CatalogResult<()> {
        let done = sqlx::query("DELETE FROM sessions WHERE id = $1 AND state = 'finished'")
            .bind(uuid(id)?)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if done == 0 {
            return Err(not_found(Missing::Session));
        }
        Ok(())
    }

    /// The live, unexpired final concatenations of `user` that join partial upload
    /// `partial` (tus concatenation-unfinished: made before the partial was complete).
    pub async fn finals_waiting_for(
        &self,
        user: &str,
        partial: SessionId,
    ) -> CatalogResult<Vec<Session>> {
        sqlx::query(
            "SELECT session FROM sessions
             WHERE user_id = $1 AND state = 'live' AND expires_at > now()
               AND session->'resumable'->'concat'
                   @> jsonb_build_object('kind', 'final', 'parts', jsonb_build_array($2::text))",
        )
        .bind(user)
        .bind(partial.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let json: Value = row.try_get("session")?;
            serde_json::from_value(json)
                .map_err(|e| CatalogError::Corrupt(format!("session JSON: {e}")))
        })
        .collect()
    }

    /// Removes sessions expired at `now` (live and finished ones; a claimed one only once
    /// its lease lapsed by the database's clock, which set it: a complete that crashed),
    /// at most `batch`
    /// of them, releasing their reservations. Safe with every instance sweeping at once:
    /// rows another sweep (or a request) holds are skipped, so each session is removed
    /// exactly once. Returns what was removed, for the bytes backend to delete.
    pub async fn sweep_expired(
        &self,
        now: DateTime<Utc>,
        batch: u32,
    ) -> CatalogResult<Vec<RemovedSession>> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT id, {SESSION_COLUMNS} FROM sessions
             WHERE expires_at <= $1 AND (state <> 'claimed' OR {LEASE_END} <= now())
             ORDER BY expires_at LIMIT $2
             FOR UPDATE SKIP LOCKED"
        ))
        .bind(now)
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await?;
        let mut removed = Vec::with_capacity(rows.len());
        for row in &rows {
            let sid: uuid::Uuid = row.try_get("id")?;
            let record = session_from_row(row)?;
            let segments = segments_of(&mut tx, sid).await?;
            let parts = super::parts::parts_of(&mut tx, sid).await?;
            removed.push((sid, record, segments, parts));
        }
        // Quota rows in user order: two sweeps never wait on each other in a cycle.
        removed.sort_by(|a, b| {
            a.1.session
                .user_id
                .cmp(&b.1.session.user_id)
                .then(a.0.cmp(&b.0))
        });
        let mut out = Vec::with_capacity(removed.len());
        let mut locked: Option<String> = None;
        for (sid, record, segments, parts) in removed {
            let user = record.session.user_id.as_str().to_owned();
            if locked.as_deref() != Some(user.as_str()) {
                lock_quota(&mut tx, &user).await?;
                locked = Some(user.clone());
            }
            let released = release_locked(&mut tx, &user, &sid.to_string()).await?;
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(sid)
                .execute(&mut *tx)
                .await?;
            out.push(RemovedSession {
                record,
                segments,
                released,
                parts,
            });
        }
        tx.commit().await?;
        Ok(out)
    }
}
