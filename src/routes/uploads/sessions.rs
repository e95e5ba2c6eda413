//! A session's state and its abort: `GET` and `DELETE /v1/files/uploads/{id}` (API.md §3.2).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::one_request::public_url;
use super::owned_session;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppPath, ErrorBody};
use crate::state::AppState;
use crate::store::key::Key;
use crate::store::resumable::Progress;
use crate::store::sessions::SessionId;

/// Where an upload stands, so a client can resume (API.md §3.2).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    upload_id: String,
    /// `single`, `chunked` or `batch`.
    mode: &'static str,
    /// `tus` or `ietf` for an upload made by a resumable protocol; absent for the
    /// three-step API.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    /// `uploading`, or `completed` for a finished resumable upload (whose `key` and `url`
    /// name the stored file).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
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
pub(crate) async fn session_status(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(upload_id): AppPath<String>,
) -> ApiResult<Json<SessionStatus>> {
    // A live session as always; a resumable upload also after it finished, with the file
    // it made (its record is read only when no live session answers).
    let (info, parts, stored) = match owned_session(&state, &caller, &upload_id).await {
        Ok(info) => {
            let parts = state.store.session_parts(&info.upload_id).await?;
            (info, parts, None)
        }
        Err(unknown @ ApiError::NotFound(_)) => {
            let id = SessionId::parse(&upload_id)?;
            match state.store.progress(&id).await {
                Ok(Progress::Finished(f)) if caller.may_access(f.session.user_id.as_str()) => {
                    (f.session, vec![(1, f.size)], Some(f.key))
                }
                _ => return Err(unknown),
            }
        }
        Err(e) => return Err(e),
    };
    let received: u64 = parts.iter().map(|(_, s)| s).sum();
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let url = stored
        .as_deref()
        .and_then(|k| Key::parse(k).ok())
        .map(|k| public_url(&state.settings.public_base_url, &k));
    Ok(Json(SessionStatus {
        upload_id: info.upload_id.to_string(),
        mode: info.mode.as_str(),
        protocol: info.resumable.as_ref().map(|r| r.protocol.as_str()),
        status: if stored.is_some() {
            "completed"
        } else {
            "uploading"
        },
        url,
        key: stored,
        files: vec![SessionFile {
            name: info.file.name.clone().into(),
            size: info.length().unwrap_or(received),
            mime: info.file.mime.clone(),
        }],
        folder: info.folder.as_ref().map(|f| f.as_string()),
        parts: parts
            .iter()
            .map(|&(part_number, size)| SessionPart { part_number, size })
            .collect(),
        received_bytes: received,
        expected_bytes: info.length().unwrap_or(received),
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
        (status = 423, description = "The upload is being completed, or (s3 mode) its parts kept it busy for 30 s; retry", body = ErrorBody),
    ))]
pub(crate) async fn abort_session(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(upload_id): AppPath<String>,
) -> ApiResult<Json<StatusWord>> {
    let info = owned_session(&state, &caller, &upload_id).await?;
    state.store.abort(&info).await?;
    tracing::info!(target: "activity", event = "upload_abort", user = %info.user_id, upload_id = %info.upload_id);
    Ok(Json(StatusWord { status: "aborted" }))
}
