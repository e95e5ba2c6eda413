//! What `upload-server check` asks of a data root, without changing it: the files the
//! listing walk finds, those without a sidecar (the old service's, or placed by hand), the
//! sidecars that cannot be read, folders the walk cannot open, and entries owned by
//! another user than the root's owner.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use super::read::MAX_SIDECAR;
use super::sessions::SessionDirs;
use super::sidecar::Meta;
use super::{FileStore, Quotas};

/// A few examples and how many there were.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// How many.
    pub count: u64,
    /// The first few, each a key (or folder) and what is wrong with it.
    pub examples: Vec<String>,
}

impl Findings {
    fn add(&mut self, keep: usize, what: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < keep {
            self.examples.push(what());
        }
    }
}

/// A data root as the check found it.
#[derive(Debug, Default, Clone)]
pub struct RootAudit {
    /// Files found under `storage/`.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files without a sidecar: listed and served with a type guessed from the name.
    pub without_sidecar: Findings,
    /// Sidecars that exist but cannot be read or are not a JSON object.
    pub bad_sidecars: Findings,
    /// Folders the walk could not open.
    pub unreadable_folders: Findings,
    /// Files or sidecars whose owner is not the root's owner (the service's user, usually).
    pub foreign_owner: Findings,
}

impl FileStore {
    /// A store over an existing root for inspection only: unlike [`FileStore::open`] it
    /// creates nothing (a check run as root must not leave root-owned folders behind).
    pub fn inspect(root: &Path) -> std::io::Result<Self> {
        let root_fd = std::sync::Arc::new(std::os::fd::OwnedFd::from(std::fs::File::open(root)?));
        let storage = root.join("storage");
        Ok(Self {
            root_fd,
            root: root.to_path_buf(),
            quotas: Quotas::new(root.join(".quota"), storage.clone(), u64::MAX),
            storage,
            dirs: SessionDirs {
                parts: root.join(".parts"),
            },
            session_ttl: Duration::from_secs(3600),
            max_file: u64::MAX,
            list_cache: std::sync::Arc::default(),
            meta_cache: std::sync::Arc::default(),
            sidecar_ttl: Duration::ZERO,
            staging: std::sync::Arc::default(),
            swept: std::sync::Arc::default(),
        })
    }

    /// Walks every file under `storage/` (the listing's walk) and reads each sidecar, keeping
    /// `keep` examples of each finding. Blocking.
    pub fn audit(&self, keep: usize) -> RootAudit {
        let owner = std::fs::metadata(&self.root).map(|m| m.uid()).ok();
        let mut out = RootAudit::default();
        self.walk_folders(|user, rel, dir| {
            let entries = match dir {
                Ok(entries) => entries,
                Err(e) => {
                    let mut folder = format!("storage/{}", user.as_str());
                    for seg in rel {
                        folder.push('/');
                        folder.push_str(seg);
                    }
                    out.unreadable_folders
                        .add(keep, || format!("{folder}: {e}"));
                    return true;
                }
            };
            for entry in entries {
                out.files += 1;
                out.bytes += entry.size;
                let data = self.data_path(&entry.key);
                let sidecar = Meta::path_for(&data);
                let key = entry.key.to_string();
                if let (Some(uid), Ok(m)) = (owner, std::fs::symlink_metadata(&data)) {
                    if m.uid() != uid {
                        out.foreign_owner
                            .add(keep, || format!("{key}: owner uid {}", m.uid()));
                    }
                }
                match std::fs::symlink_metadata(&sidecar) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        out.without_sidecar.add(keep, || key.clone());
                        continue;
                    }
                    Err(e) => {
                        out.bad_sidecars.add(keep, || format!("{key}.meta: {e}"));
                        continue;
                    }
                    Ok(m) if !m.is_file() => {
                        out.bad_sidecars
                            .add(keep, || format!("{key}.meta: not a regular file"));
                        continue;
                    }
                    Ok(m) => {
                        if owner.is_some_and(|uid| m.uid() != uid) {
                            out.foreign_owner
                                .add(keep, || format!("{key}.meta: owner uid {}", m.uid()));
                        }
                    }
                }
                match std::fs::read(&sidecar) {
                    Ok(b) if b.len() > MAX_SIDECAR => out.bad_sidecars.add(keep, || {
                        format!("{key}.meta: larger than {MAX_SIDECAR} bytes")
                    }),
                    Ok(b) if Meta::from_json(&b, "", "").is_none() => out
                        .bad_sidecars
                        .add(keep, || format!("{key}.meta: not a JSON object")),
                    Ok(_) => {}
                    Err(e) => out.bad_sidecars.add(keep, || format!("{key}.meta: {e}")),
                }
            }
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_files_without_sidecars_and_bad_sidecars_and_creates_nothing() {
        let root = tempfile::tempdir().unwrap();
        let user = root.path().join("storage/u1/docs");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("0123abcd_a.txt"), b"hello").unwrap();
        std::fs::write(
            user.join("0123abcd_a.txt.meta"),
            br#"{"mime":"text/plain"}"#,
        )
        .unwrap();
        std::fs::write(user.join("old.txt"), b"old").unwrap();
        std::fs::write(user.join("89abcdef_b.txt"), b"b").unwrap();
        std::fs::write(user.join("89abcdef_b.txt.meta"), b"not json").unwrap();

        let audit = FileStore::inspect(root.path()).unwrap().audit(10);

        assert_eq!(audit.files, 3);
        assert_eq!(audit.bytes, 9);
        assert_eq!(audit.without_sidecar.examples, ["storage/u1/docs/old.txt"]);
        assert_eq!(audit.bad_sidecars.count, 1);
        assert!(audit.bad_sidecars.examples[0].contains("89abcdef_b.txt.meta"));
        assert_eq!(audit.unreadable_folders.count, 0);
        for made in [".parts", ".quota"] {
            assert!(!root.path().join(made).exists(), "{made} was created");
        }
    }
}
