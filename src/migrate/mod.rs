//! `upload-server migrate` and `upload-server reindex` (issue 14): moving a filesystem store
//! (`UPLOAD_ROOT/storage`) into the bucket and catalog of `STORAGE_BACKEND=s3`, and
//! rebuilding the catalog's file rows from the bucket. Here: what both share (reaching the
//! target, the progress line, the exit codes); the work is in `copy` and `reindex`.
//!
//! The bucket holds the tree of `UPLOAD_ROOT/storage` under `S3_PREFIX`: each file at its key,
//! its JSON sidecar beside it at key + `.meta`, with the sidecar's text as the filesystem
//! holds it. The catalog row is written last, so a row always means a whole file.

mod copy;
mod progress;
mod reindex;

pub use copy::run as migrate;
pub use reindex::{run as reindex, ReindexOptions};

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;

use crate::config::{Backend, Settings};
use crate::store::pg::PgCatalog;
use crate::store::s3::{S3Bytes, WRITER_RESERVATION};
use crate::store::sidecar::Meta;

/// Files copied or checked at once.
const JOBS: usize = 4;

/// How a run ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every file done (copied, skipped or indexed): exit 0.
    Done,
    /// Some files failed (each was reported); the others are done: exit 1.
    SomeFailed,
    /// Nothing was done: a setting is wrong or the bucket or database cannot be reached
    /// (one line on stderr names it): exit 2.
    Unusable,
}

impl Outcome {
    /// The exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::SomeFailed => 1,
            Self::Unusable => 2,
        }
    }
}

/// The bucket and catalog of `STORAGE_BACKEND=s3`.
struct Target {
    s3: S3Bytes,
    catalog: PgCatalog,
}

/// Reaches the bucket and the database named by the settings; `Err` is one line naming
/// the setting at fault (the database URL without its password).
async fn connect(settings: &Settings, command: &str) -> Result<Target, String> {
    let Backend::S3(cloud) = &settings.backend else {
        return Err(format!(
            "STORAGE_BACKEND: {command} needs STORAGE_BACKEND=s3, with the bucket (S3_*) and \
             the database (DATABASE_URL) to {}",
            if command == "migrate" {
                "copy into"
            } else {
                "rebuild"
            }
        ));
    };
    let mut s3 = cloud.s3.clone();
    // Room for every job's part buffer: the jobs run side by side, not in turn.
    s3.buffer_budget = s3.buffer_budget.max(JOBS * WRITER_RESERVATION);
    let s3 = S3Bytes::connect(&s3).await.map_err(|e| e.to_string())?;
    let pool = cloud.pool_size.min(JOBS as u32 + 1);
    let catalog = PgCatalog::connect(cloud.database_url.expose_secret(), pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Target { s3, catalog })
}

/// Logs of the libraries (a multipart upload that could not be aborted, say) on stderr,
/// warnings only unless `RUST_LOG` says otherwise: stdout is the summary's.
fn quiet_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A file's creation time for its row: the sidecar's `created_at` when it reads as RFC 3339,
/// else `fallback` (the file's mtime, or the object's date).
fn created_at(meta: &Meta, fallback: DateTime<Utc>) -> DateTime<Utc> {
    meta.created_at
        .as_deref()
        .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
        .map_or(fallback, |d| d.with_timezone(&Utc))
}

/// A modification time as a row's date.
fn to_utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

/// Bytes for people: `12.3 MiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Does the hex SHA-256 `a` name the same digest as `b` (case aside)?
fn same_sha(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }

    #[test]
    fn created_at_comes_from_the_sidecar_when_it_parses() {
        let fallback = DateTime::<Utc>::from(SystemTime::UNIX_EPOCH);
        let mut meta = crate::store::read::meta_from(
            None,
            &crate::store::key::Key::parse("storage/u/a.txt").unwrap(),
        );
        assert_eq!(created_at(&meta, fallback), fallback);
        meta.created_at = Some("2026-11-28T10:00:00.123456Z".into());
        assert_eq!(
            created_at(&meta, fallback).to_rfc3339(),
            "2026-11-28T10:00:00.123456+00:00"
        );
        meta.created_at = Some("yesterday".into());
        assert_eq!(created_at(&meta, fallback), fallback);
    }
}
