//! Public links: `GET`/`HEAD /storage/{user_id}/{path...}` with no authentication
//! (API.md §4.3). Only plain files under `storage/` are ever served.

use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::error::{ApiError, AppPath};
use crate::state::AppState;
use crate::store::key::Key;

/// The public storage routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/storage/{user_id}/{*path}", get(serve_public))
}

async fn serve_public(
    axum::extract::State(state): axum::extract::State<AppState>,
    AppPath((user_id, path)): AppPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    // Anything that is not a plain file key (`..`, dot-files, sidecars, NUL, backslashes,
    // however encoded: axum has decoded it by now) is simply not there.
    let key = Key::from_user_path(&user_id, &path)
        .map_err(|_| ApiError::NotFound("File not found".to_owned()))?;
    super::serve::serve_key(&state, &key, req.method(), req.headers(), None, "public").await
}
