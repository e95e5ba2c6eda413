//! Reading the store: listing a user's files, a file's metadata, opening and deleting.
//! Works the same for files of the old service (thin sidecars, or none).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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

/// Listing cache: a folder's files and subfolders, valid while the folder's mtime is
/// unchanged (every publish, delete and sidecar update is a rename or unlink in it).
#[derive(Debug, Default)]
pub struct ListCache {
    dirs: Mutex<HashMap<PathBuf, CachedDir>>,
}

#[derive(Debug, Clone)]
struct CachedDir {
    mtime: (i64, i64),
    files: Arc<Vec<FileEntry>>,
    subdirs: Arc<Vec<String>>,
}

/// How old a folder's mtime must be before its listing is cached.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// Most folders kept in the cache; past it the cache starts again.
const CACHE_DIRS: usize = 100_000;

fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Reads the sidecar of `data` (if any) into a `Meta`.
fn load_meta(data: &Path, key: &Key) -> Meta {
    let stored = key.file_name();
    // `{8 hex}_{name}`: the name without its prefix stands in for a missing original name.
    let fallback = match stored.split_once('_') {
        Some((p, rest)) if p.len() == 8 && p.bytes().all(|b| b.is_ascii_hexdigit()) => rest,
        _ => stored,
    };
    std::fs::read(Meta::path_for(data))
        .ok()
        .and_then(|bytes| Meta::from_json(&bytes, fallback, key.owner().as_str()))
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

fn entry_for(key: Key, data: &Path, md: &std::fs::Metadata) -> FileEntry {
    let meta = load_meta(data, &key);
    let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let created_at = meta.created_at.clone().unwrap_or_else(|| rfc3339(modified));
    FileEntry {
        key,
        meta,
        size: md.len(),
        modified,
        created_at,
    }
}

impl FileStore {
    /// Opens `key`'s data file without following any symlink, so a link planted inside
    /// `storage/` can never lead out of it. Returns the file and its entry.
    pub async fn open_file(&self, key: &Key) -> Result<(std::fs::File, FileEntry), StoreError> {
        let this = self.clone();
        let key = key.clone();
        blocking(move || this.open_blocking(&key)).await
    }

    fn open_blocking(&self, key: &Key) -> Result<(std::fs::File, FileEntry), StoreError> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let not_found = || StoreError::NotFound("File not found".to_owned());
        let root = std::fs::File::open(&self.root)?;
        let rel = key.relative_path();
        let fd = match rustix::fs::openat2(
            &root,
            &rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOSYS) => {
                // Kernels before 5.6: refuse any path that resolves elsewhere.
                let path = self.root.join(&rel);
                let real = path.canonicalize().map_err(|_| not_found())?;
                if real != self.root.canonicalize()?.join(&rel) {
                    return Err(not_found());
                }
                return self.finish_open(key, std::fs::File::open(&path).map_err(|_| not_found())?);
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
        self.finish_open(key, std::fs::File::from(fd))
    }

    fn finish_open(
        &self,
        key: &Key,
        file: std::fs::File,
    ) -> Result<(std::fs::File, FileEntry), StoreError> {
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(StoreError::NotFound("File not found".to_owned()));
        }
        let entry = entry_for(key.clone(), &self.data_path(key), &md);
        Ok((file, entry))
    }

    /// A file's entry (metadata and size), without opening it for reading.
    pub async fn entry(&self, key: &Key) -> Result<FileEntry, StoreError> {
        Ok(self.open_file(key).await?.1)
    }

    /// Rewrites a file's sidecar (for example to record a CRC-32 computed later).
    pub async fn update_meta(&self, key: &Key, meta: Meta) -> Result<(), StoreError> {
        let path = Meta::path_for(&self.data_path(key));
        blocking(move || {
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
    ) -> Result<Vec<FileEntry>, StoreError> {
        let this = self.clone();
        let user = user.clone();
        let folder: Vec<String> = folder.map(<[String]>::to_vec).unwrap_or_default();
        blocking(move || {
            let mut start = this.storage.join(user.as_str());
            for seg in &folder {
                start.push(seg);
            }
            let mut out = Vec::new();
            let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(start, folder)];
            while let Some((dir, rel)) = stack.pop() {
                let Some(cached) = this.read_dir_cached(&user, &dir, &rel)? else {
                    continue;
                };
                out.extend(cached.files.iter().cloned());
                for sub in cached.subdirs.iter() {
                    let mut r = rel.clone();
                    r.push(sub.clone());
                    stack.push((dir.join(sub), r));
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

    fn read_dir_cached(
        &self,
        user: &UserId,
        dir: &Path,
        rel: &[String],
    ) -> Result<Option<CachedDir>, StoreError> {
        let md = match std::fs::symlink_metadata(dir) {
            Ok(md) if md.is_dir() => md,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mtime = (md.mtime(), md.mtime_nsec());
        // A folder changed within the last two seconds may change again within the same
        // timestamp tick (coarse-grained kernels): read it, but do not trust it to the cache.
        let settled = md
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > RACY);
        if let Ok(cache) = self.list_cache.dirs.lock() {
            if let Some(c) = cache.get(dir) {
                if c.mtime == mtime {
                    return Ok(Some(c.clone()));
                }
            }
        }
        let mut files = Vec::new();
        let mut subdirs = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || name.ends_with(".meta") {
                continue;
            }
            let ft = entry.file_type()?;
            if ft.is_dir() {
                subdirs.push(name.to_owned());
            } else if ft.is_file() {
                let mut segs = rel.to_vec();
                segs.push(name.to_owned());
                let Ok(key) = Key::from_user_path(user.as_str(), &segs.join("/")) else {
                    continue;
                };
                // Deleted since the folder was read: simply not there any more.
                let md = match entry.metadata() {
                    Ok(md) => md,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                files.push(entry_for(key, &entry.path(), &md));
            }
        }
        let cached = CachedDir {
            mtime,
            files: Arc::new(files),
            subdirs: Arc::new(subdirs),
        };
        if !settled {
            return Ok(Some(cached));
        }
        if let Ok(mut cache) = self.list_cache.dirs.lock() {
            if cache.len() >= CACHE_DIRS {
                cache.clear();
            }
            cache.insert(dir.to_path_buf(), cached.clone());
        }
        Ok(Some(cached))
    }
}
