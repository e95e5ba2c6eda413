//! The standard resumable-upload protocols over the store's resumable sessions
//! (`store/resumable.rs`): tus 1.0 at `/v1/files/tus/` ([`tus`]) and the IETF draft at
//! `/v1/files/resumable/` ([`ietf`]). What both need is here: streaming a request body into
//! an append (with a checksum of the request's bytes, from a header or a trailer), and the
//! headers that name the stored file once an upload finishes.

pub mod ietf;
pub mod tus;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use http_body_util::BodyExt as _;

use super::uploads::body_error;
use super::uploads::one_request::public_url;
use crate::error::ApiError;
use crate::routes::uploads::grant::Uploader;
use crate::state::AppState;
use crate::store::key::Key;
use crate::store::resumable::Progress;
use crate::store::sessions::{Protocol, Session, SessionId};
use crate::store::StoreError;

/// The appends running in this app, by upload: a newer request for the same upload ends
/// the older one (what the draft recommends: a client only retries when it thinks the older
/// request failed, and the server may not have noticed yet). The ended request keeps what
/// reached the store. Across instances, the filesystem's data-file lock refuses (423) and the
/// catalog keeps one of appends racing at an offset (409). One per app, not per process: two
/// apps in one process (the tests' instances) are two instances.
#[derive(Debug, Default)]
pub struct Appends(std::sync::Mutex<RunningMap>);

/// Each running append: its ticket and the signal that ends it.
type RunningMap = std::collections::HashMap<SessionId, (u64, std::sync::Arc<tokio::sync::Notify>)>;

/// How long a new request waits for the one it ends to let go.
const SUPERSEDE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A running append's entry in its app's [`Appends`], removed when it ends.
struct Running<'a> {
    appends: &'a Appends,
    id: SessionId,
    ticket: u64,
    stop: std::sync::Arc<tokio::sync::Notify>,
}

impl<'a> Running<'a> {
    fn register(appends: &'a Appends, id: SessionId) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let ticket = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        if let Ok(mut map) = appends.0.lock() {
            map.insert(id, (ticket, stop.clone()));
        }
        Self {
            appends,
            id,
            ticket,
            stop,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.appends.0.lock() {
            if map.get(&self.id).is_some_and(|(t, _)| *t == self.ticket) {
                map.remove(&self.id);
            }
        }
    }
}

impl Appends {
    /// Is an append running on `id` here?
    pub(crate) fn is_running(&self, id: &SessionId) -> bool {
        self.0.lock().is_ok_and(|m| m.contains_key(id))
    }

    /// Ends the append running on `id` here, if any, and waits (a few seconds at most)
    /// until it has let go. Returns whether none runs any more.
    pub(crate) async fn supersede(&self, id: &SessionId) -> bool {
        let running = self
            .0
            .lock()
            .ok()
            .and_then(|map| map.get(id).map(|(_, n)| n.clone()));
        let Some(stop) = running else {
            return true;
        };
        stop.notify_one();
        let deadline = tokio::time::Instant::now() + SUPERSEDE_WAIT;
        while tokio::time::Instant::now() < deadline {
            if !self.is_running(id) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }
}

/// The stored file's key, on the response that finishes an upload (and on `HEAD` after).
pub const UPLOAD_KEY: HeaderName = HeaderName::from_static("x-upload-key");
/// The stored file's public URL, beside [`UPLOAD_KEY`].
pub const UPLOAD_URL: HeaderName = HeaderName::from_static("x-upload-url");

/// The headers naming a stored file.
pub(crate) fn stored_headers(state: &AppState, key: &Key, headers: &mut HeaderMap) {
    let url = public_url(&state.settings.public_base_url, key);
    for (name, value) in [(UPLOAD_KEY, key.to_string()), (UPLOAD_URL, url)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// The caller's upload of `protocol`: another user's, one of the other protocol and a
/// three-step session are all as unknown as a missing one.
pub(crate) async fn owned_upload(
    state: &AppState,
    caller: &Uploader,
    id: &str,
    protocol: Protocol,
) -> Result<Progress, ApiError> {
    let unknown = || ApiError::NotFound("Upload not found".to_owned());
    let id = SessionId::parse(id).map_err(|_| unknown())?;
    let progress = match state.store.progress(&id).await {
        Ok(p) => p,
        Err(StoreError::NotFound(_) | StoreError::WrongProtocol) => return Err(unknown()),
        Err(e) => return Err(e.into()),
    };
    let session = progress.session();
    let same = session
        .resumable
        .as_ref()
        .is_some_and(|r| r.protocol == protocol);
    let made_by = session.resumable.as_ref().and_then(|r| r.grant.as_deref());
    if !same || !caller.may_access(session.user_id.as_str(), made_by) {
        return Err(unknown());
    }
    Ok(progress)
}

/// Does the request carry a body (a `Content-Length` other than 0, or a chunked one)?
pub(crate) fn has_body(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || headers.contains_key(axum::http::header::TRANSFER_ENCODING)
}

/// Is the request's `Content-Type` `media` (parameters and case aside)?
pub(crate) fn content_type_is(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| crate::store::sidecar::mime_essence(v) == media)
}

/// Metadata pairs: key, decoded value.
pub(crate) type Metadata = Vec<(String, String)>;

/// `Upload-Metadata` as sent (`None` when absent) and its pairs (see
/// [`tus::parse_metadata`]); the error says what is wrong with it.
pub(crate) fn upload_metadata(headers: &HeaderMap) -> Result<(Option<String>, Metadata), String> {
    let raw = headers
        .get("upload-metadata")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| "Upload-Metadata is not ASCII".to_owned())?;
    let pairs = tus::parse_metadata(raw.as_deref().unwrap_or_default())?;
    Ok((raw, pairs))
}

/// `Upload-Expires` (tus), as an HTTP date.
pub(crate) fn http_date(t: chrono::DateTime<chrono::Utc>) -> HeaderValue {
    let t: std::time::SystemTime = t.into();
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).unwrap_or(HeaderValue::from_static(""))
}

