//! `/v1/files` uploads (API.md §3): three-step init/part/complete, raw parts, upload
//! sessions, and the one-request upload.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::routing::post;
use axum::Json;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};

use super::Routes;
use crate::auth::Caller;
use crate::bufpool::PooledBuf;
use crate::error::{ApiError, ApiResult, AppJson, AppPath, AppQuery, ErrorBody};
use crate::part_json::{PartJsonError, PartJsonParser};
use crate::signer::{self, Disposition};
use crate::state::AppState;
use crate::store::key::{validate_client_filename, FolderPath, Key, UserId};
use crate::store::sessions::{FileSpec, SessionId, SessionInfo, MAX_PART_NUMBER};
use crate::store::{CompleteRequest, PartUpload, StoreError, Stored};

/// The upload routes.
pub fn routes() -> Routes {
    Routes::new()
        .post("/v1/files/init", init_upload)
        .post("/v1/files/part", upload_part_json)
        .put("/v1/files/part/{upload_id}/{part_number}", upload_part_raw)
        .post("/v1/files/complete", complete_upload)
        .get("/v1/files/uploads/{upload_id}", session_status)
        .delete("/v1/files/uploads/{upload_id}", abort_session)
        .route(
            "/v1/files/upload",
            &[Method::POST],
            post(upload_files).layer(DefaultBodyLimit::disable()),
        )
        .get("/v1/files/all", list_files)
        // Catch-alls: documented as `{key}` (OpenAPI has no catch-all parameters).
        .get("/v1/files/metadata/{*key}", file_metadata)
        .get("/v1/files/signed-url", signed_url_get)
        .post("/v1/files/signed-url", signed_url_post)
        // Other methods: 405 on a file key, 404 on any other path (`GET /v1/files/x`).
        .route(
            "/v1/files/{*key}",
            &[Method::DELETE],
            axum::routing::delete(delete_file).fallback(other_method_on_key),
        )
}

/// `/v1/files/{*key}` with a method other than DELETE. The catch-all matches every path
/// under `/v1/files/`: only where the path is a file key is there an operation whose method
/// is wrong (405, `Allow: DELETE`); elsewhere the path itself is unknown (the router's 404).
async fn other_method_on_key(
    key: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !key.is_ok_and(|k| Key::parse(&k.0).is_ok()) {
        return ApiError::NotFound("Not Found".to_owned()).into_response();
    }
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "DELETE")],
        Json(json!({ "detail": "Method Not Allowed" })),
    )
        .into_response()
}

/// A key from a client: 400 when it is not a file key, 403 when it is not the caller's.
fn owned_key(caller: &Caller, raw: &str) -> ApiResult<Key> {
    let key = Key::parse(raw).map_err(|e| ApiError::BadRequest(e.0))?;
    if !caller.may_access(key.owner().as_str()) {
        return Err(ApiError::access_denied());
    }
    Ok(key)
}

/// Whose files, which folder, which page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The user (service callers must name one; ignored for user callers).
    user_id: Option<String>,
    /// The user, when named by e-mail.
    user_email: Option<String>,
    /// Only this folder and its subfolders.
    folder: Option<String>,
    /// At most this many files.
    limit: Option<usize>,
    /// Skip this many files first.
    offset: Option<usize>,
}

/// A user's files, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    /// This page of the list.
    files: Vec<ListedFile>,
    /// Files in the whole list (all pages).
    total_count: usize,
    /// Bytes in the whole list (all pages).
    total_size: u64,
}

/// One file of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedFile {
    /// `storage/{user_id}/[{folder}/]{prefix}_{filename}`.
    key: String,
    /// The original file name.
    filename: String,
    size: u64,
    mime: String,
    /// RFC 3339.
    created_at: String,
    /// The folder path, or null at the user's top level.
    folder: Option<String>,
}

/// Lists a user's files.
#[utoipa::path(get, path = "/v1/files/all", tag = "files",
    params(ListQuery),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The files, newest first", body = FileList),
        (status = 400, description = "A service caller named no valid user", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 422, description = "A parameter of the wrong type", body = ErrorBody),
    ))]
async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<ListQuery>,
) -> ApiResult<Json<FileList>> {
    let user = caller.acting_for(q.user_id.as_deref().or(q.user_email.as_deref()))?;
    let folder = q.folder.as_deref().and_then(FolderPath::sanitize);
    let entries = state
        .store
        .list(&user, folder.as_ref().map(FolderPath::segments))
        .await?;
    let total_size: u64 = entries.iter().map(|e| e.size).sum();
    let total_count = entries.len();
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(usize::MAX);
    let files = entries
        .iter()
        .skip(offset)
        .take(limit)
        .map(|e| ListedFile {
            key: e.key.to_string(),
            filename: e.meta.original_name.clone(),
            size: e.size,
            mime: e.meta.mime.clone(),
            created_at: e.created_at.clone(),
            folder: e.key.folder(),
        })
        .collect();
    Ok(Json(FileList {
        files,
        total_count,
        total_size,
    }))
}

