//! Upload sessions on disk: `.parts/{uploadId}/session.json` and the parts, so a session
//! survives a restart and is seen by every instance sharing the root.
//!
//! A part is kept one of two ways:
//! - a **segment**: parts that arrive in order are appended to the session's `data` file
//!   while they stream in; `seg_{n:06}_{offset}_{size}` records where part `n` lies in it
//!   and holds the hash state (SHA-256, CRC-32) of `data` up to the part's end. When every
//!   part is a segment and they lie back to back from offset 0 in part order (a *chain*),
//!   `data` is the file and the last segment's hash state is its hash: complete is a hard
//!   link.
//! - a **part file** `part_{n:06}` (with its own hashes in `part_{n:06}.sum`): a part that
//!   arrives out of order, while another part is being appended, or replacing a part
//!   received before. Complete then joins the parts into a new file.
//!
//! A part file and a segment of the same number coexist only after a crash in the middle
//! of a replacement; the part file wins. (It is the newer one, unless two requests for the
//! same part raced, when either outcome is right.)

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::key::{ClientFileName, FolderPath, UserId};
use super::{Missing, StoreError};

/// Highest part number a client may send.
pub const MAX_PART_NUMBER: u32 = 100_000;

/// A part's number: 0 to [`MAX_PART_NUMBER`] (clients start at 0 or 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartNumber(u32);

impl PartNumber {
    /// `n` when it is in range.
    pub fn new(n: u32) -> Option<Self> {
        (n <= MAX_PART_NUMBER).then_some(Self(n))
    }
    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for PartNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How init was asked to lay the upload out (API.md §3.1). Only `parts` of init's answer
/// depends on it; every mode ends in one session per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadMode {
    /// One file, usually one part.
    Single,
    /// Parts of 1 MiB; init says how many.
    Chunked,
    /// Several files, a session each.
    Batch,
}

impl UploadMode {
    /// The mode as clients write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Chunked => "chunked",
            Self::Batch => "batch",
        }
    }
}

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
            .map_err(|_| StoreError::NotFound(Missing::Session))
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        uuid::Uuid::parse_str(&raw)
            .map(Self)
            .map_err(serde::de::Error::custom)
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
    pub name: ClientFileName,
    /// Declared size in bytes.
    pub size: u64,
    /// Declared MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
}

/// An upload session, parsed once from its `session.json` (the same JSON as before the
/// fields were typed, so sessions in flight survive an upgrade) and handed to every later
/// step: parts, status, complete, abort and the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The session id.
    pub upload_id: SessionId,
    /// Owner.
    pub user_id: UserId,
    /// What init was asked for.
    pub mode: UploadMode,
    /// The file this session receives.
    pub file: FileSpec,
    /// The folder given at init, sanitised (API.md §7); `None`: the user's top level.
    #[serde(default, with = "folder_text")]
    pub folder: Option<FolderPath>,
    /// Fields of init's `meta` (other than the user's), kept for the sidecar.
    #[serde(default)]
    pub meta: Map<String, Value>,
    /// When the session was made.
    pub created_at: DateTime<Utc>,
    /// When the sweep removes it.
    pub expires_at: DateTime<Utc>,
    /// How a tus or IETF-draft upload goes on; `None` for the three-step API (whose
    /// `session.json` stays as it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumable: Option<Resumable>,
}

/// The standard protocols that append at an offset (`routes/resumable/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// tus 1.0.
    Tus,
    /// The IETF "Resumable Uploads for HTTP" draft.
    Ietf,
}

impl Protocol {
    /// The name shown in a session's status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tus => "tus",
            Self::Ietf => "ietf",
        }
    }
}

