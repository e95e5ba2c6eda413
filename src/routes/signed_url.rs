//! Minting signed download URLs (API.md §4.4): `GET` and `POST /v1/files/signed-url`.
//! Serving them is `signed.rs`.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use super::files::owned_key;
use super::{route, Routes};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppJson, AppQuery, ErrorBody};
use crate::signer::{self, Disposition};
use crate::state::AppState;

/// The signing routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(route!(signed_url_get))
        .route(route!(signed_url_post))
}

/// What to sign: the key (as `key` or `file_key`), the lifetime (as `ttl` or `expires_in`,
/// seconds, 1 s to 7 days, `SIGNED_URL_TTL_DEFAULT` when absent) and the disposition.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignQuery {
    key: Option<String>,
    /// The same as `key` (the old Python SDK's name).
    file_key: Option<String>,
    #[schema(schema_with = ttl_schema)]
    ttl: Option<Value>,
    #[schema(schema_with = ttl_schema)]
    expires_in: Option<Value>,
    #[schema(schema_with = disposition_schema)]
    disposition: Option<String>,
}

/// `ttl`, `expires_in`: seconds, as a number or a numeric string.
pub(crate) fn ttl_schema() -> impl Into<RefOr<Schema>> {
    utoipa::openapi::schema::OneOfBuilder::new()
        .description(Some(
            "Seconds, 1 s to 7 days, as a number or a numeric string",
        ))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(MAX_TTL)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
}

/// `disposition`: how the signed URL serves the file.
pub(crate) fn disposition_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("`inline` (the default) or `attachment`"))
        .enum_values(Some(["inline", "attachment"]))
}

/// A signed download URL (API.md §4.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUrl {
    /// `{PUBLIC_BASE_URL}/get/{base64url(key)}?exp=..&sig=..[&disposition=attachment]`.
    url: String,
    /// The same as `url` (the old Python SDK's name).
    signed_url: String,
    /// Seconds the URL is valid.
    expires_in: i64,
    /// When it expires, Unix seconds.
    expires_at: i64,
    /// `inline` or `attachment`.
    disposition: &'static str,
}

/// Largest signed-URL lifetime: 7 days.
const MAX_TTL: i64 = 7 * 24 * 3600;

/// Where the parameters came from, as FastAPI names it in a 422's `loc`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ParamsIn {
    Query,
    Body,
}

impl ParamsIn {
    fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Body => "body",
        }
    }
}

pub(crate) async fn sign_url(
    state: &AppState,
    caller: &Caller,
    q: SignQuery,
    from: ParamsIn,
) -> ApiResult<Json<SignedUrl>> {
    let raw = q.key.or(q.file_key).ok_or_else(|| {
        ApiError::validation(&[from.as_str(), "key"], "Field required", "missing")
    })?;
    let key = owned_key(caller, &raw)?;
    let ttl = match q.ttl.or(q.expires_in) {
        None | Some(Value::Null) => state.settings.signed_url_ttl_default as i64,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(-1),
        Some(_) => -1,
    };
    if !(1..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl must be between 1 and {MAX_TTL} seconds (in the {})",
            from.as_str()
        )));
    }
    let disposition = match q.disposition.as_deref() {
        None | Some("") => Disposition::Inline,
        Some(d) => Disposition::parse(d).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "disposition must be 'inline' or 'attachment' (in the {})",
                from.as_str()
            ))
        })?,
    };
    state.store.entry(&key).await?;
    let exp = chrono::Utc::now().timestamp() + ttl;
    let url = signer::signed_url(
        &state.settings.public_base_url,
        state.secrets().signing.current(),
        &key.to_string(),
        exp,
        disposition,
    );
    Ok(Json(SignedUrl {
        signed_url: url.clone(),
        url,
        expires_in: ttl,
        expires_at: exp,
        disposition: disposition.as_str(),
    }))
}

/// Signs a download URL for a file.
#[utoipa::path(get, path = "/v1/files/signed-url", tag = "files",
    params(
        ("key" = Option<String>, Query, description = "The file's key (or `file_key`); required"),
        ("file_key" = Option<String>, Query, description = "The same as `key`"),
        ("ttl" = Option<i64>, Query, minimum = 1, maximum = 604800, description = "Seconds, 1 s to 7 days; `SIGNED_URL_TTL_DEFAULT` when absent"),
        ("expires_in" = Option<i64>, Query, minimum = 1, maximum = 604800, description = "The same as `ttl`"),
        ("disposition" = Option<String>, Query, description = "`inline` (the default) or `attachment`"),
    ),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The URL", body = SignedUrl),
        (status = 400, description = "Not a file key, or a bad ttl or disposition", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Another user's file", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 422, description = "No key given", body = ErrorBody),
    ))]
pub(crate) async fn signed_url_get(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<HashMap<String, String>>,
) -> ApiResult<Json<SignedUrl>> {
    let get = |k: &str| q.get(k).cloned();
    let q = SignQuery {
        key: get("key"),
        file_key: get("file_key"),
        ttl: get("ttl").map(Value::from),
        expires_in: get("expires_in").map(Value::from),
        disposition: get("disposition"),
    };
    sign_url(&state, &caller, q, ParamsIn::Query).await
}

/// Signs a download URL for a file, parameters in a JSON body (the old Python SDK's form).
#[utoipa::path(post, path = "/v1/files/signed-url", tag = "files",
    request_body = SignQuery,
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The URL", body = SignedUrl),
        (status = 400, description = "Not a file key, or a bad ttl or disposition", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Another user's file", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Malformed JSON, or no key given", body = ErrorBody),
    ))]
pub(crate) async fn signed_url_post(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(q): AppJson<SignQuery>,
) -> ApiResult<Json<SignedUrl>> {
    sign_url(&state, &caller, q, ParamsIn::Body).await
}
