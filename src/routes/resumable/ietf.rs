//! The IETF "Resumable Uploads for HTTP" draft at `/v1/files/resumable/`: interop version
//! 8 (draft -09 and later) and 6 (drafts -04/-05, which tus-js-client's `ietf-draft-05`
//! and iOS 18.1+ speak), chosen per request by `Upload-Draft-Interop-Version` (absent: 8).
//!
//! - `POST /v1/files/resumable/` creates an upload (`Upload-Complete: ?0` or `?1`), with
//!   any part of the bytes as its body; the name comes from `Content-Disposition` (or
//!   `Upload-Metadata` `filename`), the type from `Content-Type`, the folder and a
//!   service's user from `Upload-Metadata` or the query (`folder`, `user_id`).
//! - `HEAD` on the upload gives `Upload-Offset`, `Upload-Complete`, `Upload-Length`.
//! - `PATCH` (`Content-Type: application/partial-upload`) appends at `Upload-Offset`;
//!   with `Upload-Complete: ?1` it ends the upload, which is published and answered as the
//!   one-request upload answers (200, the file's JSON) with `X-Upload-Key`/`X-Upload-Url`.
//! - `DELETE` cancels; `OPTIONS` gives `Accept-Patch` and `Upload-Limit`.
//!
//! What differs between the two versions: version 8 answers errors of the protocol as
//! RFC 9457 problem details (`mismatching-upload-offset`, `inconsistent-upload-length`,
//! `completed-upload`) and sends `Upload-Limit` and `Upload-Length` on `HEAD`; version 6
//! answers them as our usual `{"detail"}` and sends neither (they came with later drafts).
//! `Repr-Digest: sha-256=:…:` is checked against the file's SHA-256 before it is published.
//! hyper cannot send the `104 (Upload Resumption Supported)` interim response: it is not
//! sent, so a client learns the upload's URL from the final response of its first request
//! (as with "careful upload creation": `Upload-Complete: ?0` and no body).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::tus::{set, FileFields};
use super::{
    append_body, content_type_is, has_body, owned_upload, stored_headers, upload_metadata,
    AppendFailure, ChecksumFrom,
};
use crate::error::{ApiError, AppPath, ErrorBody};
use crate::routes::uploads::grant::Uploader;
use crate::routes::uploads::one_request::uploaded_file;
use crate::routes::{route, Routes};
use crate::state::AppState;
use crate::store::resumable::Progress;
use crate::store::sessions::{Protocol, Session};
use crate::store::{NewResumable, StoreError, Stored};

/// Where uploads are created; an upload's URL is this plus its id.
pub const BASE: &str = "/v1/files/resumable/";
/// The media type of an append.
const PARTIAL_UPLOAD: &str = "application/partial-upload";
/// Problem types of the draft.
const PROBLEM_BASE: &str = "https://iana.org/assignments/http-problem-types#";

/// The draft's routes.
pub fn routes() -> Routes {
    let draft = |r: axum::routing::MethodRouter<AppState>| {
        r.layer(axum::extract::DefaultBodyLimit::disable())
    };
    Routes::new()
        .route(route!(ietf_options).map(draft))
        // Creation may carry the whole file: an upload too.
        .route(
            route!(ietf_create)
                .counted_as(crate::metrics::RouteKind::Upload)
                .map(draft),
        )
        .route(route!(ietf_upload_options, ietf_head, ietf_delete).map(draft))
        .route(
            route!(ietf_patch)
                .counted_as(crate::metrics::RouteKind::Upload)
                .map(draft),
        )
}

/// An interop version this server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interop {
    /// Drafts -04/-05.
    V6,
    /// Draft -09 and later.
    V8,
}

impl Interop {
    fn of(headers: &HeaderMap) -> Result<Self, DraftError> {
        match headers
            .get("upload-draft-interop-version")
            .map(|v| v.as_bytes().trim_ascii())
        {
            None | Some(b"8") => Ok(Self::V8),
            Some(b"6") => Ok(Self::V6),
            Some(_) => Err(DraftError::draft(
                Self::V8,
                StatusCode::PRECONDITION_FAILED,
                None,
                "Upload-Draft-Interop-Version: only 6 and 8 are supported".to_owned(),
            )),
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::V6 => "6",
            Self::V8 => "8",
        })
    }
}