/// A session that grows by appending at its current offset. Its progress is the chain of
/// appended segments in the data file: the offset is where the chain ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumable {
    /// Which protocol made it.
    pub protocol: Protocol,
    /// The length is not known yet (tus `Upload-Defer-Length`, a draft upload without
    /// `Upload-Length`): `file.size` means nothing and nothing is reserved until it is
    /// declared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub length_deferred: bool,
    /// A part of a tus concatenation, or the concatenation itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat: Option<Concat>,
    /// tus `Upload-Metadata` as the client sent it, given back on `HEAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// The fingerprint of the signed upload URL that made it, if one did: requests
    /// authorised by a signed upload URL reach only the uploads that URL made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// tus concatenation (parallel uploads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Concat {
    /// Bytes kept for a final upload; never published on their own.
    Partial,
    /// The partial uploads joined, in order; takes no bytes of its own.
    Final {
        /// The partial sessions.
        parts: Vec<SessionId>,
    },
}

/// A folder in `session.json` as its text (`a/b`), sanitised again when read: sessions
/// written before the field was typed hold the client's text.
mod folder_text {
    use super::FolderPath;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        f: &Option<FolderPath>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match f {
            Some(f) => s.serialize_some(&f.as_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<FolderPath>, D::Error> {
        Ok(Option::<String>::deserialize(d)?
            .as_deref()
            .and_then(FolderPath::sanitize))
    }
}

impl Session {
    /// One new three-step session per file, all made now and expiring after `ttl`.
    pub fn for_files(
        user: &UserId,
        mode: UploadMode,
        files: Vec<FileSpec>,
        folder: Option<FolderPath>,
        meta: Map<String, Value>,
        ttl: std::time::Duration,
    ) -> Vec<Self> {
        let created_at = chrono::Utc::now();
        let expires_at =
            created_at + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(24));
        files
            .into_iter()
            .map(|file| Self {
                upload_id: SessionId::new(),
                user_id: user.clone(),
                mode,
                file,
                folder: folder.clone(),
                meta: meta.clone(),
                created_at,
                expires_at,
                resumable: None,
            })
            .collect()
    }

    /// Is the session past its time?
    pub fn expired(&self) -> bool {
        Utc::now() >= self.expires_at
    }

    /// The declared length, `None` while deferred.
    pub fn length(&self) -> Option<u64> {
        match &self.resumable {
            Some(r) if r.length_deferred => None,
            _ => Some(self.file.size),
        }
    }

    /// Is it a partial upload of a tus concatenation?
    pub fn is_partial(&self) -> bool {
        matches!(
            self.resumable.as_ref().and_then(|r| r.concat.as_ref()),
            Some(Concat::Partial)
        )
    }

    /// The partial sessions of a final concatenation.
    pub fn concat_parts(&self) -> Option<&[SessionId]> {
        match self.resumable.as_ref().and_then(|r| r.concat.as_ref()) {
            Some(Concat::Final { parts }) => Some(parts),
            _ => None,
        }
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
    /// Where finished resumable uploads are remembered until they expire.
    pub fn finished_dir(&self) -> PathBuf {
        self.parts.join(".finished")
    }
    /// The record of a finished resumable upload.
    pub fn finished(&self, id: &SessionId) -> PathBuf {
        self.finished_dir().join(format!("{id}.json"))
    }
}

/// The file name of part `n`.
pub fn part_file_name(n: u32) -> String {
    format!("part_{n:06}")
}

/// Reads `session.json` in `dir`.
pub fn read_info(dir: &Path) -> Result<Session, StoreError> {
    let bytes = match std::fs::read(dir.join("session.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
            return Err(StoreError::NotFound(Missing::Session))
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Io(std::io::Error::other(format!("corrupt session.json: {e}"))))
}

/// Writes `session.json` in `dir` whole: under a temporary name, fsynced, renamed, the
/// folder fsynced (a deferred length declared later rewrites it).
pub fn write_info(dir: &Path, info: &Session) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(format!(".session-{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(info)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join("session.json"))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The session's data file, where parts that arrive in order are appended.
pub const DATA_FILE: &str = "data";

/// Where a part lies in the session's data file. Its record, `seg_{n:06}_{offset}_{size}`
/// (the name says where, so listing the parts reads no file), holds the hash state of the
/// data file up to the part's end ([`SegmentHashes`]). Written once the part's bytes are
/// fsynced; the bytes of `data` below a recorded segment's end are never written again, so
/// the hash state stays true of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the part's first byte in `data`.
    pub offset: u64,
    /// The part's size.
    pub size: u64,
}

impl Segment {
    /// Offset just past the part.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
    fn file_name(&self, n: u32) -> String {
        format!("seg_{n:06}_{}_{}", self.offset, self.size)
    }
    fn parse(name: &str) -> Option<(u32, Self)> {
        let mut it = name.strip_prefix("seg_")?.split('_');
        let n = it.next()?.parse().ok()?;
        let offset = it.next()?.parse().ok()?;
        let size = it.next()?.parse().ok()?;
        it.next().is_none().then_some((n, Self { offset, size }))
    }
}

/// What a segment record holds: the hash state of `data[..offset + size]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentHashes {
    /// SHA-256 state, as [`super::sink::Hashes::state`] gives it.
    pub sha_state: String,
    /// CRC-32.
    pub crc32: u32,
}

/// How a part is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// Its own file, `part_{n:06}`.
    File,
    /// A range of the data file.
    Segment(Segment),
}

/// A received part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Its number.
    pub number: u32,
    /// Its size.
    pub size: u64,
    /// Where its bytes are.
    pub kind: PartKind,
}

/// The parts in `dir`, by number: one `readdir`, and a `stat` per part file.
pub fn read_parts(dir: &Path) -> Result<Vec<Part>, StoreError> {
    let mut files = std::collections::BTreeMap::new();
    let mut segments = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(n) = name
            .strip_prefix("part_")
            .and_then(|n| n.parse::<u32>().ok())
        {
            files.insert(n, entry.metadata()?.len());
        } else if let Some((n, seg)) = Segment::parse(name) {
            // Two records of one part cannot be made; should there be, the later append wins.
            let e = segments.entry(n).or_insert(seg);
            if seg.offset > e.offset {
                *e = seg;
            }
        }
    }
    let mut parts: Vec<Part> = files
        .iter()
        .map(|(&number, &size)| Part {
            number,
            size,
            kind: PartKind::File,
        })
        .collect();
    parts.extend(
        segments
            .into_iter()
            .filter(|(n, _)| !files.contains_key(n))
            .map(|(number, seg)| Part {
                number,
                size: seg.size,
                kind: PartKind::Segment(seg),
            }),
    );
    parts.sort_unstable_by_key(|p| p.number);
    Ok(parts)
}