/// A file's metadata: the server's fields, and the client's own `meta` fields beside them.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileMetadata {
    key: String,
    original_name: String,
    size: u64,
    mime: String,
    /// Hex SHA-256, when known.
    sha256: Option<String>,
    /// CRC-32, when known.
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    crc32: Option<u32>,
    user_id: String,
    /// RFC 3339.
    #[serde(rename = "createdAt")]
    created_at: String,
    /// The client's `meta` fields (never one of the names above).
    #[serde(flatten)]
    #[schema(additional_properties)]
    extra: Map<String, Value>,
}

/// Field names of [`FileMetadata`]: a client field of the same name is left out.
const METADATA_FIELDS: &[&str] = &[
    "key",
    "original_name",
    "size",
    "mime",
    "sha256",
    "crc32",
    "user_id",
    "createdAt",
];

/// A file's metadata. The key keeps its slashes, raw or as `%2F`.
#[utoipa::path(get, path = "/v1/files/metadata/{key}", tag = "files",
    params(("key" = String, Path, description = "The file's key, `storage/{user_id}/...`; slashes raw or as %2F")),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The metadata", body = FileMetadata),
        (status = 400, description = "Not a file key", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Another user's file", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
    ))]
async fn file_metadata(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(key): AppPath<String>,
) -> ApiResult<Json<FileMetadata>> {
    let key = owned_key(&caller, &key)?;
    let e = state.store.entry(&key).await?;
    let mut extra = e.meta.extra;
    extra.retain(|k, _| !METADATA_FIELDS.contains(&k.as_str()));
    Ok(Json(FileMetadata {
        key: key.to_string(),
        original_name: e.meta.original_name,
        size: e.size,
        mime: e.meta.mime,
        sha256: e.meta.sha256,
        crc32: e.meta.crc32,
        user_id: e.meta.user_id,
        created_at: e.created_at,
        extra,
    }))
}

/// What a delete answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// Always `deleted`.
    status: &'static str,
    key: String,
}

/// Deletes a file and its sidecar. The key keeps its slashes, raw or as `%2F`.
#[utoipa::path(delete, path = "/v1/files/{key}", tag = "files",
    params(("key" = String, Path, description = "The file's key, `storage/{user_id}/...`; slashes raw or as %2F")),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 400, description = "Not a file key", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Another user's file", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
    ))]
async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(key): AppPath<String>,
) -> ApiResult<Json<Deleted>> {
    let key = owned_key(&caller, &key)?;
    state.store.delete(&key).await?;
    tracing::info!(target: "activity", event = "delete", key = %key);
    Ok(Json(Deleted {
        status: "deleted",
        key: key.to_string(),
    }))
}

/// What to sign: the key (as `key` or `file_key`), the lifetime (as `ttl` or `expires_in`,
/// seconds, 1 s to 7 days, `SIGNED_URL_TTL_DEFAULT` when absent) and the disposition.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignQuery {
    key: Option<String>,
    /// The same as `key` (the old Python SDK's name).
    file_key: Option<String>,
    #[schema(schema_with = ttl_schema)]
    ttl: Option<Value>,
    #[schema(schema_with = ttl_schema)]
    expires_in: Option<Value>,
    #[schema(schema_with = disposition_schema)]
    disposition: Option<String>,
}

/// `ttl`, `expires_in`: seconds, as a number or a numeric string.
fn ttl_schema() -> impl Into<RefOr<Schema>> {
    utoipa::openapi::schema::OneOfBuilder::new()
        .description(Some(
            "Seconds, 1 s to 7 days, as a number or a numeric string",
        ))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(MAX_TTL)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
}

/// `disposition`: how the signed URL serves the file.
fn disposition_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("`inline` (the default) or `attachment`"))
        .enum_values(Some(["inline", "attachment"]))
}

/// A signed download URL (API.md §4.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUrl {
    /// `{PUBLIC_BASE_URL}/get/{base64url(key)}?exp=..&sig=..[&disposition=attachment]`.
    url: String,
    /// The same as `url` (the old Python SDK's name).
    signed_url: String,
    /// Seconds the URL is valid.
    expires_in: i64,
    /// When it expires, Unix seconds.
    expires_at: i64,
    /// `inline` or `attachment`.
    disposition: &'static str,
}

/// Largest signed-URL lifetime: 7 days.
const MAX_TTL: i64 = 7 * 24 * 3600;

async fn sign_url(state: &AppState, caller: &Caller, q: SignQuery) -> ApiResult<Json<SignedUrl>> {
    let raw = q
        .key
        .or(q.file_key)
        .ok_or_else(|| ApiError::validation(&["query", "key"], "Field required", "missing"))?;
    let key = owned_key(caller, &raw)?;
    let ttl = match q.ttl.or(q.expires_in) {
        None | Some(Value::Null) => state.settings.signed_url_ttl_default as i64,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(-1),
        Some(_) => -1,
    };
    if !(1..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl must be between 1 and {MAX_TTL} seconds"
        )));
    }
    let disposition = match q.disposition.as_deref() {
        None | Some("") => Disposition::Inline,
        Some(d) => Disposition::parse(d).ok_or_else(|| {
            ApiError::BadRequest("disposition must be 'inline' or 'attachment'".to_owned())
        })?,
    };
    state.store.entry(&key).await?;
    let exp = chrono::Utc::now().timestamp() + ttl;
    let url = signer::signed_url(
        &state.settings.public_base_url,
        state.signing_key.expose(),
        &key.to_string(),
        exp,
        disposition,
    );
    Ok(Json(SignedUrl {
        signed_url: url.clone(),
        url,
        expires_in: ttl,
        expires_at: exp,
        disposition: disposition.as_str(),
    }))
}

