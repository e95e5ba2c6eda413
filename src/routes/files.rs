//! `/v1/files` file routes (API.md §4.1, §4.2, §4.6): listing, metadata and delete. The
//! catch-all `/v1/files/{*key}` lives here too.

use axum::extract::State;
use axum::http::header;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{route, Routes};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppPath, AppQuery, ErrorBody};
use crate::state::AppState;
use crate::store::key::{FolderPath, Key};

/// The file routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(route!(list_files))
        // Catch-alls: documented as `{key}`, served as `{*key}`.
        .route(route!(file_metadata).catch_all())
        // Other methods: 405 on a file key, 404 on any other path (`GET /v1/files/x`).
        .route(
            route!(delete_file)
                .catch_all()
                .map(|r| r.fallback(other_method_on_key)),
        )
}

/// `/v1/files/{*key}` with a method other than DELETE. The catch-all matches every path
/// under `/v1/files/`: only where the path is a file key is there an operation whose method
/// is wrong (405, `Allow: DELETE`); elsewhere the path itself is unknown (the router's 404).
pub(crate) async fn other_method_on_key(
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
pub(crate) fn owned_key(caller: &Caller, raw: &str) -> ApiResult<Key> {
    let key = Key::parse(raw)?;
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
pub(crate) async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<ListQuery>,
) -> ApiResult<Json<FileList>> {
    let user = caller.acting_for(q.user_id.as_deref().or(q.user_email.as_deref()))?;
    let folder = q.folder.as_deref().and_then(FolderPath::sanitize);
    let offset = q.offset.unwrap_or(0) as u64;
    let limit = q.limit.map_or(u64::MAX, |l| l as u64);
    let page = state
        .store
        .list_page(&user, folder.as_ref(), offset, limit)
        .await?;
    let total_count = usize::try_from(page.total_count).unwrap_or(usize::MAX);
    let files = page
        .files
        .into_iter()
        .map(|e| ListedFile {
            folder: e.key.folder(),
            key: e.key.to_string(),
            filename: e.original_name,
            size: e.size,
            mime: e.mime,
            created_at: e.created_at,
        })
        .collect();
    Ok(Json(FileList {
        files,
        total_count,
        total_size: page.total_size,
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
pub(crate) async fn file_metadata(
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
pub(crate) async fn delete_file(
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
