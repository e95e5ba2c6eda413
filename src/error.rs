//! One error type for every handler, one body shape (`{"detail": ...}`, API.md §6), and
//! extractors whose rejections use that shape too.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use crate::store::key::{InvalidName, NameFault};
use crate::store::{Missing, StoreError};

/// The body of every error answer (API.md §6).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A message, or FastAPI's list of problems for a 422.
    #[schema(schema_with = detail_schema)]
    pub detail: Value,
}

/// `detail`: a string, or `[{"type","loc","msg"}]` as FastAPI writes validation errors.
fn detail_schema() -> impl Into<RefOr<Schema>> {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let loc_item = OneOfBuilder::new()
        .item(string())
        .item(ObjectBuilder::new().schema_type(Type::Integer));
    let problem = ObjectBuilder::new()
        .property("type", string())
        .property("loc", ArrayBuilder::new().items(loc_item))
        .property("msg", string())
        .required("type")
        .required("loc")
        .required("msg");
    OneOfBuilder::new()
        .description(Some("What went wrong"))
        .item(string())
        .item(ArrayBuilder::new().items(problem))
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// Everything a request can fail with, mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with a message for the client.
    #[error("{0}")]
    BadRequest(String),
    /// 401: nothing presented.
    #[error("Authentication required")]
    Unauthenticated,
    /// 401 with a message (`Invalid token`, `Invalid service token`).
    #[error("{0}")]
    Unauthorized(String),
    /// 403 with a message.
    #[error("{0}")]
    Forbidden(String),
    /// 404 with a message.
    #[error("{0}")]
    NotFound(String),
    /// 413 with a message.
    #[error("{0}")]
    TooLarge(String),
    /// 409 with a message.
    #[error("{0}")]
    Conflict(String),
    /// 423: another request holds what this one needs.
    #[error("{0}")]
    Locked(String),
    /// 413: the request body passed `MAX_BODY_MB` (the limit is written into the answer
    /// by [`json_error_bodies`], which knows it).
    #[error("Request body too large")]
    BodyTooLarge,
    /// 413: the user's quota would be passed.
    #[error("Quota exceeded: {used} of {quota} bytes in use (PER_USER_QUOTA_GB), {requested} more requested")]
    Quota {
        /// Bytes in use (stored, and reserved by uploads in flight).
        used: u64,
        /// The quota.
        quota: u64,
        /// Bytes the request asked for.
        requested: u64,
    },
    /// 400: the bytes do not hash to the SHA-256 the client gave.
    #[error("SHA256 mismatch")]
    ShaMismatch,
    /// 408: the client stopped sending its body.
    #[error("Request body timeout")]
    BodyTimeout,
    /// 408: the client sent its body slower than the minimum rate.
    #[error("Request body too slow")]
    BodyTooSlow,
    /// 416, with `Content-Range: bytes */size`.
    #[error("Range not satisfiable")]
    Range {
        /// The size of the representation.
        size: u64,
    },
    /// 412: an `If-Match` or `If-Unmodified-Since` that the file does not meet.
    #[error("Precondition failed")]
    PreconditionFailed,
    /// 422 with FastAPI's list of problems.
    #[error("Validation error")]
    Validation(Value),
    /// 503 with a message.
    #[error("{0}")]
    Unavailable(String),
    /// 507: the disk is full.
    #[error("Insufficient storage")]
    InsufficientStorage,
    /// 501: what this deployment's storage backend does not do.
    #[error("{0}")]
    NotImplemented(String),
    /// 500: the cause is logged, never sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::ShaMismatch => StatusCode::BAD_REQUEST,
            Self::Unauthenticated | Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) | Self::BodyTooLarge | Self::Quota { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Locked(_) => StatusCode::LOCKED,
            Self::BodyTimeout | Self::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            Self::Range { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// 403 `Access denied`.
    pub fn access_denied() -> Self {
        Self::Forbidden("Access denied".to_owned())
    }

    /// A 422 for one problem, in FastAPI's shape.
    pub fn validation(loc: &[&str], msg: impl Into<String>, kind: &str) -> Self {
        Self::Validation(json!([{ "type": kind, "loc": loc, "msg": msg.into() }]))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Validation(list) => list.clone(),
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Value::from("Internal Server Error")
            }
            other => Value::from(other.to_string()),
        };
        let mut res = (status, axum::Json(ErrorBody { detail })).into_response();
        match &self {
            Self::Range { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    res.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            Self::Unauthenticated | Self::Unauthorized(_) => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::BodyTooLarge => {
                res.extensions_mut().insert(Counted::BodyLimit);
            }
            Self::Quota { .. } => {
                res.extensions_mut().insert(Counted::QuotaRejected);
            }
            Self::ShaMismatch => {
                res.extensions_mut().insert(Counted::ShaMismatch);
            }
            _ => {}
        }
        res
    }
}

