//! Reading the store: listing a user's files, a file's metadata, opening and deleting.
//! Works the same for files of the old service (thin sidecars, or none).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

use super::key::Key;
use super::pagecache::read_at;
use super::sidecar::{guess_mime, Meta};
use super::{blocking, FileStore, Missing, StoreError};

/// A stored file as listings and downloads see it.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Its key.
    pub key: Key,
    /// Metadata from the sidecar, or made up from the file for files without one.
    pub meta: Meta,
    /// Bytes on disk.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
    /// `created_at` from the sidecar, else the modification time, RFC 3339.
    pub created_at: String,
}

impl FileEntry {
    /// An entry from its parts; `created_at` falls back to the modification time.
    pub(super) fn new(key: Key, meta: Meta, size: u64, modified: SystemTime) -> Self {
        let created_at = meta.created_at.clone().unwrap_or_else(|| rfc3339(modified));
        Self {
            key,
            meta,
            size,
            modified,
            created_at,
        }
    }

    /// An entry from the data file's metadata.
    fn from_metadata(key: Key, meta: Meta, md: &std::fs::Metadata) -> Self {
        Self::new(key, meta, md.len(), md.modified().unwrap_or(UNIX_EPOCH))
    }
}

/// What a listing shows of a file (API.md §4.1): read by the catalog without the whole
/// sidecar, copied from a [`FileEntry`] by the filesystem's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: Key,
    /// The name it was uploaded under.
    pub original_name: String,
    /// Its MIME type.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&FileEntry> for Listed {
    fn from(e: &FileEntry) -> Self {
        Self {
            key: e.key.clone(),
            original_name: e.meta.original_name.clone(),
            mime: e.meta.mime.clone(),
            size: e.size,
            created_at: e.created_at.clone(),
        }
    }
}

/// A time as listings show it: RFC 3339, UTC, microseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Sidecars of files being served, by the data file's identity, so a hot file costs one
/// `openat2` per request, not two. An entry is used only while the data file keeps its inode,
/// size and modification time, and for the store's `sidecar_ttl` (`SIDECAR_CACHE_SECS`) at most: what a download needs from a
/// sidecar (type, original name) never changes after publish, and a sidecar edited by hand is
/// seen within that time.
#[derive(Debug, Default)]
pub struct MetaCache {
    map: Mutex<HashMap<(u64, u64), CachedMeta>>,
}

#[derive(Debug, Clone)]
struct CachedMeta {
    /// The key it was read for (two keys could share an inode only by hand-made hard links).
    key: Key,
    mtime: (i64, i64),
    size: u64,
    loaded: std::time::Instant,
    meta: Meta,
}

/// Most sidecars kept; past it the cache starts again.
const META_CACHE_MAX: usize = 50_000;

/// Sidecars larger than this are treated as unreadable (their file is served with
/// metadata made up from its name).
pub const MAX_SIDECAR: usize = 16 << 20;

/// Reads the sidecar of `data` (if any) into a `Meta`.
fn load_meta(data: &Path, key: &Key) -> Meta {
    meta_from(std::fs::read(Meta::path_for(data)).ok().as_deref(), key)
}

/// A `Meta` from a sidecar's bytes, or made up from the key when there is none (or it is not
/// valid JSON): files of the old service may have thin sidecars or none. `migrate` and
/// `reindex` make up the same metadata for such files.
pub fn meta_from(sidecar: Option<&[u8]>, key: &Key) -> Meta {
    let stored = key.file_name();
    // `{8 hex}_{name}`: the name without its prefix stands in for a missing original name.
    let fallback = match stored.split_once('_') {
        Some((p, rest)) if p.len() == 8 && p.bytes().all(|b| b.is_ascii_hexdigit()) => rest,
        _ => stored,
    };
    sidecar
        .and_then(|bytes| Meta::from_json(bytes, fallback, key.owner().as_str()))
        .unwrap_or_else(|| Meta {
            original_name: fallback.to_owned(),
            mime: guess_mime(fallback, None),
            sha256: None,
            crc32: None,
            user_id: key.owner().as_str().to_owned(),
            size: None,
            created_at: None,
            extra: serde_json::Map::new(),
        })
}

/// Whether an open may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Only what the kernel has in memory (dentries, inodes, page cache): safe on an async
    /// thread. Anything else answers "would block".
    Never,
    /// Read what must be read (a blocking thread).
    Allowed,
}

/// Opens a file's data, the way reads do (below the root, no symlinks): for readers that
/// open later, away from the request (the batch ZIP).
pub type DataOpener = Arc<dyn Fn() -> std::io::Result<std::fs::File> + Send + Sync>;

impl FileStore {
    /// Opens `key`'s data file without following any symlink, so a link planted inside
    /// `storage/` can never lead out of it. Returns the file and its entry.
    pub async fn open_file(&self, key: &Key) -> Result<(std::fs::File, FileEntry), StoreError> {
        let this = self.clone();
        let key = key.clone();
        blocking(move || this.open_blocking(&key)).await
    }

