//! Uploads that span requests and instances: one S3 multipart upload per session, fed with
//! client parts of any size, with every piece of state in an [`Assembly`] the catalog
//! stores after each step. No instance keeps anything between requests, so part 1 may
//! reach instance A, part 2 instance B and `finish` instance C.
//!
//! S3 wants parts of at least 5 MiB (except the last) and at most 10,000 of them; clients
//! send whatever they like (the old SDK one part for the whole file, others 1 MiB parts).
//! Bytes appended in order are cut into S3 parts like this:
//!
//! - While the buffer holds `2 × PART` bytes, its first `PART` (5 MiB) go out as a part.
//!   When a client part ends, a buffer of at least `PART` bytes goes out whole (5 to
//!   10 MiB): a client part of 5 MiB or more, sent in order, becomes S3 parts directly and
//!   is never copied again; `finish` then only completes the upload (S3 joins the parts
//!   itself, without sending a byte: well under a second for 1 GiB on AWS).
//! - A shorter remainder (a small client part, or what is left of one) is **staged**: put
//!   as a temporary object `{prefix}.staging/{session}/{offset}-{id}` and listed in the
//!   assembly. Once staged bytes and new bytes reach `PART`, the staged objects are read
//!   back in front of the new bytes and go out in the next part. Cost: every staged byte is
//!   written once more and read once more (for 1 MiB parts: 4 of every 5 MiB), plus one
//!   PUT, one GET and one DELETE per staged piece. Memory: the staged bytes are under
//!   `PART`, read back into the same bounded buffer.
//! - When the bytes reach the declared length, the buffer goes out as the last part,
//!   however short. `finish` puts whatever is still staged (a deferred length) as the last
//!   part, completes, and removes the session's staging objects.
//!
//! A part that arrives before the parts in front of it (out of order) is stored whole as
//! its own staging object by [`S3Bytes::stage_part`] and appended by
//! [`S3Bytes::append_staged`] once its turn comes: one extra write and read of that part.
//!
//! The SHA-256 and CRC-32 of the bytes in order are carried in the assembly as
//! [`Hashes::state`], so every instance hashes on from where the last one stopped, and the
//! file's hashes are known at `finish` without reading it again.
//!
//! The catalog's side of the contract: one append (or finish, or abort) per session at a
//! time (a row lock), the returned assembly stored before [`Appended::obsolete`] is
//! removed, and a failed step retried from the assembly stored before it (parts it put are
//! overwritten by number; staging objects it left are removed at finish or abort).

use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};

use super::buffer::Buffer;
use super::{PartInfo, S3Bytes, S3Error, UploadId, Written, MAX_PARTS, PART};
use crate::store::sink::Hashes;

/// A multipart upload in the making: everything needed to carry it on, anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assembly {
    /// The file key the upload ends at (`storage/...`, without the bucket prefix).
    pub key: String,
    /// The catalog's session id: names the staging folder.
    pub session: String,
    /// The S3 multipart upload.
    pub upload_id: UploadId,
    /// The length, when declared: bytes reaching it end the upload (and may not pass it).
    pub declared: Option<u64>,
    /// The S3 parts so far, numbered from 1 in byte order.
    pub parts: Vec<PartInfo>,
    /// Bytes after the parts, staged as objects, in byte order.
    pub staged: Vec<Staged>,
    /// Bytes received in order: those in `parts` and `staged`.
    pub received: u64,
    /// The SHA-256 state of the bytes received ([`Hashes::state`]).
    pub sha256_state: String,
    /// The CRC-32 of the bytes received.
    pub crc32: u32,
}

/// A staging object holding bytes of an assembly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Its key in the bucket (prefix included).
    pub object: String,
    /// Its size.
    pub size: u64,
}

/// A client part stored apart because it came out of order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedPart {
    /// Its key in the bucket (prefix included).
    pub object: String,
    /// Its size.
    pub size: u64,
    /// Hex SHA-256 of the part alone (for a client's per-part checksum).
    pub sha256: String,
    /// CRC-32 of the part alone.
    pub crc32: u32,
}

/// The result of an append: the assembly to store, and the staging objects it no longer
/// needs, to remove with [`S3Bytes::remove_staged`] once it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The new state.
    pub assembly: Assembly,
    /// Staging objects whose bytes went into a part.
    pub obsolete: Vec<String>,
}