/// What an error answer was, for the layers after the handler: the counters of `/metrics`
/// (the access log) and the limit written into a 413 ([`json_error_bodies`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The body passed `MAX_BODY_MB`.
    BodyLimit,
    /// The quota would be passed.
    QuotaRejected,
    /// The bytes did not match the SHA-256 given.
    ShaMismatch,
}

/// `Json` whose rejections are 422 (or 413 for an oversized body) in our shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge(format!(
            "Request body too large: a JSON body may hold at most {} MiB (send file bytes as raw parts)",
            crate::startup::JSON_BODY_LIMIT >> 20
        ));
    }
    if let Some(cut) = body_cut_off(&rejection) {
        return cut;
    }
    let text = rejection.body_text();
    let kind = match &rejection {
        JsonRejection::MissingJsonContentType(_) => "content_type",
        JsonRejection::JsonSyntaxError(_) => "json_invalid",
        JsonRejection::JsonDataError(_) if text.contains("missing field") => "missing",
        JsonRejection::JsonDataError(_) => "value_error",
        _ => "body_error",
    };
    let mut loc = vec!["body".to_owned()];
    if let Some(field) = field_in_message(&text) {
        loc.push(field);
    }
    ApiError::Validation(json!([{ "type": kind, "loc": loc, "msg": text }]))
}

/// 408 when a body error's chain shows it was cut off for stalling or crawling
/// ([`crate::body_timeout`]).
pub fn body_cut_off(e: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(cut) = s.downcast_ref::<crate::body_timeout::BodyTimeoutError>() {
            return Some(match cut {
                crate::body_timeout::BodyTimeoutError::Idle => ApiError::BodyTimeout,
                crate::body_timeout::BodyTimeoutError::TooSlow => ApiError::BodyTooSlow,
            });
        }
        source = s.source();
    }
    None
}

/// serde names the offending field between backticks ("missing field `mode`"), or as the
/// path before a colon ("...: expires_hours: invalid float literal").
fn field_in_message(text: &str) -> Option<String> {
    if let Some(start) = text.find('`').map(|i| i + 1) {
        let len = text[start..].find('`')?;
        return Some(text[start..start + len].to_owned());
    }
    let mut parts = text.split(": ");
    parts.next()?;
    let field = parts.next()?;
    parts.next()?;
    (!field.is_empty()
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
    .then(|| field.to_owned())
}

/// `Query` whose rejections are 422 in FastAPI's shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let mut loc = vec!["query".to_owned()];
    if let Some(field) = field_in_message(&text) {
        loc.push(field);
    }
    let kind = if text.contains("missing field") {
        "missing"
    } else {
        "value_error"
    };
    ApiError::Validation(json!([{ "type": kind, "loc": loc, "msg": text }]))
}

/// `Path` whose rejections are 400 in our shape.
#[derive(Debug, Clone)]
pub struct AppPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AppPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(rejection) => Err(path_rejection(&rejection)),
        }
    }
}

fn path_rejection(rejection: &PathRejection) -> ApiError {
    if rejection.status().is_server_error() {
        return ApiError::Internal(anyhow::anyhow!(
            "path extraction: {}",
            rejection.body_text()
        ));
    }
    ApiError::BadRequest(format!("Invalid path: {}", rejection.body_text()))
}

