//! Who is calling (API.md §2): a service with `X-Service-Token`, or a user with a JWT in
//! `Authorization: Bearer` or the `auth_token` cookie. One extractor, [`Caller`], decides;
//! it also refuses cookie-authenticated writes from other sites ([`check_cookie_origin`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap, Method};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret as _, SecretBox, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, RwLock};

use crate::config::JwtSettings;
use crate::error::ApiError;
use crate::jwt_keys::{decoding_key_from_pem, encoding_key_from_pem};
use crate::state::AppState;
use crate::store::key::UserId;
use crate::trust::TrustedOrigins;

/// The authenticated party of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A service that presented the right `X-Service-Token`; may act for any user.
    Service,
    /// A user with a valid JWT; acts for itself only.
    User(UserId),
}

impl Caller {
    /// Whose files the request touches: a user is always itself (what it names is ignored);
    /// a service must name a valid user id.
    pub fn acting_for(&self, named: Option<&str>) -> Result<UserId, ApiError> {
        match self {
            Self::User(u) => Ok(u.clone()),
            Self::Service => {
                let named = named
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        ApiError::BadRequest("user_id is required for service calls".to_owned())
                    })?;
                Ok(UserId::parse(named)?)
            }
        }
    }

    /// May this caller touch what belongs to `owner`?
    pub fn may_access(&self, owner: &str) -> bool {
        match self {
            Self::Service => true,
            Self::User(u) => u.as_str() == owner,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .secrets()
            .auth
            .authenticate(&parts.method, &parts.headers)
            .await
    }
}

/// A caller that must be a service (`/v1/files/generate-token`, `/metrics`).
#[derive(Debug, Clone, Copy)]
pub struct ServiceCaller;

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match state
            .secrets()
            .auth
            .authenticate(&parts.method, &parts.headers)
            .await?
        {
            Caller::Service => Ok(Self),
            Caller::User(_) => Err(ApiError::Unauthorized("Service token required".to_owned())),
        }
    }
}

/// Who may read `/metrics`: a service (`X-Service-Token`, or the token in `Authorization`
/// with the scheme `Bearer` or `ServiceToken`, for scrapers that can only send that header:
/// Prometheus's `bearer_token_file`, or `authorization: {type: ServiceToken}`), or, with
/// `METRICS_ALLOW_LOCAL`, anyone on a loopback address whose request came through no proxy.
#[derive(Debug, Clone, Copy)]
pub struct MetricsReader;

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.settings.metrics_allow_local && local_unproxied(parts) {
            return Ok(Self);
        }
        let secrets = state.secrets();
        if parts.headers.get("x-service-token").is_none() {
            // A user's JWT never equals a service token: what does not match goes on to be
            // checked as a JWT (and is refused as a user).
            let token = authorization_token(&parts.headers);
            if token.is_some_and(|t| secrets.auth.is_service_token(t.as_bytes())) {
                return Ok(Self);
            }
        }
        match secrets
            .auth
            .authenticate(&parts.method, &parts.headers)
            .await?
        {
            Caller::Service => Ok(Self),
            Caller::User(_) => Err(ApiError::Unauthorized("Service token required".to_owned())),
        }
    }
}

/// The credentials of `Authorization: Bearer ...` or `Authorization: ServiceToken ...`.
fn authorization_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("servicetoken"))
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A peer on a loopback address, with no sign of a proxy in between: nginx on the same host
/// connects from loopback too, but adds `X-Real-IP` / `X-Forwarded-For` (and a proxy that
/// adds neither must not forward `/metrics`).
fn local_unproxied(parts: &Parts) -> bool {
    let loopback = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback());
    let proxied = ["x-real-ip", "x-forwarded-for", "forwarded"]
        .iter()
        .any(|h| parts.headers.contains_key(*h));
    loopback && !proxied
}

