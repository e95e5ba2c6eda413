//! Sending a stored file (API.md §4.3, §4.4). The file is opened once, below the root with
//! no symlinks (`FileStore::try_open_cached`, else on a blocking thread), and everything is
//! answered from that descriptor: validators from its `fstat`, the decision from
//! [`conditional::evaluate`](super::conditional::evaluate), the bytes by `pread`. A file in
//! the page cache is served without leaving the async thread (`RWF_NOWAIT`); bytes that must
//! come from the disk are read on a blocking thread, a chunk at a time, so a slow client never
//! holds one. Our headers apply to every answer: type from the sidecar, `nosniff`, `sandbox` for
//! any type not known to be display-only, the disposition of signed URLs. With `ACCEL_REDIRECT_PREFIX` the bytes
//! go through nginx.
//!
//! This replaces tower-http's `ServeFile`, which opened the file again by path (a second
//! walk, and a window where another file could take its place), read its metadata and bytes in
//! several hops to blocking threads (a 4 KiB file cost ~285 µs of CPU, 7.5× nginx), ignored
//! `If-Range` and answered a malformed `Range` with 416.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::conditional::{self, Outcome, Validators};
use crate::error::ApiError;
use crate::signer::Disposition;
use crate::state::AppState;
use crate::store::backend::Opened;
use crate::store::key::{is_format_char, Key};
use crate::store::pagecache::{read_at, read_chunk};

/// Bodies up to this size are read whole before the answer starts.
const INLINE_MAX: u64 = 256 * 1024;

/// A chunk of a larger body read from the page cache on the async thread.
const CACHED_CHUNK: usize = 256 * 1024;

/// A chunk of a larger body read on a blocking thread (from the disk).
const DISK_CHUNK: usize = 1024 * 1024;

/// Does a file of this type get `Content-Security-Policy: sandbox`? Every type does except
/// those a browser only displays, never runs: raster images, audio, video, plain text,
/// CSV, JSON and PDF (Chrome's PDF viewer will not open inside a sandbox). An allowlist,
/// because types stored from clients are open-ended and browsers render more than the
/// obvious ones (issue 16: `multipart/x-mixed-replace` and `message/rfc822` carry HTML).
/// On a type the browser downloads anyway, the header costs nothing.
pub fn needs_sandbox(mime: &str) -> bool {
    const SHOWN_ONLY: &[&str] = &[
        "image/png",
        "image/apng",
        "image/jpeg",
        "image/pjpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/x-icon",
        "image/vnd.microsoft.icon",
        "image/tiff",
        "image/heic",
        "image/heif",
        "image/jxl",
        "text/plain",
        "text/csv",
        "application/json",
        "application/pdf",
    ];
    let essence = crate::store::sidecar::mime_essence(mime);
    let media = |family: &str| {
        essence.strip_prefix(family).is_some_and(|sub| {
            !sub.is_empty()
                && sub
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        })
    };
    !(SHOWN_ONLY.contains(&essence.as_str()) || media("audio/") || media("video/"))
}

/// What `filename*` percent-encodes: every byte but RFC 8187 `attr-char` (`A-Za-z0-9` and
/// ``!#$&+-.^_`|~``), the only characters its `value-chars` may hold unescaped.
const FILENAME_STAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// What the `X-Accel-Redirect` path percent-encodes: every byte but RFC 3986 unreserved
/// (`A-Za-z0-9-._~`), `@` and the `/` between segments. nginx decodes the path before it
/// looks for the file, so a `%`, `?` or `#` in a name must arrive escaped; the sub-delims that
/// `pchar` would allow are escaped too, which nginx decodes all the same.
const ACCEL_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b'/');

