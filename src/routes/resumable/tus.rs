//! tus 1.0.0 at `/v1/files/tus/`: core protocol and the extensions creation,
//! creation-with-upload, creation-defer-length, termination, expiration, checksum,
//! checksum-trailer, concatenation and concatenation-unfinished. An upload is an ordinary
//! session of its user (the same callers as the rest of the API); finishing publishes it as
//! an ordinary file whose key and URL the last `PATCH` gives in `X-Upload-Key` and
//! `X-Upload-Url`.
//!
//! Every answer carries `Tus-Resumable: 1.0.0` (a layer on these routes); errors are the
//! usual JSON `{"detail"}`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value};

use super::{
    append_body, content_type_is, has_body, stored_headers, upload_metadata, AppendFailure,
    ChecksumFault, ChecksumFrom, ExpectedChecksum, CHECKSUM_ALGORITHMS,
};
use crate::error::{ApiError, AppPath, ErrorBody};
use crate::routes::uploads::grant::Uploader;
use crate::routes::{route, Routes};
use crate::state::AppState;
use crate::store::key::{ClientFileName, FolderPath};
use crate::store::resumable::Progress;
use crate::store::sessions::{Concat, Protocol, Session, SessionId};
use crate::store::{NewResumable, StoreError};

/// The protocol version spoken.
const VERSION: &str = "1.0.0";
/// The extensions, as `Tus-Extension` lists them.
const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,\
    expiration,checksum,checksum-trailer,concatenation,concatenation-unfinished";
/// Where uploads are made; an upload's URL is this plus its id.
pub const BASE: &str = "/v1/files/tus/";
/// The body type of `PATCH` (and of creation-with-upload).
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// The tus routes.
pub fn routes() -> Routes {
    let tus = |r: axum::routing::MethodRouter<AppState>| {
        r.layer::<_, std::convert::Infallible>(axum::middleware::map_response(tus_resumable))
            .layer(axum::extract::DefaultBodyLimit::disable())
    };
    Routes::new()
        .route(route!(tus_options).map(tus))
        // Creation may carry the first bytes (creation-with-upload): an upload too.
        .route(
            route!(tus_create)
                .counted_as(crate::metrics::RouteKind::Upload)
                .map(tus),
        )
        .route(route!(tus_upload_options, tus_head, tus_delete, tus_override).map(tus))
        .route(
            route!(tus_patch)
                .counted_as(crate::metrics::RouteKind::Upload)
                .map(tus),
        )
}

async fn tus_resumable(mut res: Response) -> Response {
    res.headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(VERSION));
    res
}

/// A tus answer that failed: an [`ApiError`], or one of tus's own statuses.
#[derive(Debug)]
pub(crate) enum TusError {
    /// The usual errors.
    Api(ApiError),
    /// 412: a `Tus-Resumable` this server does not speak.
    Version,
    /// 415: a `PATCH` body that is not `application/offset+octet-stream`.
    ContentType,
    /// 460: the bytes do not match their `Upload-Checksum`.
    ChecksumMismatch,
}

impl<E: Into<ApiError>> From<E> for TusError {
    fn from(e: E) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for TusError {
    fn into_response(self) -> Response {
        let (status, detail) = match self {
            Self::Api(e) => return e.into_response(),
            Self::Version => (
                StatusCode::PRECONDITION_FAILED,
                format!("Tus-Resumable: only version {VERSION} is supported"),
            ),
            Self::ContentType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be {OFFSET_OCTET_STREAM}"),
            ),
            Self::ChecksumMismatch => (
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
                "Checksum mismatch: the bytes of this request were discarded".to_owned(),
            ),
        };
        let mut res = (
            status,
            axum::Json(ErrorBody {
                detail: Value::from(detail),
            }),
        )
            .into_response();
        if status == StatusCode::PRECONDITION_FAILED {
            res.headers_mut()
                .insert("tus-version", HeaderValue::from_static(VERSION));
        }
        res
    }
}

type TusResult = Result<Response, TusError>;

fn bad(msg: impl Into<String>) -> TusError {
    TusError::Api(ApiError::BadRequest(msg.into()))
}