/// A failed draft request: one of the usual errors, or one of the draft's own (a problem
/// type in version 8, a status of its own otherwise), with the upload's offset when known.
#[derive(Debug)]
pub(crate) struct DraftError {
    interop: Interop,
    kind: Box<DraftFault>,
    /// The upload's offset, for `Upload-Offset` on the answer.
    offset: Option<u64>,
    /// The upload's URL, for `Location`, when the request made an upload that stays.
    location: Option<String>,
}

#[derive(Debug)]
enum DraftFault {
    /// Answered as everywhere else (its words, its headers, its metric).
    Api(ApiError),
    /// The draft's own: a status, and a problem type (after [`PROBLEM_BASE`]) with its
    /// title and extension members, used in version 8.
    Draft {
        status: StatusCode,
        problem: Option<(&'static str, &'static str, Value)>,
        detail: String,
    },
}

impl DraftError {
    fn api(interop: Interop, e: impl Into<ApiError>) -> Self {
        Self {
            interop,
            kind: Box::new(DraftFault::Api(e.into())),
            offset: None,
            location: None,
        }
    }

    fn draft(
        interop: Interop,
        status: StatusCode,
        problem: Option<(&'static str, &'static str, Value)>,
        detail: String,
    ) -> Self {
        Self {
            interop,
            kind: Box::new(DraftFault::Draft {
                status,
                problem,
                detail,
            }),
            offset: None,
            location: None,
        }
    }

    fn bad(interop: Interop, detail: impl Into<String>) -> Self {
        Self::api(interop, ApiError::BadRequest(detail.into()))
    }

    fn mismatch(interop: Interop, expected: u64, provided: u64) -> Self {
        let mut e = Self::draft(
            interop,
            StatusCode::CONFLICT,
            Some((
                "mismatching-upload-offset",
                "offset from request does not match offset of resource",
                json!({ "expected-offset": expected, "provided-offset": provided }),
            )),
            format!("Upload-Offset {provided} does not match: the upload is at offset {expected}"),
        );
        e.offset = Some(expected);
        e
    }

    fn inconsistent(interop: Interop, detail: String) -> Self {
        Self::draft(
            interop,
            StatusCode::BAD_REQUEST,
            Some((
                "inconsistent-upload-length",
                "inconsistent length values for upload",
                json!({}),
            )),
            detail,
        )
    }

    fn completed(interop: Interop) -> Self {
        Self::draft(
            interop,
            StatusCode::BAD_REQUEST,
            Some(("completed-upload", "upload is already completed", json!({}))),
            "The upload is already complete".to_owned(),
        )
    }
}

impl IntoResponse for DraftError {
    fn into_response(self) -> Response {
        let mut res = match (self.interop, *self.kind) {
            (_, DraftFault::Api(e)) => e.into_response(),
            (
                Interop::V8,
                DraftFault::Draft {
                    status,
                    problem: Some((kind, title, extra)),
                    detail,
                },
            ) => {
                let mut body = json!({
                    "type": format!("{PROBLEM_BASE}{kind}"),
                    "title": title,
                    "detail": detail,
                });
                if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
                    b.extend(extra);
                }
                let mut res = (status, axum::Json(body)).into_response();
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                res
            }
            (_, DraftFault::Draft { status, detail, .. }) => (
                status,
                axum::Json(ErrorBody {
                    detail: Value::from(detail),
                }),
            )
                .into_response(),
        };
        let h = res.headers_mut();
        h.insert("upload-draft-interop-version", self.interop.header());
        if let Some(o) = self.offset {
            set(h, "upload-offset", o);
        }
        if let Some(l) = self.location {
            set(h, "location", l);
        }
        res
    }
}

type DraftResult = Result<Response, DraftError>;

/// A structured-field Boolean (`?1`, `?0`); `Ok(None)` when absent.
fn sf_bool(headers: &HeaderMap, name: &str, interop: Interop) -> Result<Option<bool>, DraftError> {
    match headers.get(name).map(|v| v.as_bytes().trim_ascii()) {
        None => Ok(None),
        Some(b"?1") => Ok(Some(true)),
        Some(b"?0") => Ok(Some(false)),
        Some(_) => Err(DraftError::bad(interop, format!("{name} must be ?1 or ?0"))),
    }
}