/// `inline; filename="ascii"; filename*=UTF-8''pct` (RFC 6266 with RFC 8187 encoding), the
/// name without format characters and with control characters as `_`, as stored names are
/// (the original name in the sidecar is the client's, kept as sent).
pub fn content_disposition(kind: &str, name: &str) -> HeaderValue {
    let name: String = name
        .chars()
        .filter(|&c| !is_format_char(c))
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let pct = utf8_percent_encode(&name, FILENAME_STAR);
    HeaderValue::from_str(&format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{pct}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Serves `key` for GET or HEAD, as a public link (`disposition` `None`) or a signed one.
pub async fn serve_key(
    state: &AppState,
    key: &Key,
    method: &Method,
    headers: &HeaderMap,
    disposition: Option<Disposition>,
    via: &'static str,
) -> Result<Response, ApiError> {
    let opened = state.store.open_read(key).await?;
    let entry = opened.entry().clone();
    let mime = &entry.meta.mime;
    let mut ours = HeaderMap::new();
    ours.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if needs_sandbox(mime) {
        ours.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
    }
    if let Some(d) = disposition {
        ours.insert(
            header::CONTENT_DISPOSITION,
            content_disposition(d.as_str(), &entry.meta.original_name),
        );
    }
    tracing::info!(target: "activity", event = "download", via, key = %key, size = entry.size);

    if let Some(cloud) = state.store.as_cloud().filter(|c| c.presign_reads()) {
        // S3_PRESIGN_READS=1: the object store serves the bytes (ranges and validators
        // included), as nginx does with X-Accel-Redirect on one machine.
        let url = cloud.presigned(key).await?;
        let mut res = StatusCode::FOUND.into_response();
        let h = res.headers_mut();
        h.extend(ours);
        if let Ok(v) = HeaderValue::from_str(url.as_str()) {
            h.insert(header::LOCATION, v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(res);
    }
    let file = match opened {
        Opened::File(file, _) => Some(file),
        Opened::Object(_) => None,
    };
    if let (Some(prefix), Some(_)) = (&state.settings.accel_redirect_prefix, &file) {
        let rel = key.to_string();
        let rel = rel.strip_prefix("storage/").unwrap_or(&rel);
        let mut res = StatusCode::OK.into_response();
        let h = res.headers_mut();
        h.extend(ours);
        if let Ok(v) = HeaderValue::from_str(mime) {
            h.insert(header::CONTENT_TYPE, v);
        }
        let target = utf8_percent_encode(rel, ACCEL_PATH);
        if let Ok(v) = HeaderValue::from_str(&format!("{prefix}{target}")) {
            h.insert("x-accel-redirect", v);
        }
        return Ok(res);
    }

    let v = Validators::for_file(entry.modified, entry.size);
    if let Ok(etag) = HeaderValue::from_str(&v.etag) {
        ours.insert(header::ETAG, etag);
    }
    if let Some(lm) = v.last_modified_header() {
        ours.insert(header::LAST_MODIFIED, lm);
    }
    ours.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, start, end) = match conditional::evaluate(method, headers, &v) {
        Outcome::Full => (StatusCode::OK, 0, entry.size),
        Outcome::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        Outcome::NotModified => {
            let mut res = StatusCode::NOT_MODIFIED.into_response();
            res.headers_mut().extend(ours);
            return Ok(res);
        }
        Outcome::PreconditionFailed => return Err(ApiError::PreconditionFailed),
        Outcome::Unsatisfiable => return Err(ApiError::Range { size: entry.size }),
    };
    let len = end - start;
    let body = match file {
        _ if method == Method::HEAD || len == 0 => Body::empty(),
        Some(file) if len <= INLINE_MAX => {
            Body::from(read_inline(Arc::new(file), start, len).await?)
        }
        Some(file) => Body::new(FileBody::new(Arc::new(file), start, end)),
        None => {
            let cloud = state
                .store
                .as_cloud()
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("an object without a bucket")))?;
            let ranged = cloud.read_range(key, start, end).await?;
            Body::from_stream(ranged.stream)
        }
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.extend(ours);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(cr) = HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, entry.size))
        {
            h.insert(header::CONTENT_RANGE, cr);
        }
    }
    Ok(res)
}

/// A file that ended before the length promised in the headers (it can only be changed in
/// place by hand: the store replaces files by rename, so an open descriptor keeps its bytes).
fn short_file() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "file shorter than its length",
    )
}

/// Reads `len` bytes from `start` whole: from the page cache on this thread when it can,
/// the rest on a blocking thread.
async fn read_inline(file: Arc<std::fs::File>, start: u64, len: u64) -> Result<Bytes, ApiError> {
    let want = usize::try_from(len).map_err(|e| ApiError::Internal(e.into()))?;
    let first = read_chunk(&file, start, want)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if first.len() == want {
        return Ok(first);
    }
    let mut all = bytes::BytesMut::with_capacity(want);
    all.extend_from_slice(&first);
    while all.len() < want {
        let more = read_chunk(&file, start + all.len() as u64, want - all.len())
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        if more.is_empty() {
            return Err(ApiError::Internal(short_file().into()));
        }
        all.extend_from_slice(&more);
    }
    Ok(all.freeze())
}

/// The body of a large answer: bytes `pos..end` of an open file, a chunk per frame. Each
/// chunk comes from the page cache on the async thread when it is there (no thread hop),
/// else from a blocking thread that reads it from the disk and is released at once.
struct FileBody {
    file: Arc<std::fs::File>,
    pos: u64,
    end: u64,
    reading: Option<tokio::task::JoinHandle<std::io::Result<Option<Bytes>>>>,
}