/// Signs a download URL for a file.
#[utoipa::path(get, path = "/v1/files/signed-url", tag = "files",
    params(
        ("key" = Option<String>, Query, description = "The file's key (or `file_key`); required"),
        ("file_key" = Option<String>, Query, description = "The same as `key`"),
        ("ttl" = Option<i64>, Query, minimum = 1, maximum = 604800, description = "Seconds, 1 s to 7 days; `SIGNED_URL_TTL_DEFAULT` when absent"),
        ("expires_in" = Option<i64>, Query, minimum = 1, maximum = 604800, description = "The same as `ttl`"),
        ("disposition" = Option<String>, Query, description = "`inline` (the default) or `attachment`"),
    ),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The URL", body = SignedUrl),
        (status = 400, description = "Not a file key, or a bad ttl or disposition", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Another user's file", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 422, description = "No key given", body = ErrorBody),
    ))]
async fn signed_url_get(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<HashMap<String, String>>,
) -> ApiResult<Json<SignedUrl>> {
    let get = |k: &str| q.get(k).cloned();
    let q = SignQuery {
        key: get("key"),
        file_key: get("file_key"),
        ttl: get("ttl").map(Value::from),
        expires_in: get("expires_in").map(Value::from),
        disposition: get("disposition"),
    };
    sign_url(&state, &caller, q).await
}

/// Signs a download URL for a file, parameters in a JSON body (the old Python SDK's form).
#[utoipa::path(post, path = "/v1/files/signed-url", tag = "files",
    request_body = SignQuery,
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The URL", body = SignedUrl),
        (status = 400, description = "Not a file key, or a bad ttl or disposition", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Another user's file", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Malformed JSON, or no key given", body = ErrorBody),
    ))]
async fn signed_url_post(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(q): AppJson<SignQuery>,
) -> ApiResult<Json<SignedUrl>> {
    sign_url(&state, &caller, q).await
}

/// Bytes a chunked part holds, for the `parts` count of init.
const CHUNK_SIZE: u64 = 1 << 20;

/// A file announced at init.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InitFile {
    /// Its name: not empty, no `..`, `/` or `\`, not a device name such as `CON`.
    #[schema(example = "a.jpg")]
    name: String,
    /// Its size in bytes, at most `MAX_BODY_MB`.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "integral")]
    size: i64,
    /// Its type, used when the name's extension says nothing.
    #[serde(default)]
    #[schema(example = "image/jpeg")]
    mime: Option<String>,
}

/// Starts one upload session per file (API.md §3.1).
#[derive(Debug, Deserialize, ToSchema)]
pub struct InitRequest {
    /// `single` (the default), `chunked` or `batch`.
    #[serde(default = "default_mode")]
    #[schema(schema_with = mode_schema)]
    mode: String,
    /// At least one file.
    #[schema(min_items = 1)]
    files: Vec<InitFile>,
    /// The folder the files go to, e.g. `main/pictures`.
    #[serde(default)]
    folder: Option<String>,
    /// Client fields kept in the sidecar; a service caller names the user here, as
    /// `user_id` or `user_email`.
    #[serde(default)]
    #[schema(additional_properties)]
    meta: Option<Map<String, Value>>,
}

/// A JSON integer, also when written with a zero fraction (`6633.0`): JSON Schema counts
/// that as an integer, and so did the old service (pydantic).
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error as _;
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        // Within ±2^63, where the conversion is exact for integral values.
        Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 && n.as_u64().is_none() => Ok(f as i64),
        _ => Err(D::Error::custom(format!(
            "invalid value: {n}, expected an integer"
        ))),
    }
}

fn mode_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["single", "chunked", "batch"]))
        .default(Some(Value::from("single")))
}

/// The sessions init made.
#[derive(Debug, Serialize, ToSchema)]
pub struct InitResponse {
    /// The (first) session's id.
    #[serde(rename = "uploadId")]
    upload_id: String,
    /// For `chunked`: parts of 1 MiB the largest file needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<u64>,
    /// For `batch` or several files: one session per file.
    #[serde(skip_serializing_if = "Option::is_none")]
    uploads: Option<Vec<InitUpload>>,
}

/// One file's session.
#[derive(Debug, Serialize, ToSchema)]
pub struct InitUpload {
    #[serde(rename = "uploadId")]
    upload_id: String,
    name: String,
    size: u64,
}

fn default_mode() -> String {
    "single".to_owned()
}

/// The user a service names in `meta` (`user_id`, else `user_email`).
fn meta_user(meta: Option<&Map<String, Value>>) -> Option<String> {
    let meta = meta?;
    ["user_id", "user_email"]
        .iter()
        .find_map(|k| meta.get(*k).and_then(Value::as_str).map(str::to_owned))
}

