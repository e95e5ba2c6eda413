//! Upload sessions on disk: `.parts/{uploadId}/session.json` and `part_{n:06}` files, so a
//! session survives a restart and is seen by every instance sharing the root.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::StoreError;

/// Highest part number a client may send.
pub const MAX_PART_NUMBER: u32 = 100_000;

/// A session id: a UUID, parsed so it can only name a folder inside `.parts/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(uuid::Uuid);

impl SessionId {
    /// A new random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    /// Parses a client's id; anything but a UUID is unknown.
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        uuid::Uuid::parse_str(raw.trim())
            .map(Self)
            .map_err(|_| StoreError::NotFound("Upload session not found".to_owned()))
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A file announced at init.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSpec {
    /// The client's file name (checked, not yet sanitised).
    pub name: String,
    /// Declared size in bytes.
    pub size: u64,
    /// Declared MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
}

/// What `session.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id.
    pub upload_id: String,
    /// Owner.
    pub user_id: String,
    /// `single`, `chunked` or `batch`.
    pub mode: String,
    /// The file this session receives.
    pub file: FileSpec,
    /// The folder given at init, as the client wrote it.
    #[serde(default)]
    pub folder: Option<String>,
    /// Fields of init's `meta` (other than the user's), kept for the sidecar.
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// When the session was made.
    pub created_at: DateTime<Utc>,
    /// When the sweep removes it.
    pub expires_at: DateTime<Utc>,
}

impl SessionInfo {
    /// Is the session past its time?
    pub fn expired(&self) -> bool {
        Utc::now() >= self.expires_at
    }
}

/// Paths inside `.parts/`.
#[derive(Debug, Clone)]
pub struct SessionDirs {
    /// `UPLOAD_ROOT/.parts`.
    pub parts: PathBuf,
}

impl SessionDirs {
    /// The live folder of a session.
    pub fn live(&self, id: &SessionId) -> PathBuf {
        self.parts.join(id.to_string())
    }
    /// The folder of a session claimed by a complete in progress.
    pub fn claimed(&self, id: &SessionId) -> PathBuf {
        self.parts.join(format!(".claimed-{id}"))
    }
    /// The folder of a one-request upload in progress.
    pub fn upload(&self, id: &SessionId) -> PathBuf {
        self.parts.join(format!(".upload-{id}"))
    }
    /// Where JSON parts are decoded before their session is known.
    pub fn staging(&self) -> PathBuf {
        self.parts.join(".staging")
    }
}

/// The file name of part `n`.
pub fn part_file_name(n: u32) -> String {
    format!("part_{n:06}")
}

/// Reads `session.json` in `dir`.
pub fn read_info(dir: &Path) -> Result<SessionInfo, StoreError> {
    let bytes = match std::fs::read(dir.join("session.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
            return Err(StoreError::NotFound("Upload session not found".to_owned()))
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Io(std::io::Error::other(format!("corrupt session.json: {e}"))))
}

/// The parts in `dir`, by number, with their sizes.
pub fn list_parts(dir: &Path) -> Result<Vec<(u32, u64)>, StoreError> {
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("part_"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        parts.push((n, entry.metadata()?.len()));
    }
    parts.sort_unstable();
    Ok(parts)
}

/// The hashes of a part, taken as it arrived, and the identity of the file they belong to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartSum {
    /// Inode of the part file.
    pub ino: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Its size.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
    /// CRC-32.
    pub crc32: u32,
}

fn sum_path(part: &Path) -> PathBuf {
    let mut s = part.as_os_str().to_owned();
    s.push(".sum");
    PathBuf::from(s)
}

fn identity(part: &Path) -> Option<(u64, i128, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(part).ok()?;
    Some((
        md.ino(),
        i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        md.len(),
    ))
}

/// Records a committed part's hashes beside it (best effort: without them, complete reads
/// the part again).
pub fn write_sum(part: &Path, written: &super::sink::Written) {
    let (Some(sha256), Some(crc32)) = (written.sha256.clone(), written.crc32) else {
        return;
    };
    let Some((ino, mtime_ns, size)) = identity(part) else {
        return;
    };
    let sum = PartSum {
        ino,
        mtime_ns,
        size,
        sha256,
        crc32,
    };
    let _ = std::fs::write(sum_path(part), serde_json::to_vec(&sum).unwrap_or_default());
}

/// The hashes of `part` if they were recorded for this very file.
pub fn read_sum(part: &Path, size: u64) -> Option<PartSum> {
    let sum: PartSum = serde_json::from_slice(&std::fs::read(sum_path(part)).ok()?).ok()?;
    let (ino, mtime_ns, len) = identity(part)?;
    (sum.ino == ino && sum.mtime_ns == mtime_ns && sum.size == len && len == size).then_some(sum)
}