/// Why a credential was refused: the `reason` label of `upload_server_auth_failures_total`
/// and the `reason` of the log line (the token itself is never logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials on a route that needs them (counted, not logged).
    Missing,
    /// An `X-Service-Token` that matches none of `AUTH_SERVICE_TOKEN`.
    ServiceToken,
    /// Not a JWT at all (bad base64, JSON, shape).
    Malformed,
    /// Signed with another algorithm than `AUTH_JWT_ALG`.
    WrongAlgorithm,
    /// A `kid` no configured key has (nor the JWKS, fetched again).
    UnknownKid,
    /// `exp` has passed.
    Expired,
    /// `nbf` is still ahead.
    NotYetValid,
    /// The signature does not verify with the key.
    BadSignature,
    /// `aud` is not `AUTH_JWT_AUDIENCE`.
    WrongAudience,
    /// `iss` is not `AUTH_JWT_ISSUER`.
    WrongIssuer,
    /// A claim that must be there (`exp`, `iss`, `aud`) is not.
    MissingClaim,
    /// No `user_id` or `sub`, or one that is not a valid user id.
    NoUser,
}

impl Refusal {
    /// Every reason, for the metrics to start each series at 0.
    pub const ALL: [Self; 12] = [
        Self::Missing,
        Self::ServiceToken,
        Self::Malformed,
        Self::WrongAlgorithm,
        Self::UnknownKid,
        Self::Expired,
        Self::NotYetValid,
        Self::BadSignature,
        Self::WrongAudience,
        Self::WrongIssuer,
        Self::MissingClaim,
        Self::NoUser,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::ServiceToken => "service_token",
            Self::Malformed => "malformed",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::UnknownKid => "unknown_kid",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::MissingClaim => "missing_claim",
            Self::NoUser => "no_user",
        }
    }

    fn of(e: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => Self::Expired,
            K::ImmatureSignature => Self::NotYetValid,
            K::InvalidSignature => Self::BadSignature,
            K::InvalidAudience => Self::WrongAudience,
            K::InvalidIssuer => Self::WrongIssuer,
            K::MissingRequiredClaim(_) => Self::MissingClaim,
            K::InvalidAlgorithm | K::MissingAlgorithm => Self::WrongAlgorithm,
            _ => Self::Malformed,
        }
    }
}

/// The counters auth feeds (`/metrics`); they outlive a reload.
#[derive(Debug, Clone)]
pub struct AuthCounters {
    /// `upload_server_auth_failures_total{reason}`.
    pub failures: prometheus::IntCounterVec,
    /// `upload_server_jwks_fetch_errors_total`.
    pub jwks_fetch_errors: prometheus::IntCounter,
}

impl AuthCounters {
    /// Counts and logs a refusal (at `info`; `Missing` only at `debug`), and returns the
    /// error the client gets, which says less.
    fn refuse(&self, reason: Refusal, detail: &str, answer: ApiError) -> ApiError {
        self.failures.with_label_values(&[reason.as_str()]).inc();
        if reason == Refusal::Missing {
            tracing::debug!(target: "auth", reason = reason.as_str(), "no credentials");
        } else {
            tracing::info!(target: "auth", reason = reason.as_str(), "credential refused: {detail}");
        }
        answer
    }
}

/// Checks service tokens and user JWTs; built once from the settings.
#[derive(Debug)]
pub struct Authenticator {
    /// The SHA-256 of each accepted service token.
    service_token_digests: Vec<SecretBox<[u8; 32]>>,
    jwt: JwtVerifier,
    /// Origins whose cookie-authenticated writes are accepted.
    trusted_origins: TrustedOrigins,
    counters: AuthCounters,
}

