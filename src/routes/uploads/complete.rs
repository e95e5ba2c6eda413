//! `POST /v1/files/complete`: the parts joined into a file, checked and published
//! atomically (API.md §3.1).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{client_fields, meta_user, owned_session};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppJson, ErrorBody};
use crate::state::AppState;
use crate::store::key::{ClientFileName, FolderPath};
use crate::store::CompleteRequest;

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
    /// `filename` and `folder` override init's; `user_id`/`user_email`, from a service, must
    /// be the session's user (a user caller's are ignored); other fields go to the sidecar.
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
        (status = 400, description = "Size or SHA256 mismatch, a bad file name or session id, or a service's meta naming another user", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such session (or another user's, or already completed)", body = ErrorBody),
        (status = 413, description = "Over the quota", body = ErrorBody),
        (status = 422, description = "Malformed JSON or a missing field", body = ErrorBody),
        (status = 423, description = "Another complete of this upload (on another instance) is still running after 45 s; retry", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn complete_upload(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<CompleteBody>,
) -> ApiResult<Json<Completed>> {
    let info = owned_session(&state, &caller, &req.upload_id).await?;
    // A service may repeat the session's user and must not name another; a user caller's
    // `user_id`/`user_email` are ignored, as the old service stored the file under the
    // token's user whatever they said (API.md §3.1).
    if let (Caller::Service, Some(named)) = (&caller, meta_user(req.meta.as_ref())) {
        if named != info.user_id.as_str() {
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
    let filename = text("filename")
        .filter(|s| !s.trim().is_empty())
        .map(|name| ClientFileName::parse(&name))
        .transpose()?;
    let complete = CompleteRequest {
        filename,
        folder: text("folder").map(|f| FolderPath::sanitize(&f)),
        sha256: req.sha256.clone(),
        extra: client_fields(req.meta.clone()),
    };
    if info.resumable.is_some() {
        return Err(crate::store::StoreError::WrongProtocol.into());
    }
    let stored = state.store.complete(&info, complete).await?;
    tracing::info!(target: "activity", event = "upload", user = %info.user_id, key = %stored.key, size = stored.meta.size.unwrap_or(0));
    Ok(Json(Completed {
        key: stored.key.to_string(),
        size: stored.meta.size,
        mime: stored.meta.mime,
        sha256: stored.meta.sha256,
    }))
}
