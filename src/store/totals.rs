//! What the store holds, all users together, for `/metrics`: a read-only walk of `storage/`
//! counting data files as the quota ledgers do (a `.meta` sidecar is not a file of its own,
//! dot-names are work in progress), and the count of expired sessions the sweeps removed.

use std::sync::atomic::Ordering;

use super::FileStore;

/// Bytes and files stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredTotals {
    /// Bytes of data files.
    pub bytes: u64,
    /// Data files.
    pub files: u64,
}

impl FileStore {
    /// Walks `storage/` (blocking; a file per entry, so run it seldom on a large store).
    pub fn stored_totals(&self) -> StoredTotals {
        let mut totals = StoredTotals::default();
        let mut stack = vec![self.storage.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    continue;
                }
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(entry.path());
                } else if ft.is_file() && !name.ends_with(".meta") {
                    if let Ok(md) = entry.metadata() {
                        totals.bytes += md.len();
                        totals.files += 1;
                    }
                }
            }
        }
        totals
    }

    /// Expired upload sessions the sweeps of this process removed.
    pub fn expired_sessions_swept(&self) -> u64 {
        self.swept.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn data_files_count_and_sidecars_and_dot_names_do_not() {
        let root = tempfile::tempdir().unwrap();
        let store = FileStore::for_tests(root.path());
        let user = root.path().join("storage/u1/sub");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("ab12_x.bin"), [0u8; 10]).unwrap();
        std::fs::write(user.join("ab12_x.bin.meta"), b"{}").unwrap();
        std::fs::write(user.join(".tmp-upload"), [0u8; 99]).unwrap();
        std::fs::write(root.path().join("storage/u1/cd34_y.txt"), [0u8; 5]).unwrap();
        assert_eq!(
            store.stored_totals(),
            StoredTotals {
                bytes: 15,
                files: 2
            }
        );
    }
}