/// Client `meta` without the fields that name the user or the place.
fn client_fields(meta: Option<Map<String, Value>>) -> Map<String, Value> {
    let mut meta = meta.unwrap_or_default();
    for k in ["user_id", "user_email", "filename", "folder"] {
        meta.remove(k);
    }
    meta
}

/// Starts an upload: one session per file.
#[utoipa::path(post, path = "/v1/files/init", tag = "uploads",
    request_body = InitRequest,
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The session(s)", body = InitResponse),
        (status = 400, description = "An invalid file name, or a service caller named no user", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 413, description = "A file over `MAX_BODY_MB`, or over the quota", body = ErrorBody),
        (status = 422, description = "Malformed JSON, a missing field, a bad mode or a negative size", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
async fn init_upload(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<InitRequest>,
) -> ApiResult<Json<InitResponse>> {
    if !matches!(req.mode.as_str(), "single" | "chunked" | "batch") {
        return Err(ApiError::validation(
            &["body", "mode"],
            "mode must be one of 'single', 'chunked', 'batch'",
            "enum",
        ));
    }
    if req.files.is_empty() {
        return Err(ApiError::validation(
            &["body", "files"],
            "at least one file is required",
            "too_short",
        ));
    }
    let mut files = Vec::with_capacity(req.files.len());
    for (i, f) in req.files.iter().enumerate() {
        let size = u64::try_from(f.size).map_err(|_| {
            ApiError::Validation(json!([{
                "type": "greater_than_equal",
                "loc": ["body", "files", i, "size"],
                "msg": "size must be 0 or more",
            }]))
        })?;
        validate_client_filename(&f.name).map_err(|e| ApiError::BadRequest(e.0))?;
        files.push(FileSpec {
            name: f.name.clone(),
            size,
            mime: f.mime.clone(),
        });
    }
    let user = caller.acting_for(meta_user(req.meta.as_ref()).as_deref())?;
    let max_size = files.iter().map(|f| f.size).max().unwrap_or(0);
    let several = files.len() > 1 || req.mode == "batch";
    let sessions = state
        .store
        .create_sessions(
            &user,
            &req.mode,
            files,
            req.folder.clone(),
            client_fields(req.meta),
        )
        .await?;
    let first = sessions
        .first()
        .map(|s| s.upload_id.clone())
        .unwrap_or_default();
    tracing::info!(target: "activity", event = "upload_init", user = %user, sessions = sessions.len(), mode = %req.mode);
    let uploads = several.then(|| {
        sessions
            .iter()
            .map(|s| InitUpload {
                upload_id: s.upload_id.clone(),
                name: s.file.name.clone(),
                size: s.file.size,
            })
            .collect()
    });
    Ok(Json(InitResponse {
        upload_id: first,
        parts: (req.mode == "chunked").then(|| max_size.div_ceil(CHUNK_SIZE)),
        uploads,
    }))
}

/// Loads a session the caller may use: another user's is as unknown as a missing one.
async fn owned_session(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<(SessionId, SessionInfo)> {
    let id = SessionId::parse(id)?;
    let info = state.store.session(&id).await?;
    if !caller.may_access(&info.user_id) {
        return Err(ApiError::NotFound("Upload session not found".to_owned()));
    }
    Ok((id, info))
}

fn part_number(raw: &str) -> ApiResult<u32> {
    let trimmed = raw.trim();
    let n: i64 = trimmed
        .parse()
        .or_else(|_| {
            trimmed
                .parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0)
                .map(|f| f as i64)
                .ok_or(())
        })
        .map_err(|()| {
            ApiError::validation(
                &["body", "partNumber"],
                "partNumber must be an integer",
                "int_parsing",
            )
        })?;
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_PART_NUMBER)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "partNumber must be between 0 and {MAX_PART_NUMBER}"
            ))
        })
}

/// A body error: the request body limit (413), a client that stopped sending (408), or
/// the client gone.
fn body_error(e: &axum::Error) -> ApiError {
    cause_of_body_error(e)
        .unwrap_or_else(|| ApiError::BadRequest("Request body could not be read".to_owned()))
}

/// 413 or 408 when the error chain shows the body limit, the idle timeout or the minimum
/// rate.
fn cause_of_body_error(e: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return Some(ApiError::TooLarge("Request body too large".to_owned()));
        }
        if let Some(cut) = crate::error::body_cut_off(s) {
            return Some(cut);
        }
        source = s.source();
    }
    None
}

/// One part, base64 in JSON (API.md §3.1).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only: the handler parses the body as a stream (part_json.rs)
pub struct PartRequest {
    /// The session.
    #[schema(rename = "uploadId")]
    upload_id: String,
    /// 0 to 100000; sending a part again replaces it.
    #[schema(rename = "partNumber", minimum = 0, maximum = 100000)]
    part_number: u32,
    /// The part's bytes, base64.
    #[schema(rename = "chunkBase64", format = Byte)]
    chunk_base64: String,
}

/// A part received.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartReceived {
    /// Always `success`.
    status: &'static str,
    #[serde(rename = "partNumber")]
    part_number: u32,
    /// The part's size in bytes.
    size: u64,
}

