//! Builds the application from settings: state, routes and layers. `main.rs` and the tests
//! both call [`app`], so the tests exercise exactly what runs in production.

use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::Router;
use secrecy::SecretSlice;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::auth::{jwks_document, AuthCounters, Authenticator, TokenMinter};
use crate::body_timeout::BodyTimeouts;
use crate::config::Backend;
use crate::config::{CorsOrigins, Settings};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::secrets::{Secrets, SecretsCell, SigningKeys};
use crate::state::{App, AppState};
use crate::store::cloud::{CloudStore, Limits};
use crate::store::health::Probe;
use crate::store::signing_key::KeyOrigin;
use crate::store::{FileStore, Store};

/// The whole service as a `Router`, ready to serve.
pub async fn app(settings: Settings) -> anyhow::Result<Router> {
    let state = build_state(settings).await?;
    Ok(router(state))
}

/// Opens the store (which creates the root's folders), loads or makes the signing key, and
/// builds the checks.
pub async fn build_state(settings: Settings) -> anyhow::Result<AppState> {
    let metrics = Arc::new(Metrics::new()?);
    let store = match &settings.backend {
        Backend::Fs => Store::Fs(open_fs(&settings).await?),
        Backend::S3(cloud) => {
            // One line naming the backend and the setting to look at (main exits 2).
            let limits = Limits {
                max_file: settings.max_body_bytes,
                session_ttl: settings.upload_session_ttl,
                spool: settings.upload_root.join(".spool"),
            };
            let c = CloudStore::connect(cloud, settings.quota_bytes, limits)
                .await
                .map_err(|u| anyhow::anyhow!("{}", u.reason.replace('\n', " ")))?;
            tracing::info!(
                bucket = cloud.s3.bucket,
                prefix = cloud.s3.prefix,
                presign_reads = cloud.presign_reads,
                "STORAGE_BACKEND=s3: the catalog in PostgreSQL, the bytes in the bucket"
            );
            spawn_cloud_sweeper(c.clone(), settings.upload_session_ttl);
            Store::Cloud(c)
        }
    };
    let secrets = build_secrets(&settings, &store, &metrics).await?;
    if let Store::Fs(fs) = &store {
        start_fs_background(fs, &settings).await;
    }
    if settings.service_tokens.is_empty() {
        tracing::warn!("AUTH_SERVICE_TOKEN is not set: service authentication is off");
    }
    Ok(AppState::new(App {
        settings,
        secrets: SecretsCell::new(secrets),
        store,
        metrics,
        appends: Default::default(),
    }))
}

/// Opens the filesystem store (which creates the root's folders) and checks it takes writes.
async fn open_fs(settings: &Settings) -> anyhow::Result<FileStore> {
    let root = settings.upload_root.clone();
    let store = FileStore::open(
        &root,
        settings.quota_bytes,
        settings.upload_session_ttl,
        settings.max_body_bytes,
        settings.sidecar_cache,
    )
    .with_context(|| format!("UPLOAD_ROOT: cannot prepare {}", root.display()))?;
    // A root that refuses writes (read-only mount, another owner) would start and then fail
    // every upload: refuse it now, naming the setting. A full disk still serves reads.
    if store.disk_health().await.probe == Probe::Refused {
        anyhow::bail!(
            "UPLOAD_ROOT: {} refuses writes (read-only mount or permissions)",
            root.display()
        );
    }
    Ok(store)
}

/// Crash recovery and the quota recount before serving, then the sweeper and the warming of
/// the listing cache in the background.
async fn start_fs_background(store: &FileStore, settings: &Settings) {
    // Recover what a crash left (claimed sessions, half uploads) and recount the quotas
    // before serving, so the first requests see the truth.
    if let Err(e) = store.sweep(true).await {
        tracing::warn!(error = %e, "start-up sweep failed");
    }
    spawn_sweeper(store.clone(), settings.upload_session_ttl);
    // The listing cache, filled in the background: the first listing after a restart is then
    // as fast as the next ones (10,000 files: ~20 ms instead of ~150 ms).
    // It starts once folders written just before the start have settled (the cache does not
    // trust a folder changed in the last two seconds).
    let warm = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let _ = tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let files = warm.warm_list_cache();
            tracing::info!(
                files,
                ms = t.elapsed().as_millis() as u64,
                "listing cache warmed"
            );
        })
        .await;
    });
}

