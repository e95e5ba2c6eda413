//! Parsing single settings: numbers, durations, decimals, the CORS list, the trusted
//! origins and proxies, key files and base64 PEMs; every error names its variable.

use secrecy::SecretString;

use super::{ConfigError, CorsOrigins};
use crate::trust::{TrustedOrigins, TrustedProxies, WebOrigin};

pub(super) fn parse_num<T: std::str::FromStr>(
    var: &str,
    value: Option<&str>,
    default: T,
) -> Result<T, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ConfigError::new(var, format!("'{v}' is not a valid whole number"))),
    }
}

/// Whole seconds, above 0 and at most a day (a longer connection or body timeout is a typo).
pub(super) fn positive_secs(
    var: &str,
    value: Option<&str>,
    default: u64,
) -> Result<u64, ConfigError> {
    let secs: u64 = parse_num(var, value, default)?;
    if secs == 0 || secs > 86_400 {
        return Err(ConfigError::new(var, "must be between 1 and 86400 seconds"));
    }
    Ok(secs)
}

/// `AUTH_SERVICE_TOKEN`: tokens separated by commas, each trimmed; an empty value (or none)
/// turns service auth off, an empty token in a list is refused (`a,,b` or a trailing comma
/// is a typo, and would otherwise be silently ignored).
pub(super) fn parse_service_tokens(value: Option<&str>) -> Result<Vec<SecretString>, ConfigError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if let Some(i) = items.iter().position(|t| t.is_empty()) {
        return Err(ConfigError::new(
            "AUTH_SERVICE_TOKEN",
            format!(
                "token {} of {} is empty (tokens are separated by commas)",
                i + 1,
                items.len()
            ),
        ));
    }
    Ok(items
        .into_iter()
        .map(|t| SecretString::from(t.to_owned()))
        .collect())
}

/// A switch: `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (any case); empty: `default`.
pub(super) fn parse_switch(
    var: &str,
    value: Option<&str>,
    default: bool,
) -> Result<bool, ConfigError> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(ConfigError::new(
            var,
            format!("'{v}' is not 0 or 1 (or false/true, no/yes, off/on)"),
        )),
    }
}

pub(super) fn parse_decimal(
    var: &str,
    value: Option<&str>,
    default: f64,
) -> Result<f64, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(ConfigError::new(
                var,
                format!("'{v}' is not a non-negative number"),
            )),
        },
    }
}

pub(super) fn parse_cors(value: &str) -> Result<CorsOrigins, ConfigError> {
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() || items.contains(&"*") {
        return Ok(CorsOrigins::Any);
    }
    for o in &items {
        if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
            return Err(ConfigError::new(
                "CORS_ALLOW_ORIGINS",
                format!("'{o}' is not an origin such as https://app.example.com"),
            ));
        }
    }
    Ok(CorsOrigins::List(
        items.into_iter().map(str::to_owned).collect(),
    ))
}

/// Whom requests are believed about, parsed once: the origins trusted for cookie-authenticated
/// writes (this service's own and the listed CORS origins; `*` lists none, as it allows no
/// credentials either) and the proxies trusted for forwarding headers (`TRUSTED_PROXIES`).
pub(super) fn trust_settings(
    public_base_url: &str,
    cors: &CorsOrigins,
    proxies: Option<&str>,
) -> Result<(TrustedOrigins, TrustedProxies), ConfigError> {
    let own = WebOrigin::of_url(public_base_url)
        .ok_or_else(|| ConfigError::new("PUBLIC_BASE_URL", "is not an http(s) URL with a host"))?;
    let mut origins = vec![own];
    if let CorsOrigins::List(list) = cors {
        for o in list {
            origins.push(WebOrigin::parse(o).ok_or_else(|| {
                ConfigError::new(
                    "CORS_ALLOW_ORIGINS",
                    format!("'{o}' is not an origin such as https://app.example.com"),
                )
            })?);
        }
    }
    let proxies = TrustedProxies::parse(proxies.unwrap_or(TrustedProxies::DEFAULT))
        .map_err(|e| ConfigError::new("TRUSTED_PROXIES", e))?;
    Ok((TrustedOrigins::new(origins), proxies))
}

pub(super) fn read_key_file(var: &str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(var, format!("cannot read '{path}': {e}")))
}

pub(super) fn decode_pem_base64(b64: &str) -> Result<String, ConfigError> {
    use base64::Engine as _;
    let var = "AUTH_JWT_PUBLIC_KEY_BASE64";
    // `base64` wraps its output at 76 columns; the wrapped form must work too.
    let compact: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| ConfigError::new(var, format!("not valid base64: {e}")))?;
    String::from_utf8(bytes).map_err(|_| ConfigError::new(var, "does not decode to a PEM text"))
}
