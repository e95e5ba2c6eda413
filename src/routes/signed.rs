//! Signed downloads: `GET`/`HEAD /get/{encoded_key}?exp=..&sig=..[&disposition=attachment]`,
//! also under `/v1/files/get/` (API.md §4.4). The signature is the capability.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::error::{ApiError, AppPath, AppQuery};
use crate::signer::{self, Disposition};
use crate::state::AppState;
use crate::store::key::Key;

/// The signed download routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/get/{encoded}", get(serve_signed))
        .route("/v1/files/get/{encoded}", get(serve_signed))
}

#[derive(Debug, Deserialize)]
struct SignedQuery {
    exp: Option<String>,
    sig: Option<String>,
    disposition: Option<String>,
}

fn invalid() -> ApiError {
    ApiError::Forbidden("Invalid or expired signature".to_owned())
}

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
    if !signer::verify(state.signing_key.expose(), &key_text, exp, disposition, sig) {
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