impl Authenticator {
    /// Builds the checks from the settings; fails on a key that does not parse.
    pub fn new(
        service_tokens: &[SecretString],
        jwt: &JwtSettings,
        trusted_origins: TrustedOrigins,
        counters: AuthCounters,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            service_token_digests: service_tokens
                .iter()
                .map(|t| SecretBox::new(Box::new(digest(t.expose_secret().as_bytes()))))
                .collect(),
            jwt: JwtVerifier::new(jwt, counters.clone())?,
            trusted_origins,
            counters,
        })
    }

    /// Decides who is calling from the request's method and headers.
    pub async fn authenticate(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        if let Some(presented) = headers.get("x-service-token") {
            return self
                .check_service(presented.as_bytes())
                .map(|()| Caller::Service);
        }
        let Some((token, from)) = bearer_or_cookie(headers) else {
            return Err(self
                .counters
                .refuse(Refusal::Missing, "", ApiError::Unauthenticated));
        };
        if from == TokenFrom::Cookie {
            check_cookie_origin(method, headers, &self.trusted_origins)?;
        }
        self.jwt.verify(&token).await.map(Caller::User)
    }

    /// Whether `presented` is one of the accepted service tokens. Comparing digests keeps
    /// each comparison constant-time whatever the lengths, and every token is compared (no
    /// early exit), so the time tells nothing of which matched.
    fn is_service_token(&self, presented: &[u8]) -> bool {
        let presented = digest(presented.trim_ascii());
        self.service_token_digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, d| {
                acc | presented.ct_eq(d.expose_secret())
            })
            .into()
    }

    /// Checks a presented service token against every accepted one; a refusal is counted
    /// and logged.
    fn check_service(&self, presented: &[u8]) -> Result<(), ApiError> {
        if self.is_service_token(presented) {
            return Ok(());
        }
        let detail = if self.service_token_digests.is_empty() {
            "X-Service-Token sent, but AUTH_SERVICE_TOKEN is not set"
        } else {
            "X-Service-Token matches none of AUTH_SERVICE_TOKEN"
        };
        Err(self.counters.refuse(
            Refusal::ServiceToken,
            detail,
            ApiError::Unauthorized("Invalid service token".to_owned()),
        ))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What a cookie-authenticated write from an untrusted origin is told.
pub const CROSS_SITE_REFUSED: &str = "Cross-site request refused: the auth_token cookie \
    authorises changes only from this service's own origin or an allowed CORS origin; \
    send the token in an Authorization: Bearer header instead";

/// Refuses a cookie-authenticated request with an unsafe method that another site may have
/// made. A browser attaches the `auth_token` cookie to whatever a page elsewhere sends (a
/// form POST, a `no-cors` fetch of a raw upload body, neither preflighted), so the cookie
/// alone does not show that this user meant the change. Browsers say where a request comes
/// from in `Origin`, which pages cannot forge, and in `Sec-Fetch-Site`:
/// - GET, HEAD and OPTIONS change nothing: allowed (their answers are guarded by CORS).
/// - `Origin` present: it must be `PUBLIC_BASE_URL`'s or one of `CORS_ALLOW_ORIGINS` (scheme,
///   host and port; `null` is nobody's). Two `Origin` headers are refused.
/// - `Origin` absent, as from curl and other non-browser clients: allowed unless
///   `Sec-Fetch-Site` says the request came from another site (`cross-site`, or `same-site`,
///   a sibling subdomain) or holds a value we do not know; `same-origin` and `none` (typed
///   by the user) are fine.
///
/// Bearer and service callers never reach this: a page cannot make a browser add their headers.
pub fn check_cookie_origin(
    method: &Method,
    headers: &HeaderMap,
    trusted: &TrustedOrigins,
) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let allowed = match (origins.next(), origins.next()) {
        (Some(origin), None) => origin.to_str().is_ok_and(|o| trusted.trusts(o)),
        (Some(_), Some(_)) => false,
        (None, _) => matches!(
            headers.get("sec-fetch-site").map(|v| v.as_bytes()),
            None | Some(b"same-origin" | b"none")
        ),
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(CROSS_SITE_REFUSED.to_owned()))
    }
}

