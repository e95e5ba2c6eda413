//! The catalog in PostgreSQL (issue #14): file records, the quota ledger with reservations,
//! upload sessions and their segments, batch tokens and the shared signing key, consistent
//! across any number of instances. Knows nothing of HTTP, nor of where the bytes are.
//!
//! Every change that must hold across instances is one transaction, and the rows it
//! depends on are locked in one order: a session row, then the user's quota row (several
//! quota rows only by the sweep, sorted by user). So concurrent requests on any instances
//! serialise per session and per user, and never deadlock.
//!
//! The schema is `migrations/`, applied at connect by `sqlx::migrate!` under its advisory
//! lock (instances starting together apply it once).

mod batch;
mod files;
mod parts;
mod quota;
mod sessions;
mod signing_key;

pub use files::{FileRecord, ListPage};
pub use parts::{PartRecord, PartsLock, Place};
pub use quota::{Publish, Usage};
pub use sessions::{
    Appended, Claim, ClaimToken, RemovedSession, SegmentRecord, SessionRecord, SessionState,
    CLAIM_LEASE,
};

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{Missing, StoreError};

/// What can go wrong in the catalog: the store's own outcomes (not found, quota, offset
/// mismatch, ...) as [`StoreError`]s, and the database's failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database cannot be reached (or refuses us) at start. The URL is shown without
    /// its password.
    #[error("cannot connect to the database at DATABASE_URL={url}: {reason}")]
    Unreachable {
        /// `DATABASE_URL` with the password left out.
        url: String,
        /// Why.
        reason: String,
    },
    /// `DATABASE_URL` is no PostgreSQL URL.
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    /// The migrations could not be applied.
    #[error("cannot apply the catalog migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An outcome the store knows (not found, quota, offset mismatch, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file record with this key exists already.
    #[error("a file with this key exists")]
    KeyTaken,
    /// A row that does not parse back (written by hand, or by a newer version).
    #[error("corrupt catalog row: {0}")]
    Corrupt(String),
    /// Any other database failure (connection lost, timeout, ...).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<CatalogError> for StoreError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Store(e) => e,
            e @ (CatalogError::Db(_) | CatalogError::Unreachable { .. }) => {
                StoreError::Backend(e.to_string())
            }
            other => StoreError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// The result type of the catalog.
pub type CatalogResult<T> = Result<T, CatalogError>;

fn not_found(what: Missing) -> CatalogError {
    CatalogError::Store(StoreError::NotFound(what))
}

/// A byte count for a `bigint` column: sizes past `i64::MAX` are too large for anything.
fn to_i64(n: u64) -> CatalogResult<i64> {
    i64::try_from(n).map_err(|_| CatalogError::Store(StoreError::TooLarge))
}

/// A `bigint` column back to a byte count (the schema keeps them non-negative).
fn to_u64(n: i64) -> CatalogResult<u64> {
    u64::try_from(n).map_err(|_| CatalogError::Corrupt(format!("negative count {n}")))
}

/// `url` with its password replaced, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        // Not a URL: show only the scheme-ish start, a password could be anywhere after.
        Err(_) => "(unparsable)".to_owned(),
    }
}

/// The PostgreSQL catalog: a connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgCatalog {
    pool: PgPool,
}

/// The migrations in `migrations/`, built into the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl PgCatalog {
    /// Connects to `url` (`DATABASE_URL`) with at most `pool_size` connections, checks the
    /// connection and applies the migrations. An unreachable database is
    /// [`CatalogError::Unreachable`], naming `DATABASE_URL` without its password.
    pub async fn connect(url: &str, pool_size: u32) -> CatalogResult<Self> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| CatalogError::BadUrl(e.to_string().replace(url, "…")))?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| CatalogError::Unreachable {
                url: redact(url),
                reason: e.to_string(),
            })?;
        let catalog = Self { pool };
        catalog.migrate().await?;
        Ok(catalog)
    }

    /// Applies the migrations not yet applied (a no-op when all are). Safe from several
    /// instances at once: sqlx holds an advisory lock while it migrates.
    pub async fn migrate(&self) -> CatalogResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Is the database answering? (`/healthz`.)
    pub async fn health(&self) -> CatalogResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The pool, for the tests and the wiring to come.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection (at shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        let shown = redact("postgres://app:s3cret@db.example:5432/upload");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.example"));
        assert_eq!(redact("not a url s3cret"), "(unparsable)");
    }
}
