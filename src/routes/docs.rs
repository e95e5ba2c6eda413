//! The service describes itself (API.md §5): the OpenAPI document, Swagger UI at `/docs`,
//! ReDoc at `/redoc` (every file from this server, nothing from a CDN), and `/instructions`.

use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{route, Routes};
use crate::error::{ApiError, AppPath, ErrorBody};
use crate::state::AppState;

/// The self-description routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(route!(openapi_json))
        .route(route!(swagger_page))
        .route(route!(swagger_slash))
        .route(route!(swagger_file))
        .route(route!(redoc_page))
        .route(route!(redoc_slash))
        .route(route!(redoc_script))
        .route(route!(instructions))
}

/// The OpenAPI document. Its paths, and the schemas they use, are the route registry's
/// ([`RegisteredPaths`]); the API tests check them against the app both ways.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stream-Line Upload Server",
        description = "Uploads (three-step, raw parts, one request), listings, public links, \
            signed URLs and streamed ZIPs over a local data root. Callers authenticate with \
            `X-Service-Token` (services, acting for any user they name) or a user JWT in \
            `Authorization: Bearer` or the `auth_token` cookie. Every error body is \
            `{\"detail\": ...}`. See also `/instructions`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&RegisteredPaths, &SecuritySchemes),
    tags(
        (name = "uploads", description = "Three-step and one-request uploads, upload sessions"),
        (name = "files", description = "Listing, metadata, signed URLs, delete"),
        (name = "downloads", description = "Public links, signed URLs and batch ZIPs: no authentication"),
        (name = "service", description = "Service endpoints: health, keys, tokens, metrics"),
        (name = "docs", description = "This document, its viewers and the integration guide"),
    )
)]
pub struct ApiDoc;

/// Every route the registry serves (`super::routes`), with its `#[utoipa::path]` operation.
struct RegisteredPaths;

impl Modify for RegisteredPaths {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        super::routes().document(doc);
    }
}

/// The three ways to authenticate (API.md §2).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "service_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Service-Token",
                "The shared service token (`AUTH_SERVICE_TOKEN`): act for any user, named in the request",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A user's JWT: act for that user only"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "auth_token",
                "A user's JWT in the `auth_token` cookie. A write (not GET, HEAD or \
                 OPTIONS) with it must come from this service's origin or one allowed by \
                 CORS (`Origin`), or without `Origin` and not `Sec-Fetch-Site: cross-site` \
                 or `same-site`; else 403",
            ))),
        );
        components.add_security_scheme(
            "upload_grant",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "grant",
                "A signed upload URL's `grant`, always sent with its `sig` (both from \
                 `POST /v1/files/sign-upload`): uploads for the grant's user and folder \
                 only, within its `max_size` and MIME types; invalid or expired → 403",
            ))),
        );
    }
}

/// The document as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document, built once.
static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(openapi);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}

/// What the viewer pages may load: this server only. Styles inline because both viewers
/// set styles from script; images as data URLs (icons). ReDoc's footer logo, its one
/// external URL, is refused by `img-src`.
const VIEWER_CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'self'";

fn html_page(html: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(VIEWER_CSP),
            ),
        ],
        html,
    )
        .into_response()
}

/// Swagger UI.
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "The Swagger UI page", content_type = "text/html", body = String)))]
async fn swagger_page() -> Response {
    html_page(include_str!("../../assets/docs.html"))
}

/// How Swagger UI starts: the document at `openapi.json` beside the page, and no online
/// validator badge (it would load an image from validator.swagger.io).
fn swagger_config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    Arc::new(
        utoipa_swagger_ui::Config::new(["openapi.json"])
            .validator_url("none")
            .display_request_duration(true),
    )
}

/// `/docs/` is `/docs` (the page's files are relative to `/docs`, so it is not served twice).
#[utoipa::path(get, path = "/docs/", tag = "docs",
    responses((status = 308, description = "Permanent redirect to `/docs`",
        headers(("location" = String, description = "`/docs`")))))]
async fn swagger_slash() -> Redirect {
    Redirect::permanent("/docs")
}

/// Swagger UI's own files (vendored in the binary).
#[utoipa::path(get, path = "/docs/{file}", tag = "docs",
    params(("file" = String, Path, description = "e.g. `swagger-ui-bundle.js`")),
    responses(
        (status = 200, description = "The file", content_type = "*/*", body = Vec<u8>),
        (status = 404, description = "No such file", body = ErrorBody),
    ))]
async fn swagger_file(AppPath(file): AppPath<String>) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound("File not found".to_owned());
    if file == "index.html" {
        // Its relative links only work under `/docs/`: the page is `/docs`.
        return Err(not_found());
    }
    let served = utoipa_swagger_ui::serve(&file, swagger_config())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("swagger-ui: {e}")))?
        .ok_or_else(not_found)?;
    let content_type = HeaderValue::from_str(&served.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        served.bytes.into_owned(),
    )
        .into_response())
}

/// `/redoc/` is `/redoc`.
#[utoipa::path(get, path = "/redoc/", tag = "docs",
    responses((status = 308, description = "Permanent redirect to `/redoc`",
        headers(("location" = String, description = "`/redoc`")))))]
async fn redoc_slash() -> Redirect {
    Redirect::permanent("/redoc")
}

/// ReDoc.
#[utoipa::path(get, path = "/redoc", tag = "docs",
    responses((status = 200, description = "The ReDoc page", content_type = "text/html", body = String)))]
async fn redoc_page() -> Response {
    html_page(include_str!("../../assets/redoc.html"))
}

/// ReDoc's standalone bundle (redoc@2.5.4, `assets/redoc.standalone.js`).
#[utoipa::path(get, path = "/redoc/redoc.standalone.js", tag = "docs",
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String)))]
async fn redoc_script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        include_str!("../../assets/redoc.standalone.js"),
    )
        .into_response()
}

/// How to integrate with this deployment, in Markdown, with curl examples on
/// `PUBLIC_BASE_URL`. It holds no secret: tokens appear as shell variables.
#[utoipa::path(get, path = "/instructions", tag = "docs",
    responses((status = 200, description = "The guide", content_type = "text/markdown", body = String)))]
async fn instructions(State(state): State<AppState>) -> Response {
    let text = include_str!("../../assets/instructions.md")
        .replace("{BASE}", &state.settings.public_base_url);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/markdown; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
