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
/// unchanged (every publish, delete and sidecar update is a rename or unlink in it); and
/// the sorted listings built from them, valid while every folder they walked is unchanged,
/// so a page of a large listing costs what it returns, not a sort of the whole list.
#[derive(Debug, Default)]
pub(super) struct ListCache {
    dirs: Mutex<CacheMap>,
    sorted: Mutex<SortedMap>,
}

#[derive(Debug, Default)]
struct SortedMap {
    listings: HashMap<(UserId, Vec<String>), SortedListing>,
    /// Entries in all kept listings: with [`CACHE_FILES`], the memory bound.
    files: usize,
}

/// A user's files (under one folder, or all), newest first.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The files, newest first; ties by key.
    pub files: Arc<Vec<Arc<FileEntry>>>,
    /// Their bytes together.
    pub total_size: u64,
}

#[derive(Debug)]
struct SortedListing {
    /// The mtime of each folder walked, in walk order: the listing is valid while the same
    /// walk finds the same mtimes (a folder added, removed or renamed changes its parent's).
    walked: Vec<(i64, i64)>,
    listing: Listing,
}

/// Most sorted listings kept; past it (or past [`CACHE_FILES`] entries in them) they start
/// again.
const CACHE_LISTINGS: usize = 1_000;

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
    /// Every file of `user`, newest first (ties by key); with `folder`, only that folder and
    /// its subfolders.
    pub async fn list(
        &self,
        user: &UserId,
        folder: Option<&[String]>,
    ) -> Result<Listing, StoreError> {
        let this = self.clone();
        let user = user.clone();
        let folder: Vec<String> = folder.map(<[String]>::to_vec).unwrap_or_default();
        blocking(move || this.list_blocking(user, folder)).await
    }

    fn list_blocking(&self, user: UserId, folder: Vec<String>) -> Result<Listing, StoreError> {
        let mut dirs = Vec::new();
        let mut walked = Vec::new();
        let mut all_settled = true;
        let mut stack: Vec<Vec<String>> = vec![folder.clone()];
        while let Some(rel) = stack.pop() {
            let Some((cached, settled)) = self.read_dir_cached(&user, &rel)? else {
                continue;
            };
            all_settled &= settled;
            walked.push(cached.mtime);
            for sub in cached.subdirs.iter() {
                let mut r = rel.clone();
                r.push(sub.clone());
                stack.push(r);
            }
            dirs.push(cached);
        }
        let id = (user, folder);
        if let Ok(sorted) = self.list_cache.sorted.lock() {
            if let Some(hit) = sorted.listings.get(&id).filter(|s| s.walked == walked) {
                return Ok(hit.listing.clone());
            }
        }
        let mut files: Vec<Arc<FileEntry>> =
            Vec::with_capacity(dirs.iter().map(|d| d.files.len()).sum());
        for d in &dirs {
            files.extend(d.files.iter().cloned());
        }
        files.sort_unstable_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.key.cmp_text(&b.key))
        });
        let listing = Listing {
            total_size: files.iter().map(|e| e.size).sum(),
            files: Arc::new(files),
        };
        if all_settled {
            if let Ok(mut sorted) = self.list_cache.sorted.lock() {
                let n = listing.files.len();
                if sorted.listings.len() >= CACHE_LISTINGS || sorted.files + n > CACHE_FILES {
                    sorted.listings.clear();
                    sorted.files = 0;
                }
                sorted.files += n;
                let old = sorted.listings.insert(
                    id,
                    SortedListing {
                        walked,
                        listing: listing.clone(),
                    },
                );
                if let Some(old) = old {
                    sorted.files = sorted.files.saturating_sub(old.listing.files.len());
                }
            }
        }
        Ok(listing)
    }

    /// Fills the listing cache from disk, user by user, until it holds about half of what it
    /// may: run once in the background at start, so the first listing after a restart does
    /// not read every sidecar of a large user while the client waits. Returns the files read.
    pub fn warm_list_cache(&self) -> usize {
        let mut files = 0;
        self.walk_folders(|_, _, dir| {
            if let Ok(entries) = dir {
                files += entries.len();
            }
            files < CACHE_FILES / 2
        });
        files
    }

    /// Walks every user's folders under `storage/` with the listing's no-symlink reads
    /// (through its cache), calling `visit` with each folder's files, or why it could not be
    /// read, until `visit` returns `false`. Names in `storage/` that are no user id are
    /// skipped, as listings skip them.
    pub(super) fn walk_folders(
        &self,
        mut visit: impl FnMut(&UserId, &[String], Result<&[Arc<FileEntry>], StoreError>) -> bool,
    ) {
        let Ok(users) = std::fs::read_dir(&self.storage) else {
            return;
        };
        for entry in users.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(user) = UserId::parse(&name) else {
                continue;
            };
            let mut stack: Vec<Vec<String>> = vec![Vec::new()];
            while let Some(rel) = stack.pop() {
                let dir = match self.read_dir_cached(&user, &rel) {
                    Ok(Some((dir, _))) => dir,
                    Ok(None) => continue,
                    Err(e) => {
                        if !visit(&user, &rel, Err(e)) {
                            return;
                        }
                        continue;
                    }
                };
                if !visit(&user, &rel, Ok(&dir.files)) {
                    return;
                }
                for sub in dir.subdirs.iter() {
                    let mut r = rel.clone();
                    r.push(sub.clone());
                    stack.push(r);
                }
            }
        }
    }

    /// One folder's files and subfolders, from the cache while the folder is unchanged, and
    /// whether its mtime is old enough to be trusted ([`RACY`]).
    fn read_dir_cached(
        &self,
        user: &UserId,
        rel: &[String],
    ) -> Result<Option<(CachedDir, bool)>, StoreError> {
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
                    return Ok(Some((c.clone(), true)));
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
            return Ok(Some((cached, false)));
        }
        if let Ok(mut cache) = self.list_cache.dirs.lock() {
            if cache.dirs.len() >= CACHE_DIRS || cache.files + cached.files.len() > CACHE_FILES {
                cache.dirs.clear();
                cache.files = 0;
                // The sorted listings hold the same entries: they go too, so memory stays
                // bounded by the file count.
                if let Ok(mut sorted) = self.list_cache.sorted.lock() {
                    sorted.listings.clear();
                    sorted.files = 0;
                }
            }
            cache.files += cached.files.len();
            if let Some(old) = cache.dirs.insert(path, cached.clone()) {
                cache.files = cache.files.saturating_sub(old.files.len());
            }
        }
        Ok(Some((cached, true)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    /// Sets a folder's mtime `secs_ago` seconds back: older than [`RACY`], so it is cached.
    fn age(dir: &Path, secs_ago: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let t = rustix::fs::Timespec {
            tv_sec: now - secs_ago,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(rustix::fs::CWD, dir, &times, rustix::fs::AtFlags::empty()).unwrap();
    }

    #[tokio::test]
    async fn a_sorted_listing_is_kept_while_its_folders_are_unchanged() {
        let root = tempfile::tempdir().unwrap();
        let store = FileStore::for_tests(root.path());
        let user = UserId::parse("u1").unwrap();
        let top = root.path().join("storage/u1");
        let sub = top.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        // Sidecars that share one created_at: the order falls to the keys.
        let put = |dir: &Path, name: &str| {
            std::fs::write(dir.join(name), b"x").unwrap();
            std::fs::write(
                dir.join(format!("{name}.meta")),
                br#"{"original_name":"x","created_at":"2025-01-01T00:00:00Z"}"#,
            )
            .unwrap();
        };
        put(&top, "b");
        put(&sub, "a");
        age(&sub, 3600);
        age(&top, 3600);
        let keys =
            |l: &Listing| -> Vec<String> { l.files.iter().map(|e| e.key.to_string()).collect() };
        let first = store.list(&user, None).await.unwrap();
        assert_eq!(keys(&first), ["storage/u1/b", "storage/u1/sub/a"]);
        let again = store.list(&user, None).await.unwrap();
        assert!(
            Arc::ptr_eq(&first.files, &again.files),
            "kept, not sorted again"
        );

        // A file added in a subfolder changes only that folder's mtime: seen at once.
        put(&sub, "0");
        age(&sub, 1800);
        let after = store.list(&user, None).await.unwrap();
        assert_eq!(
            keys(&after),
            ["storage/u1/b", "storage/u1/sub/0", "storage/u1/sub/a"]
        );
        assert_eq!(after.total_size, 3);
        // A listing of one folder is kept apart from the whole one.
        let only_sub = store.list(&user, Some(&["sub".to_owned()])).await.unwrap();
        assert_eq!(keys(&only_sub), ["storage/u1/sub/0", "storage/u1/sub/a"]);
    }
}