/// Requests other than `OPTIONS` must say they speak 1.0.0.
fn check_version(headers: &HeaderMap) -> Result<(), TusError> {
    match headers.get("tus-resumable").map(HeaderValue::as_bytes) {
        Some(v) if v.trim_ascii() == VERSION.as_bytes() => Ok(()),
        _ => Err(TusError::Version),
    }
}

/// A header holding a non-negative integer; `Ok(None)` when absent.
fn number_header(headers: &HeaderMap, name: &str) -> Result<Option<u64>, TusError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| bad(format!("{name} must be a non-negative integer")))
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).
/// An empty header is no metadata.
pub(crate) fn parse_metadata(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.split(' ').filter(|s| !s.is_empty());
        let key = it.next().unwrap_or_default();
        let value = it.next();
        if it.next().is_some() {
            return Err(format!("Upload-Metadata: '{key}' has more than one value"));
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(format!("Upload-Metadata: '{key}' appears twice"));
        }
        let value = match value {
            None => String::new(),
            Some(v) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(v))
                    .map_err(|_| format!("Upload-Metadata: the value of '{key}' is not base64"))?;
                String::from_utf8(bytes)
                    .map_err(|_| format!("Upload-Metadata: the value of '{key}' is not UTF-8"))?
            }
        };
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// What the metadata says of the file: its name, type, folder, owner and other fields.
pub(crate) struct FileFields {
    pub(crate) name: ClientFileName,
    pub(crate) mime: Option<String>,
    pub(crate) folder: Option<FolderPath>,
    pub(crate) user: Option<String>,
    pub(crate) extra: Map<String, Value>,
}

impl FileFields {
    /// What a signed upload URL allows: its folder (another one is refused), a length
    /// known up front within its maximum, a type it lists. Nothing for header callers.
    pub(crate) fn apply_grant(
        &mut self,
        who: &Uploader,
        length: Option<u64>,
    ) -> Result<(), ApiError> {
        let Some(grant) = who.grant() else {
            return Ok(());
        };
        let length = length.ok_or_else(|| {
            ApiError::BadRequest(
                "With a signed upload URL, the upload's length is declared when it is created"
                    .to_owned(),
            )
        })?;
        let requested = self.folder.as_ref().map(FolderPath::as_string);
        self.folder = grant.folder_for(requested.as_deref())?;
        grant.check_file(self.name.as_str(), self.mime.as_deref(), Some(length))?;
        Ok(())
    }

    /// From metadata pairs: `filename` (or `name`), `filetype` (or `type`), `folder`,
    /// `user_id` (or `user_email`); the rest become the sidecar's client fields.
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut name = None;
        let mut mime = None;
        let mut folder = None;
        let mut user = None;
        let mut extra = Map::new();
        for (k, v) in pairs {
            match k.as_str() {
                "filename" => name = Some(v),
                "name" if name.is_none() => name = Some(v),
                "filetype" => mime = Some(v),
                "type" if mime.is_none() => mime = Some(v),
                "folder" => folder = Some(v),
                "user_id" => user = Some(v),
                "user_email" if user.is_none() => user = Some(v),
                "name" | "type" | "user_email" => {}
                _ => {
                    extra.insert(k, Value::from(v));
                }
            }
        }
        let name = match name.filter(|n| !n.trim().is_empty()) {
            Some(n) => ClientFileName::parse(&n)?,
            None => ClientFileName::parse("upload")?,
        };
        Ok(Self {
            name,
            mime: mime.filter(|m| !m.trim().is_empty()),
            folder: folder.as_deref().and_then(FolderPath::sanitize),
            user,
            extra,
        })
    }
}

/// `Upload-Expires`, as an HTTP date.
fn expires(session: &Session) -> HeaderValue {
    super::http_date(session.expires_at)
}

pub(crate) fn set(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, v);
    }
}

/// The capabilities of the server.
#[utoipa::path(options, path = "/v1/files/tus/", tag = "tus",
    responses((status = 204, description = "tus versions, extensions, maximum size and checksum algorithms in the headers")))]
pub(crate) async fn tus_options(State(state): State<AppState>) -> Response {
    options(&state)
}

/// The capabilities of the server (on an upload's URL).
#[utoipa::path(options, path = "/v1/files/tus/{upload_id}", tag = "tus",
    params(("upload_id" = String, Path, description = "The upload")),
    responses((status = 204, description = "As OPTIONS /v1/files/tus/")))]