/// The secrets from `settings`: service tokens, signing keys (the data root's kept key when
/// `UPLOAD_SIGNING_KEY` is unset), JWT checks, the minter and the published JWKS.
async fn build_secrets(
    settings: &Settings,
    store: &Store,
    metrics: &Metrics,
) -> anyhow::Result<Secrets> {
    let root = settings.upload_root.clone();
    let signing_key = match (&settings.signing_key, store) {
        (Some(k), _) => k.clone(),
        (None, Store::Cloud(c)) => {
            // Every instance signs with the key the first one made, kept in the database.
            let (key, origin) =
                c.catalog().signing_key_get_or_create().await.map_err(|e| {
                    anyhow::anyhow!("DATABASE_URL: cannot keep the signing key: {e}")
                })?;
            if origin == KeyOrigin::Made {
                tracing::warn!("UPLOAD_SIGNING_KEY is not set: generated a signing key and kept it in the database, shared by every instance");
            }
            SecretSlice::from(key)
        }
        (None, Store::Fs(fs)) => {
            let kept = fs.clone();
            let (key, origin) =
                tokio::task::spawn_blocking(move || kept.load_or_create_signing_key())
                    .await?
                    .with_context(|| {
                        format!(
                            "UPLOAD_ROOT: cannot keep a signing key in {}",
                            root.display()
                        )
                    })?;
            if origin == KeyOrigin::Made {
                tracing::warn!(
                    path = %root.join(".signing_key").display(),
                    "UPLOAD_SIGNING_KEY is not set: generated a signing key and kept it in the data root"
                );
            }
            SecretSlice::from(key)
        }
    };
    let counters = AuthCounters {
        failures: metrics.auth_failures.clone(),
        jwks_fetch_errors: metrics.jwks_fetch_errors.clone(),
    };
    let auth = Authenticator::new(
        &settings.service_tokens,
        &settings.jwt,
        settings.trusted_origins.clone(),
        counters,
    )?;
    let minter = TokenMinter::new(&settings.jwt)?;
    let jwks = match &settings.jwt.public_key_pem {
        Some(pem) => match jwks_document(pem, &settings.jwt.kid, settings.jwt.alg) {
            Ok(doc) => Some(doc),
            Err(e) => {
                tracing::warn!(error = %e, "the public key cannot be published as a JWKS");
                None
            }
        },
        None => None,
    };
    Ok(Secrets {
        auth,
        minter,
        jwks,
        signing: SigningKeys::new(signing_key, settings.signing_key_previous.clone()),
    })
}

/// Reloads the secrets (`SIGHUP`) from settings read again: service tokens, signing keys,
/// JWT keys and settings. Requests in flight keep the set they started with; on an error
/// nothing changes. Other settings need a restart; those that differ are named in the log.
pub async fn reload_secrets(state: &AppState, settings: &Settings) -> anyhow::Result<()> {
    let secrets = build_secrets(settings, &state.store, &state.metrics).await?;
    let tokens = settings.service_tokens.len();
    let previous_key = settings.signing_key_previous.is_some();
    state.secrets.replace(secrets);
    let now = &state.settings;
    let mut need_restart = Vec::new();
    for (name, changed) in [
        ("PORT", now.port != settings.port),
        ("BIND_HOST", now.bind_host != settings.bind_host),
        ("UPLOAD_ROOT", now.upload_root != settings.upload_root),
        (
            "PUBLIC_BASE_URL",
            now.public_base_url != settings.public_base_url,
        ),
        ("MAX_BODY_MB", now.max_body_bytes != settings.max_body_bytes),
        ("PER_USER_QUOTA_GB", now.quota_bytes != settings.quota_bytes),
        (
            "METRICS_ALLOW_LOCAL",
            now.metrics_allow_local != settings.metrics_allow_local,
        ),
    ] {
        if changed {
            need_restart.push(name);
        }
    }
    tracing::info!(
        service_tokens = tokens,
        previous_signing_key = previous_key,
        "reloaded the secrets: service tokens, signing keys, JWT keys and settings"
    );
    if !need_restart.is_empty() {
        tracing::warn!(
            settings = need_restart.join(", "),
            "changed in the env file but only taken at a restart"
        );
    }
    Ok(())
}