/// A structured-field Integer, non-negative (at most 15 digits); `Ok(None)` when absent.
fn sf_integer(
    headers: &HeaderMap,
    name: &str,
    interop: Interop,
) -> Result<Option<u64>, DraftError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let v = v.as_bytes().trim_ascii();
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return Err(DraftError::bad(
            interop,
            format!("{name} must be a non-negative integer"),
        ));
    }
    Ok(std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()))
}

/// The hex SHA-256 a `Repr-Digest` announces (`sha-256=:base64:`), if it names one.
fn repr_sha256(headers: &HeaderMap, interop: Interop) -> Result<Option<String>, DraftError> {
    let Some(v) = headers.get("repr-digest") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| DraftError::bad(interop, "Repr-Digest is not ASCII"))?;
    for member in v.split(',') {
        let Some((alg, value)) = member.split_once('=') else {
            continue;
        };
        if alg.trim() != "sha-256" {
            continue;
        }
        let b64 = value
            .trim()
            .strip_prefix(':')
            .and_then(|s| s.strip_suffix(':'))
            .ok_or_else(|| DraftError::bad(interop, "Repr-Digest: sha-256 must be :base64:"))?;
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .filter(|d| d.len() == 32)
            .ok_or_else(|| {
                DraftError::bad(interop, "Repr-Digest: sha-256 is not 32 bytes of base64")
            })?;
        return Ok(Some(hex::encode(digest)));
    }
    Ok(None)
}

/// `filename*=UTF-8''…` (RFC 8187), else `filename="…"`, from a `Content-Disposition`.
fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    for param in value.split(';').skip(1) {
        let Some((k, v)) = param.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let (charset, rest) = v.split_once('\'')?;
                let (_, encoded) = rest.split_once('\'')?;
                if charset.eq_ignore_ascii_case("utf-8") {
                    return percent_encoding::percent_decode_str(encoded)
                        .decode_utf8()
                        .ok()
                        .map(|s| s.into_owned());
                }
            }
            "filename" => plain = Some(v.trim_matches('"').to_owned()),
            _ => {}
        }
    }
    plain
}

/// Query parameters of creation (for clients that cannot set `Upload-Metadata`).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CreateQuery {
    /// The folder (API.md §7).
    #[serde(default)]
    folder: Option<String>,
    /// The user, for service callers.
    #[serde(default)]
    user_id: Option<String>,
}

/// `Upload-Limit`: the largest upload (`MAX_BODY_MB`; for an upload, its declared length
/// when known, which is also where a signed upload URL's maximum shows), and the time left.
fn limits(state: &AppState, session: Option<&Session>) -> String {
    let max = state.settings.max_body_bytes;
    let max = session
        .and_then(Session::length)
        .map_or(max, |l| l.min(max));
    let mut v = format!("max-size={max}");
    if let Some(s) = session {
        let age = (s.expires_at - chrono::Utc::now()).num_seconds().max(0);
        v.push_str(&format!(", max-age={age}"));
    }
    v
}

fn base_headers(h: &mut HeaderMap, interop: Interop) {
    h.insert("upload-draft-interop-version", interop.header());
}

/// Whether the server takes resumable uploads here, and its limits.
#[utoipa::path(options, path = "/v1/files/resumable/", tag = "resumable",
    responses((status = 204, description = "Accept-Patch: application/partial-upload; Upload-Limit")))]
pub(crate) async fn ietf_options(State(state): State<AppState>, headers: HeaderMap) -> Response {
    options(&state, &headers)
}

/// As `OPTIONS /v1/files/resumable/`, on an upload's URL.
#[utoipa::path(options, path = "/v1/files/resumable/{upload_id}", tag = "resumable",
    params(("upload_id" = String, Path, description = "The upload")),
    responses((status = 204, description = "Accept-Patch: application/partial-upload; Upload-Limit")))]
pub(crate) async fn ietf_upload_options(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
    options(&state, &headers)
}

fn options(state: &AppState, headers: &HeaderMap) -> Response {
    let interop = Interop::of(headers).unwrap_or(Interop::V8);
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    base_headers(h, interop);
    h.insert("accept-patch", HeaderValue::from_static(PARTIAL_UPLOAD));
    set(h, "upload-limit", limits(state, None));
    res
}