pub(crate) async fn tus_upload_options(State(state): State<AppState>) -> Response {
    options(&state)
}

fn options(state: &AppState) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    set(h, "tus-version", VERSION);
    set(h, "tus-extension", EXTENSIONS);
    set(h, "tus-max-size", state.settings.max_body_bytes);
    set(h, "tus-checksum-algorithm", CHECKSUM_ALGORITHMS);
    res
}

/// Creates an upload (tus creation, with its extensions): `Upload-Length` or
/// `Upload-Defer-Length: 1`, `Upload-Metadata` (`filename`, `filetype`, `folder`, `user_id`
/// for services; other keys go to the sidecar), `Upload-Concat`, and optionally the first
/// bytes as the body (`Content-Type: application/offset+octet-stream`).
#[utoipa::path(post, path = "/v1/files/tus/", tag = "tus",
    params(
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
        ("Upload-Length" = Option<u64>, Header, description = "The file's size"),
        ("Upload-Defer-Length" = Option<String>, Header, description = "1: the size comes later"),
        ("Upload-Metadata" = Option<String>, Header, description = "key base64, ..."),
        ("Upload-Concat" = Option<String>, Header, description = "partial, or final;URL URL ..."),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream", description = "Optional first bytes"),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 201, description = "Created: Location, Upload-Expires (Upload-Offset with bytes; X-Upload-Key and X-Upload-Url when finished)"),
        (status = 400, description = "A header that does not parse, a bad name, or a concatenation of uploads that are not partial uploads of the caller", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 412, description = "Tus-Resumable is not 1.0.0", body = ErrorBody),
        (status = 413, description = "Over MAX_BODY_MB or the quota", body = ErrorBody),
        (status = 415, description = "Bytes with another Content-Type", body = ErrorBody),
        (status = 460, description = "The bytes do not match Upload-Checksum", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn tus_create(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    body: Body,
) -> TusResult {
    check_version(&headers)?;
    let length = number_header(&headers, "upload-length")?;
    let deferred = match headers.get("upload-defer-length") {
        None => false,
        Some(v) if v.as_bytes().trim_ascii() == b"1" => true,
        Some(_) => return Err(bad("Upload-Defer-Length must be 1")),
    };
    let concat = headers
        .get("upload-concat")
        .map(|v| v.to_str().map(str::trim).map(str::to_owned))
        .transpose()
        .map_err(|_| bad("Upload-Concat is not ASCII"))?;
    let final_of = match concat.as_deref() {
        None => None,
        Some("partial") => Some(None),
        Some(v) => match v.strip_prefix("final;") {
            Some(urls) => Some(Some(concat_ids(urls)?)),
            None => {
                return Err(bad(
                    "Upload-Concat must be 'partial' or 'final;URL URL ...'",
                ))
            }
        },
    };
    let is_final = matches!(final_of, Some(Some(_)));
    match (length, deferred, is_final) {
        (Some(_), true, _) => {
            return Err(bad(
                "Send Upload-Length or Upload-Defer-Length: 1, not both",
            ))
        }
        (None, false, false) => {
            return Err(bad("Upload-Length or Upload-Defer-Length: 1 is required"))
        }
        (Some(_), _, true) => return Err(bad("A final concatenation takes no Upload-Length")),
        _ => {}
    }
    if length.is_some_and(|l| l > state.settings.max_body_bytes) {
        return Err(ApiError::TooLarge(format!(
            "Upload-Length is over the maximum upload size of {} bytes (MAX_BODY_MB)",
            state.settings.max_body_bytes
        ))
        .into());
    }
    let (raw_metadata, pairs) = upload_metadata(&headers).map_err(bad)?;
    let mut fields = FileFields::from_pairs(pairs)?;
    let partial = matches!(final_of, Some(None));
    if !is_final {
        fields.apply_grant(&caller, length)?;
    } else if let Some(grant) = caller.grant() {
        let requested = fields.folder.as_ref().map(FolderPath::as_string);
        fields.folder = grant.folder_for(requested.as_deref())?;
        grant.check_file(fields.name.as_str(), fields.mime.as_deref(), None)?;
    }
    let user = caller.acting_for(fields.user.as_deref())?;
    let new = NewResumable {
        user,
        protocol: Protocol::Tus,
        name: fields.name,
        mime: fields.mime,
        length,
        folder: fields.folder,
        meta: fields.extra,
        metadata: raw_metadata.filter(|m| !m.trim().is_empty()),
        partial,
        max_length: caller.grant().map(|g| g.max_size),
        grant: caller.fingerprint(),
    };
    let has_body = has_body(&headers);
    if let Some(Some(parts)) = final_of {
        let (session, stored) = state.store.create_concat(new, parts).await?;
        tracing::info!(target: "activity", event = "tus_concat", user = %session.user_id, upload_id = %session.upload_id);
        let mut res = created(&session, &caller);
        if let Some(stored) = stored {
            stored_headers(&state, &stored.key, res.headers_mut());
            log_stored(&session, &stored);
        }
        return Ok(res);
    }
    if has_body && !is_offset_stream(&headers) {
        return Err(TusError::ContentType);
    }
    let checksum = request_checksum(&headers)?;
    let session = state.store.create_resumable(new).await?;
    tracing::info!(target: "activity", event = "tus_create", user = %session.user_id, upload_id = %session.upload_id, length = ?length);
    let mut res = created(&session, &caller);
    let mut offset = 0;
    if has_body {
        offset = match append_body(&state, &session, 0, body, checksum).await {
            Ok(o) => o,
            // Made, but the bytes did not all come: the client resumes with HEAD.
            Err(AppendFailure::Cut { offset, .. }) => offset,
            Err(e) => {
                // Refused before anything was kept, and the client has no Location to go on
                // with: the upload goes, with its reservation.
                let _ = state.store.terminate(&session).await;
                return Err(append_error(e));
            }
        };
        set(res.headers_mut(), "upload-offset", offset);
    }
    // Complete already, also an empty file (Upload-Length: 0), for which tus-js-client and
    // tuspy send no PATCH at all.
    if session.length() == Some(offset) {
        if let Some(stored) = state.store.finish_resumable(&session).await? {
            stored_headers(&state, &stored.key, res.headers_mut());
            log_stored(&session, &stored);
        }
    }
    Ok(res)
}

fn created(session: &Session, who: &Uploader) -> Response {
    let mut res = StatusCode::CREATED.into_response();
    let h = res.headers_mut();
    set(
        h,
        "location",
        format!("{BASE}{}{}", session.upload_id, who.url_suffix()),
    );
    h.insert("upload-expires", expires(session));
    res
}

fn log_stored(session: &Session, stored: &crate::store::Stored) {
    tracing::info!(target: "activity", event = "upload", user = %session.user_id, key = %stored.key, size = stored.meta.size.unwrap_or(0), upload_id = %session.upload_id);
}

/// The ids in `final;URL URL`: each URL's last path segment.
fn concat_ids(urls: &str) -> Result<Vec<SessionId>, TusError> {
    let ids: Result<Vec<SessionId>, TusError> = urls
        .split_ascii_whitespace()
        .map(|u| {
            let path = u.split(['?', '#']).next().unwrap_or(u);
            let id = path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(path);
            SessionId::parse(id)
                .map_err(|_| bad(format!("Upload-Concat: '{u}' is not an upload URL")))
        })
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        return Err(bad("Upload-Concat: final names no partial uploads"));
    }
    Ok(ids)
}

fn is_offset_stream(headers: &HeaderMap) -> bool {
    content_type_is(headers, OFFSET_OCTET_STREAM)
}

/// The checksum of this request's bytes: `Upload-Checksum`, or announced as a trailer.
fn request_checksum(headers: &HeaderMap) -> Result<ChecksumFrom, TusError> {
    if let Some(v) = headers.get("upload-checksum") {
        let v = v
            .to_str()
            .map_err(|_| bad("Upload-Checksum is not ASCII"))?;
        return ExpectedChecksum::parse(v)
            .map(ChecksumFrom::Header)
            .map_err(checksum_fault);
    }
    let announced = headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim().eq_ignore_ascii_case("upload-checksum"));
    Ok(if announced {
        ChecksumFrom::Trailer
    } else {
        ChecksumFrom::None
    })
}

