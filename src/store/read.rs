//! Reading the store: listing a user's files, a file's metadata, opening and deleting.
//! Works the same for files of the old service (thin sidecars, or none).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

use super::key::{Key, UserId};
use super::sidecar::{guess_mime, Meta};
use super::{blocking, FileStore, StoreError};

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
    fn new(key: Key, meta: Meta, size: u64, modified: SystemTime) -> Self {
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

/// Listing cache: a folder's files and subfolders, valid while the folder's mtime is
/// unchanged (every publish, delete and sidecar update is a rename or unlink in it).
#[derive(Debug, Default)]
pub struct ListCache {
    dirs: Mutex<CacheMap>,
}

#[derive(Debug, Default)]
struct CacheMap {
    dirs: HashMap<PathBuf, CachedDir>,
    /// Files in all cached folders: the memory bound.
    files: usize,
}

#[derive(Debug, Clone)]
struct CachedDir {
    mtime: (i64, i64),
    files: Arc<Vec<Arc<FileEntry>>>,
    subdirs: Arc<Vec<String>>,
}

/// Folders with more files than this have their sidecars read by several threads.
const PARALLEL_FROM: usize = 512;

/// Opens a sidecar (a name in `dir`) without following symlinks and, where allowed, without
/// updating its access time (one inode write per file saved on a cold listing).
fn open_sidecar(dir: &std::os::fd::OwnedFd, name: &str) -> Option<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let base = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(dir, name, base | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME needs the file's owner (or CAP_FOWNER).
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, base, Mode::empty()),
        other => other,
    }
    .ok()?;
    Some(std::fs::File::from(fd))
}

/// The entries of files `names` in the folder `dir` (keys `rel/name`); files gone meanwhile
/// are left out.
fn read_entries(
    dir: &std::os::fd::OwnedFd,
    user: &UserId,
    rel: &[String],
    names: &[String],
) -> Result<Vec<Arc<FileEntry>>, StoreError> {
    use std::io::Read as _;
    let prefix = if rel.is_empty() {
        String::new()
    } else {
        format!("{}/", rel.join("/"))
    };
    let mut out = Vec::with_capacity(names.len());
    let mut buf = Vec::new();
    for name in names {
        let Ok(key) = Key::from_user_path(user.as_str(), &format!("{prefix}{name}")) else {
            continue;
        };
        let st = match rustix::fs::statat(dir, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        {
            Ok(st) => st,
            // Deleted since the folder was read: simply not there any more.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(StoreError::Io(e.into())),
        };
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            continue;
        }
        buf.clear();
        let sidecar = open_sidecar(dir, &format!("{name}.meta")).and_then(|mut f| {
            f.by_ref()
                .take(MAX_SIDECAR as u64)
                .read_to_end(&mut buf)
                .ok()
                .map(|_| &buf[..])
        });
        let meta = meta_from(sidecar, &key);
        let modified = UNIX_EPOCH
            + Duration::new(
                u64::try_from(st.st_mtime).unwrap_or(0),
                u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            );
        let size = u64::try_from(st.st_size).unwrap_or(0);
        out.push(Arc::new(FileEntry::new(key, meta, size, modified)));
    }
    Ok(out)
}

/// How old a folder's mtime must be before its listing is cached.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// Most folders kept in the cache; past it the cache starts again.
const CACHE_DIRS: usize = 100_000;

/// Most files kept in the cache (a few hundred bytes each); past it the cache starts again.
const CACHE_FILES: usize = 200_000;

fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Sidecars of files being served, by the data file's identity, so a hot file costs one
/// `openat2` per request, not two. An entry is used only while the data file keeps its inode,
/// size and modification time, and for [`META_TTL`] at most: what a download needs from a
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

/// How long a cached sidecar is trusted.
const META_TTL: Duration = Duration::from_secs(10);

/// Most sidecars kept; past it the cache starts again.
const META_CACHE_MAX: usize = 50_000;

/// Sidecars larger than this are treated as unreadable (their file is served with
/// metadata made up from its name).
const MAX_SIDECAR: usize = 16 << 20;