/// Creates an upload, with all, some or none of its bytes (`Upload-Complete`).
#[utoipa::path(post, path = "/v1/files/resumable/", tag = "resumable",
    params(
        CreateQuery,
        ("Upload-Complete" = String, Header, description = "?1: the body is the whole file; ?0: more comes by PATCH"),
        ("Upload-Draft-Interop-Version" = Option<String>, Header, description = "6 or 8 (default)"),
        ("Upload-Length" = Option<u64>, Header, description = "The file's size, when known"),
        ("Content-Disposition" = Option<String>, Header, description = "The file's name (filename or filename*)"),
        ("Repr-Digest" = Option<String>, Header, description = "sha-256=:base64: of the whole file, checked before it is stored"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's first bytes (or all)"),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Complete: the stored file, X-Upload-Key and X-Upload-Url"),
        (status = 201, description = "Created: Location, Upload-Offset, Upload-Limit"),
        (status = 400, description = "A header that does not parse, inconsistent lengths, or the SHA-256 does not match", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 412, description = "An interop version other than 6 and 8", body = ErrorBody),
        (status = 413, description = "Over MAX_BODY_MB or the quota", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn ietf_create(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    Query(query): Query<CreateQuery>,
    body: Body,
) -> DraftResult {
    let interop = Interop::of(&headers)?;
    let api = |e: ApiError| DraftError::api(interop, e);
    let complete = sf_bool(&headers, "upload-complete", interop)?
        .ok_or_else(|| DraftError::bad(interop, "Upload-Complete (?0 or ?1) is required"))?;
    let declared = sf_integer(&headers, "upload-length", interop)?;
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let length = match (declared, complete.then_some(content_length).flatten()) {
        (Some(a), Some(b)) if a != b => {
            return Err(DraftError::inconsistent(
                interop,
                format!("Upload-Length {a} and the complete body's Content-Length {b} differ"),
            ))
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    if length.is_some_and(|l| l > state.settings.max_body_bytes) {
        return Err(too_large(&state, interop));
    }
    let sha256 = repr_sha256(&headers, interop)?;
    let (_, mut pairs) = upload_metadata(&headers).map_err(|m| DraftError::bad(interop, m))?;
    let from_disposition = headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(disposition_filename);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(PARTIAL_UPLOAD));
    for (k, v) in [
        ("filename", from_disposition),
        ("filetype", content_type),
        ("folder", query.folder.clone()),
        ("user_id", query.user_id.clone()),
    ] {
        if let Some(v) = v {
            if !pairs.iter().any(|(key, _)| key == k) {
                pairs.push((k.to_owned(), v));
            }
        }
    }
    let mut fields = FileFields::from_pairs(pairs).map_err(api)?;
    fields.apply_grant(&caller, length).map_err(api)?;
    let user = caller.acting_for(fields.user.as_deref()).map_err(api)?;
    let session = state
        .store
        .create_resumable(NewResumable {
            user,
            protocol: Protocol::Ietf,
            name: fields.name,
            mime: fields.mime,
            length,
            folder: fields.folder,
            meta: fields.extra,
            metadata: None,
            partial: false,
            max_length: caller.grant().map(|g| g.max_size),
            grant: caller.fingerprint(),
        })
        .await
        .map_err(|e| store_error(&state, interop, e))?;
    tracing::info!(target: "activity", event = "resumable_create", user = %session.user_id, upload_id = %session.upload_id, length = ?length);
    let location = format!("{BASE}{}{}", session.upload_id, caller.url_suffix());
    let appended = append_body(&state, &session, 0, body, ChecksumFrom::None).await;
    let mut res = match appended {
        Ok(offset) if complete || session.length() == Some(offset) => {
            match finish(&state, interop, &session, offset, sha256.as_deref()).await {
                Ok(res) => res,
                // The bytes are all there but were not stored (a digest that differs, the
                // quota): the upload stays, named, for the client to cancel or inspect.
                Err(mut e) => {
                    e.location = Some(location);
                    e.offset = Some(offset);
                    return Err(e);
                }
            }
        }
        Ok(offset) => incomplete(&state, interop, &session, offset, StatusCode::CREATED),
        Err(AppendFailure::Cut { offset, cause }) => {
            tracing::info!(upload_id = %session.upload_id, offset, reason = %cause, "resumable creation cut short");
            let mut e = DraftError::api(interop, cause);
            e.offset = Some(offset);
            e.location = Some(location);
            return Err(e);
        }
        Err(e) => {
            // Refused before anything was kept: the upload goes, with its reservation.
            let _ = state.store.terminate(&session).await;
            return Err(append_error(&state, interop, e, 0));
        }
    };
    set(res.headers_mut(), "location", &location);
    Ok(res)
}

fn too_large(state: &AppState, interop: Interop) -> DraftError {
    DraftError::api(
        interop,
        ApiError::TooLarge(format!(
            "Over the maximum upload size of {} bytes (MAX_BODY_MB)",
            state.settings.max_body_bytes
        )),
    )
}

fn store_error(state: &AppState, interop: Interop, e: StoreError) -> DraftError {
    match e {
        StoreError::TooLarge => too_large(state, interop),
        StoreError::LengthMismatch { declared, offset } => DraftError::inconsistent(
            interop,
            match declared {
                Some(l) => format!("The upload's length is {l}; this request says otherwise ({offset} bytes received)"),
                None => format!("The length is below the {offset} bytes already received"),
            },
        ),
        other => DraftError::api(interop, other),
    }
}

fn append_error(state: &AppState, interop: Interop, e: AppendFailure, provided: u64) -> DraftError {
    match e {
        AppendFailure::Store(StoreError::OffsetMismatch { offset }) => {
            DraftError::mismatch(interop, offset, provided)
        }
        AppendFailure::Store(StoreError::TooLarge) => {
            DraftError::inconsistent(interop, "The bytes pass the upload's length".to_owned())
        }
        AppendFailure::Store(e) => store_error(state, interop, e),
        AppendFailure::ChecksumMismatch | AppendFailure::ChecksumMissing(_) => {
            DraftError::bad(interop, "Checksum mismatch")
        }
        AppendFailure::Cut { cause, offset } => {
            let mut e = DraftError::api(interop, cause);
            e.offset = Some(offset);
            e
        }
    }
}

/// 201/204 for an upload that goes on: its offset, `Upload-Complete: ?0`, limits.
fn incomplete(
    state: &AppState,
    interop: Interop,
    session: &Session,
    offset: u64,
    status: StatusCode,
) -> Response {
    let mut res = status.into_response();
    let h = res.headers_mut();
    base_headers(h, interop);
    h.insert("upload-complete", HeaderValue::from_static("?0"));
    set(h, "upload-offset", offset);
    if interop == Interop::V8 {
        set(h, "upload-limit", limits(state, Some(session)));
    }
    res
}

/// Ends an upload at `offset`: its length is that (or must be), the SHA-256 is checked
/// when announced, the file is published and answered as the one-request upload answers.
async fn finish(
    state: &AppState,
    interop: Interop,
    session: &Session,
    offset: u64,
    sha256: Option<&str>,
) -> DraftResult {
    let session = state
        .store
        .declare_length(session, offset)
        .await
        .map_err(|e| store_error(state, interop, e))?;
    let stored = state
        .store
        .finish_resumable_checked(&session, sha256)
        .await
        .map_err(|e| store_error(state, interop, e))?
        .ok_or_else(|| {
            DraftError::api(interop, ApiError::NotFound("Upload not found".to_owned()))
        })?;
    tracing::info!(target: "activity", event = "upload", user = %session.user_id, key = %stored.key, size = stored.meta.size.unwrap_or(0), upload_id = %session.upload_id);
    Ok(completed_response(state, interop, &stored, offset))
}

fn completed_response(
    state: &AppState,
    interop: Interop,
    stored: &Stored,
    offset: u64,
) -> Response {
    let mut res = (StatusCode::OK, axum::Json(uploaded_file(state, stored))).into_response();
    let h = res.headers_mut();
    base_headers(h, interop);
    h.insert("upload-complete", HeaderValue::from_static("?1"));
    set(h, "upload-offset", offset);
    stored_headers(state, &stored.key, h);
    res
}

/// Where an upload stands (the draft's offset retrieval).
#[utoipa::path(head, path = "/v1/files/resumable/{upload_id}", tag = "resumable",
    params(
        ("upload_id" = String, Path, description = "The upload"),
        ("Upload-Draft-Interop-Version" = Option<String>, Header, description = "6 or 8 (default)"),
    ),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Upload-Offset, Upload-Complete, Upload-Length, Upload-Limit"),
        (status = 401, description = "Not authenticated"),
        (status = 404, description = "No such upload (or another user's, or expired)"),
        (status = 412, description = "An interop version other than 6 and 8"),
    ))]
pub(crate) async fn ietf_head(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    AppPath(upload_id): AppPath<String>,
) -> DraftResult {
    let interop = Interop::of(&headers)?;
    if let Ok(id) = crate::store::sessions::SessionId::parse(&upload_id) {
        // A request still appending is one the client gave up on: end it, so the offset
        // given here is one the next PATCH can use (the draft's recommendation).
        if owned_upload(&state, &caller, &upload_id, Protocol::Ietf)
            .await
            .is_ok()
        {
            state.appends.supersede(&id).await;
        }
    }
    let progress = owned_upload(&state, &caller, &upload_id, Protocol::Ietf)
        .await
        .map_err(|e| DraftError::api(interop, e))?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    base_headers(h, interop);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let (offset, length, done) = match &progress {
        Progress::Open(s, o) => (*o, s.length(), false),
        Progress::Finished(f) => (f.size, Some(f.size), true),
    };
    set(h, "upload-offset", offset);
    h.insert(
        "upload-complete",
        HeaderValue::from_static(if done { "?1" } else { "?0" }),
    );
    if interop == Interop::V8 {
        if let Some(l) = length {
            set(h, "upload-length", l);
        }
        set(h, "upload-limit", limits(&state, Some(progress.session())));
    }
    if let Progress::Finished(f) = &progress {
        if let Ok(key) = crate::store::key::Key::parse(&f.key) {
            stored_headers(&state, &key, h);
        }
    }
    Ok(res)
}

/// Appends bytes at `Upload-Offset`; `Upload-Complete: ?1` ends the upload.
#[utoipa::path(patch, path = "/v1/files/resumable/{upload_id}", tag = "resumable",
    params(
        ("upload_id" = String, Path, description = "The upload"),
        ("Upload-Offset" = u64, Header, description = "The upload's offset"),
        ("Upload-Complete" = String, Header, description = "?1: these are the last bytes"),
        ("Upload-Length" = Option<u64>, Header, description = "The file's size, when first known"),
        ("Upload-Draft-Interop-Version" = Option<String>, Header, description = "6 or 8 (default)"),
        ("Repr-Digest" = Option<String>, Header, description = "sha-256=:base64: of the whole file"),
    ),
    request_body(content = Vec<u8>, content_type = "application/partial-upload", description = "The bytes"),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Complete: the stored file, X-Upload-Key and X-Upload-Url"),
        (status = 204, description = "Appended: Upload-Offset, Upload-Complete: ?0"),
        (status = 400, description = "A header that does not parse, inconsistent lengths, a completed upload, or the SHA-256 does not match", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such upload (or another user's, or expired)", body = ErrorBody),
        (status = 409, description = "Upload-Offset is not the upload's offset", body = ErrorBody),
        (status = 412, description = "An interop version other than 6 and 8", body = ErrorBody),
        (status = 413, description = "Over MAX_BODY_MB or the quota", body = ErrorBody),
        (status = 415, description = "Not application/partial-upload", body = ErrorBody),
        (status = 423, description = "Another instance is appending to this upload", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn ietf_patch(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    AppPath(upload_id): AppPath<String>,
    body: Body,
) -> DraftResult {
    let interop = Interop::of(&headers)?;
    if !content_type_is(&headers, PARTIAL_UPLOAD) {
        return Err(DraftError::draft(
            interop,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            format!("Content-Type must be {PARTIAL_UPLOAD}"),
        ));
    }
    let offset = sf_integer(&headers, "upload-offset", interop)?
        .ok_or_else(|| DraftError::bad(interop, "Upload-Offset is required"))?;
    let complete = sf_bool(&headers, "upload-complete", interop)?
        .ok_or_else(|| DraftError::bad(interop, "Upload-Complete (?0 or ?1) is required"))?;
    let declared = sf_integer(&headers, "upload-length", interop)?;
    let sha256 = repr_sha256(&headers, interop)?;
    let has_body = has_body(&headers);
    let mut session = match owned_upload(&state, &caller, &upload_id, Protocol::Ietf)
        .await
        .map_err(|e| DraftError::api(interop, e))?
    {
        Progress::Open(s, _) => s,
        Progress::Finished(f) => {
            if has_body || offset != f.size {
                return Err(DraftError::completed(interop));
            }
            // The last request again (its answer was lost): the same answer.
            let key =
                crate::store::key::Key::parse(&f.key).map_err(|e| DraftError::api(interop, e))?;
            let entry = state
                .store
                .entry(&key)
                .await
                .map_err(|e| DraftError::api(interop, e))?;
            let stored = Stored {
                key: entry.key,
                meta: entry.meta,
            };
            return Ok(completed_response(&state, interop, &stored, f.size));
        }
    };
    if let Some(l) = declared {
        if l > state.settings.max_body_bytes {
            return Err(too_large(&state, interop));
        }
        session = state
            .store
            .declare_length(&session, l)
            .await
            .map_err(|e| store_error(&state, interop, e))?;
    }
    let end = match append_body(&state, &session, offset, body, ChecksumFrom::None).await {
        Ok(end) => end,
        Err(e) => return Err(append_error(&state, interop, e, offset)),
    };
    // Complete when the client says so, or when the bytes reach the length it declared
    // (tus-js-client's `ietf-draft-05` sends `Upload-Length` and leaves the last chunk's
    // `Upload-Complete` at ?0; tusd finishes there too).
    if complete || session.length() == Some(end) {
        if let Some(l) = session.length() {
            if l != end {
                return Err(DraftError::inconsistent(
                    interop,
                    format!("Upload-Complete: ?1 at offset {end}, but the upload's length is {l}"),
                ));
            }
        }
        return finish(&state, interop, &session, end, sha256.as_deref()).await;
    }
    Ok(incomplete(
        &state,
        interop,
        &session,
        end,
        StatusCode::NO_CONTENT,
    ))
}

/// Cancels an upload and frees its space.
#[utoipa::path(delete, path = "/v1/files/resumable/{upload_id}", tag = "resumable",
    params(
        ("upload_id" = String, Path, description = "The upload"),
        ("Upload-Draft-Interop-Version" = Option<String>, Header, description = "6 or 8 (default)"),
    ),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such upload (or another user's, or expired)", body = ErrorBody),
        (status = 412, description = "An interop version other than 6 and 8", body = ErrorBody),
    ))]
pub(crate) async fn ietf_delete(
    State(state): State<AppState>,
    caller: Uploader,
    headers: HeaderMap,
    AppPath(upload_id): AppPath<String>,
) -> DraftResult {
    let interop = Interop::of(&headers)?;
    let progress = owned_upload(&state, &caller, &upload_id, Protocol::Ietf)
        .await
        .map_err(|e| DraftError::api(interop, e))?;
    let session = progress.session().clone();
    state.appends.supersede(&session.upload_id).await;
    match progress {
        Progress::Open(..) => state.store.terminate(&session).await,
        Progress::Finished(_) => state.store.forget_finished(&session.upload_id).await,
    }
    .map_err(|e| DraftError::api(interop, e))?;
    tracing::info!(target: "activity", event = "upload_abort", user = %session.user_id, upload_id = %session.upload_id);
    let mut res = StatusCode::NO_CONTENT.into_response();
    base_headers(res.headers_mut(), interop);
    Ok(res)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dispositions_give_their_file_name() {
        assert_eq!(
            disposition_filename("inline; filename=\"a b.txt\"").as_deref(),
            Some("a b.txt")
        );
        assert_eq!(
            disposition_filename(
                "attachment; filename=\"x\"; filename*=UTF-8''R%C3%A9sum%C3%A9.pdf"
            )
            .as_deref(),
            Some("Résumé.pdf")
        );
        assert_eq!(disposition_filename("inline"), None);
    }

    #[test]
    fn structured_fields_parse() {
        let mut h = HeaderMap::new();
        h.insert("upload-complete", HeaderValue::from_static("?1"));
        h.insert("upload-offset", HeaderValue::from_static("12"));
        h.insert(
            "repr-digest",
            HeaderValue::from_static(
                "sha-512=:AA==:, sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:",
            ),
        );
        assert_eq!(
            sf_bool(&h, "upload-complete", Interop::V8).unwrap(),
            Some(true)
        );
        assert_eq!(
            sf_integer(&h, "upload-offset", Interop::V8).unwrap(),
            Some(12)
        );
        assert_eq!(sf_integer(&h, "upload-length", Interop::V8).unwrap(), None);
        assert_eq!(
            repr_sha256(&h, Interop::V8).unwrap().as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        h.insert("upload-complete", HeaderValue::from_static("true"));
        assert!(sf_bool(&h, "upload-complete", Interop::V8).is_err());
        h.insert("upload-offset", HeaderValue::from_static("-1"));
        assert!(sf_integer(&h, "upload-offset", Interop::V8).is_err());
    }
}