/// A checksum algorithm of tus's checksum extension, hashing a request's bytes.
pub(crate) enum Checksum {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Md5(md5::Md5),
    Crc32(crc32fast::Hasher),
}

/// The algorithms, as `Tus-Checksum-Algorithm` lists them.
pub(crate) const CHECKSUM_ALGORITHMS: &str = "sha1,sha256,md5,crc32";

impl Checksum {
    fn new(name: &str) -> Option<Self> {
        use sha2::Digest as _;
        Some(match name.to_ascii_lowercase().as_str() {
            "sha1" => Self::Sha1(sha1::Sha1::new()),
            "sha256" => Self::Sha256(sha2::Sha256::new()),
            "md5" => Self::Md5(md5::Md5::new()),
            "crc32" => Self::Crc32(crc32fast::Hasher::new()),
            _ => return None,
        })
    }

    fn update(&mut self, b: &[u8]) {
        use sha2::Digest as _;
        match self {
            Self::Sha1(h) => h.update(b),
            Self::Sha256(h) => h.update(b),
            Self::Md5(h) => h.update(b),
            Self::Crc32(h) => h.update(b),
        }
    }

    /// The digest; a CRC-32 as its four bytes, big-endian.
    fn finish(self) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Md5(h) => h.finalize().to_vec(),
            Self::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
        }
    }
}

/// A checksum the client announced for the bytes of its request: `algorithm base64`.
pub(crate) struct ExpectedChecksum {
    hasher: Checksum,
    digest: Vec<u8>,
}

/// What is wrong with an `Upload-Checksum` value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChecksumFault {
    /// Not `algorithm base64`, or bad base64.
    Malformed,
    /// An algorithm not in [`CHECKSUM_ALGORITHMS`].
    Unsupported,
}

impl ExpectedChecksum {
    /// Parses `sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=`.
    pub(crate) fn parse(value: &str) -> Result<Self, ChecksumFault> {
        let mut it = value.split_ascii_whitespace();
        let (Some(alg), Some(b64), None) = (it.next(), it.next(), it.next()) else {
            return Err(ChecksumFault::Malformed);
        };
        let hasher = Checksum::new(alg).ok_or(ChecksumFault::Unsupported)?;
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
            .map_err(|_| ChecksumFault::Malformed)?;
        Ok(Self { hasher, digest })
    }
}

/// How an append ended badly.
#[derive(Debug)]
pub(crate) enum AppendFailure {
    /// Refused before or while writing (offset, lock, size, disk): nothing kept.
    Store(StoreError),
    /// The request's bytes do not match the checksum it announced: nothing kept.
    ChecksumMismatch,
    /// A checksum announced as a trailer that did not come, or could not be read.
    ChecksumMissing(ChecksumFault),
    /// The body ended early (the client went away, or too slow): what arrived is kept,
    /// and the upload is at `offset`.
    Cut {
        /// The offset after what was kept.
        offset: u64,
        /// Why the body ended.
        cause: ApiError,
    },
}

impl From<StoreError> for AppendFailure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Where a checksum of the request's bytes comes from.
pub(crate) enum ChecksumFrom {
    /// None announced.
    None,
    /// From a header, known before the bytes.
    Header(ExpectedChecksum),
    /// From the `Upload-Checksum` trailer (tus checksum-trailer), after the bytes.
    Trailer,
}