/// Where a user's JWT was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenFrom {
    Bearer,
    Cookie,
}

/// The JWT from `Authorization: Bearer ...`, else from the `auth_token` cookie.
fn bearer_or_cookie(headers: &HeaderMap) -> Option<(String, TokenFrom)> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            let token = v[7..].trim();
            if !token.is_empty() {
                return Some((token.to_owned(), TokenFrom::Bearer));
            }
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "auth_token")
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|t| !t.is_empty())
        .map(|t| (t, TokenFrom::Cookie))
}

/// How long a fetched JWKS is trusted before it is fetched again on use.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct JwtVerifier {
    validation: Validation,
    static_key: Option<DecodingKey>,
    jwks: Option<Jwks>,
    counters: AuthCounters,
}

impl JwtVerifier {
    fn new(s: &JwtSettings, counters: AuthCounters) -> anyhow::Result<Self> {
        let mut validation = Validation::new(s.alg);
        validation.algorithms = vec![s.alg];
        // A few seconds for clock skew; `nbf` is honoured when present.
        validation.leeway = 5;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &s.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &s.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let static_key = match &s.public_key_pem {
            Some(pem) => Some(decoding_key_from_pem(s.alg, pem)?),
            None => None,
        };
        let jwks = match &s.jwks_url {
            Some(url) => Some(Jwks::new(
                url.clone(),
                s.jwks_min_refetch,
                counters.jwks_fetch_errors.clone(),
            )?),
            None => None,
        };
        Ok(Self {
            validation,
            static_key,
            jwks,
            counters,
        })
    }

    async fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        let refuse = |reason: Refusal, detail: String| {
            self.counters.refuse(
                reason,
                &detail,
                ApiError::Unauthorized("Invalid token".to_owned()),
            )
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refuse(Refusal::Malformed, format!("not a JWT ({e})")))?;
        let kid = header.kid.as_deref().unwrap_or("(none)");
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(refuse(
                Refusal::WrongAlgorithm,
                format!(
                    "alg {:?}, expected {:?} (kid {kid})",
                    header.alg, self.validation.algorithms
                ),
            ));
        }
        let Some(key) = self.key_for(header.kid.as_deref()).await else {
            return Err(refuse(Refusal::UnknownKid, format!("no key for kid {kid}")));
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation)
            .map_err(|e| refuse(Refusal::of(&e), format!("{e} (kid {kid})")))?;
        let claim = |name: &str| match data.claims.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let Some(id) = claim("user_id").or_else(|| claim("sub")) else {
            return Err(refuse(
                Refusal::NoUser,
                format!("neither user_id nor sub (kid {kid})"),
            ));
        };
        UserId::parse(&id).map_err(|e| {
            self.counters.refuse(
                Refusal::NoUser,
                &format!("user id not valid (kid {kid})"),
                e.into(),
            )
        })
    }

    async fn key_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        if let Some(jwks) = &self.jwks {
            if let Some(key) = jwks.key_for(kid, self.static_key.is_none()).await {
                return Some(key);
            }
        }
        self.static_key.clone()
    }
}

/// Keys from `AUTH_JWKS_URL`, by `kid`; fetched again when a token names an unknown `kid`,
/// at most once per `min_refetch`, so random `kid`s cannot turn us into a flood.
#[derive(Debug)]
struct Jwks {
    url: String,
    http: reqwest::Client,
    min_refetch: Duration,
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    /// Keys without a `kid`, tried when a token has none.
    unnamed: RwLock<Arc<Vec<DecodingKey>>>,
    /// When the set was last fetched (held only for a read or a write of the instant).
    last_fetch: std::sync::Mutex<Option<Instant>>,
    /// One fetch at a time; requests with a cached key never wait on it.
    fetch_gate: Mutex<()>,
    /// Fetches that failed (`/metrics`).
    fetch_errors: prometheus::IntCounter,
}

