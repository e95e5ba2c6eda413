//! `/v1/files` uploads (API.md §3): the three-step init/part/complete, raw parts, upload
//! sessions and the one-request upload, one module per action; what they share is here.
//! Signed upload URLs (issue 15): `sign_upload` mints them, `grant` is the extractor
//! ([`grant::Uploader`]) upload routes take to accept them.

pub mod complete;
pub mod grant;
pub mod init;
pub mod one_request;
pub mod parts;
pub mod sessions;
pub mod sign_upload;

use axum::extract::DefaultBodyLimit;
use serde_json::{Map, Value};

use super::{route, Routes};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::metrics::RouteKind;
use crate::state::AppState;
use crate::store::sessions::{Session, SessionId};

/// The upload routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(route!(init::init_upload))
        .route(route!(parts::upload_part_json).counted_as(RouteKind::Upload))
        .route(route!(parts::upload_part_raw).counted_as(RouteKind::Upload))
        .route(route!(complete::complete_upload))
        .route(route!(sessions::session_status))
        .route(route!(sessions::abort_session))
        .route(route!(sign_upload::sign_upload))
        .route(
            route!(one_request::upload_files)
                .counted_as(RouteKind::Upload)
                .map(|r| r.layer(DefaultBodyLimit::disable())),
        )
}

/// The user a service names in `meta` (`user_id`, else `user_email`).
pub(crate) fn meta_user(meta: Option<&Map<String, Value>>) -> Option<String> {
    let meta = meta?;
    ["user_id", "user_email"]
        .iter()
        .find_map(|k| meta.get(*k).and_then(Value::as_str).map(str::to_owned))
}

/// Client `meta` without the fields that name the user or the place.
pub(crate) fn client_fields(meta: Option<Map<String, Value>>) -> Map<String, Value> {
    let mut meta = meta.unwrap_or_default();
    for k in ["user_id", "user_email", "filename", "folder"] {
        meta.remove(k);
    }
    meta
}

/// Loads a session the caller may use: another user's is as unknown as a missing one.
pub(crate) async fn owned_session(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<Session> {
    let id = SessionId::parse(id)?;
    let session = state.store.session(&id).await?;
    if !caller.may_access(session.user_id.as_str()) {
        return Err(ApiError::NotFound("Upload session not found".to_owned()));
    }
    Ok(session)
}

/// A body error: the request body limit (413), a client that stopped sending (408), or
/// the client gone.
pub(crate) fn body_error(e: &axum::Error) -> ApiError {
    cause_of_body_error(e)
        .unwrap_or_else(|| ApiError::BadRequest("Request body could not be read".to_owned()))
}

/// 413 or 408 when the error chain shows the body limit, the idle timeout or the minimum
/// rate.
pub(crate) fn cause_of_body_error(e: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return Some(ApiError::BodyTooLarge);
        }
        if let Some(cut) = crate::error::body_cut_off(s) {
            return Some(cut);
        }
        source = s.source();
    }
    None
}