/// Reads the sidecar of `data` (if any) into a `Meta`.
fn load_meta(data: &Path, key: &Key) -> Meta {
    meta_from(std::fs::read(Meta::path_for(data)).ok().as_deref(), key)
}

/// A `Meta` from a sidecar's bytes, or made up from the key when there is none (or it is not
/// valid JSON): files of the old service may have thin sidecars or none.
fn meta_from(sidecar: Option<&[u8]>, key: &Key) -> Meta {
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

/// Would this error mean "the data is not in memory yet" for a no-wait attempt?
fn would_block(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::OPNOTSUPP
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

/// Reads at most `max` bytes of `file` from `offset`. With `Wait::Never`, only bytes already in
/// the page cache (`RWF_NOWAIT`): the result may be short, and `None` means nothing was
/// cached. A result shorter than asked with `Wait::Allowed` means the end of the file.
pub fn read_at(
    file: &std::fs::File,
    offset: u64,
    max: usize,
    wait: bool,
) -> std::io::Result<Option<bytes::Bytes>> {
    use rustix::io::ReadWriteFlags;
    let mut pooled = crate::bufpool::PooledBuf::filled(max);
    let buf = pooled.vec_mut();
    let mut filled = 0;
    while filled < max {
        let flags = if wait {
            ReadWriteFlags::empty()
        } else {
            ReadWriteFlags::NOWAIT
        };
        let mut slices = [std::io::IoSliceMut::new(&mut buf[filled..])];
        match rustix::io::preadv2(file, &mut slices, offset + filled as u64, flags) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) if !wait && would_block(e) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if filled == 0 && !wait && max > 0 {
        return Ok(None);
    }
    Ok(Some(pooled.freeze(filled)))
}

/// Reads up to `max` bytes of `file` from `offset`: from the page cache on the calling
/// (async) thread when they are there, else on a blocking thread. Empty at the end.
pub async fn read_chunk(
    file: &Arc<std::fs::File>,
    offset: u64,
    max: usize,
) -> std::io::Result<bytes::Bytes> {
    if let Some(b) = read_at(file, offset, max, false)? {
        return Ok(b);
    }
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || read_at(&file, offset, max, true))
        .await
        .map_err(std::io::Error::other)?
        .map(Option::unwrap_or_default)
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

    fn open_blocking(&self, key: &Key) -> Result<(std::fs::File, FileEntry), StoreError> {
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
        let not_found = || StoreError::NotFound("File not found".to_owned());
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
                            && c.loaded.elapsed() < META_TTL
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

    /// Rewrites a file's sidecar (for example to record a CRC-32 computed later).
    /// Under the owner's ledger lock, as publish and delete: a file deleted meanwhile does
    /// not get a lone sidecar back (`NotFound`), and the file is found by the same
    /// no-symlink walk as reads first, so the sidecar is written inside `storage/`.
    pub async fn update_meta(&self, key: &Key, meta: Meta) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.clone();
        blocking(move || {
            this.quotas.with_ledger(key.owner().as_str(), |_| {
                drop(this.open_blocking(&key)?);
                let path = Meta::path_for(&this.data_path(&key));
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let tmp = dir.join(format!(".meta-{}.tmp", uuid::Uuid::new_v4().simple()));
                let written = (|| -> std::io::Result<()> {
                    use std::io::Write as _;
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&meta.to_json())?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)
                })();
                if written.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                Ok(written?)
            })
        })
        .await
    }

    /// Deletes a file and its sidecar, and frees its bytes in the owner's quota at once.
    pub async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.clone();
        blocking(move || {
            // The same no-symlink walk as reads: a link planted in storage/ must not let a
            // delete reach outside it.
            drop(this.open_blocking(&key)?);
            let data = this.data_path(&key);
            let md = std::fs::symlink_metadata(&data)
                .map_err(|_| StoreError::NotFound("File not found".to_owned()))?;
            if !md.is_file() {
                return Err(StoreError::NotFound("File not found".to_owned()));
            }
            this.quotas.with_ledger(key.owner().as_str(), |ledger| {
                // The data first goes under a hidden name (gone for readers at once), then
                // the sidecar, then the data: a crash in between leaves only things the
                // start-up recount removes (see `quota::dir_usage`), never a lone sidecar.
                let hidden = data.with_file_name(super::quota::deleting_name());
                match std::fs::rename(&data, &hidden) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::NotFound("File not found".to_owned()))
                    }
                    Err(e) => return Err(e.into()),
                }
                let _ = std::fs::remove_file(Meta::path_for(&data));
                std::fs::remove_file(&hidden)?;
                ledger.used = ledger.used.saturating_sub(md.len());
                Ok(())
            })
        })
        .await
    }

    /// Every file of `user`, newest first; with `folder`, only that folder and its
    /// subfolders.
    pub async fn list(
        &self,
        user: &UserId,
        folder: Option<&[String]>,
    ) -> Result<Vec<Arc<FileEntry>>, StoreError> {
        let this = self.clone();
        let user = user.clone();
        let folder: Vec<String> = folder.map(<[String]>::to_vec).unwrap_or_default();
        blocking(move || {
            let mut out = Vec::new();
            let mut stack: Vec<Vec<String>> = vec![folder];
            while let Some(rel) = stack.pop() {
                let Some(cached) = this.read_dir_cached(&user, &rel)? else {
                    continue;
                };
                out.extend(cached.files.iter().cloned());
                for sub in cached.subdirs.iter() {
                    let mut r = rel.clone();
                    r.push(sub.clone());
                    stack.push(r);
                }
            }
            out.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then_with(|| a.key.to_string().cmp(&b.key.to_string()))
            });
            Ok(out)
        })
        .await
    }

    /// Fills the listing cache from disk, user by user, until it holds about half of what it
    /// may: run once in the background at start, so the first listing after a restart does
    /// not read every sidecar of a large user while the client waits. Returns the files read.
    pub fn warm_list_cache(&self) -> usize {
        let Ok(users) = std::fs::read_dir(&self.storage) else {
            return 0;
        };
        let mut files = 0;
        for entry in users.flatten() {
            if files >= CACHE_FILES / 2 {
                break;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(user) = UserId::parse(&name) else {
                continue;
            };
            let mut stack: Vec<Vec<String>> = vec![Vec::new()];
            while let Some(rel) = stack.pop() {
                let Ok(Some(dir)) = self.read_dir_cached(&user, &rel) else {
                    continue;
                };
                files += dir.files.len();
                for sub in dir.subdirs.iter() {
                    let mut r = rel.clone();
                    r.push(sub.clone());
                    stack.push(r);
                }
            }
        }
        files
    }

    /// One folder's files and subfolders, from the cache while the folder is unchanged.
    fn read_dir_cached(
        &self,
        user: &UserId,
        rel: &[String],
    ) -> Result<Option<CachedDir>, StoreError> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let mut path = PathBuf::from("storage");
        path.push(user.as_str());
        for seg in rel {
            path.push(seg);
        }
        // The same no-symlink walk as reads: a folder that is a link is not listed.
        let dir = match rustix::fs::openat2(
            &*self.root_fd,
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(
                rustix::io::Errno::NOENT
                | rustix::io::Errno::NOTDIR
                | rustix::io::Errno::LOOP
                | rustix::io::Errno::XDEV,
            ) => return Ok(None),
            Err(e) => return Err(StoreError::Io(e.into())),
        };
        let st = rustix::fs::fstat(&dir).map_err(|e| StoreError::Io(e.into()))?;
        let mtime = (st.st_mtime, st.st_mtime_nsec as i64);
        // A folder changed within the last two seconds may change again within the same
        // timestamp tick (coarse-grained kernels): read it, but do not trust it to the cache.
        let changed = UNIX_EPOCH
            + Duration::new(
                u64::try_from(st.st_mtime).unwrap_or(0),
                u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            );
        let settled = changed.elapsed().is_ok_and(|age| age > RACY);
        if let Ok(cache) = self.list_cache.dirs.lock() {
            if let Some(c) = cache.dirs.get(&path) {
                if c.mtime == mtime {
                    return Ok(Some(c.clone()));
                }
            }
        }
        let mut names = Vec::new();
        let mut subdirs = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(|e| StoreError::Io(e.into()))? {
            let entry = entry.map_err(|e| StoreError::Io(e.into()))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let kind = match entry.file_type() {
                // Filesystems without d_type: ask.
                rustix::fs::FileType::Unknown => {
                    match rustix::fs::statat(&dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => rustix::fs::FileType::from_raw_mode(st.st_mode),
                        Err(_) => continue,
                    }
                }
                known => known,
            };
            match kind {
                rustix::fs::FileType::Directory => subdirs.push(name.to_owned()),
                // A sidecar is a regular file named `{data}.meta`; a folder so named is
                // listed like any other (the quota count walks it too).
                rustix::fs::FileType::RegularFile if !name.ends_with(".meta") => {
                    names.push(name.to_owned());
                }
                _ => {}
            }
        }
        // A cold folder of many files: its sidecars are read by several threads.
        let files = if names.len() >= PARALLEL_FROM {
            let workers = std::thread::available_parallelism()
                .map_or(2, usize::from)
                .clamp(2, 8);
            let per = names.len().div_ceil(workers);
            let dir = &dir;
            std::thread::scope(|scope| {
                let handles: Vec<_> = names
                    .chunks(per)
                    .map(|chunk| scope.spawn(move || read_entries(dir, user, rel, chunk)))
                    .collect();
                let mut files = Vec::with_capacity(names.len());
                for h in handles {
                    files.extend(h.join().map_err(|_| {
                        StoreError::Io(std::io::Error::other("listing thread panicked"))
                    })??);
                }
                Ok::<_, StoreError>(files)
            })?
        } else {
            read_entries(&dir, user, rel, &names)?
        };
        let cached = CachedDir {
            mtime,
            files: Arc::new(files),
            subdirs: Arc::new(subdirs),
        };
        if !settled {
            return Ok(Some(cached));
        }
        if let Ok(mut cache) = self.list_cache.dirs.lock() {
            if cache.dirs.len() >= CACHE_DIRS || cache.files + cached.files.len() > CACHE_FILES {
                cache.dirs.clear();
                cache.files = 0;
            }
            cache.files += cached.files.len();
            if let Some(old) = cache.dirs.insert(path, cached.clone()) {
                cache.files = cache.files.saturating_sub(old.files.len());
            }
        }
        Ok(Some(cached))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store(root: &Path) -> FileStore {
        FileStore::open(root, 1 << 30, std::time::Duration::from_secs(3600), 1 << 30).unwrap()
    }

    #[tokio::test]
    async fn update_meta_rewrites_a_sidecar_but_never_brings_one_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        // A file as the old service left it: no sidecar.
        let data = dir.path().join("storage/u1/docs/a.txt");
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(&data, b"hello").unwrap();
        let sidecar = Meta::path_for(&data);
        let key = Key::parse("storage/u1/docs/a.txt").unwrap();

        let mut meta = store.entry(&key).await.unwrap().meta;
        meta.crc32 = Some(0x3610_a686);
        store.update_meta(&key, meta.clone()).await.unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
        assert_eq!(written["crc32"], 0x3610_a686_u32);

        // Deleted meanwhile (the batch ZIP's CRC pass can take seconds): no lone sidecar.
        store.delete(&key).await.unwrap();
        assert!(matches!(
            store.update_meta(&key, meta.clone()).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(!sidecar.exists());

        // A folder that is a symlink (here to a folder outside the root) is not written
        // through.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("b.txt"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("storage/u1/linked")).unwrap();
        let linked = Key::parse("storage/u1/linked/b.txt").unwrap();
        assert!(store.update_meta(&linked, meta).await.is_err());
        assert!(!outside.path().join("b.txt.meta").exists());
    }
}