impl Jwks {
    fn new(
        url: String,
        min_refetch: Duration,
        fetch_errors: prometheus::IntCounter,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        Ok(Self {
            url,
            http,
            min_refetch,
            keys: RwLock::default(),
            unnamed: RwLock::default(),
            last_fetch: std::sync::Mutex::new(None),
            fetch_gate: Mutex::new(()),
            fetch_errors,
        })
    }

    async fn key_for(&self, kid: Option<&str>, allow_single_unnamed: bool) -> Option<DecodingKey> {
        if let Some(k) = self.lookup(kid, allow_single_unnamed).await {
            // A known key: refresh an old set on the way if no one else is, never wait.
            if self.stale() {
                if let Ok(gate) = self.fetch_gate.try_lock() {
                    self.refresh_locked(gate).await;
                }
            }
            return Some(k);
        }
        let gate = self.fetch_gate.lock().await;
        self.refresh_locked(gate).await;
        self.lookup(kid, allow_single_unnamed).await
    }

    fn last_fetch(&self) -> Option<Instant> {
        self.last_fetch.lock().map(|t| *t).unwrap_or(None)
    }

    async fn lookup(&self, kid: Option<&str>, allow_single_unnamed: bool) -> Option<DecodingKey> {
        match kid {
            Some(kid) => self.keys.read().await.get(kid).cloned(),
            None => {
                let unnamed = self.unnamed.read().await.clone();
                let named = self.keys.read().await.clone();
                if unnamed.len() == 1 {
                    return unnamed.first().cloned();
                }
                if allow_single_unnamed && unnamed.is_empty() && named.len() == 1 {
                    return named.values().next().cloned();
                }
                None
            }
        }
    }

    fn stale(&self) -> bool {
        self.last_fetch().is_none_or(|t| t.elapsed() > JWKS_MAX_AGE)
    }

    /// Fetches the set unless it was fetched less than `min_refetch` ago (the caller holds
    /// the fetch gate, so concurrent unknown `kid`s cause one fetch).
    async fn refresh_locked(&self, _gate: tokio::sync::MutexGuard<'_, ()>) {
        if self
            .last_fetch()
            .is_some_and(|t| t.elapsed() < self.min_refetch)
        {
            return;
        }
        if let Ok(mut last) = self.last_fetch.lock() {
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok((named, unnamed)) => {
                tracing::info!(url = %self.url, keys = named.len() + unnamed.len(), "JWKS fetched");
                *self.keys.write().await = Arc::new(named);
                *self.unnamed.write().await = Arc::new(unnamed);
            }
            // Keep the keys we had: a JWKS outage must not log everyone out.
            Err(e) => {
                self.fetch_errors.inc();
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed");
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<(HashMap<String, DecodingKey>, Vec<DecodingKey>)> {
        let set: JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut named = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => match &jwk.common.key_id {
                    Some(kid) => {
                        named.insert(kid.clone(), key);
                    }
                    None => unnamed.push(key),
                },
                Err(e) => tracing::warn!(error = %e, "JWKS key skipped"),
            }
        }
        Ok((named, unnamed))
    }
}

/// Mints user tokens for `/v1/files/generate-token`.
pub struct TokenMinter {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMinter")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenMinter {
    /// A minter when `JWT_PRIVATE_KEY_PATH` is set.
    pub fn new(s: &JwtSettings) -> anyhow::Result<Option<Self>> {
        let Some(pem) = &s.private_key_pem else {
            return Ok(None);
        };
        Ok(Some(Self {
            alg: s.alg,
            kid: s.kid.clone(),
            key: encoding_key_from_pem(s.alg, pem.expose_secret())?,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
        }))
    }