/// Is `s` usable as a staging folder name (one plain path segment)?
fn valid_session(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl S3Bytes {
    /// The staging folder of a session, prefix included, ending in `/`.
    pub fn staging_prefix(&self, session: &str) -> String {
        format!("{}.staging/{session}/", self.prefix)
    }

    /// Begins an upload to `key` for the catalog's `session` (letters, digits, `-`, `_`),
    /// with its length when known.
    pub async fn begin_assembly(
        &self,
        key: &str,
        session: &str,
        declared: Option<u64>,
    ) -> Result<Assembly, S3Error> {
        if !valid_session(session) {
            return Err(S3Error::Invalid(format!("session id {session:?}")));
        }
        let upload_id = self.begin_multipart(key).await?;
        let (sha256_state, crc32) = Hashes::default().state();
        Ok(Assembly {
            key: key.to_owned(),
            session: session.to_owned(),
            upload_id,
            declared,
            parts: Vec::new(),
            staged: Vec::new(),
            received: 0,
            sha256_state,
            crc32,
        })
    }

    /// Appends a client part, streamed, at the end of the bytes received; fails with
    /// `TooLarge` when the upload would pass `limit` or its declared length. The stored
    /// assembly is untouched: the caller stores the one returned.
    pub async fn append<S, E>(
        &self,
        assembly: &Assembly,
        body: S,
        limit: u64,
    ) -> Result<Appended, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _permit = self.budget.reserve().await;
        let mut a = assembly.clone();
        let path = self.path(&a.key)?;
        let mut hashes = Hashes::resume(&a.sha256_state, a.crc32)
            .ok_or_else(|| S3Error::Invalid("hash state does not parse".into()))?;
        let limit = a.declared.map_or(limit, |d| d.min(limit));
        let start = a.received;
        let mut staged_len: u64 = a.staged.iter().map(|s| s.size).sum();
        let mut obsolete = Vec::new();
        let mut buf = Buffer::default();
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| S3Error::Body(std::io::Error::other(e)))?;
            a.received += chunk.len() as u64;
            if a.received > limit {
                return Err(S3Error::TooLarge);
            }
            hashes.update(&chunk);
            buf.push(chunk);
            if staged_len > 0 && staged_len + buf.len() as u64 >= PART as u64 {
                // Enough for a part: the staged bytes go in front of the new ones.
                buf.prepend(self.read_staged(&a.staged).await?);
                obsolete.extend(a.staged.drain(..).map(|s| s.object));
                staged_len = 0;
            }
            while staged_len == 0 && buf.len() >= 2 * PART {
                let part = self.next_part(&path, &a, buf.take(PART)).await?;
                a.parts.push(part);
            }
        }
        let last = a.declared == Some(a.received);
        if last && staged_len > 0 {
            buf.prepend(self.read_staged(&a.staged).await?);
            obsolete.extend(a.staged.drain(..).map(|s| s.object));
            staged_len = 0;
        }
        if buf.len() > 0 {
            if staged_len == 0 && (buf.len() >= PART || last) {
                let part = self.next_part(&path, &a, buf.take_all()).await?;
                a.parts.push(part);
            } else {
                let offset = a.received - buf.len() as u64;
                let size = buf.len() as u64;
                let object = self.stage(&a.session, offset, buf.take_all()).await?;
                a.staged.push(Staged { object, size });
            }
        }
        debug_assert!(a.received >= start);
        (a.sha256_state, a.crc32) = hashes.state();
        Ok(Appended {
            assembly: a,
            obsolete,
        })
    }

    /// Stores a client part that arrived out of order as a staging object of `session`,
    /// streamed (bounded memory, one PUT or a multipart upload of its own), hashed alone.
    pub async fn stage_part<S, E>(
        &self,
        session: &str,
        body: S,
        limit: u64,
    ) -> Result<StagedPart, S3Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !valid_session(session) {
            return Err(S3Error::Invalid(format!("session id {session:?}")));
        }
        let object = format!(
            "{}part-{}",
            self.staging_prefix(session),
            uuid::Uuid::new_v4().simple()
        );
        let w = self
            .put_stream_at(Self::raw_path(&object)?, body, limit)
            .await?;
        Ok(StagedPart {
            object,
            size: w.size,
            sha256: w.sha256,
            crc32: w.crc32,
        })
    }

    /// Appends a part stored by [`S3Bytes::stage_part`], read back as a stream; its
    /// object is then obsolete.
    pub async fn append_staged(
        &self,
        assembly: &Assembly,
        part: &StagedPart,
        limit: u64,
    ) -> Result<Appended, S3Error> {
        let path = Self::raw_path(&part.object)?;
        let got = self.store.get(&path).await?;
        if got.meta.size != part.size {
            return Err(S3Error::Invalid(format!(
                "staged part {} has {} bytes, not {}",
                part.object, got.meta.size, part.size
            )));
        }
        let mut out = self.append(assembly, got.into_stream(), limit).await?;
        out.obsolete.push(part.object.clone());
        Ok(out)
    }

    /// Ends the upload: what is still staged goes out as the last part, the parts are
    /// completed into the object at the assembly's key, and the session's staging objects
    /// are removed. Returns the size and hashes of all the bytes; the caller compares them
    /// with what the client declared before the file counts as stored.
    pub async fn finish(&self, assembly: &Assembly) -> Result<Written, S3Error> {
        let mut a = assembly.clone();
        let path = self.path(&a.key)?;
        if !a.staged.is_empty() {
            let _permit = self.budget.reserve().await;
            let bytes = self.read_staged(&a.staged).await?;
            let part = self
                .next_part(&path, &a, bytes.into_iter().collect())
                .await?;
            a.parts.push(part);
        }
        self.complete_at(&path, &a.upload_id, &a.parts).await?;
        self.clear_staging(&a.session).await?;
        let hashes = Hashes::resume(&a.sha256_state, a.crc32)
            .ok_or_else(|| S3Error::Invalid("hash state does not parse".into()))?;
        let (sha256, crc32) = hashes.finish();
        Ok(Written {
            size: a.received,
            sha256,
            crc32,
        })
    }

    /// Gives the upload up: the multipart upload is aborted (already gone is fine) and the
    /// session's staging objects are removed.
    pub async fn abort_assembly(&self, assembly: &Assembly) -> Result<(), S3Error> {
        self.abort_if_open(&assembly.key, &assembly.upload_id)
            .await?;
        self.clear_staging(&assembly.session).await
    }

    /// Removes staging objects (from [`Appended::obsolete`]); missing ones are fine.
    pub async fn remove_staged(&self, objects: &[String]) -> Result<(), S3Error> {
        for o in objects {
            match self.store.delete(&Self::raw_path(o)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes every staging object of a session, listed (so pieces a failed step left
    /// behind go too).
    pub async fn clear_staging(&self, session: &str) -> Result<(), S3Error> {
        if !valid_session(session) {
            return Err(S3Error::Invalid(format!("session id {session:?}")));
        }
        let prefix = Self::raw_path(&self.staging_prefix(session))?;
        let mut listed = self.store.list(Some(&prefix));
        let mut batch = Vec::new();
        while let Some(m) = listed.try_next().await? {
            batch.push(m.location.to_string());
        }
        self.remove_staged(&batch).await
    }

    /// The next part of `a`, checked against S3's limit of 10,000.
    async fn next_part(
        &self,
        path: &Path,
        a: &Assembly,
        payload: PutPayload,
    ) -> Result<PartInfo, S3Error> {
        let number = u32::try_from(a.parts.len() + 1).unwrap_or(u32::MAX);
        if number > MAX_PARTS {
            return Err(S3Error::TooLarge);
        }
        self.put_part_at(path, &a.upload_id, number, payload).await
    }

    /// Puts bytes as a staging object of `session` that begins at `offset` of the upload.
    async fn stage(
        &self,
        session: &str,
        offset: u64,
        payload: PutPayload,
    ) -> Result<String, S3Error> {
        // The offset orders a listing for people; the random part keeps a retried step
        // from overwriting a piece the stored assembly still names.
        let object = format!(
            "{}{offset:016}-{}",
            self.staging_prefix(session),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.store.put(&Self::raw_path(&object)?, payload).await?;
        Ok(object)
    }

    /// The bytes of staged pieces (under `PART` in all), checked against their sizes.
    async fn read_staged(&self, staged: &[Staged]) -> Result<Vec<Bytes>, S3Error> {
        let mut out = Vec::with_capacity(staged.len());
        for s in staged {
            let bytes = self
                .store
                .get(&Self::raw_path(&s.object)?)
                .await?
                .bytes()
                .await?;
            if bytes.len() as u64 != s.size {
                return Err(S3Error::Invalid(format!(
                    "staging object {} has {} bytes, not {}",
                    s.object,
                    bytes.len(),
                    s.size
                )));
            }
            out.push(bytes);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_one_plain_segment() {
        assert!(valid_session("0b8e4c1a-33f4-4b0e-9d7a-1f2e3d4c5b6a"));
        assert!(valid_session("s_1"));
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(!valid_session(bad), "{bad:?}");
        }
    }
}