fn checksum_fault(f: ChecksumFault) -> TusError {
    match f {
        ChecksumFault::Unsupported => bad(format!(
            "Upload-Checksum: the algorithm is not supported (use one of {CHECKSUM_ALGORITHMS})"
        )),
        ChecksumFault::Malformed => bad("Upload-Checksum must be 'algorithm base64-digest'"),
    }
}

fn append_error(e: AppendFailure) -> TusError {
    match e {
        AppendFailure::Store(StoreError::TooLarge) => TusError::Api(ApiError::TooLarge(
            "The bytes pass the upload's length".to_owned(),
        )),
        AppendFailure::Store(e) => e.into(),
        AppendFailure::ChecksumMismatch => TusError::ChecksumMismatch,
        AppendFailure::ChecksumMissing(f) => checksum_fault(f),
        AppendFailure::Cut { cause, .. } => TusError::Api(cause),
    }
}

async fn owned(state: &AppState, caller: &Uploader, id: &str) -> Result<Progress, TusError> {
    Ok(super::owned_upload(state, caller, id, Protocol::Tus).await?)
}

/// Where an upload stands: `Upload-Offset`, `Upload-Length` (or `Upload-Defer-Length`),
/// `Upload-Metadata`, `Upload-Expires`, `Upload-Concat`; once finished, `X-Upload-Key` and
/// `X-Upload-Url`.
#[utoipa::path(head, path = "/v1/files/tus/{upload_id}", tag = "tus",
    params(
        ("upload_id" = String, Path, description = "The upload"),
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
    ),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    // The error bodies are GET's: a HEAD answer has the headers (JSON type and length) only.
    responses(
        (status = 200, description = "Upload-Offset and the rest in the headers"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such upload (or another user's, or expired)", body = ErrorBody),
        (status = 412, description = "Tus-Resumable is not 1.0.0", body = ErrorBody),
    ))]
