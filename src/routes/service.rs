//! Service endpoints: `/`, health, the JWKS document and token minting (API.md §5).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{MetricsReader, ServiceCaller};
use crate::error::{ApiError, ApiResult, AppQuery, ErrorBody};
use crate::metrics::{DiskStats, Scrape};
use crate::state::AppState;
use crate::store::health::{DiskHealth, Probe};
use crate::store::key::UserId;

use super::{route, Routes};

/// `/`, `/healthz`, `/v1/files/healthz`, `/.well-known/jwks.json`, `/v1/files/generate-token`,
/// `/metrics`.
pub fn routes() -> Routes {
    Routes::new()
        .route(route!(service_info))
        .route(route!(health))
        .route(route!(files_health))
        .route(route!(jwks))
        .route(route!(generate_token))
        .route(route!(metrics))
}

/// What `/` says.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceInfo {
    /// Always `Stream-Line Upload Server`.
    service: &'static str,
    /// The server's version.
    version: &'static str,
    /// Always `running`.
    status: &'static str,
}

/// The service's name and version.
#[utoipa::path(get, path = "/", tag = "service",
    responses((status = 200, description = "The service is up", body = ServiceInfo)))]
async fn service_info() -> Json<ServiceInfo> {
    Json(ServiceInfo {
        service: "Stream-Line Upload Server",
        version: env!("CARGO_PKG_VERSION"),
        status: "running",
    })
}

/// What the health checks say.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy`, or `unhealthy` when the root cannot be written.
    #[schema(example = "healthy")]
    status: &'static str,
    /// Free space in `UPLOAD_ROOT`, GiB, two decimals.
    disk_free_gb: f64,
    /// Whether the root accepts writes (it exists, permissions, a read-write mount). A full
    /// disk does not count against it: that is `disk_full`.
    writable: bool,
    /// Present (`true`) only when the disk is full: the instance stays healthy, as reads,
    /// listings and deletes still work, while uploads answer 507 until space is freed.
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_full: Option<bool>,
    /// `STORAGE_BACKEND=s3` only: the backend that cannot be reached (`database` or
    /// `object storage`), while one cannot (503).
    #[serde(skip_serializing_if = "Option::is_none")]
    unreachable: Option<&'static str>,
}

/// Health: can the data root be written, and how much room is left.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses(
        (status = 200, description = "Healthy (also when the disk is full: see `disk_full`)", body = Health),
        (status = 503, description = "The data root is not writable, or (s3) the database or the bucket cannot be reached", body = Health),
    ))]
async fn health(State(state): State<AppState>) -> Response {
    let Some(fs) = state.store.as_fs() else {
        // STORAGE_BACKEND=s3: healthy while the database and the bucket answer.
        let down = state.store.backends_health().await.err();
        if let Some(d) = &down {
            tracing::warn!(
                backend = d.backend,
                reason = d.reason,
                "health check: backend unreachable"
            );
        }
        let body = Health {
            status: if down.is_some() {
                "unhealthy"
            } else {
                "healthy"
            },
            disk_free_gb: 0.0,
            writable: down.is_none(),
            disk_full: None,
            unreachable: down.as_ref().map(|d| d.backend),
        };
        let status = if down.is_some() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return (status, Json(body)).into_response();
    };
    let DiskHealth {
        probe,
        free_bytes: free,
    } = fs.disk_health().await;
    // An unreadable root reports 0 free (and is unhealthy anyway).
    let free_gb = (free.unwrap_or(0) as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0;
    let (status, word) = match probe {
        Probe::Written | Probe::Full => (StatusCode::OK, "healthy"),
        Probe::Refused => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
    };
    let body = Health {
        status: word,
        disk_free_gb: free_gb,
        writable: probe != Probe::Refused,
        disk_full: (probe == Probe::Full).then_some(true),
        unreachable: None,
    };
    (status, Json(body)).into_response()
}

/// The same health check under `/v1/files` (the old service had both).
#[utoipa::path(get, path = "/v1/files/healthz", tag = "service",
    responses(
        (status = 200, description = "Healthy (also when the disk is full: see `disk_full`)", body = Health),
        (status = 503, description = "The data root is not writable", body = Health),
    ))]
async fn files_health(state: State<AppState>) -> Response {
    health(state).await
}

/// A JSON Web Key Set, as published at `/.well-known/jwks.json`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only: `auth::jwks_document` builds the body
pub struct Jwks {
    keys: Vec<Jwk>,
}

/// One RSA public key (RFC 7517).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only, as `Jwks`
pub struct Jwk {
    #[schema(example = "RSA")]
    kty: String,
    #[schema(rename = "use", example = "sig")]
    use_: String,
    kid: String,
    #[schema(example = "RS256")]
    alg: String,
    /// Modulus, base64url.
    n: String,
    /// Exponent, base64url.
    e: String,
}

