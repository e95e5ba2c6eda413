//! Settings from the environment (API.md §1): the old service's variable names, an optional
//! env file in systemd's `KEY=VALUE` form, validation at start with one line naming the variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use secrecy::{SecretSlice, SecretString};
use serde::Deserialize;

use crate::trust::{TrustedOrigins, TrustedProxies};

mod env_file;
mod table;
mod values;

pub use self::table::{help_text, is_setting, markdown_table, Setting, SETTINGS};

use self::env_file::read_env_file;
use self::values::{
    decode_pem_base64, parse_cors, parse_decimal, parse_num, parse_service_tokens, parse_switch,
    positive_secs, read_key_file, trust_settings,
};

/// A configuration error: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The environment variable (or command-line option) at fault.
    pub var: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl ConfigError {
    fn new(var: &str, message: impl Into<String>) -> Self {
        Self {
            var: var.to_owned(),
            message: message.into(),
        }
    }
}

/// Which origins may call us from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any origin, without credentials.
    Any,
    /// A list of origins, credentials allowed.
    List(Vec<String>),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Where user JWTs are verified from.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The only algorithm accepted (`AUTH_JWT_ALG`).
    pub alg: Algorithm,
    /// PEM of the static verification key (`JWT_PUBLIC_KEY_PATH` or `AUTH_JWT_PUBLIC_KEY_BASE64`).
    pub public_key_pem: Option<String>,
    /// `AUTH_JWKS_URL`.
    pub jwks_url: Option<String>,
    /// Least time between two JWKS fetches caused by unknown `kid`s.
    pub jwks_min_refetch: Duration,
    /// `AUTH_JWT_ISSUER`.
    pub issuer: Option<String>,
    /// `AUTH_JWT_AUDIENCE`.
    pub audience: Option<String>,
    /// `JWKS_KID`.
    pub kid: String,
    /// PEM of the private key for `/v1/files/generate-token` (`JWT_PRIVATE_KEY_PATH`).
    pub private_key_pem: Option<SecretString>,
}

/// Every setting of the service, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `BIND_HOST`.
    pub bind_host: String,
    /// `PORT`.
    pub port: u16,
    /// `UPLOAD_ROOT`.
    pub upload_root: PathBuf,
    /// `PUBLIC_BASE_URL`, without a trailing slash.
    pub public_base_url: String,
    /// Whether `PUBLIC_BASE_URL` was set (else it was made from `BIND_HOST` and `PORT`).
    pub public_base_url_set: bool,
    /// `AUTH_SERVICE_TOKEN`: one or more tokens, comma-separated (several while a token is
    /// rotated); empty turns service auth off.
    pub service_tokens: Vec<SecretString>,
    /// `UPLOAD_SIGNING_KEY`; `None` means the key kept in `UPLOAD_ROOT/.signing_key`.
    pub signing_key: Option<SecretSlice<u8>>,
    /// `UPLOAD_SIGNING_KEY_PREVIOUS`: a key whose signed URLs still verify (none are signed
    /// with it), kept while URLs signed before a rotation are outstanding.
    pub signing_key_previous: Option<SecretSlice<u8>>,
    /// `METRICS_ALLOW_LOCAL`: `/metrics` without a token for a loopback peer that came
    /// through no proxy.
    pub metrics_allow_local: bool,
    /// `SIGNED_URL_TTL_DEFAULT`, seconds.
    pub signed_url_ttl_default: u64,
    /// `MAX_BODY_MB` in bytes.
    pub max_body_bytes: u64,
    /// `PER_USER_QUOTA_GB` in bytes.
    pub quota_bytes: u64,
    /// JWT verification and minting.
    pub jwt: JwtSettings,
    /// `UPLOAD_SESSION_TTL_HOURS`.
    pub upload_session_ttl: Duration,
    /// `BATCH_TOKEN_TTL`.
    pub batch_token_ttl: Duration,
    /// `CORS_ALLOW_ORIGINS`.
    pub cors_origins: CorsOrigins,
    /// `ACCEL_REDIRECT_PREFIX`: hand file bodies to nginx when set.
    pub accel_redirect_prefix: Option<String>,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `REQUEST_BODY_TIMEOUT_SECS`: longest wait for the next bytes of a request body.
    pub request_body_timeout: Duration,
    /// `REQUEST_BODY_MIN_RATE`: least average bytes per second of a request body over each
    /// window; 0 turns the rule off.
    pub request_body_min_rate: u64,
    /// `REQUEST_BODY_RATE_WINDOW_SECS`: the window the minimum rate is averaged over.
    pub request_body_rate_window: Duration,
    /// `REQUEST_HEADER_TIMEOUT_SECS`: longest time to receive a request head, counted from
    /// the connection's start or from the first byte of a later request.
    pub request_header_timeout: Duration,
    /// `KEEPALIVE_TIMEOUT_SECS`: longest idle time of a kept-alive connection between a
    /// response and the first byte of the next request.
    pub keepalive_timeout: Duration,
    /// Origins whose cookie-authenticated writes are accepted: `PUBLIC_BASE_URL`'s and those
    /// listed in `CORS_ALLOW_ORIGINS` (see `trust_settings`).
    pub trusted_origins: TrustedOrigins,
    /// `TRUSTED_PROXIES`: peers whose `X-Real-IP` and `X-Forwarded-For` are believed.
    pub trusted_proxies: TrustedProxies,
    /// `SIDECAR_CACHE_SECS`: how long a sidecar read for a download is trusted without
    /// reading it again (a sidecar edited by hand is served within this time); 0 = no cache.
    pub sidecar_cache: Duration,
    /// `RESPONSE_STALL_TIMEOUT_SECS`: longest time a response may wait for the client to take
    /// a byte before its connection is closed.
    pub response_stall_timeout: Duration,
    /// `MAX_CONNECTIONS`: most connections open at once; `None` lets the server derive it
    /// from the descriptor limit.
    pub max_connections: Option<usize>,
    /// `UPLOAD_PAGE`: serve the upload page at `/upload` (on by default; `0` turns it off).
    pub upload_page: bool,
    /// `STORAGE_BACKEND` and what it needs.
    pub backend: Backend,
}

