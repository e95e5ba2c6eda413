//! CRC-32s of stored files that lack one in their sidecar (files of the old service, or
//! sidecars edited by hand): computed once, then recorded, so a batch ZIP can lay out its
//! archive (and its exact length) before sending a byte.

use super::read::FileEntry;
use super::{blocking, FileStore, StoreError};

impl FileStore {
    /// The CRC-32 of `entry`: from its sidecar when it is there and the sidecar's size
    /// matches the file, else computed from the bytes and recorded in the sidecar (a failure
    /// to record it is logged: the CRC is still right).
    pub async fn ensure_crc(&self, entry: &FileEntry) -> Result<u32, StoreError> {
        if let (Some(crc), true) = (
            entry.meta.crc32,
            entry.meta.size.is_none_or(|s| s == entry.size),
        ) {
            return Ok(crc);
        }
        let open = self.data_opener(&entry.key);
        let crc = blocking(move || {
            use std::io::Read as _;
            let mut f = open()?;
            let mut h = crc32fast::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    return Ok(h.finalize());
                }
                h.update(&buf[..n]);
            }
        })
        .await?;
        let mut meta = entry.meta.clone();
        meta.crc32 = Some(crc);
        meta.size = Some(entry.size);
        if let Err(e) = self.update_meta(&entry.key, meta).await {
            tracing::warn!(key = %entry.key, error = %e, "cannot record a CRC-32 in the sidecar");
        }
        Ok(crc)
    }
}
