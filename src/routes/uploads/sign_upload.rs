//! `POST /v1/files/sign-upload` (issue 15): mints a signed upload URL, which lets a browser
//! with no JWT upload for one user and folder until it expires, within a size and,
//! optionally, a list of types. The grant's format is `crate::upload_grant`; routes take it
//! through `super::grant::Uploader`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppJson, ErrorBody};
use crate::routes::signed_url::ttl_schema;
use crate::state::AppState;
use crate::store::key::FolderPath;
use crate::upload_grant::{self, Grant};

/// Lifetime when `expires_in` is absent, seconds.
pub const DEFAULT_EXPIRES_IN: i64 = 3600;
/// Longest lifetime: 7 days, as signed download URLs.
pub const MAX_EXPIRES_IN: i64 = 7 * 24 * 3600;
/// Most entries in `mime_types` (each also ends up in every upload URL).
pub const MAX_MIME_TYPES: usize = 32;

/// What the signed upload URL allows.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignUploadRequest {
    /// Whose uploads: a service must name the user; a user may name only itself.
    user_id: Option<String>,
    /// The folder the files go to (sanitised as for uploads); absent: the top level.
    folder: Option<String>,
    /// Seconds the URL is valid, 1 to 604800 (7 days); default 3600.
    #[schema(schema_with = ttl_schema)]
    expires_in: Option<Value>,
    /// Largest file in bytes, 1 to `MAX_BODY_MB` MiB; default `MAX_BODY_MB`.
    #[schema(minimum = 1)]
    max_size: Option<u64>,
    /// Allowed MIME types, e.g. `["image/png", "video/*"]` (case-insensitive; `type/*`
    /// matches any subtype); absent: any type.
    mime_types: Option<Vec<String>>,
}

/// A signed upload URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUpload {
    /// The one-request upload (`POST`) with the grant: `{PUBLIC_BASE_URL}/v1/files/upload?grant=..&sig=..`.
    url: String,
    /// The tus endpoint with the grant: `{PUBLIC_BASE_URL}/v1/files/tus/?grant=..&sig=..`.
    tus_url: String,
    /// `grant=..&sig=..`, to add to any upload route's query (or to `/upload`).
    query: String,
    /// When it expires (RFC 3339, UTC).
    expires_at: String,
    /// Seconds it is valid.
    expires_in: i64,
    /// Largest file, bytes.
    max_size: u64,
    /// Where the files go (sanitised), or `null` for the top level.
    folder: Option<String>,
    /// Whose files they become.
    user_id: String,
    /// Allowed types (normalised), or `null` for any.
    mime_types: Option<Vec<String>>,
}

/// Signs an upload URL: uploads without a JWT, for one user and folder, until it expires.
#[utoipa::path(post, path = "/v1/files/sign-upload", tag = "uploads",
    request_body = SignUploadRequest,
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The signed upload URL", body = SignedUpload),
        (status = 400, description = "A bad user id, `expires_in`, `max_size` or MIME type, or a service caller named no user", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "A user asked for another user's uploads", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Malformed JSON", body = ErrorBody),
    ))]
pub(crate) async fn sign_upload(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<SignUploadRequest>,
) -> ApiResult<Json<SignedUpload>> {
    let named = req
        .user_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let user = match (&caller, named) {
        (Caller::User(me), Some(other)) if other != me.as_str() => {
            return Err(ApiError::Forbidden(
                "A user may sign upload URLs for itself only".to_owned(),
            ))
        }
        _ => caller.acting_for(named)?,
    };
    let expires_in = match &req.expires_in {
        None | Some(Value::Null) => DEFAULT_EXPIRES_IN,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(-1),
        Some(_) => -1,
    };
    if !(1..=MAX_EXPIRES_IN).contains(&expires_in) {
        return Err(ApiError::BadRequest(format!(
            "expires_in must be between 1 and {MAX_EXPIRES_IN} seconds"
        )));
    }
    let limit = state.settings.max_body_bytes;
    let max_size = req.max_size.unwrap_or(limit);
    if !(1..=limit).contains(&max_size) {
        return Err(ApiError::BadRequest(format!(
            "max_size must be between 1 and {limit} bytes (MAX_BODY_MB)"
        )));
    }
    let mime_types = req.mime_types.map(normalize_types).transpose()?;
    let folder = req
        .folder
        .as_deref()
        .and_then(FolderPath::sanitize)
        .map(|f| f.as_string());
    let exp = chrono::Utc::now().timestamp() + expires_in;
    let grant = Grant {
        u: user.as_str().to_owned(),
        f: folder.clone(),
        e: exp,
        m: max_size,
        t: mime_types.clone(),
    };
    if grant.encode().len() > upload_grant::MAX_GRANT_LEN {
        return Err(ApiError::BadRequest(format!(
            "The upload URL would be too long (its grant over {} characters): \
             use a shorter folder or fewer mime_types",
            upload_grant::MAX_GRANT_LEN
        )));
    }
    let query = grant.query(state.secrets().signing.current());
    let base = &state.settings.public_base_url;
    let expires_at = chrono::DateTime::from_timestamp(exp, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    tracing::info!(target: "activity", event = "sign_upload", user = %user, folder = folder.as_deref().unwrap_or(""), max_size, expires_in);
    Ok(Json(SignedUpload {
        url: format!("{base}/v1/files/upload?{query}"),
        tus_url: format!("{base}/v1/files/tus/?{query}"),
        query,
        expires_at,
        expires_in,
        max_size,
        folder,
        user_id: user.as_str().to_owned(),
        mime_types,
    }))
}

/// Checks and normalises the allowed types (400 naming a bad one).
fn normalize_types(raw: Vec<String>) -> ApiResult<Vec<String>> {
    if raw.is_empty() {
        return Err(ApiError::BadRequest(
            "mime_types must list at least one type, or be left out to allow any".to_owned(),
        ));
    }
    if raw.len() > MAX_MIME_TYPES {
        return Err(ApiError::BadRequest(format!(
            "mime_types may list at most {MAX_MIME_TYPES} types"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for t in &raw {
        let n = upload_grant::normalize_pattern(t).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "mime_types: '{}' is not a MIME type such as image/png or video/*",
                t.chars().take(100).collect::<String>()
            ))
        })?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}
