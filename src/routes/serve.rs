//! Sending a stored file (API.md §4.3, §4.4): tower-http's `ServeFile` does ranges, ETag and
//! conditionals; this wrapper validates first, mends what `ServeFile` gets wrong here
//! (If-Range ignored, a malformed Range answered 416, several ranges refused), and adds our
//! headers: type from the sidecar, `nosniff`, `sandbox` for script-capable types, and the
//! disposition of signed URLs. With `ACCEL_REDIRECT_PREFIX` the bytes go through nginx.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;
use tower_http::services::ServeFile;

use crate::error::ApiError;
use crate::signer::Disposition;
use crate::state::AppState;
use crate::store::key::Key;

/// Request headers `ServeFile` may see.
const PASSED: &[header::HeaderName] = &[
    header::RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// Can a browser run script from this type? Such files get `Content-Security-Policy: sandbox`.
pub fn script_capable(mime: &str) -> bool {
    let m = mime.to_ascii_lowercase();
    let essence = m.split(';').next().unwrap_or("").trim();
    essence.contains("html")
        || essence.contains("xml")
        || essence.contains("javascript")
        || essence.contains("ecmascript")
        || essence.contains("svg")
        || essence == "text/jscript"
}

/// `inline; filename="ascii"; filename*=UTF-8''pct` (RFC 6266 with RFC 8187 encoding).
pub fn content_disposition(kind: &str, name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut pct = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            pct.push(b as char);
        } else {
            pct.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{pct}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Percent-encodes a path segment for `X-Accel-Redirect`.
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Does the `If-Range` validator match the response we are about to send?
fn if_range_matches(if_range: &str, res: &HeaderMap) -> bool {
    let v = if_range.trim();
    if v.starts_with('"') {
        // A strong comparison: only an identical strong ETag matches.
        return res.get(header::ETAG).and_then(|e| e.to_str().ok()) == Some(v);
    }
    if v.starts_with("W/") {
        return false;
    }
    let Ok(date) = httpdate::parse_http_date(v) else {
        return false;
    };
    res.get(header::LAST_MODIFIED)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| httpdate::parse_http_date(l).ok())
        == Some(date)
}

/// Serves `key` for GET or HEAD, as a public link (`disposition` `None`) or a signed one.
pub async fn serve_key(
    state: &AppState,
    key: &Key,
    method: &Method,
    headers: &HeaderMap,
    disposition: Option<Disposition>,
    via: &'static str,
) -> Result<Response, ApiError> {
    let (file, entry) = state.store.open_file(key).await?;
    drop(file);
    let mime = entry.meta.mime.clone();
    let mut extra = HeaderMap::new();
    extra.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if script_capable(&mime) {
        extra.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
    }
    if let Some(d) = disposition {
        extra.insert(
            header::CONTENT_DISPOSITION,
            content_disposition(d.as_str(), &entry.meta.original_name),
        );
    }
    tracing::info!(target: "activity", event = "download", via, key = %key, size = entry.size);

    if let Some(prefix) = &state.settings.accel_redirect_prefix {
        let rel = key.to_string();
        let rel = rel.strip_prefix("storage/").unwrap_or(&rel);
        let target: Vec<String> = rel.split('/').map(encode_path_segment).collect();
        let mut res = StatusCode::OK.into_response();
        let h = res.headers_mut();
        h.extend(extra);
        if let Ok(v) = HeaderValue::from_str(&mime) {
            h.insert(header::CONTENT_TYPE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("{prefix}{}", target.join("/"))) {
            h.insert("x-accel-redirect", v);
        }
        return Ok(res);
    }

    let path = state.store.data_path(key);
    let mime_parsed: mime_guess::mime::Mime = mime
        .parse()
        .unwrap_or(mime_guess::mime::APPLICATION_OCTET_STREAM);
    let build = |with_range: bool| {
        let mut req = Request::builder().method(method.clone()).uri("/");
        for name in PASSED {
            if name == header::RANGE && !with_range {
                continue;
            }
            for v in headers.get_all(name) {
                req = req.header(name, v);
            }
        }
        req.body(Body::empty())
    };
    // RFC 9110: a Range header that does not parse is ignored, not refused.
    let range_ok = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| http_range_header::parse_range_header(v).is_ok());
    let serve = |req| {
        ServeFile::new_with_mime(&path, &mime_parsed)
            .ignore_multi_range_requests(true)
            .with_buf_chunk_size(256 * 1024)
            .oneshot(req)
    };
    let req = build(range_ok).map_err(|e| ApiError::Internal(e.into()))?;
    let mut res = serve(req)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    if res.status() == StatusCode::PARTIAL_CONTENT {
        if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
            if !if_range_matches(if_range, res.headers()) {
                // The client's copy is stale: send the whole current file.
                let req = build(false).map_err(|e| ApiError::Internal(e.into()))?;
                res = serve(req)
                    .await
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
            }
        }
    }
    if res.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::NotFound("File not found".to_owned()));
    }
    let (mut parts, body) = res.into_parts();
    parts.headers.extend(extra);
    if parts.status.is_success() || parts.status == StatusCode::NOT_MODIFIED {
        parts
            .headers
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_types() {
        for t in [
            "text/html",
            "application/xhtml+xml",
            "image/svg+xml",
            "text/xml",
            "application/javascript",
            "text/html; charset=utf-8",
        ] {
            assert!(script_capable(t), "{t}");
        }
        for t in [
            "image/png",
            "video/mp4",
            "text/plain",
            "application/octet-stream",
        ] {
            assert!(!script_capable(t), "{t}");
        }
    }

    #[test]
    fn disposition_encodes_non_ascii() {
        let v = content_disposition("attachment", "Résumé été.pdf");
        assert_eq!(
            v.to_str().unwrap_or(""),
            "attachment; filename=\"R_sum_ _t_.pdf\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%C3%A9t%C3%A9.pdf"
        );
    }
}
