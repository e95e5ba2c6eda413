//! Service endpoints: `/`, health, the JWKS document and token minting (API.md §5).

use std::path::Path;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::auth::ServiceCaller;
use crate::error::{ApiError, ApiResult, AppQuery};
use crate::state::AppState;
use crate::store::key::UserId;

/// `/`, `/healthz`, `/v1/files/healthz`, `/.well-known/jwks.json`, `/v1/files/generate-token`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(service_info))
        .route("/healthz", get(health))
        .route("/v1/files/healthz", get(health))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/files/generate-token", post(generate_token))
}

async fn service_info() -> Json<serde_json::Value> {
    Json(json!({
        "service": "Stream-Line Upload Server",
        "version": env!("CARGO_PKG_VERSION"),
        "status": "running",
    }))
}

async fn health(State(state): State<AppState>) -> Response {
    let root = state.settings.upload_root.clone();
    let (writable, free) =
        tokio::task::spawn_blocking(move || (probe_writable(&root), free_bytes(&root)))
            .await
            .unwrap_or((false, None));
    // An unreadable root reports 0 free (and is unhealthy anyway).
    let free_gb = (free.unwrap_or(0) as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0;
    let (status, word) = if writable {
        (StatusCode::OK, "healthy")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    (
        status,
        Json(json!({ "status": word, "disk_free_gb": free_gb, "writable": writable })),
    )
        .into_response()
}

/// Creates, writes and removes a small file in the root: the only honest writability test
/// (permission bits say nothing to root, nor about a read-only mount or a full disk).
fn probe_writable(root: &Path) -> bool {
    use std::io::Write as _;
    let probe = root.join(format!(".healthz-{}", uuid::Uuid::new_v4().simple()));
    let written = std::fs::File::create_new(&probe).and_then(|mut f| f.write_all(b"ok"));
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

fn free_bytes(root: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(root).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

async fn jwks(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    state
        .jwks
        .clone()
        .map(Json)
        .ok_or_else(|| ApiError::Unavailable("No public key configured".to_owned()))
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    user_id: Option<String>,
    expires_hours: Option<f64>,
}

/// Longest life of a minted token: 30 days.
const MAX_TOKEN_HOURS: f64 = 24.0 * 30.0;

async fn generate_token(
    State(state): State<AppState>,
    _service: ServiceCaller,
    AppQuery(q): AppQuery<TokenQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let minter = state
        .minter
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("Token generation is not configured".to_owned()))?;
    let user = q
        .user_id
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("user_id is required".to_owned()))?;
    let user = UserId::parse(user).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let hours = q.expires_hours.unwrap_or(1.0);
    if !(hours > 0.0 && hours <= MAX_TOKEN_HOURS) {
        return Err(ApiError::BadRequest(format!(
            "expires_hours must be above 0 and at most {MAX_TOKEN_HOURS}"
        )));
    }
    let ttl = Duration::from_secs_f64(hours * 3600.0);
    let token = minter.mint(&user, ttl)?;
    Ok(Json(json!({
        "token": token,
        "user_id": user.as_str(),
        "expires_in": ttl.as_secs(),
        "token_type": "Bearer",
    })))
}