/// Streams `body` into `session` at `offset`: appended, hashed, recorded. Returns the new
/// offset. Bytes of a body cut short are kept unless a checksum was announced (they
/// cannot be checked then); bytes whose checksum fails are never kept.
pub(crate) async fn append_body(
    state: &AppState,
    session: &Session,
    offset: u64,
    body: Body,
    checksum: ChecksumFrom,
) -> Result<u64, AppendFailure> {
    let mut upload = match state.store.begin_append(session, offset).await {
        // The filesystem's lock refuses while another append runs: if it runs here, it is
        // ended (keeping its bytes) and the offset checked again.
        Err(StoreError::Busy) if state.appends.supersede(&session.upload_id).await => {
            state.store.begin_append(session, offset).await?
        }
        // The bucket takes appends side by side and refuses the later at its end: one
        // running here is ended first all the same, as on the filesystem.
        Ok(begun) if state.appends.is_running(&session.upload_id) => {
            drop(begun);
            if !state.appends.supersede(&session.upload_id).await {
                return Err(AppendFailure::Store(StoreError::Busy));
            }
            state.store.begin_append(session, offset).await?
        }
        other => other?,
    };
    let running = Running::register(&state.appends, session.upload_id);
    let (mut hasher, mut expected, trailer) = match checksum {
        ChecksumFrom::None => (None, None, false),
        ChecksumFrom::Header(e) => {
            let ExpectedChecksum { hasher, digest } = e;
            (Some(hasher), Some(digest), false)
        }
        ChecksumFrom::Trailer => (None, None, true),
    };
    // With a trailer, the algorithm is known only at the end: every one of them runs.
    let mut all: Vec<(&str, Checksum)> = if trailer {
        CHECKSUM_ALGORITHMS
            .split(',')
            .filter_map(|a| Some((a, Checksum::new(a)?)))
            .collect()
    } else {
        Vec::new()
    };
    let mut trailer_value: Option<String> = None;
    let mut body = body;
    loop {
        let next = tokio::select! {
            biased;
            () = running.stop.notified() => Err(ApiError::Conflict(
                "A newer request for this upload ended this one".to_owned(),
            )),
            f = body.frame() => Ok(f),
        };
        let frame = match next {
            Ok(None) => break,
            Ok(Some(Ok(f))) => f,
            Ok(Some(Err(e))) => {
                return cut(
                    state,
                    session,
                    upload,
                    offset,
                    body_error(&e),
                    hasher.is_some() || trailer,
                )
                .await
            }
            Err(cause) => {
                return cut(
                    state,
                    session,
                    upload,
                    offset,
                    cause,
                    hasher.is_some() || trailer,
                )
                .await
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if let Some(h) = hasher.as_mut() {
                    h.update(&data);
                }
                for (_, h) in &mut all {
                    h.update(&data);
                }
                upload.write(data).await?;
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            trailer_value = trailers
                .get("upload-checksum")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
    }
    if trailer {
        let value =
            trailer_value.ok_or(AppendFailure::ChecksumMissing(ChecksumFault::Malformed))?;
        let parsed = ExpectedChecksum::parse(&value).map_err(AppendFailure::ChecksumMissing)?;
        let alg = value.split_ascii_whitespace().next().unwrap_or_default();
        let found = all
            .into_iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(alg))
            .map(|(_, h)| h);
        hasher = found;
        expected = Some(parsed.digest);
    }
    if let (Some(h), Some(digest)) = (hasher, expected) {
        if h.finish() != digest {
            // Dropped: the append guard cuts the data file back.
            drop(upload);
            return Err(AppendFailure::ChecksumMismatch);
        }
    }
    Ok(state.store.commit_append(session, upload).await?)
}

/// A body that ended early: what arrived is kept (when it can be trusted without the
/// checksum it announced) and the upload is at the returned offset.
async fn cut(
    state: &AppState,
    session: &Session,
    upload: crate::store::backend::Append,
    offset: u64,
    cause: ApiError,
    checksummed: bool,
) -> Result<u64, AppendFailure> {
    if checksummed {
        // Cannot be checked: dropped, the upload stays where it was.
        drop(upload);
        return Err(AppendFailure::Cut { offset, cause });
    }
    let offset = state.store.commit_append(session, upload).await?;
    Err(AppendFailure::Cut { offset, cause })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checksums_parse_and_digest() {
        // "hello" in each algorithm, base64.
        for (alg, b64) in [
            ("sha1", "qvTGHdzF6KLavt4PO0gs2a6pQ00="),
            ("md5", "XUFAKrxLKna5cZ2REBfFkg=="),
            ("sha256", "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="),
        ] {
            let mut e = ExpectedChecksum::parse(&format!("{alg} {b64}")).unwrap();
            e.hasher.update(b"hello");
            assert_eq!(e.hasher.finish(), e.digest, "{alg}");
        }
        let mut c = Checksum::new("CRC32").unwrap();
        c.update(b"hello");
        assert_eq!(c.finish(), 0x3610_a686u32.to_be_bytes().to_vec());
        assert_eq!(
            ExpectedChecksum::parse("sha512 abc=").err(),
            Some(ChecksumFault::Unsupported)
        );
        assert_eq!(
            ExpectedChecksum::parse("sha1").err(),
            Some(ChecksumFault::Malformed)
        );
        assert_eq!(
            ExpectedChecksum::parse("sha1 !!!").err(),
            Some(ChecksumFault::Malformed)
        );
    }
}