impl PartReceived {
    fn new(part_number: u32, size: u64) -> Self {
        Self {
            status: "success",
            part_number,
            size,
        }
    }
}

/// Sends one part as base64 in JSON; the body streams to disk whatever its size.
#[utoipa::path(post, path = "/v1/files/part", tag = "uploads",
    request_body = PartRequest,
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Stored", body = PartReceived),
        (status = 400, description = "Bad base64, a part number out of range, or a bad session id", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such session (or another user's)", body = ErrorBody),
        (status = 413, description = "Parts past the declared size", body = ErrorBody),
        (status = 422, description = "Malformed JSON or a missing field", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
async fn upload_part_json(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> ApiResult<Json<PartReceived>> {
    let mut parser = PartJsonParser::new();
    let mut stream = body.into_data_stream();
    // Decoded bytes gather in one pooled buffer and go to the writer HANDOFF at a time,
    // whatever the size of the frames received (a slow client's are a few KiB). The room
    // holds HANDOFF plus what one frame decodes to (hyper's frames stay under 408 KiB of
    // text), so the decoder never grows it and the buffer goes back to the pool.
    const HANDOFF: usize = 512 * 1024;
    const DECODE_ROOM: usize = 1024 * 1024;
    let mut decoded = PooledBuf::with_capacity(DECODE_ROOM);
    let mut target: Option<(SessionInfo, PartUpload)> = None;
    let mut staged: Option<PartUpload> = None;
    let parse_err = |e: PartJsonError| match e {
        PartJsonError::Syntax(m) => ApiError::validation(&["body"], m, "json_invalid"),
        PartJsonError::Base64(m) => ApiError::BadRequest(format!("Invalid base64 data: {m}")),
    };
    loop {
        let chunk = match stream.next().await {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return Err(body_error(&e)),
            None => None,
        };
        if let Some(c) = &chunk {
            parser.feed(c, decoded.vec_mut()).map_err(parse_err)?;
        }
        let done = chunk.is_none();
        let fields = if done {
            let p = std::mem::take(&mut parser);
            Some(p.finish(decoded.vec_mut()).map_err(parse_err)?)
        } else {
            None
        };
        if !decoded.is_empty() || done {
            // Open the part's file on the first decoded bytes: in its session when the
            // uploadId came first (the usual order), else in the staging folder.
            let known = fields
                .as_ref()
                .or(Some(parser.fields()))
                .and_then(|f| Some((f.upload_id.clone()?, f.part_number.clone()?)));
            if target.is_none() && staged.is_none() {
                match &known {
                    Some((id, n)) => {
                        let (_, info) = owned_session(&state, &caller, id).await?;
                        let n = part_number(n)?;
                        let part = state.store.begin_part(&info, n).await?;
                        target = Some((info, part));
                    }
                    None => {
                        let who = match &caller {
                            Caller::User(u) => Some(u),
                            Caller::Service => None,
                        };
                        staged = Some(state.store.begin_staged_part(who).await?);
                    }
                }
            }
            let sink: &mut PartUpload = if let Some((_, p)) = target.as_mut() {
                p
            } else if let Some(p) = staged.as_mut() {
                p
            } else {
                return Err(ApiError::Internal(anyhow::anyhow!("no part file open")));
            };
            if decoded.len() >= HANDOFF || (done && !decoded.is_empty()) {
                let full = std::mem::replace(&mut decoded, PooledBuf::with_capacity(DECODE_ROOM));
                sink.write(full.freeze(usize::MAX)).await?;
            }
        }
        if let Some(fields) = fields {
            let id = fields.upload_id.ok_or_else(|| {
                ApiError::validation(&["body", "uploadId"], "Field required", "missing")
            })?;
            let n_raw = fields.part_number.ok_or_else(|| {
                ApiError::validation(&["body", "partNumber"], "Field required", "missing")
            })?;
            if !fields.saw_chunk {
                return Err(ApiError::validation(
                    &["body", "chunkBase64"],
                    "Field required",
                    "missing",
                ));
            }
            let n = part_number(&n_raw)?;
            let (info, part) = match (target, staged) {
                (Some((info, part)), _) => (info, part),
                (None, Some(part)) => (owned_session(&state, &caller, &id).await?.1, part),
                (None, None) => {
                    return Err(ApiError::Internal(anyhow::anyhow!("part without a file")))
                }
            };
            let size = state.store.commit_part(&info, n, part).await?;
            return Ok(Json(PartReceived::new(n, size)));
        }
    }
}

/// Sends one part as raw bytes; the body streams to disk.
#[utoipa::path(put, path = "/v1/files/part/{upload_id}/{part_number}", tag = "uploads",
    params(
        ("upload_id" = String, Path, description = "The session"),
        ("part_number" = u32, Path, minimum = 0, maximum = 100000, description = "0 to 100000"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The part's bytes"),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Stored", body = PartReceived),
        (status = 400, description = "A part number out of range, or a bad session id", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such session (or another user's)", body = ErrorBody),
        (status = 413, description = "Parts past the declared size", body = ErrorBody),
        (status = 422, description = "The part number is not an integer", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
async fn upload_part_raw(
    State(state): State<AppState>,
    caller: Caller,
    AppPath((upload_id, number)): AppPath<(String, String)>,
    body: Body,
) -> ApiResult<Json<PartReceived>> {
    let (_, info) = owned_session(&state, &caller, &upload_id).await?;
    let n = part_number(&number)?;
    let mut part = state.store.begin_part(&info, n).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(&e))?;
        part.write(chunk).await?;
    }
    let size = state.store.commit_part(&info, n, part).await?;
    Ok(Json(PartReceived::new(n, size)))
}

/// Finishes an upload (API.md §3.1).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompleteBody {
    /// The session.
    upload_id: String,
    /// Accepted and ignored (the old clients send their part list).
    #[serde(default)]
    #[allow(dead_code)]
    parts: Option<Value>,
    /// Hex SHA-256 of the whole file; checked unless absent or empty.
    #[serde(default)]
    sha256: Option<String>,
    /// `filename` and `folder` override init's; `user_id`/`user_email` must be the
    /// session's user; other fields go to the sidecar.
    #[serde(default)]
    #[schema(additional_properties)]
    meta: Option<Map<String, Value>>,
}

/// A stored file.
#[derive(Debug, Serialize, ToSchema)]
pub struct Completed {
    /// `storage/{user_id}/[{folder}/]{prefix}_{filename}`.
    key: String,
    size: Option<u64>,
    mime: String,
    /// Hex SHA-256.
    sha256: Option<String>,
}

/// Joins the parts into the file, atomically.
#[utoipa::path(post, path = "/v1/files/complete", tag = "uploads",
    request_body = CompleteBody,
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The file is stored", body = Completed),
        (status = 400, description = "Size or SHA256 mismatch, a bad file name or session id, or meta naming another user", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such session (or another user's, or already completed)", body = ErrorBody),
        (status = 413, description = "Over the quota", body = ErrorBody),
        (status = 422, description = "Malformed JSON or a missing field", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
async fn complete_upload(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<CompleteBody>,
) -> ApiResult<Json<Completed>> {
    let (id, info) = owned_session(&state, &caller, &req.upload_id).await?;
    if let Some(named) = meta_user(req.meta.as_ref()) {
        if named != info.user_id {
            return Err(ApiError::BadRequest(
                "meta names another user than the upload's".to_owned(),
            ));
        }
    }
    let text = |k: &str| {
        req.meta
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let filename = text("filename").filter(|s| !s.trim().is_empty());
    if let Some(name) = &filename {
        validate_client_filename(name).map_err(|e| ApiError::BadRequest(e.0))?;
    }
    let complete = CompleteRequest {
        filename,
        folder: text("folder"),
        sha256: req.sha256.clone(),
        extra: client_fields(req.meta.clone()),
    };
    let stored = state.store.complete(&id, complete).await?;
    tracing::info!(target: "activity", event = "upload", user = %info.user_id, key = %stored.key, size = stored.meta.size.unwrap_or(0));
    Ok(Json(Completed {
        key: stored.key.to_string(),
        size: stored.meta.size,
        mime: stored.meta.mime,
        sha256: stored.meta.sha256,
    }))
}

/// Where an upload stands, so a client can resume (API.md §3.2).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    upload_id: String,
    /// `single`, `chunked` or `batch`.
    mode: String,
    /// The file this session receives.
    files: Vec<SessionFile>,
    /// The folder given at init.
    folder: Option<String>,
    /// The parts received, by number.
    parts: Vec<SessionPart>,
    received_bytes: u64,
    expected_bytes: u64,
    /// RFC 3339, UTC.
    created_at: String,
    /// RFC 3339, UTC: unfinished, the session is removed then.
    expires_at: String,
}

/// A file as declared at init.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionFile {
    name: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    mime: Option<String>,
}

/// A part received.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPart {
    #[serde(rename = "partNumber")]
    part_number: u32,
    size: u64,
}

/// An upload session's state.
#[utoipa::path(get, path = "/v1/files/uploads/{upload_id}", tag = "uploads",
    params(("upload_id" = String, Path, description = "The session")),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The session", body = SessionStatus),
        (status = 400, description = "Not a session id", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such session (or another user's)", body = ErrorBody),
    ))]
async fn session_status(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(upload_id): AppPath<String>,
) -> ApiResult<Json<SessionStatus>> {
    let (id, info) = owned_session(&state, &caller, &upload_id).await?;
    let parts = state.store.session_parts(&id).await?;
    let received: u64 = parts.iter().map(|(_, s)| s).sum();
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(Json(SessionStatus {
        upload_id: info.upload_id,
        mode: info.mode,
        files: vec![SessionFile {
            name: info.file.name,
            size: info.file.size,
            mime: info.file.mime,
        }],
        folder: info.folder,
        parts: parts
            .iter()
            .map(|&(part_number, size)| SessionPart { part_number, size })
            .collect(),
        received_bytes: received,
        expected_bytes: info.file.size,
        created_at: rfc(info.created_at),
        expires_at: rfc(info.expires_at),
    }))
}

/// An answer with only a status word.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusWord {
    #[schema(example = "aborted")]
    status: &'static str,
}

/// Aborts an upload session and frees its space.
#[utoipa::path(delete, path = "/v1/files/uploads/{upload_id}", tag = "uploads",
    params(("upload_id" = String, Path, description = "The session")),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Aborted", body = StatusWord),
        (status = 400, description = "Not a session id", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such session (or another user's)", body = ErrorBody),
    ))]
async fn abort_session(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(upload_id): AppPath<String>,
) -> ApiResult<Json<StatusWord>> {
    let (_, info) = owned_session(&state, &caller, &upload_id).await?;
    state.store.abort(&info).await?;
    tracing::info!(target: "activity", event = "upload_abort", user = %info.user_id, upload_id = %info.upload_id);
    Ok(Json(StatusWord { status: "aborted" }))
}

/// Query parameters of the one-request upload.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file name, for a raw body (required then).
    filename: Option<String>,
    /// The folder the file(s) go to.
    folder: Option<String>,
    /// The user (service callers must name one, here or as a form field).
    user_id: Option<String>,
    /// The user, when named by e-mail.
    user_email: Option<String>,
}

/// The form of a multipart upload.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only: the handler reads the form as a stream
pub struct UploadForm {
    /// One or more files.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
    /// The folder the files go to.
    folder: Option<String>,
    /// The user (service callers).
    user_id: Option<String>,
    /// A JSON object of client fields for the sidecars.
    meta: Option<String>,
}

/// The files stored by a one-request upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    files: Vec<UploadedFile>,
}

/// A stored file and its public link.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedFile {
    /// `storage/{user_id}/[{folder}/]{prefix}_{filename}`.
    key: String,
    size: Option<u64>,
    mime: String,
    /// Hex SHA-256.
    sha256: Option<String>,
    /// The public `/storage` URL.
    url: String,
}

/// Percent-encodes one URL path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@!$&'()*+,;=:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The public `/storage` URL of a key.
pub fn public_url(base: &str, key: &Key) -> String {
    let path: Vec<String> = key.to_string().split('/').map(encode_segment).collect();
    format!("{base}/{}", path.join("/"))
}

fn uploaded_file(state: &AppState, s: &Stored) -> UploadedFile {
    UploadedFile {
        key: s.key.to_string(),
        size: s.meta.size,
        mime: s.meta.mime.clone(),
        sha256: s.meta.sha256.clone(),
        url: public_url(&state.settings.public_base_url, &s.key),
    }
}

/// Uploads in one request: a multipart form with one or more `file` fields,
/// or the raw bytes with `filename` in the query. Bodies stream to disk.
#[utoipa::path(post, path = "/v1/files/upload", tag = "uploads",
    params(
        UploadQuery,
        ("X-Content-SHA256" = Option<String>, Header, description = "Hex SHA-256 of a raw body; checked when given"),
    ),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (Vec<u8> = "application/octet-stream"),
    )),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The stored files", body = Uploaded),
        (status = 400, description = "An invalid file name, a bad form, SHA256 mismatch, or a service caller named no user", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 413, description = "Over `MAX_BODY_MB` or the quota", body = ErrorBody),
        (status = 422, description = "No file given", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
async fn upload_files(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<UploadQuery>,
    headers: HeaderMap,
    req: Request,
) -> ApiResult<Json<Uploaded>> {
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let stored = if is_multipart {
        let multipart = Multipart::from_request(req, &state).await.map_err(|e| {
            ApiError::BadRequest(format!("Invalid multipart body: {}", e.body_text()))
        })?;
        upload_multipart(&state, &caller, q, multipart).await?
    } else {
        upload_raw(&state, &caller, q, &headers, req.into_body()).await?
    };
    for s in &stored {
        tracing::info!(target: "activity", event = "upload", user = %s.key.owner(), key = %s.key, size = s.meta.size.unwrap_or(0));
    }
    Ok(Json(Uploaded {
        files: stored.iter().map(|s| uploaded_file(&state, s)).collect(),
    }))
}

async fn upload_raw(
    state: &AppState,
    caller: &Caller,
    q: UploadQuery,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Vec<Stored>> {
    let user = caller.acting_for(q.user_id.as_deref().or(q.user_email.as_deref()))?;
    let name = q
        .filename
        .ok_or_else(|| ApiError::validation(&["query", "filename"], "Field required", "missing"))?;
    validate_client_filename(&name).map_err(|e| ApiError::BadRequest(e.0))?;
    let expected_sha = headers
        .get("x-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    let mut upload = state.store.begin_upload(&user).await?;
    let result = async {
        let mut sink = upload.begin_file().await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| body_error(&e))?;
            upload.write(&mut sink, chunk, 0).await?;
        }
        let folder = q.folder.as_deref().and_then(FolderPath::sanitize);
        let file = sink.finish().await?;
        let stored = upload
            .publish_file(file, name, folder, mime, expected_sha, Map::new())
            .await?;
        Ok::<_, ApiError>(vec![stored])
    }
    .await;
    upload.finish().await;
    result
}

async fn upload_multipart(
    state: &AppState,
    caller: &Caller,
    q: UploadQuery,
    mut multipart: Multipart,
) -> ApiResult<Vec<Stored>> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut text_bytes = 0usize;
    let mut user: Option<UserId> = match caller {
        Caller::User(u) => Some(u.clone()),
        Caller::Service => q
            .user_id
            .as_deref()
            .or(q.user_email.as_deref())
            .map(|u| caller.acting_for(Some(u)))
            .transpose()?,
    };
    let mut upload = None;
    let mut received = Vec::new();
    let mut total = 0u64;
    let result = async {
        while let Some(mut field) = multipart
            .next_field()
            .await
            .map_err(|e| multipart_error(&e))?
        {
            let name = field.name().unwrap_or("").to_owned();
            if name != "file" && field.file_name().is_none() {
                if !TEXT_FIELDS.contains(&name.as_str()) {
                    // Not ours: read past it, keeping nothing (issue 16: thousands of
                    // unknown fields were all held in memory).
                    while field
                        .chunk()
                        .await
                        .map_err(|e| multipart_error(&e))?
                        .is_some()
                    {}
                    continue;
                }
                // Read a text field a chunk at a time, so a huge one is refused early. The
                // limit covers all the text fields together, repeats included.
                let mut raw = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
                    text_bytes += chunk.len();
                    if text_bytes > MAX_TEXT_FIELDS {
                        return Err(ApiError::TooLarge(format!(
                            "The form's text fields ({}) exceed {MAX_TEXT_FIELDS} bytes together",
                            TEXT_FIELDS.join(", ")
                        )));
                    }
                    raw.extend_from_slice(&chunk);
                }
                let text = String::from_utf8(raw)
                    .map_err(|_| ApiError::BadRequest(format!("Field '{name}' is not UTF-8")))?;
                if user.is_none() && (name == "user_id" || name == "user_email") {
                    user = Some(caller.acting_for(Some(&text))?);
                }
                fields.insert(name, text);
                continue;
            }
            if received.len() >= MAX_FILES_PER_UPLOAD {
                return Err(ApiError::BadRequest(format!(
                    "At most {MAX_FILES_PER_UPLOAD} files per request"
                )));
            }
            let owner = match &user {
                Some(u) => u.clone(),
                None => caller.acting_for(None)?,
            };
            let file_name = field.file_name().unwrap_or("").to_owned();
            validate_client_filename(&file_name).map_err(|e| ApiError::BadRequest(e.0))?;
            let mime = field.content_type().map(str::to_owned);
            if upload.is_none() {
                upload = Some(state.store.begin_upload(&owner).await?);
            }
            let Some(up) = upload.as_mut() else { continue };
            let mut sink = up.begin_file().await?;
            while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
                up.write(&mut sink, chunk, total).await?;
            }
            total += sink.written();
            // Finished now: a waiting file holds no buffer, only its temp file.
            received.push((sink.finish().await?, file_name, mime));
        }
        if received.is_empty() {
            return Err(ApiError::validation(
                &["body", "file"],
                "Field required",
                "missing",
            ));
        }
        let folder = fields
            .get("folder")
            .map(String::as_str)
            .or(q.folder.as_deref())
            .and_then(FolderPath::sanitize);
        let extra = match fields.get("meta") {
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => client_fields(Some(m)),
                _ => {
                    return Err(ApiError::BadRequest(
                        "meta must be a JSON object".to_owned(),
                    ))
                }
            },
            None => Map::new(),
        };
        let Some(up) = upload.as_mut() else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "upload without a work folder"
            )));
        };
        let mut stored: Vec<Stored> = Vec::new();
        for (file, name, mime) in received {
            match up
                .publish_file(file, name, folder.clone(), mime, None, extra.clone())
                .await
            {
                Ok(s) => stored.push(s),
                Err(e) => {
                    // All or nothing: the files of this request already published go too.
                    for s in &stored {
                        let _ = state.store.delete(&s.key).await;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(stored)
    }
    .await;
    if let Some(up) = upload {
        up.finish().await;
    }
    result
}

/// The text fields of a multipart upload (API.md §3.3); any other is read past and dropped.
const TEXT_FIELDS: [&str; 4] = ["folder", "user_id", "user_email", "meta"];
/// Most bytes of [`TEXT_FIELDS`] in one multipart upload, together.
const MAX_TEXT_FIELDS: usize = 64 * 1024;
/// Most files in one multipart upload.
const MAX_FILES_PER_UPLOAD: usize = 1000;

fn multipart_error(e: &axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge("Request body too large".to_owned());
    }
    if let Some(cause) = cause_of_body_error(e) {
        return cause;
    }
    ApiError::BadRequest(format!("Invalid multipart body: {}", e.body_text()))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::Invalid(m) => Self::BadRequest(m),
            StoreError::SizeMismatch { .. } => Self::BadRequest("Size mismatch".to_owned()),
            StoreError::ShaMismatch => Self::BadRequest("SHA256 mismatch".to_owned()),
            e @ StoreError::Quota { .. } => Self::TooLarge(e.to_string()),
            StoreError::TooLarge => {
                Self::TooLarge("Upload exceeds the declared or allowed size".to_owned())
            }
            StoreError::DiskFull => Self::InsufficientStorage,
            StoreError::Io(io) => Self::Internal(io.into()),
        }
    }
}
