//! Listing a user's files (API.md §4.1): folders read through a directory descriptor (no
//! symlinks followed), sidecars read by several threads for big folders, and a cache of
//! folders valid while their mtime is unchanged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::key::{Key, UserId};
use super::read::{meta_from, FileEntry, MAX_SIDECAR};
use super::{blocking, FileStore, StoreError};

/// Listing cache: a folder's files and subfolders, valid while the folder's mtime is
/// unchanged (every publish, delete and sidecar update is a rename or unlink in it).
#[derive(Debug, Default)]
pub(super) struct ListCache {
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

impl FileStore {
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
