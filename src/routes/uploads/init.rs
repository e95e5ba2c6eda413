//! `POST /v1/files/init`: one upload session per file, their sizes reserved (API.md §3.1).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use super::{client_fields, meta_user};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppJson, ErrorBody};
use crate::state::AppState;
use crate::store::key::{ClientFileName, FolderPath};
use crate::store::sessions::{FileSpec, UploadMode};

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
    /// `single`, `chunked` or `batch`; required, as the old service had it.
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
pub(crate) fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
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

pub(crate) fn mode_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["single", "chunked", "batch"]))
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
pub(crate) async fn init_upload(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<InitRequest>,
) -> ApiResult<Json<InitResponse>> {
    let mode = match req.mode.as_str() {
        "single" => UploadMode::Single,
        "chunked" => UploadMode::Chunked,
        "batch" => UploadMode::Batch,
        _ => {
            return Err(ApiError::validation(
                &["body", "mode"],
                "mode must be one of 'single', 'chunked', 'batch'",
                "enum",
            ))
        }
    };
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
        files.push(FileSpec {
            name: ClientFileName::parse(&f.name)?,
            size,
            mime: f.mime.clone(),
        });
    }
    let user = caller.acting_for(meta_user(req.meta.as_ref()).as_deref())?;
    let max_size = files.iter().map(|f| f.size).max().unwrap_or(0);
    let several = files.len() > 1 || mode == UploadMode::Batch;
    let folder = req.folder.as_deref().and_then(FolderPath::sanitize);
    let sessions = state
        .store
        .create_sessions(&user, mode, files, folder, client_fields(req.meta))
        .await?;
    let first = sessions
        .first()
        .map(|s| s.upload_id.to_string())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("init made no session")))?;
    tracing::info!(target: "activity", event = "upload_init", user = %user, sessions = sessions.len(), mode = mode.as_str());
    let uploads = several.then(|| {
        sessions
            .iter()
            .map(|s| InitUpload {
                upload_id: s.upload_id.to_string(),
                name: s.file.name.as_str().to_owned(),
                size: s.file.size,
            })
            .collect()
    });
    Ok(Json(InitResponse {
        upload_id: first,
        parts: (mode == UploadMode::Chunked).then(|| max_size.div_ceil(CHUNK_SIZE)),
        uploads,
    }))
}