impl FileBody {
    fn new(file: Arc<std::fs::File>, start: u64, end: u64) -> Self {
        // Tell the kernel to read ahead generously: this file will be read to the end.
        let _ = rustix::fs::fadvise(
            &*file,
            start,
            std::num::NonZeroU64::new(end - start),
            rustix::fs::Advice::Sequential,
        );
        Self {
            file,
            pos: start,
            end,
            reading: None,
        }
    }

    fn chunk(&self, max: usize) -> usize {
        usize::try_from(self.end - self.pos).map_or(max, |left| left.min(max))
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        let got = if let Some(reading) = &mut this.reading {
            let done = std::task::ready!(Pin::new(reading).poll(cx));
            this.reading = None;
            done.map_err(std::io::Error::other)
                .and_then(|r| r)
                .map(Option::unwrap_or_default)
        } else {
            match read_at(&this.file, this.pos, this.chunk(CACHED_CHUNK), false) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => {
                    // Not in memory: a blocking thread waits for the disk.
                    let file = Arc::clone(&this.file);
                    let (pos, max) = (this.pos, this.chunk(DISK_CHUNK));
                    this.reading = Some(tokio::task::spawn_blocking(move || {
                        read_at(&file, pos, max, true)
                    }));
                    return Pin::new(this).poll_frame(cx);
                }
                Err(e) => Err(e),
            }
        };
        match got {
            Ok(bytes) if bytes.is_empty() => Poll::Ready(Some(Err(short_file()))),
            Ok(bytes) => {
                this.pos += bytes.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.end - self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_display_only_types_go_unsandboxed() {
        for t in [
            "text/html",
            "application/xhtml+xml",
            "image/svg+xml",
            "text/xml",
            "application/javascript",
            "text/html; charset=utf-8",
            // Issue 16: browsers render HTML out of these.
            "multipart/x-mixed-replace;boundary=xyz",
            "message/rfc822",
            "application/octet-stream",
            "application/x-anything",
            "text/vtt",
            "image/png, text/html",
            "video/",
            "video/mp4/../../text/html",
            "",
        ] {
            assert!(needs_sandbox(t), "{t}");
        }
        for t in [
            "image/png",
            "IMAGE/JPEG",
            "video/mp4",
            "video/x-matroska",
            "audio/mpeg",
            "text/plain",
            "text/plain; charset=utf-8",
            "application/pdf",
        ] {
            assert!(!needs_sandbox(t), "{t}");
        }
    }

    #[test]
    fn disposition_drops_format_characters() {
        let v = content_disposition("inline", "\u{202E}gnp.exe\u{7}");
        assert_eq!(
            v.to_str().unwrap_or(""),
            "inline; filename=\"gnp.exe_\"; filename*=UTF-8''gnp.exe_"
        );
    }

    /// Every ASCII byte is kept or escaped as the hand-written encoders these sets replaced did.
    #[test]
    fn encode_sets_keep_what_they_did() {
        for b in 0u8..=127 {
            let one = char::from(b).to_string();
            let escaped = format!("%{b:02X}");
            let attr_char = b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b);
            let accel = b.is_ascii_alphanumeric() || b"-._~@/".contains(&b);
            for (set, kept) in [(FILENAME_STAR, attr_char), (ACCEL_PATH, accel)] {
                let want = if kept { &one } else { &escaped };
                assert_eq!(&utf8_percent_encode(&one, set).to_string(), want, "{b}");
            }
        }
        let hostile = "a b/\"%<>?#[]\\^`{|}\u{7f}\t\r\n-._~!$&'()*+,;=:@é😀\u{202e}";
        assert_eq!(
            utf8_percent_encode(hostile, FILENAME_STAR).to_string(),
            "a%20b%2F%22%25%3C%3E%3F#%5B%5D%5C^`%7B|%7D%7F%09%0D%0A-._~!$&%27%28%29%2A+%2C%3B%3D\
             %3A%40%C3%A9%F0%9F%98%80%E2%80%AE"
        );
        assert_eq!(
            utf8_percent_encode(hostile, ACCEL_PATH).to_string(),
            "a%20b/%22%25%3C%3E%3F%23%5B%5D%5C%5E%60%7B%7C%7D%7F%09%0D%0A-._~%21%24%26%27%28%29\
             %2A%2B%2C%3B%3D%3A@%C3%A9%F0%9F%98%80%E2%80%AE"
        );
    }

    #[test]
    fn disposition_encodes_non_ascii() {
        let v = content_disposition("attachment", "Résumé été.pdf");
        assert_eq!(
            v.to_str().unwrap_or(""),
            "attachment; filename=\"R_sum_ _t_.pdf\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%C3%A9t%C3%A9.pdf"
        );
    }
}