/// The public key that verifies user tokens, as a JWKS.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "service",
    responses(
        (status = 200, description = "The key set", body = Jwks),
        (status = 503, description = "No public key configured", body = ErrorBody),
    ))]
async fn jwks(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    state
        .secrets()
        .jwks
        .clone()
        .map(Json)
        .ok_or_else(|| ApiError::Unavailable("No public key configured".to_owned()))
}

/// Whom to mint a token for, and for how long.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// The user the token names (required).
    #[param(required = true)]
    user_id: Option<String>,
    /// Lifetime in hours, above 0 and at most 720; 1 by default.
    #[param(exclusive_minimum = 0, maximum = 720)]
    expires_hours: Option<f64>,
}

/// A minted user token.
#[derive(Debug, Serialize, ToSchema)]
pub struct MintedToken {
    /// The JWT.
    token: String,
    user_id: String,
    /// Seconds until it expires.
    expires_in: u64,
    /// Always `Bearer`.
    token_type: &'static str,
}

/// Longest life of a minted token: 30 days.
const MAX_TOKEN_HOURS: f64 = 24.0 * 30.0;

/// Mints a user JWT with `JWT_PRIVATE_KEY_PATH` (service callers only).
#[utoipa::path(post, path = "/v1/files/generate-token", tag = "service",
    params(TokenQuery),
    security(("service_token" = [])),
    responses(
        (status = 200, description = "The token", body = MintedToken),
        (status = 400, description = "Missing or invalid user_id or expires_hours", body = ErrorBody),
        (status = 401, description = "Not a service caller", body = ErrorBody),
        (status = 422, description = "A parameter of the wrong type", body = ErrorBody),
        (status = 503, description = "Token generation is not configured", body = ErrorBody),
    ))]
async fn generate_token(
    State(state): State<AppState>,
    _service: ServiceCaller,
    AppQuery(q): AppQuery<TokenQuery>,
) -> ApiResult<Json<MintedToken>> {
    let secrets = state.secrets();
    let minter = secrets
        .minter
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("Token generation is not configured".to_owned()))?;
    let user = q
        .user_id
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("user_id is required".to_owned()))?;
    let user = UserId::parse(user)?;
    let hours = q.expires_hours.unwrap_or(1.0);
    if !(hours > 0.0 && hours <= MAX_TOKEN_HOURS) {
        return Err(ApiError::BadRequest(format!(
            "expires_hours must be above 0 and at most {MAX_TOKEN_HOURS}"
        )));
    }
    let ttl = Duration::from_secs_f64(hours * 3600.0);
    let token = minter.mint(&user, ttl)?;
    Ok(Json(MintedToken {
        token,
        user_id: user.as_str().to_owned(),
        expires_in: ttl.as_secs(),
        token_type: "Bearer",
    }))
}

/// Prometheus metrics, text format 0.0.4, for service callers (`X-Service-Token`, or the
/// service token in `Authorization` with the scheme `Bearer` or `ServiceToken`; with
/// `METRICS_ALLOW_LOCAL`, any loopback client not behind a proxy): requests by route and
/// status, request durations, bytes uploaded and downloaded, uploads and batch downloads in
/// progress, upload sessions on disk, disk size, free bytes and inodes, stored bytes and
/// files, quota rejections, SHA-256 mismatches, auth failures by reason, expired sessions
/// swept, JWKS fetch errors, build and process information.
#[utoipa::path(get, path = "/metrics", tag = "service",
    security(("service_token" = [])),
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        (status = 401, description = "Not a service caller", body = ErrorBody),
    ))]
async fn metrics(State(state): State<AppState>, _reader: MetricsReader) -> ApiResult<Response> {
    let metrics = state.metrics.clone();
    let store = state.store.as_fs().cloned();
    let root = state.settings.upload_root.clone();
    // s3: what the catalog counts (one query), asked before the blocking part.
    let cloud = match state.store.as_cloud() {
        Some(c) => Some((
            c.catalog()
                .totals()
                .await
                .map_err(|e| ApiError::from(crate::store::StoreError::from(e)))?,
            c.expired_sessions_swept(),
        )),
        None => None,
    };
    let text = tokio::task::spawn_blocking(move || {
        let scrape = match &store {
            Some(store) => Scrape {
                sessions_on_disk: store.sessions_on_disk(),
                disk: DiskStats::of(store.root()),
                stored: Some(metrics.stored_totals(|| store.stored_totals())),
                expired_sessions_swept: store.expired_sessions_swept(),
            },
            // STORAGE_BACKEND=s3: the catalog's counts; the disk is the local spool's.
            None => {
                let ((bytes, files, sessions), swept) = cloud.unwrap_or_default();
                Scrape {
                    sessions_on_disk: sessions,
                    disk: DiskStats::of(&root),
                    stored: Some(crate::store::StoredTotals { bytes, files }),
                    expired_sessions_swept: swept,
                }
            }
        };
        metrics.render(&scrape)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}