/// Where files and state live (`STORAGE_BACKEND`).
#[derive(Debug, Clone)]
pub enum Backend {
    /// Everything under `UPLOAD_ROOT`.
    Fs,
    /// Bytes in a bucket, state in PostgreSQL.
    S3(Box<CloudSettings>),
}

/// The settings of `STORAGE_BACKEND=s3`.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    /// `S3_*`: the bucket (its secret kept as a secret).
    pub s3: crate::store::s3::S3Config,
    /// `S3_PRESIGN_READS`.
    pub presign_reads: bool,
    /// `DATABASE_URL` (may hold a password: never logged).
    pub database_url: SecretString,
    /// `DATABASE_POOL_SIZE`.
    pub pool_size: u32,
}

/// Where the settings were read from at start: what `SIGHUP` reads again.
#[derive(Debug, Clone)]
pub struct SettingsSource {
    env_file: Option<PathBuf>,
    /// The env file's pairs as read at start.
    file_at_start: HashMap<String, String>,
    /// The process environment (it cannot change after start).
    process: HashMap<String, String>,
}

impl SettingsSource {
    /// The env file, when there is one.
    pub fn env_file(&self) -> Option<&Path> {
        self.env_file.as_deref()
    }

    /// Reads the env file again and builds the settings anew. systemd's `EnvironmentFile=`
    /// also puts the file's pairs into the process environment, where they would win over
    /// the file forever: a variable whose environment value is the one the file held at
    /// start is taken to come from the file, so the file's new value wins for it. A variable
    /// set in the environment to anything else still wins.
    pub fn reread(&self) -> Result<Settings, ConfigError> {
        let Some(path) = &self.env_file else {
            return Err(ConfigError::new(
                "UPLOAD_ENV_FILE",
                "no env file was given at start (--env-file or UPLOAD_ENV_FILE): nothing to reload",
            ));
        };
        let file_vars = read_env_file(path)?;
        let env = self
            .process
            .iter()
            .filter(|(k, v)| self.file_at_start.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Settings::from_sources(file_vars, env)
    }
}

/// The raw strings, merged from the env file and the process environment by `config`.
#[derive(Debug, Default, Deserialize)]
struct Raw {
    port: Option<String>,
    bind_host: Option<String>,
    upload_root: Option<String>,
    public_base_url: Option<String>,
    auth_service_token: Option<String>,
    upload_signing_key: Option<String>,
    upload_signing_key_previous: Option<String>,
    metrics_allow_local: Option<String>,
    signed_url_ttl_default: Option<String>,
    max_body_mb: Option<String>,
    per_user_quota_gb: Option<String>,
    auth_jwt_public_key_base64: Option<String>,
    jwt_public_key_path: Option<String>,
    auth_jwks_url: Option<String>,
    auth_jwks_min_refetch_secs: Option<String>,
    auth_jwt_alg: Option<String>,
    auth_jwt_issuer: Option<String>,
    auth_jwt_audience: Option<String>,
    jwks_kid: Option<String>,
    jwt_private_key_path: Option<String>,
    upload_session_ttl_hours: Option<String>,
    batch_token_ttl: Option<String>,
    cors_allow_origins: Option<String>,
    accel_redirect_prefix: Option<String>,
    log_format: Option<String>,
    request_body_timeout_secs: Option<String>,
    request_body_min_rate: Option<String>,
    request_body_rate_window_secs: Option<String>,
    request_header_timeout_secs: Option<String>,
    keepalive_timeout_secs: Option<String>,
    trusted_proxies: Option<String>,
    sidecar_cache_secs: Option<String>,
    response_stall_timeout_secs: Option<String>,
    max_connections: Option<String>,
    upload_page: Option<String>,
    storage_backend: Option<String>,
    s3_endpoint: Option<String>,
    s3_bucket: Option<String>,
    s3_region: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_prefix: Option<String>,
    s3_path_style: Option<String>,
    s3_presign_reads: Option<String>,
    database_url: Option<String>,
    database_pool_size: Option<String>,
}

/// Variables by name.
pub type Vars = HashMap<String, String>;

/// The pairs the settings are made of, as the binary reads them: the env file named by
/// `env_file` (the `--env-file` option) or by `UPLOAD_ENV_FILE` (none: empty), and the
/// process environment, which wins over it.
pub fn read_sources(env_file: Option<&Path>) -> Result<(Vars, Vars), ConfigError> {
    let (_, file_vars, process) = sources(env_file)?;
    Ok((file_vars, process))
}

/// [`read_sources`], with the env file's path.
fn sources(env_file: Option<&Path>) -> Result<(Option<PathBuf>, Vars, Vars), ConfigError> {
    let process: HashMap<String, String> = std::env::vars().collect();
    let file = match env_file {
        Some(p) => Some(p.to_path_buf()),
        None => process
            .get("UPLOAD_ENV_FILE")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from),
    };
    let file_vars = match &file {
        Some(path) => read_env_file(path)?,
        None => HashMap::new(),
    };
    Ok((file, file_vars, process))
}