    /// A token for `user` valid for `ttl`.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let mut claims = serde_json::json!({
            "sub": user.as_str(),
            "user_id": user.as_str(),
            "iat": now,
            "exp": now + ttl.as_secs() as i64,
        });
        if let Some(iss) = &self.issuer {
            claims["iss"] = Value::from(iss.as_str());
        }
        if let Some(aud) = &self.audience {
            claims["aud"] = Value::from(aud.as_str());
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// The JWKS document published at `/.well-known/jwks.json`, from an RSA public key PEM.
pub fn jwks_document(pem: &str, kid: &str, alg: Algorithm) -> anyhow::Result<Value> {
    use base64::Engine as _;
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::PublicKey::from_public_key_pem(pem)
        .or_else(|_| rsa::PublicKey::from_pkcs1_pem(pem))
        .map_err(|e| anyhow::anyhow!("not an RSA public key: {e}"))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let alg = match alg {
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        _ => "RS256",
    };
    Ok(serde_json::json!({
        "keys": [{
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "alg": alg,
            "n": b64.encode(key.n_bytes()),
            "e": b64.encode(key.e_bytes()),
        }]
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    use crate::trust::WebOrigin;

    #[test]
    fn token_from_header_or_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_or_cookie(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; auth_token=tok1; c=d"),
        );
        let cookie = Some(("tok1".to_owned(), TokenFrom::Cookie));
        assert_eq!(bearer_or_cookie(&h), cookie);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer tok2"),
        );
        assert_eq!(
            bearer_or_cookie(&h),
            Some(("tok2".to_owned(), TokenFrom::Bearer))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_or_cookie(&h), cookie);
    }

    #[test]
    fn service_users_must_be_named() {
        assert!(Caller::Service.acting_for(None).is_err());
        assert!(Caller::Service.acting_for(Some("../x")).is_err());
        assert_eq!(
            Caller::Service.acting_for(Some("u1")).unwrap().as_str(),
            "u1"
        );
        let me = Caller::User(UserId::parse("me").unwrap());
        assert_eq!(me.acting_for(Some("other")).unwrap().as_str(), "me");
        assert!(me.may_access("me") && !me.may_access("other"));
    }

    fn trusted() -> TrustedOrigins {
        TrustedOrigins::new(vec![
            WebOrigin::of_url("https://files.example.com").unwrap(),
            WebOrigin::parse("https://app.example").unwrap(),
        ])
    }

    fn check(method: Method, pairs: &[(&'static str, &'static str)]) -> bool {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        check_cookie_origin(&method, &headers, &trusted()).is_ok()
    }

    #[test]
    fn cookie_writes_need_a_trusted_origin_or_none_at_all() {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(!check(
                method.clone(),
                &[("origin", "https://evil.example")]
            ));
            assert!(!check(method.clone(), &[("origin", "null")]));
            assert!(check(
                method.clone(),
                &[("origin", "https://files.example.com")]
            ));
            assert!(check(
                method.clone(),
                &[("origin", "https://APP.example:443")]
            ));
            // Non-browser clients send no Origin.
            assert!(check(method.clone(), &[]));
        }
        // A listed origin is cross-site by nature.
        assert!(check(
            Method::POST,
            &[
                ("origin", "https://app.example"),
                ("sec-fetch-site", "cross-site")
            ]
        ));
        assert!(!check(
            Method::POST,
            &[
                ("origin", "https://app.example"),
                ("origin", "https://evil.example")
            ]
        ));
    }

    #[test]
    fn without_origin_fetch_metadata_decides() {
        for (site, ok) in [
            ("cross-site", false),
            ("same-site", false),
            ("something-new", false),
            ("same-origin", true),
            ("none", true),
        ] {
            assert_eq!(
                check(Method::POST, &[("sec-fetch-site", site)]),
                ok,
                "{site}"
            );
        }
    }

    #[test]
    fn safe_methods_are_never_refused() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(check(
                method,
                &[
                    ("origin", "https://evil.example"),
                    ("sec-fetch-site", "cross-site")
                ]
            ));
        }
    }
}