pub(crate) async fn tus_head(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    AppPath(upload_id): AppPath<String>,
) -> TusResult {
    check_version(&headers)?;
    head(&state, &caller, &upload_id).await
}

async fn head(state: &AppState, caller: &Uploader, upload_id: &str) -> TusResult {
    let progress = owned(state, caller, upload_id).await?;
    // A client asks where its upload stands when it gave up on a request: a PATCH of it
    // still running here is ended (keeping its bytes), and the offset read after, so it is
    // the one the next PATCH must use.
    if let Progress::Open(session, _) = &progress {
        // A final concatenation whose partial uploads are all complete but that is not
        // published (a crash, a publish that failed): publish it now.
        if session.concat_parts().is_some() {
            if let Some(stored) = state.store.finish_concat(session).await? {
                log_stored(session, &stored);
                return head_with(state, owned(state, caller, upload_id).await?);
            }
        }
        let id = session.upload_id;
        if state.appends.is_running(&id) {
            state.appends.supersede(&id).await;
            return head_with(state, owned(state, caller, upload_id).await?);
        }
    }
    head_with(state, progress)
}

fn head_with(state: &AppState, progress: Progress) -> TusResult {
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let (session, offset) = match &progress {
        Progress::Open(s, o) => (s, Some(*o)),
        Progress::Finished(f) => (&f.session, Some(f.size)),
    };
    let unfinished_final =
        matches!(progress, Progress::Open(ref s, _) if s.concat_parts().is_some());
    if let (Some(o), false) = (offset, unfinished_final) {
        set(h, "upload-offset", o);
    }
    match (session.length(), &progress) {
        (_, Progress::Finished(f)) => set(h, "upload-length", f.size),
        (Some(l), _) => set(h, "upload-length", l),
        (None, _) if session.concat_parts().is_none() => set(h, "upload-defer-length", 1),
        _ => {}
    }
    if let Some(m) = session
        .resumable
        .as_ref()
        .and_then(|r| r.metadata.as_deref())
    {
        set(h, "upload-metadata", m);
    }
    h.insert("upload-expires", expires(session));
    match session.resumable.as_ref().and_then(|r| r.concat.as_ref()) {
        Some(Concat::Partial) => set(h, "upload-concat", "partial"),
        Some(Concat::Final { parts }) => {
            let urls: Vec<String> = parts.iter().map(|p| format!("{BASE}{p}")).collect();
            set(h, "upload-concat", format!("final;{}", urls.join(" ")));
        }
        None => {}
    }
    if let Progress::Finished(f) = &progress {
        if let Ok(key) = crate::store::key::Key::parse(&f.key) {
            stored_headers(state, &key, h);
        }
    }
    Ok(res)
}