    /// How to open `key`'s data later, on a blocking thread, by the same no-symlink walk.
    pub fn data_opener(&self, key: &Key) -> DataOpener {
        let this = self.clone();
        let key = key.clone();
        Arc::new(move || {
            let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, "file gone");
            let file = this
                .open_beneath(&key.relative_path(), Wait::Allowed)
                .map_err(|_| gone())?
                .ok_or_else(gone)?;
            if !file.metadata()?.is_file() {
                return Err(gone());
            }
            Ok(file)
        })
    }

    /// The same as [`open_file`](Self::open_file) when everything it needs (the path's
    /// dentries, the inodes and the sidecar's bytes) is already in the kernel's caches, without
    /// leaving the calling thread: `Ok(None)` when it would have to wait for the disk. A hot
    /// file is served with no hop to a blocking thread.
    pub fn try_open_cached(
        &self,
        key: &Key,
    ) -> Result<Option<(std::fs::File, FileEntry)>, StoreError> {
        self.open_with(key, Wait::Never)
    }

    pub(super) fn open_blocking(
        &self,
        key: &Key,
    ) -> Result<(std::fs::File, FileEntry), StoreError> {
        self.open_with(key, Wait::Allowed)?
            .ok_or_else(|| StoreError::Io(std::io::Error::other("open would block")))
    }

    /// `openat2` below the root: no symlinks, no `..` out, no magic links.
    fn open_beneath(
        &self,
        rel: &Path,
        wait: Wait,
    ) -> Result<Option<std::fs::File>, rustix::io::Errno> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let mut resolve =
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        if wait == Wait::Never {
            resolve |= ResolveFlags::CACHED;
        }
        match rustix::fs::openat2(
            &*self.root_fd,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => Ok(Some(std::fs::File::from(fd))),
            Err(rustix::io::Errno::AGAIN) if wait == Wait::Never => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_with(
        &self,
        key: &Key,
        wait: Wait,
    ) -> Result<Option<(std::fs::File, FileEntry)>, StoreError> {
        use std::os::unix::fs::MetadataExt as _;
        let not_found = || StoreError::NotFound(Missing::File);
        let rel = key.relative_path();
        let file = match self.open_beneath(&rel, wait) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(rustix::io::Errno::NOSYS) => {
                if wait == Wait::Never {
                    return Ok(None);
                }
                // Kernels before 5.6: refuse any path that resolves elsewhere.
                let path = self.root.join(&rel);
                let real = path.canonicalize().map_err(|_| not_found())?;
                if real != self.root.canonicalize()?.join(&rel) {
                    return Err(not_found());
                }
                let file = std::fs::File::open(&path).map_err(|_| not_found())?;
                let md = file.metadata()?;
                if !md.is_file() {
                    return Err(not_found());
                }
                let entry = FileEntry::from_metadata(key.clone(), load_meta(&path, key), &md);
                return Ok(Some((file, entry)));
            }
            // Absent, or a path that a symlink or `..` would lead elsewhere: not there.
            Err(
                rustix::io::Errno::NOENT
                | rustix::io::Errno::NOTDIR
                | rustix::io::Errno::LOOP
                | rustix::io::Errno::XDEV
                | rustix::io::Errno::NAMETOOLONG,
            ) => return Err(not_found()),
            // Out of descriptors, permissions, I/O: a server fault, not a missing file.
            Err(e) => return Err(StoreError::Io(e.into())),
        };
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(not_found());
        }
        let id = (md.dev(), md.ino());
        let stamp = (md.mtime(), md.mtime_nsec());
        if wait == Wait::Never {
            let hit = self.meta_cache.map.lock().ok().and_then(|m| {
                m.get(&id)
                    .filter(|c| {
                        c.mtime == stamp
                            && c.size == md.len()
                            && c.key == *key
                            && c.loaded.elapsed() < self.sidecar_ttl
                    })
                    .map(|c| c.meta.clone())
            });
            if let Some(meta) = hit {
                return Ok(Some((
                    file,
                    FileEntry::from_metadata(key.clone(), meta, &md),
                )));
            }
        }
        // The sidecar, by the same no-symlink walk.
        let mut side_rel = rel.into_os_string();
        side_rel.push(".meta");
        let sidecar = match self.open_beneath(Path::new(&side_rel), wait) {
            Ok(Some(f)) => {
                let len = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
                if len > MAX_SIDECAR {
                    None
                } else {
                    match read_at(&f, 0, len, wait == Wait::Allowed)? {
                        Some(b) if b.len() == len => Some(b),
                        // Not all in the page cache: only a blocking thread may wait for it.
                        _ if wait == Wait::Never && len > 0 => return Ok(None),
                        b => b,
                    }
                }
            }
            Ok(None) => return Ok(None),
            Err(_) => None,
        };
        let meta = meta_from(sidecar.as_deref(), key);
        if let Ok(mut m) = self.meta_cache.map.lock() {
            if m.len() >= META_CACHE_MAX {
                m.clear();
            }
            m.insert(
                id,
                CachedMeta {
                    key: key.clone(),
                    mtime: stamp,
                    size: md.len(),
                    loaded: std::time::Instant::now(),
                    meta: meta.clone(),
                },
            );
        }
        Ok(Some((
            file,
            FileEntry::from_metadata(key.clone(), meta, &md),
        )))
    }

    /// A file's entry (metadata and size), without opening it for reading.
    pub async fn entry(&self, key: &Key) -> Result<FileEntry, StoreError> {
        Ok(self.open_file(key).await?.1)
    }
}
