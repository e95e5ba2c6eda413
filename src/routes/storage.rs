//! Public links: `GET`/`HEAD /storage/{user_id}/{path...}` with no authentication
//! (API.md §4.3). Only plain files under `storage/` are ever served.

use axum::extract::Request;
use axum::response::Response;

use super::{route, Routes};
use crate::error::{ApiError, AppPath, ErrorBody};
use crate::metrics::RouteKind;
use crate::state::AppState;
use crate::store::key::Key;

/// The public storage routes.
pub fn routes() -> Routes {
    // A catch-all: documented as `{path}`, served as `{*path}`.
    Routes::new().route(
        route!(serve_public)
            .catch_all()
            .counted_as(RouteKind::Download),
    )
}

/// A file by its public link, no authentication. `HEAD` too; `Range`
/// (one or several ranges), `If-None-Match`, `If-Modified-Since` and `If-Range` as RFC 9110.
#[utoipa::path(get, path = "/storage/{user_id}/{path}", tag = "downloads",
    params(
        ("user_id" = String, Path, description = "The owner"),
        ("path" = String, Path, description = "`[{folder}/]{prefix}_{filename}`; slashes raw or as %2F"),
        ("Range" = Option<String>, Header, description = "e.g. `bytes=0-99`"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "The range(s) asked for", content_type = "*/*", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 400, description = "A path that cannot be a file", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 412, description = "A precondition failed", body = ErrorBody),
        (status = 416, description = "Range not satisfiable", body = ErrorBody),
    ))]
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
