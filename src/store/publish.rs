//! Publishing: a claimed session's parts joined (or taken as they are) into one checked
//! file, its sidecar beside it, both renamed into place under the owner's ledger lock.

use std::io::{Read as _, Write as _};
use std::path::Path;

use serde_json::{Map, Value};

use super::key::{ClientFileName, FileName, FolderPath, Key, UserId};
use super::lock::lock_data_file;
use super::sessions::{self, Session};
use super::sidecar::Meta;
use super::sink::{Hashes, TempGuard, Written};
use super::{fsync_dir, random_prefix, CompleteRequest, FileStore, StoreError, Stored};

impl FileStore {
    pub(super) fn publish_claimed(
        &self,
        claimed: &Path,
        info: &Session,
        req: CompleteRequest,
    ) -> Result<Stored, StoreError> {
        let parts = sessions::read_parts(claimed)?;
        let total: u64 = parts.iter().map(|p| p.size).sum();
        if total != info.file.size {
            return Err(StoreError::SizeMismatch {
                expected: info.file.size,
                actual: total,
            });
        }
        let mut extra = info.meta.clone();
        extra.extend(req.extra.clone());
        let (original_name, folder) = req.placement(info);
        let publish = |written: Written, tmp: TempGuard| {
            self.publish(
                &info.user_id,
                folder,
                original_name,
                info.file.mime.as_deref(),
                extra,
                written,
                tmp,
                claimed,
                &info.upload_id.to_string(),
            )
        };

        let tmp = TempGuard::new(claimed.join(".joined"));
        // The usual case: the parts came in order and lie back to back in the data file,
        // hashed as they came. The data file becomes the file, by a hard link: complete
        // copies and hashes nothing, and the parts stay should the complete fail. Its lock
        // is held until the file is in place, so no append can touch it (an append still
        // running means a part is in flight: then the parts are joined instead).
        if let Some((n, last)) = sessions::chain(&parts) {
            if let (Some(data), Some(hashes)) = (
                lock_data_file(claimed, false)?,
                sessions::read_segment_hashes(claimed, n, &last)
                    .and_then(|h| Hashes::resume(&h.sha_state, h.crc32)),
            ) {
                let (sha256, crc32) = hashes.finish();
                check_sha(req.sha256.as_deref(), &sha256)?;
                let len = data.metadata()?.len();
                if len < total {
                    return Err(StoreError::Io(std::io::Error::other(format!(
                        "the data file holds {len} bytes, its segments {total}"
                    ))));
                }
                if len > total {
                    // What a cut append left past the last part.
                    data.set_len(total)?;
                }
                data.sync_all()?;
                std::fs::hard_link(claimed.join(sessions::DATA_FILE), tmp.path())?;
                let stored = publish(
                    Written {
                        size: total,
                        sha256: Some(sha256),
                        crc32: Some(crc32),
                    },
                    tmp,
                );
                drop(data);
                return stored;
            }
        }
        // One part file whose hashes were taken as it arrived: the part itself becomes the
        // file, by a hard link.
        if let [sessions::Part {
            number,
            size,
            kind: sessions::PartKind::File,
        }] = parts.as_slice()
        {
            let part = claimed.join(sessions::part_file_name(*number));
            if let Some(sum) = sessions::read_sum(&part, *size) {
                check_sha(req.sha256.as_deref(), &sum.sha256)?;
                std::fs::hard_link(&part, tmp.path())?;
                let written = Written {
                    size: total,
                    sha256: Some(sum.sha256),
                    crc32: Some(sum.crc32),
                };
                return publish(written, tmp);
            }
        }
        // Otherwise join in part order, hashing in the same pass.
        let mut hashes = Hashes::default();
        {
            use std::io::Seek as _;
            let out = std::fs::File::create(tmp.path())?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            let mut buf = vec![0u8; 1 << 20];
            let mut data: Option<std::fs::File> = None;
            for part in &parts {
                let mut src = match &part.kind {
                    sessions::PartKind::File => {
                        std::fs::File::open(claimed.join(sessions::part_file_name(part.number)))?
                    }
                    sessions::PartKind::Segment(seg) => {
                        let data = match &mut data {
                            Some(d) => d,
                            None => {
                                data.insert(std::fs::File::open(claimed.join(sessions::DATA_FILE))?)
                            }
                        };
                        let mut d = data.try_clone()?;
                        d.seek(std::io::SeekFrom::Start(seg.offset))?;
                        d
                    }
                }
                .take(part.size);
                let mut copied = 0;
                loop {
                    let k = src.read(&mut buf)?;
                    if k == 0 {
                        break;
                    }
                    hashes.update(&buf[..k]);
                    out.write_all(&buf[..k])?;
                    copied += k as u64;
                }
                if copied != part.size {
                    return Err(StoreError::Io(std::io::Error::other(format!(
                        "part {} holds {copied} bytes, {} expected",
                        part.number, part.size
                    ))));
                }
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        let (sha256, crc32) = hashes.finish();
        check_sha(req.sha256.as_deref(), &sha256)?;
        let written = Written {
            size: total,
            sha256: Some(sha256),
            crc32: Some(crc32),
        };
        publish(written, tmp)
    }

    /// Moves a finished temporary file into place with its sidecar, charging the quota
    /// (the file's bytes leave the reservation `reservation` in the same step).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(
        &self,
        user: &UserId,
        folder: Option<&FolderPath>,
        original_name: &ClientFileName,
        declared_mime: Option<&str>,
        extra: Map<String, Value>,
        written: Written,
        data: TempGuard,
        work_dir: &Path,
        reservation: &str,
    ) -> Result<Stored, StoreError> {
        let name = FileName::sanitize(original_name.as_str());
        let meta = Meta::for_upload(
            user,
            original_name,
            folder,
            declared_mime,
            extra,
            (written.size, written.sha256, written.crc32),
        );
        let sidecar_tmp = TempGuard::new(work_dir.join(".sidecar"));
        {
            let mut f = std::fs::File::create(sidecar_tmp.path())?;
            f.write_all(&meta.to_json()?)?;
            f.sync_all()?;
        }
        let user_dir = self.storage.join(user.as_str());
        let dest_dir = match folder {
            Some(f) => f.segments().iter().fold(user_dir, |p, s| p.join(s)),
            None => user_dir,
        };
        std::fs::create_dir_all(&dest_dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
                StoreError::FolderConflict
            }
            _ => e.into(),
        })?;
        self.quotas.with_ledger(user.as_str(), |ledger| {
            // This file's bytes come out of its own reservation; what the reservation holds
            // beyond them (other files of the same request) stays counted.
            let held = ledger.reserved.get(reservation).copied().unwrap_or(0);
            let others = ledger.used
                + ledger.reserved_except(reservation)
                + held.saturating_sub(written.size);
            if others.saturating_add(written.size) > self.quotas.limit {
                return Err(StoreError::Quota {
                    used: others,
                    quota: self.quotas.limit,
                    requested: written.size,
                });
            }
            // A fresh prefix; `create_new` on the sidecar name settles a collision.
            let key = loop {
                let key = Key::new(
                    user,
                    folder,
                    &format!("{}_{}", random_prefix(), name.as_str()),
                );
                let path = self.data_path(&key);
                if !path.exists() && !Meta::path_for(&path).exists() {
                    break key;
                }
            };
            let data_path = self.data_path(&key);
            let sidecar_path = Meta::path_for(&data_path);
            std::fs::write(
                work_dir.join("publish.json"),
                serde_json::json!({ "data": data_path, "sidecar": sidecar_path }).to_string(),
            )?;
            std::fs::rename(sidecar_tmp.path(), &sidecar_path)?;
            sidecar_tmp.keep();
            if let Err(e) = std::fs::rename(data.path(), &data_path) {
                let _ = std::fs::remove_file(&sidecar_path);
                return Err(e.into());
            }
            data.keep();
            fsync_dir(&dest_dir)?;
            ledger.used += written.size;
            if held > written.size {
                ledger
                    .reserved
                    .insert(reservation.to_owned(), held - written.size);
            } else {
                ledger.reserved.remove(reservation);
            }
            Ok(Stored { key, meta })
        })
    }
}

pub(super) fn check_sha(expected: Option<&str>, actual: &str) -> Result<(), StoreError> {
    match expected.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) if !e.eq_ignore_ascii_case(actual) => Err(StoreError::ShaMismatch),
        _ => Ok(()),
    }
}