/// Appends bytes at `Upload-Offset` (which must be where the upload ends: 409 otherwise),
/// checked against `Upload-Checksum` (header or trailer) when sent. The `PATCH` that
/// brings the last byte publishes the file and names it in `X-Upload-Key` and
/// `X-Upload-Url`. A `PATCH` while another runs on the same upload gets 423.
#[utoipa::path(patch, path = "/v1/files/tus/{upload_id}", tag = "tus",
    params(
        ("upload_id" = String, Path, description = "The upload"),
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes go: the upload's offset"),
        ("Upload-Length" = Option<u64>, Header, description = "The size, when it was deferred"),
        ("Upload-Checksum" = Option<String>, Header, description = "algorithm base64 (sha1, sha256, md5, crc32)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream", description = "The bytes"),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Stored: the new Upload-Offset (and X-Upload-Key, X-Upload-Url when finished)"),
        (status = 400, description = "A header that does not parse", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "A final concatenation takes no bytes", body = ErrorBody),
        (status = 404, description = "No such upload (or another user's, or expired)", body = ErrorBody),
        (status = 409, description = "Upload-Offset is not the upload's offset, or Upload-Length contradicts it", body = ErrorBody),
        (status = 412, description = "Tus-Resumable is not 1.0.0", body = ErrorBody),
        (status = 413, description = "Past the upload's length, MAX_BODY_MB or the quota", body = ErrorBody),
        (status = 415, description = "Not application/offset+octet-stream", body = ErrorBody),
        (status = 423, description = "Another PATCH is running on this upload", body = ErrorBody),
        (status = 460, description = "The bytes do not match Upload-Checksum: discarded", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn tus_patch(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    AppPath(upload_id): AppPath<String>,
    body: Body,
) -> TusResult {
    check_version(&headers)?;
    patch(&state, &caller, &headers, &upload_id, body).await
}

async fn patch(
    state: &AppState,
    caller: &Uploader,
    headers: &HeaderMap,
    upload_id: &str,
    body: Body,
) -> TusResult {
    if !is_offset_stream(headers) {
        return Err(TusError::ContentType);
    }
    let offset =
        number_header(headers, "upload-offset")?.ok_or_else(|| bad("Upload-Offset is required"))?;
    let length = number_header(headers, "upload-length")?;
    let checksum = request_checksum(headers)?;
    let mut session = match owned(state, caller, upload_id).await? {
        Progress::Open(s, _) => s,
        Progress::Finished(f) if f.session.concat_parts().is_some() => {
            return Err(StoreError::ConcatFinal.into());
        }
        Progress::Finished(f) => {
            // Sent again after it finished (its answer was lost): the same answer.
            if offset == f.size && length.is_none_or(|l| l == f.size) {
                let mut res = StatusCode::NO_CONTENT.into_response();
                set(res.headers_mut(), "upload-offset", f.size);
                if let Ok(key) = crate::store::key::Key::parse(&f.key) {
                    stored_headers(state, &key, res.headers_mut());
                }
                return Ok(res);
            }
            return Err(StoreError::OffsetMismatch { offset: f.size }.into());
        }
    };
    if session.concat_parts().is_some() {
        return Err(StoreError::ConcatFinal.into());
    }
    if let Some(l) = length {
        if l > state.settings.max_body_bytes {
            return Err(ApiError::TooLarge(format!(
                "Upload-Length is over the maximum upload size of {} bytes (MAX_BODY_MB)",
                state.settings.max_body_bytes
            ))
            .into());
        }
        session = state.store.declare_length(&session, l).await?;
    }
    let end = append_body(state, &session, offset, body, checksum)
        .await
        .map_err(append_error)?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    set(res.headers_mut(), "upload-offset", end);
    res.headers_mut()
        .insert("upload-expires", expires(&session));
    if session.length() == Some(end) {
        if let Some(stored) = state.store.finish_resumable(&session).await? {
            stored_headers(state, &stored.key, res.headers_mut());
            log_stored(&session, &stored);
        }
    }
    Ok(res)
}

/// Ends an upload and frees its space (tus termination). A finished upload is forgotten;
/// its file stays (delete it as any file).
#[utoipa::path(delete, path = "/v1/files/tus/{upload_id}", tag = "tus",
    params(
        ("upload_id" = String, Path, description = "The upload"),
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
    ),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Terminated"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such upload (or another user's, or expired)", body = ErrorBody),
        (status = 412, description = "Tus-Resumable is not 1.0.0", body = ErrorBody),
    ))]