/// `STORAGE_BACKEND=s3`: sweeps expired sessions and tokens as often as the TTL calls for,
/// and every hour objects a crash left without a row. Every instance runs it.
fn spawn_cloud_sweeper(store: CloudStore, ttl: std::time::Duration) {
    let every = (ttl / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(300),
    );
    tokio::spawn(async move {
        let mut last_deep: Option<std::time::Instant> = None;
        loop {
            let deep =
                last_deep.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600));
            match store.sweep(deep).await {
                Ok(n) if n > 0 => tracing::info!(sessions = n, "swept expired sessions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
            if deep {
                last_deep = Some(std::time::Instant::now());
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// Sweeps expired sessions in the background, as often as the TTL calls for (between
/// every second and every five minutes). Every hour it also recounts the quota ledgers.
fn spawn_sweeper(store: FileStore, ttl: std::time::Duration) {
    let every = (ttl / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(300),
    );
    tokio::spawn(async move {
        let mut last_reconcile = std::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let reconcile = last_reconcile.elapsed() > std::time::Duration::from_secs(3600);
            if reconcile {
                last_reconcile = std::time::Instant::now();
            }
            if let Err(e) = store.sweep(reconcile).await {
                tracing::warn!(error = %e, "sweep failed");
            }
        }
    });
}

/// Mounts the routes and the layers on a built state.
pub fn router(state: AppState) -> Router {
    let limit = usize::try_from(state.settings.max_body_bytes).unwrap_or(usize::MAX);
    let cors = cors_layer(&state.settings.cors_origins);
    crate::routes::router()
        .fallback(|| async { ApiError::NotFound("Not Found".to_owned()) })
        .method_not_allowed_fallback(|| async {
            (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({ "detail": "Method Not Allowed" })),
            )
        })
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(RequestBodyLimitLayer::new(limit))
        // A client that stops sending mid-body, or trickles it, is cut off (it must not
        // hold a request, its temp file and its quota reservation forever).
        .layer(axum::middleware::map_request_with_state(
            BodyTimeouts::from_settings(&state.settings),
            crate::body_timeout::limit_request_body,
        ))
        .layer(axum::middleware::map_response_with_state(
            state.settings.max_body_bytes,
            crate::error::json_error_bodies,
        ))
        .layer(PreflightsOnly(cors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::telemetry::access_log,
        ))
        .with_state(state)
}

/// tower-http's CORS layer answers every `OPTIONS` itself, as a preflight. A plain `OPTIONS`
/// (no `Access-Control-Request-Method`: not a browser's preflight, e.g. a tus client asking
/// what the server supports) goes to the routes instead.
#[derive(Debug, Clone)]
struct PreflightsOnly(CorsLayer);

impl<S: Clone> tower::Layer<S> for PreflightsOnly {
    type Service = PreflightsOnlyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PreflightsOnlyService {
            cors: tower::Layer::layer(&self.0, inner.clone()),
            plain: inner,
        }
    }
}

#[derive(Debug, Clone)]
struct PreflightsOnlyService<S> {
    cors: tower_http::cors::Cors<S>,
    plain: S,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for PreflightsOnlyService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>> + Clone,
    R: Default,
{
    type Response = axum::http::Response<R>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        <tower_http::cors::Cors<S> as tower::Service<axum::http::Request<B>>>::Future,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.cors.poll_ready(cx) {
            std::task::Poll::Ready(Ok(())) => self.plain.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let through_cors = req.method() != Method::OPTIONS
            || req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if through_cors {
            futures_util::future::Either::Left(self.cors.call(req))
        } else {
            futures_util::future::Either::Right(self.plain.call(req))
        }
    }
}

/// Largest JSON body buffered whole (small control messages; parts stream instead).
pub const JSON_BODY_LIMIT: usize = 16 * 1024 * 1024;

fn cors_layer(origins: &CorsOrigins) -> CorsLayer {
    let methods = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
    ];
    let expose: Vec<HeaderName> = vec![
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_DISPOSITION,
        header::ACCEPT_RANGES,
        header::ETAG,
        header::LAST_MODIFIED,
        header::LOCATION,
        // tus and the IETF resumable-upload draft (routes/resumable/), and the stored file
        // they name when an upload finishes.
        HeaderName::from_static("tus-resumable"),
        HeaderName::from_static("tus-version"),
        HeaderName::from_static("tus-extension"),
        HeaderName::from_static("tus-max-size"),
        HeaderName::from_static("tus-checksum-algorithm"),
        HeaderName::from_static("upload-offset"),
        HeaderName::from_static("upload-length"),
        HeaderName::from_static("upload-defer-length"),
        HeaderName::from_static("upload-metadata"),
        HeaderName::from_static("upload-expires"),
        HeaderName::from_static("upload-concat"),
        HeaderName::from_static("upload-complete"),
        HeaderName::from_static("upload-incomplete"),
        HeaderName::from_static("upload-limit"),
        HeaderName::from_static("upload-draft-interop-version"),
        crate::routes::resumable::UPLOAD_KEY,
        crate::routes::resumable::UPLOAD_URL,
        HeaderName::from_static("x-request-id"),
    ];
    let base = CorsLayer::new()
        .allow_methods(methods)
        .expose_headers(expose);
    match origins {
        // Not `Access-Control-Allow-Headers: *`: the Fetch standard keeps `Authorization`
        // out of the wildcard (browsers are moving to enforce it; Chromium 156 still lets it
        // through), so a page elsewhere could not send its Bearer token to tus or the draft.
        // Echoing the requested names allows it; without credentials no cookie rides along,
        // so this grants nothing `*` did not.
        CorsOrigins::Any => base
            .allow_origin(AllowOrigin::any())
            .allow_headers(AllowHeaders::mirror_request()),
        CorsOrigins::List(list) => {
            let values: Vec<HeaderValue> = list
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            base.allow_origin(AllowOrigin::list(values))
                .allow_headers(AllowHeaders::mirror_request())
                .allow_credentials(true)
        }
    }
}
