//! Changes to stored files after they are published: a sidecar rewritten (a CRC-32
//! recorded later), and delete. Both under the owner's ledger lock, after the same
//! no-symlink walk as reads.

use std::path::Path;

use super::key::Key;
use super::sidecar::Meta;
use super::{blocking, FileStore, Missing, StoreError};

impl FileStore {
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
                let dir = path
                    .parent()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| std::io::Error::other("a sidecar path without a folder"))?;
                let tmp = dir.join(format!(".meta-{}.tmp", uuid::Uuid::new_v4().simple()));
                let written = (|| -> std::io::Result<()> {
                    use std::io::Write as _;
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&meta.to_json()?)?;
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
                .map_err(|_| StoreError::NotFound(Missing::File))?;
            if !md.is_file() {
                return Err(StoreError::NotFound(Missing::File));
            }
            this.quotas.with_ledger(key.owner().as_str(), |ledger| {
                // The data first goes under a hidden name (gone for readers at once), then
                // the sidecar, then the data: a crash in between leaves only things the
                // start-up recount removes (see `quota::dir_usage`), never a lone sidecar.
                let hidden = data.with_file_name(super::quota::deleting_name());
                match std::fs::rename(&data, &hidden) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::NotFound(Missing::File))
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::key::Key;

    fn store(root: &Path) -> FileStore {
        FileStore::for_tests(root)
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