/// The parts in `dir`, by number, with their sizes.
pub fn list_parts(dir: &Path) -> Result<Vec<(u32, u64)>, StoreError> {
    Ok(read_parts(dir)?
        .into_iter()
        .map(|p| (p.number, p.size))
        .collect())
}

/// When `parts` (by number) are all segments lying back to back from the start of the data
/// file, the last part: the hash state in its record is the hash of the joined parts.
/// `None` otherwise, and for no parts.
pub fn chain(parts: &[Part]) -> Option<(u32, Segment)> {
    let mut end = 0;
    let mut last = None;
    for p in parts {
        match p.kind {
            PartKind::Segment(seg) if seg.offset == end => {
                end = seg.end();
                last = Some((p.number, seg));
            }
            _ => return None,
        }
    }
    last
}

/// The hashes recorded with segment `seg` of part `n`; `None` if the record cannot be read.
pub fn read_segment_hashes(dir: &Path, n: u32, seg: &Segment) -> Option<SegmentHashes> {
    serde_json::from_slice(&std::fs::read(dir.join(seg.file_name(n))).ok()?).ok()
}

/// Records segment `seg` of part `n` in `dir`: written under a temporary name, renamed.
/// The caller has fsynced the part's bytes and fsyncs the folder, which makes the name
/// durable; the record's content is not fsynced (one flush less per part): after a power
/// cut it may be empty, and a record whose hashes cannot be read still counts by its name
/// (offset and size), only without the shortcut: the part is joined at complete and no
/// part is appended after it.
pub fn write_segment(
    dir: &Path,
    n: u32,
    seg: &Segment,
    hashes: &SegmentHashes,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(format!(".seg-{n}-{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(hashes)?)?;
        std::fs::rename(&tmp, dir.join(seg.file_name(n)))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes the segment record(s) of part `n`.
pub fn remove_segment(dir: &Path, n: u32) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name
            .to_str()
            .and_then(Segment::parse)
            .is_some_and(|(m, _)| m == n)
        {
            match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Removes part `n`'s part file and its hashes, if any.
pub fn remove_part_file(dir: &Path, n: u32) -> std::io::Result<()> {
    let part = dir.join(part_file_name(n));
    let _ = std::fs::remove_file(sum_path(&part));
    match std::fs::remove_file(&part) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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
    // Best effort: without it, complete hashes the part again.
    if let Ok(json) = serde_json::to_vec(&sum) {
        let _ = std::fs::write(sum_path(part), json);
    }
}

/// The hashes of `part` if they were recorded for this very file.
pub fn read_sum(part: &Path, size: u64) -> Option<PartSum> {
    let sum: PartSum = serde_json::from_slice(&std::fs::read(sum_path(part)).ok()?).ok()?;
    let (ino, mtime_ns, len) = identity(part)?;
    (sum.ino == ino && sum.mtime_ns == mtime_ns && sum.size == len && len == size).then_some(sum)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn seg(offset: u64, size: u64) -> PartKind {
        PartKind::Segment(Segment { offset, size })
    }

    fn part(number: u32, size: u64, kind: PartKind) -> Part {
        Part { number, size, kind }
    }

    #[test]
    fn a_chain_is_segments_back_to_back_from_zero() {
        let chained = [part(1, 5, seg(0, 5)), part(2, 3, seg(5, 3))];
        assert_eq!(chain(&chained), Some((2, Segment { offset: 5, size: 3 })));
        assert!(chain(&[]).is_none());
        // A gap, a part file, a first segment not at 0: no chain.
        assert!(chain(&[part(1, 5, seg(0, 5)), part(2, 3, seg(6, 3))]).is_none());
        assert!(chain(&[part(1, 5, seg(0, 5)), part(2, 3, PartKind::File)]).is_none());
        assert!(chain(&[part(0, 5, seg(3, 5))]).is_none());
        // The numbers may skip: only the order counts.
        assert!(chain(&[part(0, 5, seg(0, 5)), part(7, 1, seg(5, 1))]).is_some());
    }

    #[test]
    fn parts_are_listed_from_names_and_a_part_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let h = SegmentHashes {
            sha_state: "ab".into(),
            crc32: 1,
        };
        let s0 = Segment { offset: 0, size: 4 };
        write_segment(dir.path(), 0, &s0, &h).unwrap();
        write_segment(dir.path(), 1, &Segment { offset: 4, size: 4 }, &h).unwrap();
        std::fs::write(dir.path().join(part_file_name(1)), b"xyz").unwrap();
        std::fs::write(dir.path().join("part_000001.sum"), b"{}").unwrap();
        std::fs::write(dir.path().join("seg_000002_x_1"), b"").unwrap();
        std::fs::write(dir.path().join(".seg-3-tmp"), b"").unwrap();
        let parts = read_parts(dir.path()).unwrap();
        assert_eq!(
            parts,
            vec![
                part(0, 4, PartKind::Segment(s0)),
                part(1, 3, PartKind::File)
            ]
        );
        assert_eq!(list_parts(dir.path()).unwrap(), vec![(0, 4), (1, 3)]);
        assert_eq!(read_segment_hashes(dir.path(), 0, &s0), Some(h));
        remove_segment(dir.path(), 0).unwrap();
        assert_eq!(list_parts(dir.path()).unwrap(), vec![(1, 3)]);
    }
}