pub(crate) async fn tus_delete(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    AppPath(upload_id): AppPath<String>,
) -> TusResult {
    check_version(&headers)?;
    delete(&state, &caller, &upload_id).await
}

async fn delete(state: &AppState, caller: &Uploader, upload_id: &str) -> TusResult {
    match owned(state, caller, upload_id).await? {
        Progress::Open(session, _) => {
            state.store.terminate(&session).await?;
            tracing::info!(target: "activity", event = "upload_abort", user = %session.user_id, upload_id = %session.upload_id);
        }
        Progress::Finished(f) => state.store.forget_finished(&f.session.upload_id).await?,
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH`, `DELETE` or `HEAD` for clients that can only send `POST`: the method in
/// `X-HTTP-Method-Override`.
#[utoipa::path(post, path = "/v1/files/tus/{upload_id}", tag = "tus",
    params(
        ("upload_id" = String, Path, description = "The upload"),
        ("X-HTTP-Method-Override" = String, Header, description = "PATCH, DELETE or HEAD"),
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream", description = "The bytes, for PATCH"),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "As HEAD"),
        (status = 204, description = "As PATCH or DELETE"),
        (status = 400, description = "No method to override, or a header that does not parse", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "A final concatenation takes no bytes", body = ErrorBody),
        (status = 404, description = "No such upload", body = ErrorBody),
        (status = 405, description = "A method tus does not have here", body = ErrorBody),
        (status = 409, description = "Upload-Offset mismatch", body = ErrorBody),
        (status = 412, description = "Tus-Resumable is not 1.0.0", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 415, description = "Not application/offset+octet-stream", body = ErrorBody),
        (status = 423, description = "Another PATCH is running", body = ErrorBody),
        (status = 460, description = "Checksum mismatch", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn tus_override(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    AppPath(upload_id): AppPath<String>,
    body: Body,
) -> TusResult {
    check_version(&headers)?;
    let method = headers
        .get("x-http-method-override")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.trim().to_ascii_uppercase())
        .ok_or_else(|| {
            bad("POST on an upload needs X-HTTP-Method-Override (PATCH, DELETE or HEAD)")
        })?;
    match Method::from_bytes(method.as_bytes()) {
        Ok(Method::PATCH) => patch(&state, &caller, &headers, &upload_id, body).await,
        Ok(Method::DELETE) => delete(&state, &caller, &upload_id).await,
        Ok(Method::HEAD) => head(&state, &caller, &upload_id).await,
        _ => Ok((
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(ErrorBody {
                detail: Value::from(format!(
                    "X-HTTP-Method-Override: {method} is not a tus method here"
                )),
            }),
        )
            .into_response()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metadata_pairs_parse() {
        let m = parse_metadata(
            "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential, folder YS9i",
        )
        .unwrap();
        assert_eq!(
            m,
            vec![
                ("filename".into(), "world_domination_plan.pdf".into()),
                ("is_confidential".into(), String::new()),
                ("folder".into(), "a/b".into()),
            ]
        );
        assert!(parse_metadata("").unwrap().is_empty());
        assert!(parse_metadata("a !!!").is_err());
        assert!(parse_metadata("a YQ==,a YQ==").is_err());
        assert!(parse_metadata("a YQ== YQ==").is_err());
    }

    #[test]
    fn concat_names_uploads_by_their_last_segment() {
        let id = SessionId::new();
        let ids = concat_ids(&format!(
            "/v1/files/tus/{id} https://h.example/v1/files/tus/{id}?x=1"
        ))
        .unwrap();
        assert_eq!(ids, vec![id, id]);
        assert!(concat_ids("").is_err());
        assert!(concat_ids("/v1/files/tus/nope").is_err());
    }
}