/// Gives any error answer that is not already JSON (those made by axum itself or by a
/// tower layer: 404, 405, 408, 413, ...) the `{"detail": ...}` body, keeping status and
/// headers; a 413 for passing the body limit says the limit (`max_body_bytes`).
pub async fn json_error_bodies(
    axum::extract::State(max_body_bytes): axum::extract::State<u64>,
    res: Response,
) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let over_limit = res.extensions().get::<Counted>() == Some(&Counted::BodyLimit);
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // RFC 9457 problem details (the resumable-upload draft's) are JSON too.
            v.starts_with("application/json") || v.starts_with("application/problem+json")
        });
    if is_json && !over_limit {
        return res;
    }
    let too_large = format!(
        "Request body too large: the limit is MAX_BODY_MB = {} MiB ({max_body_bytes} bytes)",
        max_body_bytes >> 20
    );
    let detail = match status {
        StatusCode::NOT_FOUND => "Not Found",
        StatusCode::METHOD_NOT_ALLOWED => "Method Not Allowed",
        StatusCode::PAYLOAD_TOO_LARGE => too_large.as_str(),
        StatusCode::REQUEST_TIMEOUT => "Request timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported media type",
        StatusCode::RANGE_NOT_SATISFIABLE => "Range not satisfiable",
        StatusCode::PRECONDITION_FAILED => "Precondition failed",
        s if s.is_server_error() => "Internal Server Error",
        s => s.canonical_reason().unwrap_or("Error"),
    };
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = json!({ "detail": detail }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The one place store errors get words and statuses (STYLE.md §2.2).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(Missing::Session) => {
                Self::NotFound("Upload session not found".to_owned())
            }
            StoreError::NotFound(Missing::File) => Self::NotFound("File not found".to_owned()),
            StoreError::NotFound(Missing::BatchToken) => {
                Self::NotFound("Download token not found or expired".to_owned())
            }
            StoreError::InvalidName(e) => e.into(),
            StoreError::FolderConflict => {
                Self::BadRequest("Folder conflicts with an existing file".to_owned())
            }
            StoreError::SizeMismatch { .. } => Self::BadRequest("Size mismatch".to_owned()),
            StoreError::ShaMismatch => Self::ShaMismatch,
            StoreError::Quota {
                used,
                quota,
                requested,
            } => Self::Quota {
                used,
                quota,
                requested,
            },
            StoreError::TooLarge => Self::TooLarge(
                "Upload exceeds the size declared at init, or MAX_BODY_MB for a file".to_owned(),
            ),
            StoreError::DiskFull => Self::InsufficientStorage,
            StoreError::OffsetMismatch { offset } => Self::Conflict(format!(
                "Upload-Offset does not match: the upload is at offset {offset}"
            )),
            StoreError::Busy => Self::Locked(
                "Another request is appending to or completing this upload; retry when it ends"
                    .to_owned(),
            ),
            StoreError::WrongProtocol => Self::Conflict(
                "This upload was begun with another protocol; continue it with that one".to_owned(),
            ),
            StoreError::LengthMismatch { declared, offset } => Self::Conflict(match declared {
                Some(len) => format!(
                    "Inconsistent upload length: {len} bytes were declared, {offset} received"
                ),
                None => format!("Inconsistent upload length: {offset} bytes were already received"),
            }),
            StoreError::ConcatFinal => Self::Forbidden(
                "A final concatenation takes no bytes of its own (PATCH its partial uploads)"
                    .to_owned(),
            ),
            StoreError::NotPartial(what) => Self::BadRequest(format!(
                "Upload-Concat: {what} is not a partial upload of yours"
            )),
            StoreError::Backend(why) => {
                tracing::error!(error = why, "storage backend unavailable");
                Self::Unavailable("Storage backend unavailable; retry later".to_owned())
            }
            StoreError::Unsupported(what) => Self::NotImplemented(format!(
                "{what} is not available with STORAGE_BACKEND=s3 in this version"
            )),
            StoreError::Io(io) => Self::Internal(io.into()),
        }
    }
}

/// A refused name: 400 saying which rule it broke.
impl From<InvalidName> for ApiError {
    fn from(e: InvalidName) -> Self {
        let (what, fault) = match e {
            InvalidName::UserId(f) => ("Invalid user id", f),
            InvalidName::FileName(f) => ("Invalid filename", f),
            InvalidName::Key => {
                return Self::BadRequest(
                    "Invalid key: a key looks like storage/{user_id}/[{folder}/]{file}, as an \
                     upload returns it (e.g. storage/u1/docs/1a2b3c4d_report.pdf), without \
                     empty, '.' or '..' segments or names starting with '.'"
                        .to_owned(),
                )
            }
            InvalidName::Path => return Self::BadRequest("Invalid path".to_owned()),
        };
        let why = match fault {
            NameFault::Empty => "empty",
            NameFault::LeadingDot => "may not start with '.'",
            NameFault::TooLong => "longer than 255 bytes",
            NameFault::Separator => "contains '/', '\\' or a control character",
            NameFault::DotDot => "contains '..'",
            NameFault::Slash => "contains '/' or '\\'",
            NameFault::Nul => "contains NUL",
            NameFault::Reserved => "reserved device name",
        };
        Self::BadRequest(format!("{what}: {why}"))
    }
}