impl Settings {
    /// Reads the settings the way the binary does: the env file named by `env_file` (the
    /// `--env-file` option) or by `UPLOAD_ENV_FILE`, then the process environment on top.
    pub fn from_env(env_file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(env_file).map(|(settings, _)| settings)
    }

    /// As [`Settings::from_env`], also returning where the settings came from, so that
    /// `SIGHUP` can read them again ([`SettingsSource::reread`]).
    pub fn load(env_file: Option<&Path>) -> Result<(Self, SettingsSource), ConfigError> {
        let (file, file_vars, process) = sources(env_file)?;
        let source = SettingsSource {
            env_file: file,
            file_at_start: file_vars.clone(),
            process: process.clone(),
        };
        Ok((Self::from_sources(file_vars, process)?, source))
    }

    /// Builds settings from an env file's pairs and an environment's pairs (the latter wins).
    pub fn from_sources(
        file_vars: HashMap<String, String>,
        env_vars: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        // Only our own names reach `config`: other variables of the process (shell functions,
        // names with dots) must neither match a field nor upset its key parser.
        let source = |map: HashMap<String, String>| {
            let known = map.into_iter().filter(|(k, _)| is_setting(k)).collect();
            config::Environment::default()
                .source(Some(known))
                .ignore_empty(true)
        };
        let raw: Raw = config::Config::builder()
            .add_source(source(file_vars))
            .add_source(source(env_vars))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::new("environment", e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Self, ConfigError> {
        let backend = backend_settings(&raw)?;
        let port: u64 = parse_num("PORT", raw.port.as_deref(), 5070u64)?;
        let port = u16::try_from(port)
            .map_err(|_| ConfigError::new("PORT", format!("{port} is out of range 0-65535")))?;
        let bind_host = raw.bind_host.unwrap_or_else(|| "127.0.0.1".to_owned());
        if bind_host.trim().is_empty() || bind_host.contains(char::is_whitespace) {
            return Err(ConfigError::new("BIND_HOST", "not a host name or address"));
        }
        let upload_root = PathBuf::from(raw.upload_root.as_deref().unwrap_or("/data/uploads"));
        let public_base_url_set = raw
            .public_base_url
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty());
        let public_base_url = match raw.public_base_url {
            Some(u) => {
                let u = u.trim().trim_end_matches('/').to_owned();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(ConfigError::new(
                        "PUBLIC_BASE_URL",
                        "must start with http:// or https://",
                    ));
                }
                u
            }
            None if bind_host.contains(':') => format!("http://[{bind_host}]:{port}"),
            None => format!("http://{bind_host}:{port}"),
        };
        let service_tokens = parse_service_tokens(raw.auth_service_token.as_deref())?;
        let signing_key = raw
            .upload_signing_key
            .filter(|k| !k.is_empty())
            .map(|k| SecretSlice::from(k.into_bytes()));
        let signing_key_previous = raw
            .upload_signing_key_previous
            .filter(|k| !k.is_empty())
            .map(|k| SecretSlice::from(k.into_bytes()));
        let metrics_allow_local = parse_switch(
            "METRICS_ALLOW_LOCAL",
            raw.metrics_allow_local.as_deref(),
            false,
        )?;
        let signed_url_ttl_default = parse_num(
            "SIGNED_URL_TTL_DEFAULT",
            raw.signed_url_ttl_default.as_deref(),
            3600u64,
        )?;
        if signed_url_ttl_default == 0 || signed_url_ttl_default > 7 * 24 * 3600 {
            return Err(ConfigError::new(
                "SIGNED_URL_TTL_DEFAULT",
                "must be between 1 and 604800 seconds",
            ));
        }
        let max_body_mb: u64 = parse_num("MAX_BODY_MB", raw.max_body_mb.as_deref(), 5120u64)?;
        if max_body_mb == 0 || max_body_mb > 1 << 30 {
            return Err(ConfigError::new(
                "MAX_BODY_MB",
                "must be between 1 and 2^30",
            ));
        }
        let quota_gb = parse_decimal("PER_USER_QUOTA_GB", raw.per_user_quota_gb.as_deref(), 500.0)?;
        if quota_gb > 1e9 {
            return Err(ConfigError::new(
                "PER_USER_QUOTA_GB",
                "is larger than any disk",
            ));
        }
        let quota_bytes = (quota_gb * (1u64 << 30) as f64).floor() as u64;

        let alg_name = raw.auth_jwt_alg.as_deref().unwrap_or("RS256").trim();
        let alg: Algorithm = alg_name.parse().map_err(|_| {
            ConfigError::new("AUTH_JWT_ALG", format!("unknown algorithm '{alg_name}'"))
        })?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(ConfigError::new(
                "AUTH_JWT_ALG",
                "HMAC algorithms are not accepted: user tokens are verified with a public key",
            ));
        }
        let (public_key_pem, key_var) =
            match (raw.jwt_public_key_path, raw.auth_jwt_public_key_base64) {
                (Some(path), _) => (
                    Some(read_key_file("JWT_PUBLIC_KEY_PATH", &path)?),
                    "JWT_PUBLIC_KEY_PATH",
                ),
                (None, Some(b64)) => (Some(decode_pem_base64(&b64)?), "AUTH_JWT_PUBLIC_KEY_BASE64"),
                (None, None) => (None, ""),
            };
        if let Some(pem) = &public_key_pem {
            crate::jwt_keys::decoding_key_from_pem(alg, pem).map_err(|e| {
                ConfigError::new(key_var, format!("not a usable {alg:?} public key: {e}"))
            })?;
        }
        let jwks_url = raw.auth_jwks_url.map(|u| u.trim().to_owned());
        if let Some(u) = &jwks_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::new("AUTH_JWKS_URL", "must be an http(s) URL"));
            }
        }
        let jwks_min_refetch = Duration::from_secs(parse_num(
            "AUTH_JWKS_MIN_REFETCH_SECS",
            raw.auth_jwks_min_refetch_secs.as_deref(),
            10u64,
        )?);
        let private_key_pem = match raw.jwt_private_key_path {
            Some(path) => {
                let pem = read_key_file("JWT_PRIVATE_KEY_PATH", &path)?;
                crate::jwt_keys::encoding_key_from_pem(alg, &pem).map_err(|e| {
                    ConfigError::new(
                        "JWT_PRIVATE_KEY_PATH",
                        format!("not a usable {alg:?} private key: {e}"),
                    )
                })?;
                Some(SecretString::from(pem))
            }
            None => None,
        };
        let jwt = JwtSettings {
            alg,
            public_key_pem,
            jwks_url,
            jwks_min_refetch,
            issuer: raw.auth_jwt_issuer,
            audience: raw.auth_jwt_audience,
            kid: raw
                .jwks_kid
                .unwrap_or_else(|| "streamline-rsa-1".to_owned()),
            private_key_pem,
        };

        let ttl_hours = parse_decimal(
            "UPLOAD_SESSION_TTL_HOURS",
            raw.upload_session_ttl_hours.as_deref(),
            24.0,
        )?;
        if ttl_hours <= 0.0 || ttl_hours > 24.0 * 365.0 * 100.0 {
            return Err(ConfigError::new(
                "UPLOAD_SESSION_TTL_HOURS",
                "must be above 0 and at most 876000 (100 years)",
            ));
        }
        let batch_token_ttl: u64 =
            parse_num("BATCH_TOKEN_TTL", raw.batch_token_ttl.as_deref(), 3600u64)?;
        if batch_token_ttl == 0 {
            return Err(ConfigError::new("BATCH_TOKEN_TTL", "must be above 0"));
        }
        let cors_origins = parse_cors(raw.cors_allow_origins.as_deref().unwrap_or("*"))?;
        let accel_redirect_prefix = match raw.accel_redirect_prefix {
            Some(p) if !p.trim().is_empty() => {
                let p = p.trim();
                if !p.starts_with('/') {
                    return Err(ConfigError::new(
                        "ACCEL_REDIRECT_PREFIX",
                        "must start with /",
                    ));
                }
                Some(format!("{}/", p.trim_end_matches('/')))
            }
            _ => None,
        };
        let log_format = match raw.log_format.as_deref().map(str::trim) {
            None | Some("") | Some("text") | Some("plain") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("'{other}' is neither 'text' nor 'json'"),
                ))
            }
        };
        let body_timeout: u64 = parse_num(
            "REQUEST_BODY_TIMEOUT_SECS",
            raw.request_body_timeout_secs.as_deref(),
            60u64,
        )?;
        if body_timeout == 0 {
            return Err(ConfigError::new(
                "REQUEST_BODY_TIMEOUT_SECS",
                "must be above 0",
            ));
        }
        let request_body_min_rate: u64 = parse_num(
            "REQUEST_BODY_MIN_RATE",
            raw.request_body_min_rate.as_deref(),
            1024u64,
        )?;
        let rate_window = positive_secs(
            "REQUEST_BODY_RATE_WINDOW_SECS",
            raw.request_body_rate_window_secs.as_deref(),
            30,
        )?;
        if request_body_min_rate.checked_mul(rate_window).is_none() {
            return Err(ConfigError::new(
                "REQUEST_BODY_MIN_RATE",
                "times REQUEST_BODY_RATE_WINDOW_SECS is too large",
            ));
        }
        let header_timeout = positive_secs(
            "REQUEST_HEADER_TIMEOUT_SECS",
            raw.request_header_timeout_secs.as_deref(),
            30,
        )?;
        let keepalive_timeout = positive_secs(
            "KEEPALIVE_TIMEOUT_SECS",
            raw.keepalive_timeout_secs.as_deref(),
            75,
        )?;
        let sidecar_cache: u64 = parse_num(
            "SIDECAR_CACHE_SECS",
            raw.sidecar_cache_secs.as_deref(),
            10u64,
        )?;
        if sidecar_cache > 86_400 {
            return Err(ConfigError::new(
                "SIDECAR_CACHE_SECS",
                "must be between 0 and 86400 seconds",
            ));
        }
        let (trusted_origins, trusted_proxies) = trust_settings(
            &public_base_url,
            &cors_origins,
            raw.trusted_proxies.as_deref(),
        )?;
        let stall_timeout = positive_secs(
            "RESPONSE_STALL_TIMEOUT_SECS",
            raw.response_stall_timeout_secs.as_deref(),
            60,
        )?;
        let max_connections = match raw.max_connections.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=1_000_000).contains(&n) => Some(n),
                _ => {
                    return Err(ConfigError::new(
                        "MAX_CONNECTIONS",
                        format!("'{v}' is not a whole number between 1 and 1000000"),
                    ))
                }
            },
        };
        let upload_page = parse_switch("UPLOAD_PAGE", raw.upload_page.as_deref(), true)?;
        Ok(Self {
            bind_host,
            port,
            upload_root,
            public_base_url,
            public_base_url_set,
            service_tokens,
            signing_key,
            signing_key_previous,
            metrics_allow_local,
            signed_url_ttl_default,
            max_body_bytes: max_body_mb * 1024 * 1024,
            quota_bytes,
            jwt,
            upload_session_ttl: Duration::from_secs_f64(ttl_hours * 3600.0),
            batch_token_ttl: Duration::from_secs(batch_token_ttl),
            cors_origins,
            accel_redirect_prefix,
            log_format,
            request_body_timeout: Duration::from_secs(body_timeout),
            request_body_min_rate,
            request_body_rate_window: Duration::from_secs(rate_window),
            request_header_timeout: Duration::from_secs(header_timeout),
            keepalive_timeout: Duration::from_secs(keepalive_timeout),
            trusted_origins,
            trusted_proxies,
            sidecar_cache: Duration::from_secs(sidecar_cache),
            response_stall_timeout: Duration::from_secs(stall_timeout),
            max_connections,
            upload_page,
            backend,
        })
    }

    /// The address to listen on, resolving a host name such as `localhost`.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        use std::net::ToSocketAddrs;
        let host = self.bind_host.trim_start_matches('[').trim_end_matches(']');
        (host, self.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| ConfigError::new("BIND_HOST", format!("cannot resolve '{host}'")))
    }
}

