//! What a crash can leave in the bucket, for the background sweep (every instance may run
//! it at once: each step is a delete or an abort, and doing either twice is harmless).
//!
//! - **Staging objects** of sessions that ended badly: [`S3Bytes::list_orphans`] lists
//!   those older than a threshold (longer than a session may live), grouped by session;
//!   the sweep drops the sessions the catalog still knows and clears the rest with
//!   [`S3Bytes::clear_staging`].
//! - **Multipart uploads** never completed or aborted: S3 servers list them with
//!   `ListMultipartUploads`, but `object_store` has no call for it and s3s-fs does not
//!   implement it, so the catalog remembers every upload id it begins (in the session row,
//!   written before the first part) and the sweep aborts those of expired sessions with
//!   [`S3Bytes::abort_uploads`]. On AWS a bucket lifecycle rule
//!   (`AbortIncompleteMultipartUpload`) is the backstop for ids lost with a crash between
//!   `CreateMultipartUpload` and the catalog's write, and for one-request uploads
//!   (`put_stream`), whose id lives only in the request (it aborts on error and on drop,
//!   but not when the process dies).
//! - **Files without a catalog row** (a crash between completing an object and writing
//!   its row): found by comparing [`S3Bytes::list_prefix`] with the catalog.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::TryStreamExt as _;
use object_store::ObjectStore as _;

use super::{S3Bytes, S3Error, UploadId};

/// A session's staging objects, none newer than the threshold asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingOrphan {
    /// The session id (the staging folder's name).
    pub session: String,
    /// Its objects (prefix included).
    pub objects: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
}

impl S3Bytes {
    /// Staging folders whose every object is older than `older_than`: the leftovers of
    /// sessions a crash (or a lost race) ended. Lists the staging area only, a page at a
    /// time.
    pub async fn list_orphans(&self, older_than: Duration) -> Result<Vec<StagingOrphan>, S3Error> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let root = format!("{}.staging/", self.prefix);
        let path = Self::raw_path(&root)?;
        let mut listed = self.store.list(Some(&path));
        // session → (objects, bytes, any object too young)
        let mut by_session: BTreeMap<String, (Vec<String>, u64, bool)> = BTreeMap::new();
        while let Some(m) = listed.try_next().await? {
            let location = m.location.to_string();
            let Some(session) = location
                .strip_prefix(&root)
                .and_then(|rest| rest.split('/').next())
            else {
                continue;
            };
            let entry = by_session.entry(session.to_owned()).or_default();
            entry.0.push(location.clone());
            entry.1 += m.size;
            entry.2 |= m.last_modified > cutoff;
        }
        Ok(by_session
            .into_iter()
            .filter(|(_, (_, _, young))| !young)
            .map(|(session, (objects, bytes, _))| StagingOrphan {
                session,
                objects,
                bytes,
            })
            .collect())
    }

    /// Aborts multipart uploads the catalog remembers (`(file key, upload id)` of expired
    /// sessions); ids already completed or aborted count as done. Returns how many were
    /// still open.
    pub async fn abort_uploads(&self, uploads: &[(String, UploadId)]) -> Result<usize, S3Error> {
        let mut aborted = 0;
        for (key, id) in uploads {
            if self.abort_if_open(key, id).await? {
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Aborts an upload; `false` when it was already completed or aborted. AWS answers
    /// such an id with 404 `NoSuchUpload`, s3s-fs with 403 `AccessDenied` (it checks the
    /// id's owner first and finds none); the credentials themselves are checked by
    /// `health`, so a 403 here means the id is gone.
    pub(crate) async fn abort_if_open(&self, key: &str, id: &UploadId) -> Result<bool, S3Error> {
        match self.abort(key, id).await {
            Ok(()) => Ok(true),
            Err(S3Error::NotFound) => Ok(false),
            Err(S3Error::Store(object_store::Error::PermissionDenied { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
