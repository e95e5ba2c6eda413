//! The upload page (issue 15): `/upload`, Uppy's Dashboard uploading with tus, and its files
//! under `/upload/{file}`. Every file comes from `assets/` through `include_str!`, as the
//! ReDoc bundle does: Uppy 6.0.1's own `dist/uppy.min.js` and `dist/uppy.min.css` (npm
//! `uppy@6.0.1`, unmodified, licence in `assets/uppy.LICENSE`), and our page, script and
//! styles. `UPLOAD_PAGE=0` turns all of it off (404).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{route, Routes};
use crate::error::{ApiError, AppPath, ErrorBody};
use crate::state::AppState;

/// The upload page routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(route!(upload_page))
        .route(route!(upload_page_file))
}

/// What the page may do: scripts and styles from this server only (styles also inline:
/// Uppy sets them from script), thumbnails as `blob:`/`data:` images, requests to this
/// server only (tus and the listing), no framing, no forms posting elsewhere.
pub const UPLOAD_PAGE_CSP: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob:; \
    font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The bundled Uppy's version, in its file names so they can be cached for good.
pub const UPPY_VERSION: &str = "6.0.1";

/// A vendored file never changes under its versioned name.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Our own page files change with the server: a short cache.
const SHORT: &str = "public, max-age=300";

/// What a request for a file the page does not have is told (404).
pub const NO_SUCH_FILE: &str = "File not found";
/// What every request is told when `UPLOAD_PAGE=0` (404).
pub const TURNED_OFF: &str = "The upload page is turned off";

fn enabled(state: &AppState) -> Result<(), ApiError> {
    if state.settings.upload_page {
        Ok(())
    } else {
        Err(ApiError::NotFound(TURNED_OFF.to_owned()))
    }
}

/// The upload page. Its query may hold a signed upload URL's `grant` and `sig`.
#[utoipa::path(get, path = "/upload", tag = "docs",
    params(
        ("grant" = Option<String>, Query, description = "A signed upload URL's grant (from `POST /v1/files/sign-upload`)"),
        ("sig" = Option<String>, Query, description = "The grant's signature"),
    ),
    responses(
        (status = 200, description = "The page (Uppy's Dashboard, uploading with tus)", content_type = "text/html", body = String),
        (status = 404, description = "The page is turned off (`UPLOAD_PAGE=0`)", body = ErrorBody),
    ))]
async fn upload_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(UPLOAD_PAGE_CSP),
            ),
            // The grant is in the page's URL: never send it on in a Referer.
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        include_str!("../../assets/upload.html"),
    )
        .into_response())
}

/// The page's files: `uppy-6.0.1.min.js`, `uppy-6.0.1.min.css` (Uppy's bundle, cached for
/// a year), `upload.js`, `upload.css` (the page's own) and `uppy.LICENSE`.
#[utoipa::path(get, path = "/upload/{file}", tag = "docs",
    params(("file" = String, Path, description = "e.g. `uppy-6.0.1.min.js`")),
    responses(
        (status = 200, description = "The file", content_type = "*/*", body = String),
        (status = 404, description = "No such file, or the page is turned off", body = ErrorBody),
    ))]
async fn upload_page_file(
    State(state): State<AppState>,
    AppPath(file): AppPath<String>,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let (body, content_type, cache): (&'static str, &'static str, &'static str) =
        match file.as_str() {
            "uppy-6.0.1.min.js" => (
                include_str!("../../assets/uppy-6.0.1.min.js"),
                "text/javascript; charset=utf-8",
                IMMUTABLE,
            ),
            "uppy-6.0.1.min.css" => (
                include_str!("../../assets/uppy-6.0.1.min.css"),
                "text/css; charset=utf-8",
                IMMUTABLE,
            ),
            "upload.js" => (
                include_str!("../../assets/upload.js"),
                "text/javascript; charset=utf-8",
                SHORT,
            ),
            "upload.css" => (
                include_str!("../../assets/upload.css"),
                "text/css; charset=utf-8",
                SHORT,
            ),
            "uppy.LICENSE" => (
                include_str!("../../assets/uppy.LICENSE"),
                "text/plain; charset=utf-8",
                SHORT,
            ),
            _ => return Err(ApiError::NotFound(NO_SUCH_FILE.to_owned())),
        };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The versioned names in the page and the routes follow the bundled version.
    #[test]
    fn the_page_loads_the_bundled_version() {
        let page = include_str!("../../assets/upload.html");
        assert!(page.contains(&format!("upload/uppy-{UPPY_VERSION}.min.js")));
        assert!(page.contains(&format!("upload/uppy-{UPPY_VERSION}.min.css")));
        assert!(
            include_str!("../../assets/uppy.LICENSE").starts_with(&format!("Uppy {UPPY_VERSION} "))
        );
        // No inline script: the CSP would block it.
        assert!(!page.contains("<script>") && !page.contains("onclick"));
    }
}