/// `STORAGE_BACKEND` and, for `s3`, the bucket and database it needs.
fn backend_settings(raw: &Raw) -> Result<Backend, ConfigError> {
    let set = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    match set(&raw.storage_backend).as_deref() {
        None | Some("fs") => return Ok(Backend::Fs),
        Some("s3") => {}
        Some(other) => {
            return Err(ConfigError::new(
                "STORAGE_BACKEND",
                format!("'{other}' is neither fs nor s3"),
            ))
        }
    }
    let bucket = set(&raw.s3_bucket)
        .ok_or_else(|| ConfigError::new("S3_BUCKET", "required with STORAGE_BACKEND=s3"))?;
    let database_url = set(&raw.database_url)
        .ok_or_else(|| ConfigError::new("DATABASE_URL", "required with STORAGE_BACKEND=s3"))?;
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            "DATABASE_URL",
            "must start with postgres:// or postgresql://",
        ));
    }
    let endpoint = set(&raw.s3_endpoint);
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ConfigError::new(
                "S3_ENDPOINT",
                "must start with http:// or https://",
            ));
        }
    }
    let key_id = set(&raw.s3_access_key_id);
    let secret = set(&raw.s3_secret_access_key);
    if key_id.is_some() != secret.is_some() {
        return Err(ConfigError::new(
            if key_id.is_some() { "S3_SECRET_ACCESS_KEY" } else { "S3_ACCESS_KEY_ID" },
            "S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY are set together (or neither, for the AWS chain)",
        ));
    }
    let path_style = parse_switch(
        "S3_PATH_STYLE",
        raw.s3_path_style.as_deref(),
        endpoint.is_some(),
    )?;
    let presign_reads = parse_switch("S3_PRESIGN_READS", raw.s3_presign_reads.as_deref(), false)?;
    let pool_size: u64 = parse_num(
        "DATABASE_POOL_SIZE",
        raw.database_pool_size.as_deref(),
        10u64,
    )?;
    let pool_size = u32::try_from(pool_size)
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| ConfigError::new("DATABASE_POOL_SIZE", "must be between 1 and 1000"))?;
    let prefix = set(&raw.s3_prefix).unwrap_or_default();
    let allow_http = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    Ok(Backend::S3(Box::new(CloudSettings {
        s3: crate::store::s3::S3Config {
            endpoint,
            bucket,
            region: set(&raw.s3_region).unwrap_or_else(|| "us-east-1".to_owned()),
            access_key_id: key_id.unwrap_or_default(),
            secret_access_key: SecretString::from(secret.unwrap_or_default()),
            prefix: prefix.trim_matches('/').to_owned(),
            path_style,
            allow_http,
            buffer_budget: crate::store::s3::DEFAULT_BUFFER_BUDGET,
        },
        presign_reads,
        database_url: SecretString::from(database_url),
        pool_size,
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::env_file::parse_env_file;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_sources(HashMap::new(), env)
    }

    #[test]
    fn defaults_match_the_old_service() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 5070);
        assert_eq!(s.bind_host, "127.0.0.1");
        assert_eq!(s.upload_root, PathBuf::from("/data/uploads"));
        assert_eq!(s.public_base_url, "http://127.0.0.1:5070");
        assert!(s.service_tokens.is_empty());
        assert!(s.signing_key_previous.is_none());
        assert!(!s.metrics_allow_local);
        assert_eq!(s.max_body_bytes, 5120 * 1024 * 1024);
        assert_eq!(s.quota_bytes, 500 * (1 << 30));
        assert_eq!(s.jwt.kid, "streamline-rsa-1");
        assert_eq!(s.jwt.alg, Algorithm::RS256);
        assert_eq!(s.cors_origins, CorsOrigins::Any);
        assert_eq!(s.upload_session_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(s.request_body_timeout, Duration::from_secs(60));
        assert_eq!(s.request_body_min_rate, 1024);
        assert_eq!(s.request_body_rate_window, Duration::from_secs(30));
        assert_eq!(s.request_header_timeout, Duration::from_secs(30));
        assert_eq!(s.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(s.sidecar_cache, Duration::from_secs(10));
    }

    #[test]
    fn the_sidecar_cache_lifetime_is_a_setting() {
        let s = settings(&[("SIDECAR_CACHE_SECS", "0")]).unwrap();
        assert_eq!(s.sidecar_cache, Duration::ZERO);
        let s = settings(&[("SIDECAR_CACHE_SECS", "1")]).unwrap();
        assert_eq!(s.sidecar_cache, Duration::from_secs(1));
        for bad in ["-1", "1.5", "86401"] {
            let e = settings(&[("SIDECAR_CACHE_SECS", bad)]).unwrap_err();
            assert_eq!(e.var, "SIDECAR_CACHE_SECS", "{bad}");
        }
        assert_eq!(s.response_stall_timeout, Duration::from_secs(60));
        assert_eq!(s.max_connections, None);
    }

    #[test]
    fn connection_and_body_timeouts_are_checked() {
        let s = settings(&[
            ("REQUEST_BODY_MIN_RATE", "0"),
            ("REQUEST_HEADER_TIMEOUT_SECS", "5"),
            ("KEEPALIVE_TIMEOUT_SECS", "90"),
            ("RESPONSE_STALL_TIMEOUT_SECS", "7"),
            ("MAX_CONNECTIONS", "500"),
        ])
        .unwrap();
        assert_eq!(s.response_stall_timeout, Duration::from_secs(7));
        assert_eq!(s.max_connections, Some(500));
        assert_eq!(s.request_body_min_rate, 0);
        assert_eq!(s.request_header_timeout, Duration::from_secs(5));
        assert_eq!(s.keepalive_timeout, Duration::from_secs(90));
        for var in [
            "REQUEST_BODY_RATE_WINDOW_SECS",
            "REQUEST_HEADER_TIMEOUT_SECS",
            "KEEPALIVE_TIMEOUT_SECS",
            "RESPONSE_STALL_TIMEOUT_SECS",
            "MAX_CONNECTIONS",
        ] {
            assert_eq!(settings(&[(var, "0")]).unwrap_err().var, var);
            assert_eq!(settings(&[(var, "1e3")]).unwrap_err().var, var);
        }
        let e = settings(&[("REQUEST_BODY_MIN_RATE", "-1")]).unwrap_err();
        assert_eq!(e.var, "REQUEST_BODY_MIN_RATE");
    }

    #[test]
    fn environment_wins_over_the_file() {
        let file = parse_env_file("PORT=1111\nBIND_HOST=0.0.0.0\n").unwrap();
        let env = [("PORT".to_owned(), "2222".to_owned())]
            .into_iter()
            .collect();
        let s = Settings::from_sources(file, env).unwrap();
        assert_eq!(s.port, 2222);
        assert_eq!(s.bind_host, "0.0.0.0");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = settings(&[("PORT", "abc")]).unwrap_err();
        assert_eq!(e.var, "PORT");
        let e = settings(&[("PER_USER_QUOTA_GB", "lots")]).unwrap_err();
        assert_eq!(e.var, "PER_USER_QUOTA_GB");
        let e = settings(&[("UPLOAD_SESSION_TTL_HOURS", "1e20")]).unwrap_err();
        assert_eq!(e.var, "UPLOAD_SESSION_TTL_HOURS");
        let e = settings(&[("AUTH_JWT_ALG", "HS256")]).unwrap_err();
        assert_eq!(e.var, "AUTH_JWT_ALG");
        let e = settings(&[("JWT_PUBLIC_KEY_PATH", "/nonexistent/key.pem")]).unwrap_err();
        assert_eq!(e.var, "JWT_PUBLIC_KEY_PATH");
    }

    #[test]
    fn several_service_tokens_none_empty() {
        use secrecy::ExposeSecret as _;
        let s = settings(&[("AUTH_SERVICE_TOKEN", " new-token , old-token ")]).unwrap();
        let tokens: Vec<&str> = s.service_tokens.iter().map(|t| t.expose_secret()).collect();
        assert_eq!(tokens, ["new-token", "old-token"]);
        assert!(settings(&[("AUTH_SERVICE_TOKEN", "  ")])
            .unwrap()
            .service_tokens
            .is_empty());
        for bad in ["a,,b", "a,", ",a", "a, ,b"] {
            let e = settings(&[("AUTH_SERVICE_TOKEN", bad)]).unwrap_err();
            assert_eq!(e.var, "AUTH_SERVICE_TOKEN", "{bad}");
            assert!(e.message.contains("is empty"), "{}", e.message);
        }
    }

    #[test]
    fn previous_signing_key_and_local_metrics() {
        let s = settings(&[
            ("UPLOAD_SIGNING_KEY_PREVIOUS", "old-key"),
            ("METRICS_ALLOW_LOCAL", "1"),
        ])
        .unwrap();
        assert!(s.signing_key_previous.is_some());
        assert!(s.metrics_allow_local);
        assert!(
            !settings(&[("METRICS_ALLOW_LOCAL", "off")])
                .unwrap()
                .metrics_allow_local
        );
        let e = settings(&[("METRICS_ALLOW_LOCAL", "maybe")]).unwrap_err();
        assert_eq!(e.var, "METRICS_ALLOW_LOCAL");
    }

    #[test]
    fn a_reread_takes_the_new_file_over_what_systemd_put_in_the_environment() {
        let dir = std::env::temp_dir().join(format!("reread-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("upload.env");
        std::fs::write(&file, "AUTH_SERVICE_TOKEN=old\nPORT=1111\n").unwrap();
        let file_at_start = read_env_file(&file).unwrap();
        // systemd's EnvironmentFile= put the file's pairs in the environment; PORT was
        // then overridden by hand.
        let process: HashMap<String, String> = [("AUTH_SERVICE_TOKEN", "old"), ("PORT", "2222")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let source = SettingsSource {
            env_file: Some(file.clone()),
            file_at_start,
            process,
        };
        std::fs::write(&file, "AUTH_SERVICE_TOKEN=new\nPORT=3333\n").unwrap();
        let s = source.reread().unwrap();
        use secrecy::ExposeSecret as _;
        assert_eq!(s.service_tokens[0].expose_secret(), "new");
        assert_eq!(s.port, 2222);
        std::fs::write(&file, "AUTH_SERVICE_TOKEN=a,,b\n").unwrap();
        assert_eq!(source.reread().unwrap_err().var, "AUTH_SERVICE_TOKEN");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quota_takes_decimals() {
        let s = settings(&[("PER_USER_QUOTA_GB", "0.5")]).unwrap();
        assert_eq!(s.quota_bytes, 1 << 29);
    }

    #[test]
    fn env_file_values_are_taken_literally() {
        let m = parse_env_file("# comment\nA=ab$HOME\nB=\"quoted value\"\nC='x y'\n  D = 1 \n")
            .unwrap();
        assert_eq!(m["A"], "ab$HOME");
        assert_eq!(m["B"], "quoted value");
        assert_eq!(m["C"], "x y");
        assert_eq!(m["D"], "1");
        assert!(parse_env_file("NOEQUALS\n").is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = settings(&[
            ("AUTH_SERVICE_TOKEN", "supersecret"),
            ("UPLOAD_SIGNING_KEY", "signkey"),
        ])
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("supersecret"));
        assert!(!dbg.contains("signkey"));
    }

    #[test]
    fn cors_list_is_parsed() {
        let s =
            settings(&[("CORS_ALLOW_ORIGINS", "https://a.example, https://b.example")]).unwrap();
        assert_eq!(
            s.cors_origins,
            CorsOrigins::List(vec!["https://a.example".into(), "https://b.example".into()])
        );
        assert!(settings(&[("CORS_ALLOW_ORIGINS", "not an origin")]).is_err());
    }

    #[test]
    fn trusted_origins_are_our_own_and_the_listed_ones() {
        let s = settings(&[
            ("PUBLIC_BASE_URL", "https://Files.example.com/upload/"),
            (
                "CORS_ALLOW_ORIGINS",
                "https://app.example, http://localhost:3000",
            ),
        ])
        .unwrap();
        for yes in [
            "https://files.example.com",
            "https://app.example:443",
            "http://localhost:3000",
        ] {
            assert!(s.trusted_origins.trusts(yes), "{yes}");
        }
        assert!(!s.trusted_origins.trusts("https://evil.example"));
        // `*` allows any origin to read without credentials, and trusts none with a cookie.
        let any = settings(&[("PUBLIC_BASE_URL", "https://files.example.com")]).unwrap();
        assert!(any.trusted_origins.trusts("https://files.example.com"));
        assert!(!any.trusted_origins.trusts("https://app.example"));
        let e = settings(&[("CORS_ALLOW_ORIGINS", "https://app.example/path")]).unwrap_err();
        assert_eq!(e.var, "CORS_ALLOW_ORIGINS");
        let e = settings(&[("PUBLIC_BASE_URL", "https://")]).unwrap_err();
        assert_eq!(e.var, "PUBLIC_BASE_URL");
    }

    #[test]
    fn trusted_proxies_default_to_loopback_and_are_checked() {
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let s = settings(&[]).unwrap();
        assert!(s.trusted_proxies.contains(lo));
        let s = settings(&[("TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")]).unwrap();
        assert!(!s.trusted_proxies.contains(lo));
        assert!(s.trusted_proxies.contains("10.3.2.1".parse().unwrap()));
        let e = settings(&[("TRUSTED_PROXIES", "10.0.0.0/8,10.0.0.0/40")]).unwrap_err();
        assert_eq!(e.var, "TRUSTED_PROXIES");
        assert!(e.message.contains("10.0.0.0/40"), "{}", e.message);
    }

    #[test]
    fn the_upload_page_is_on_unless_turned_off() {
        assert!(settings(&[]).unwrap().upload_page);
        for (v, on) in [
            ("0", false),
            ("off", false),
            ("FALSE", false),
            ("1", true),
            ("yes", true),
        ] {
            assert_eq!(
                settings(&[("UPLOAD_PAGE", v)]).unwrap().upload_page,
                on,
                "{v}"
            );
        }
        let e = settings(&[("UPLOAD_PAGE", "maybe")]).unwrap_err();
        assert_eq!(e.var, "UPLOAD_PAGE");
    }

    #[test]
    fn the_backend_is_fs_unless_s3_is_asked_with_what_it_needs() {
        assert!(matches!(settings(&[]).unwrap().backend, Backend::Fs));
        assert!(matches!(
            settings(&[("STORAGE_BACKEND", "fs")]).unwrap().backend,
            Backend::Fs
        ));
        let err = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().to_string();
        assert!(err(&[("STORAGE_BACKEND", "gcs")]).contains("STORAGE_BACKEND"));
        let s3 = [("STORAGE_BACKEND", "s3")];
        assert!(err(&s3).contains("S3_BUCKET"));
        let bucket = [("STORAGE_BACKEND", "s3"), ("S3_BUCKET", "b")];
        assert!(err(&bucket).contains("DATABASE_URL"));
        let full = [
            ("STORAGE_BACKEND", "s3"),
            ("S3_BUCKET", "b"),
            ("DATABASE_URL", "postgres://u:pw@127.0.0.1/db"),
            ("S3_ENDPOINT", "http://127.0.0.1:3900"),
            ("S3_PREFIX", "/tenant-a/"),
        ];
        let Backend::S3(c) = settings(&full).unwrap().backend else {
            panic!("not s3")
        };
        assert!(c.s3.path_style && c.s3.allow_http && !c.presign_reads);
        assert_eq!((c.s3.prefix.as_str(), c.pool_size), ("tenant-a", 10));
        assert!(
            !format!("{c:?}").contains("pw@"),
            "the database password reached Debug"
        );
        let mut one_key = full.to_vec();
        one_key.push(("S3_ACCESS_KEY_ID", "k"));
        assert!(err(&one_key).contains("S3_SECRET_ACCESS_KEY"));
        let mut bad_url = full.to_vec();
        bad_url[2] = ("DATABASE_URL", "mysql://x");
        assert!(err(&bad_url).contains("DATABASE_URL"));
    }
}
