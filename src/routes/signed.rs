//! Signed downloads: `GET`/`HEAD /get/{encoded_key}?exp=..&sig=..[&disposition=attachment]`,
//! also under `/v1/files/get/` (API.md §4.4). The signature is the capability.

use axum::extract::{Request, State};
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{route, Routes};
use crate::error::{ApiError, AppPath, AppQuery, ErrorBody};
use crate::metrics::RouteKind;
use crate::signer::{self, Disposition};
use crate::state::AppState;
use crate::store::key::Key;

/// The signed download routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(route!(serve_signed).counted_as(RouteKind::Download))
        .route(route!(serve_signed_v1).counted_as(RouteKind::Download))
}

/// The signature of a signed URL.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// Expiry, Unix seconds.
    #[param(required = true)]
    exp: Option<String>,
    /// Hex HMAC-SHA256 of `{key}|{exp}[|attachment]`.
    #[param(required = true)]
    sig: Option<String>,
    /// `attachment` when the URL was signed so (`inline` otherwise).
    disposition: Option<String>,
}

fn invalid() -> ApiError {
    ApiError::Forbidden("Invalid or expired signature".to_owned())
}

/// A file by a signed URL: `HEAD` too, ranges and conditionals as for
/// public links, plus `Content-Disposition`.
#[utoipa::path(get, path = "/get/{encoded}", tag = "downloads",
    params(
        ("encoded" = String, Path, description = "base64url of the key, with `=` padding"),
        SignedQuery,
        ("Range" = Option<String>, Header, description = "e.g. `bytes=0-99`"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "The range(s) asked for", content_type = "*/*", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 400, description = "The key cannot be decoded", body = ErrorBody),
        (status = 403, description = "Invalid or expired signature", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 412, description = "A precondition failed", body = ErrorBody),
        (status = 416, description = "Range not satisfiable", body = ErrorBody),
        (status = 422, description = "A malformed query", body = ErrorBody),
    ))]
async fn serve_signed(
    State(state): State<AppState>,
    AppPath(encoded): AppPath<String>,
    AppQuery(q): AppQuery<SignedQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let key_text = signer::decode_key(&encoded)
        .ok_or_else(|| ApiError::BadRequest("Invalid key encoding".to_owned()))?;
    let exp: i64 = q
        .exp
        .as_deref()
        .and_then(|e| e.trim().parse().ok())
        .ok_or_else(invalid)?;
    let sig = q.sig.as_deref().ok_or_else(invalid)?;
    let disposition = match q.disposition.as_deref() {
        None => Disposition::Inline,
        Some(d) => Disposition::parse(d).ok_or_else(invalid)?,
    };
    if !state
        .secrets()
        .signing
        .verify(&key_text, exp, disposition, sig)
    {
        return Err(invalid());
    }
    if exp < chrono::Utc::now().timestamp() {
        return Err(invalid());
    }
    let key = Key::parse(&key_text).map_err(|_| ApiError::NotFound("File not found".to_owned()))?;
    super::serve::serve_key(
        &state,
        &key,
        req.method(),
        req.headers(),
        Some(disposition),
        "signed",
    )
    .await
}

/// The same under `/v1/files/get/` (the old service only served this one).
#[utoipa::path(get, path = "/v1/files/get/{encoded}", tag = "downloads",
    params(
        ("encoded" = String, Path, description = "base64url of the key, with `=` padding"),
        SignedQuery,
        ("Range" = Option<String>, Header, description = "e.g. `bytes=0-99`"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "The range(s) asked for", content_type = "*/*", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 400, description = "The key cannot be decoded", body = ErrorBody),
        (status = 403, description = "Invalid or expired signature", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 412, description = "A precondition failed", body = ErrorBody),
        (status = 416, description = "Range not satisfiable", body = ErrorBody),
        (status = 422, description = "A malformed query", body = ErrorBody),
    ))]
async fn serve_signed_v1(
    state: State<AppState>,
    encoded: AppPath<String>,
    q: AppQuery<SignedQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    serve_signed(state, encoded, q, req).await
}
