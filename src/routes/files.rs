//! `/v1/files` uploads (API.md §3): three-step init/part/complete, raw parts, upload
//! sessions, and the one-request upload.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppJson, AppPath, AppQuery};
use crate::part_json::{PartJsonError, PartJsonParser};
use crate::signer::{self, Disposition};
use crate::state::AppState;
use crate::store::key::{validate_client_filename, FolderPath, Key, UserId};
use crate::store::sessions::{FileSpec, SessionId, SessionInfo, MAX_PART_NUMBER};
use crate::store::{CompleteRequest, PartUpload, StoreError, Stored};

/// The upload routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/files/init", post(init_upload))
        .route("/v1/files/part", post(upload_part_json))
        .route(
            "/v1/files/part/{upload_id}/{part_number}",
            put(upload_part_raw),
        )
        .route("/v1/files/complete", post(complete_upload))
        .route(
            "/v1/files/uploads/{upload_id}",
            get(session_status).delete(abort_session),
        )
        .route(
            "/v1/files/upload",
            post(upload_files).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/files/all", get(list_files))
        .route("/v1/files/metadata/{*key}", get(file_metadata))
        .route(
            "/v1/files/signed-url",
            get(signed_url_get).post(signed_url_post),
        )
        .route("/v1/files/{*key}", axum::routing::delete(delete_file))
}

/// A key from a client: 400 when it is not a file key, 403 when it is not the caller's.
fn owned_key(caller: &Caller, raw: &str) -> ApiResult<Key> {
    let key = Key::parse(raw).map_err(|e| ApiError::BadRequest(e.0))?;
    if !caller.may_access(key.owner().as_str()) {
        return Err(ApiError::access_denied());
    }
    Ok(key)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    user_id: Option<String>,
    user_email: Option<String>,
    folder: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let user = caller.acting_for(q.user_id.as_deref().or(q.user_email.as_deref()))?;
    let folder = q.folder.as_deref().and_then(FolderPath::sanitize);
    let entries = state
        .store
        .list(&user, folder.as_ref().map(FolderPath::segments))
        .await?;
    let total_size: u64 = entries.iter().map(|e| e.size).sum();
    let total_count = entries.len();
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(usize::MAX);
    let files: Vec<Value> = entries
        .iter()
        .skip(offset)
        .take(limit)
        .map(|e| {
            json!({
                "key": e.key.to_string(),
                "filename": e.meta.original_name,
                "size": e.size,
                "mime": e.meta.mime,
                "created_at": e.created_at,
                "folder": e.key.folder(),
            })
        })
        .collect();
    Ok(Json(
        json!({ "files": files, "total_count": total_count, "total_size": total_size }),
    ))
}

async fn file_metadata(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(key): AppPath<String>,
) -> ApiResult<Json<Value>> {
    let key = owned_key(&caller, &key)?;
    let e = state.store.entry(&key).await?;
    let mut body = Map::new();
    for (k, v) in &e.meta.extra {
        body.insert(k.clone(), v.clone());
    }
    body.insert("key".into(), json!(key.to_string()));
    body.insert("original_name".into(), json!(e.meta.original_name));
    body.insert("size".into(), json!(e.size));
    body.insert("mime".into(), json!(e.meta.mime));
    body.insert("sha256".into(), json!(e.meta.sha256));
    body.insert("crc32".into(), json!(e.meta.crc32));
    body.insert("user_id".into(), json!(e.meta.user_id));
    body.insert("createdAt".into(), json!(e.created_at));
    Ok(Json(Value::Object(body)))
}

async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(key): AppPath<String>,
) -> ApiResult<Json<Value>> {
    let key = owned_key(&caller, &key)?;
    state.store.delete(&key).await?;
    tracing::info!(target: "activity", event = "delete", key = %key);
    Ok(Json(json!({ "status": "deleted", "key": key.to_string() })))
}

#[derive(Debug, Deserialize)]
struct SignQuery {
    key: Option<String>,
    file_key: Option<String>,
    ttl: Option<Value>,
    expires_in: Option<Value>,
    disposition: Option<String>,
}

/// Largest signed-URL lifetime: 7 days.
const MAX_TTL: i64 = 7 * 24 * 3600;

async fn sign_url(state: &AppState, caller: &Caller, q: SignQuery) -> ApiResult<Json<Value>> {
    let raw = q
        .key
        .or(q.file_key)
        .ok_or_else(|| ApiError::validation(&["query", "key"], "Field required", "missing"))?;
    let key = owned_key(caller, &raw)?;
    let ttl = match q.ttl.or(q.expires_in) {
        None | Some(Value::Null) => state.settings.signed_url_ttl_default as i64,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(-1),
        Some(_) => -1,
    };
    if !(1..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl must be between 1 and {MAX_TTL} seconds"
        )));
    }
    let disposition = match q.disposition.as_deref() {
        None | Some("") => Disposition::Inline,
        Some(d) => Disposition::parse(d).ok_or_else(|| {
            ApiError::BadRequest("disposition must be 'inline' or 'attachment'".to_owned())
        })?,
    };
    state.store.entry(&key).await?;
    let exp = chrono::Utc::now().timestamp() + ttl;
    let url = signer::signed_url(
        &state.settings.public_base_url,
        state.signing_key.expose(),
        &key.to_string(),
        exp,
        disposition,
    );
    Ok(Json(json!({
        "url": url,
        "signed_url": url,
        "expires_in": ttl,
        "expires_at": exp,
        "disposition": disposition.as_str(),
    })))
}

async fn signed_url_get(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let get = |k: &str| q.get(k).cloned();
    let q = SignQuery {
        key: get("key"),
        file_key: get("file_key"),
        ttl: get("ttl").map(Value::from),
        expires_in: get("expires_in").map(Value::from),
        disposition: get("disposition"),
    };
    sign_url(&state, &caller, q).await
}

async fn signed_url_post(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(q): AppJson<SignQuery>,
) -> ApiResult<Json<Value>> {
    sign_url(&state, &caller, q).await
}

/// Bytes a chunked part holds, for the `parts` count of init.
const CHUNK_SIZE: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
struct InitFile {
    name: String,
    size: i64,
    #[serde(default)]
    mime: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InitRequest {
    #[serde(default = "default_mode")]
    mode: String,
    files: Vec<InitFile>,
    #[serde(default)]
    folder: Option<String>,
    #[serde(default)]
    meta: Option<Map<String, Value>>,
}

fn default_mode() -> String {
    "single".to_owned()
}

/// The user a service names in `meta` (`user_id`, else `user_email`).
fn meta_user(meta: Option<&Map<String, Value>>) -> Option<String> {
    let meta = meta?;
    ["user_id", "user_email"]
        .iter()
        .find_map(|k| meta.get(*k).and_then(Value::as_str).map(str::to_owned))
}

/// Client `meta` without the fields that name the user or the place.
fn client_fields(meta: Option<Map<String, Value>>) -> Map<String, Value> {
    let mut meta = meta.unwrap_or_default();
    for k in ["user_id", "user_email", "filename", "folder"] {
        meta.remove(k);
    }
    meta
}

async fn init_upload(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<InitRequest>,
) -> ApiResult<Json<Value>> {
    if !matches!(req.mode.as_str(), "single" | "chunked" | "batch") {
        return Err(ApiError::validation(
            &["body", "mode"],
            "mode must be one of 'single', 'chunked', 'batch'",
            "enum",
        ));
    }
    if req.files.is_empty() {
        return Err(ApiError::validation(
            &["body", "files"],
            "at least one file is required",
            "too_short",
        ));
    }
    let mut files = Vec::with_capacity(req.files.len());
    for (i, f) in req.files.iter().enumerate() {
        let size = u64::try_from(f.size).map_err(|_| {
            ApiError::Validation(json!([{
                "type": "greater_than_equal",
                "loc": ["body", "files", i, "size"],
                "msg": "size must be 0 or more",
            }]))
        })?;
        validate_client_filename(&f.name).map_err(|e| ApiError::BadRequest(e.0))?;
        files.push(FileSpec {
            name: f.name.clone(),
            size,
            mime: f.mime.clone(),
        });
    }
    let user = caller.acting_for(meta_user(req.meta.as_ref()).as_deref())?;
    let max_size = files.iter().map(|f| f.size).max().unwrap_or(0);
    let several = files.len() > 1 || req.mode == "batch";
    let sessions = state
        .store
        .create_sessions(
            &user,
            &req.mode,
            files,
            req.folder.clone(),
            client_fields(req.meta),
        )
        .await?;
    let first = sessions
        .first()
        .map(|s| s.upload_id.clone())
        .unwrap_or_default();
    tracing::info!(target: "activity", event = "upload_init", user = %user, sessions = sessions.len(), mode = %req.mode);
    let mut body = json!({ "uploadId": first });
    if req.mode == "chunked" {
        body["parts"] = json!(max_size.div_ceil(CHUNK_SIZE).max(1));
    }
    if several {
        body["uploads"] = sessions
            .iter()
            .map(|s| json!({ "uploadId": s.upload_id, "name": s.file.name, "size": s.file.size }))
            .collect();
    }
    Ok(Json(body))
}

/// Loads a session the caller may use: another user's is as unknown as a missing one.
async fn owned_session(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<(SessionId, SessionInfo)> {
    let id = SessionId::parse(id)?;
    let info = state.store.session(&id).await?;
    if !caller.may_access(&info.user_id) {
        return Err(ApiError::NotFound("Upload session not found".to_owned()));
    }
    Ok((id, info))
}

fn part_number(raw: &str) -> ApiResult<u32> {
    let trimmed = raw.trim();
    let n: i64 = trimmed
        .parse()
        .or_else(|_| {
            trimmed
                .parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0)
                .map(|f| f as i64)
                .ok_or(())
        })
        .map_err(|()| {
            ApiError::validation(
                &["body", "partNumber"],
                "partNumber must be an integer",
                "int_parsing",
            )
        })?;
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_PART_NUMBER)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "partNumber must be between 0 and {MAX_PART_NUMBER}"
            ))
        })
}

/// A body error: the request body limit (413), a client that stopped sending (408), or
/// the client gone.
fn body_error(e: &axum::Error) -> ApiError {
    cause_of_body_error(e)
        .unwrap_or_else(|| ApiError::BadRequest("Request body could not be read".to_owned()))
}

/// 413 or 408 when the error chain shows the body limit or the idle timeout.
fn cause_of_body_error(e: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return Some(ApiError::TooLarge("Request body too large".to_owned()));
        }
        if s.is::<tower_http::timeout::TimeoutError>() {
            return Some(ApiError::BodyTimeout);
        }
        source = s.source();
    }
    None
}

async fn upload_part_json(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> ApiResult<Json<Value>> {
    let mut parser = PartJsonParser::new();
    let mut stream = body.into_data_stream();
    let mut decoded = Vec::with_capacity(64 * 1024);
    let mut target: Option<(SessionInfo, PartUpload)> = None;
    let mut staged: Option<PartUpload> = None;
    let parse_err = |e: PartJsonError| match e {
        PartJsonError::Syntax(m) => ApiError::validation(&["body"], m, "json_invalid"),
        PartJsonError::Base64(m) => ApiError::BadRequest(format!("Invalid base64 data: {m}")),
    };
    loop {
        let chunk = match stream.next().await {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return Err(body_error(&e)),
            None => None,
        };
        if let Some(c) = &chunk {
            parser.feed(c, &mut decoded).map_err(parse_err)?;
        }
        let done = chunk.is_none();
        let fields = if done {
            let p = std::mem::take(&mut parser);
            Some(p.finish(&mut decoded).map_err(parse_err)?)
        } else {
            None
        };
        if !decoded.is_empty() || done {
            // Open the part's file on the first decoded bytes: in its session when the
            // uploadId came first (the usual order), else in the staging folder.
            let known = fields
                .as_ref()
                .or(Some(parser.fields()))
                .and_then(|f| Some((f.upload_id.clone()?, f.part_number.clone()?)));
            if target.is_none() && staged.is_none() {
                match &known {
                    Some((id, n)) => {
                        let (_, info) = owned_session(&state, &caller, id).await?;
                        let n = part_number(n)?;
                        let part = state.store.begin_part(&info, n).await?;
                        target = Some((info, part));
                    }
                    None => staged = Some(state.store.begin_staged_part().await?),
                }
            }
            let sink: &mut PartUpload = if let Some((_, p)) = target.as_mut() {
                p
            } else if let Some(p) = staged.as_mut() {
                p
            } else {
                return Err(ApiError::Internal(anyhow::anyhow!("no part file open")));
            };
            if !decoded.is_empty() {
                sink.write(Bytes::from(std::mem::take(&mut decoded)))
                    .await?;
                decoded.reserve(64 * 1024);
            }
        }
        if let Some(fields) = fields {
            let id = fields.upload_id.ok_or_else(|| {
                ApiError::validation(&["body", "uploadId"], "Field required", "missing")
            })?;
            let n_raw = fields.part_number.ok_or_else(|| {
                ApiError::validation(&["body", "partNumber"], "Field required", "missing")
            })?;
            if !fields.saw_chunk {
                return Err(ApiError::validation(
                    &["body", "chunkBase64"],
                    "Field required",
                    "missing",
                ));
            }
            let n = part_number(&n_raw)?;
            let (info, part) = match (target, staged) {
                (Some((info, part)), _) => (info, part),
                (None, Some(part)) => (owned_session(&state, &caller, &id).await?.1, part),
                (None, None) => {
                    return Err(ApiError::Internal(anyhow::anyhow!("part without a file")))
                }
            };
            let size = state.store.commit_part(&info, n, part).await?;
            return Ok(Json(
                json!({ "status": "success", "partNumber": n, "size": size }),
            ));
        }
    }
}

async fn upload_part_raw(
    State(state): State<AppState>,
    caller: Caller,
    AppPath((upload_id, number)): AppPath<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let (_, info) = owned_session(&state, &caller, &upload_id).await?;
    let n = part_number(&number)?;
    let mut part = state.store.begin_part(&info, n).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(&e))?;
        part.write(chunk).await?;
    }
    let size = state.store.commit_part(&info, n, part).await?;
    Ok(Json(
        json!({ "status": "success", "partNumber": n, "size": size }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompleteBody {
    upload_id: String,
    #[serde(default)]
    #[allow(dead_code)]
    parts: Option<Value>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    meta: Option<Map<String, Value>>,
}

async fn complete_upload(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<CompleteBody>,
) -> ApiResult<Json<Value>> {
    let (id, info) = owned_session(&state, &caller, &req.upload_id).await?;
    if let Some(named) = meta_user(req.meta.as_ref()) {
        if named != info.user_id {
            return Err(ApiError::BadRequest(
                "meta names another user than the upload's".to_owned(),
            ));
        }
    }
    let text = |k: &str| {
        req.meta
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let filename = text("filename").filter(|s| !s.trim().is_empty());
    if let Some(name) = &filename {
        validate_client_filename(name).map_err(|e| ApiError::BadRequest(e.0))?;
    }
    let complete = CompleteRequest {
        filename,
        folder: text("folder"),
        sha256: req.sha256.clone(),
        extra: client_fields(req.meta.clone()),
    };
    let stored = state.store.complete(&id, complete).await?;
    tracing::info!(target: "activity", event = "upload", user = %info.user_id, key = %stored.key, size = stored.meta.size.unwrap_or(0));
    Ok(Json(json!({
        "key": stored.key.to_string(),
        "size": stored.meta.size,
        "mime": stored.meta.mime,
        "sha256": stored.meta.sha256,
    })))
}

async fn session_status(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(upload_id): AppPath<String>,
) -> ApiResult<Json<Value>> {
    let (id, info) = owned_session(&state, &caller, &upload_id).await?;
    let parts = state.store.session_parts(&id).await?;
    let received: u64 = parts.iter().map(|(_, s)| s).sum();
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(Json(json!({
        "uploadId": info.upload_id,
        "mode": info.mode,
        "files": [info.file],
        "folder": info.folder,
        "parts": parts.iter().map(|(n, s)| json!({ "partNumber": n, "size": s })).collect::<Vec<_>>(),
        "receivedBytes": received,
        "expectedBytes": info.file.size,
        "createdAt": rfc(info.created_at),
        "expiresAt": rfc(info.expires_at),
    })))
}

async fn abort_session(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(upload_id): AppPath<String>,
) -> ApiResult<Json<Value>> {
    let (_, info) = owned_session(&state, &caller, &upload_id).await?;
    state.store.abort(&info).await?;
    tracing::info!(target: "activity", event = "upload_abort", user = %info.user_id, upload_id = %info.upload_id);
    Ok(Json(json!({ "status": "aborted" })))
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    filename: Option<String>,
    folder: Option<String>,
    user_id: Option<String>,
    user_email: Option<String>,
}

/// Percent-encodes one URL path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@!$&'()*+,;=:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The public `/storage` URL of a key.
pub fn public_url(base: &str, key: &Key) -> String {
    let path: Vec<String> = key.to_string().split('/').map(encode_segment).collect();
    format!("{base}/{}", path.join("/"))
}

fn stored_json(state: &AppState, s: &Stored) -> Value {
    json!({
        "key": s.key.to_string(),
        "size": s.meta.size,
        "mime": s.meta.mime,
        "sha256": s.meta.sha256,
        "url": public_url(&state.settings.public_base_url, &s.key),
    })
}

async fn upload_files(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<UploadQuery>,
    headers: HeaderMap,
    req: Request,
) -> ApiResult<Json<Value>> {
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let stored = if is_multipart {
        let multipart = Multipart::from_request(req, &state).await.map_err(|e| {
            ApiError::BadRequest(format!("Invalid multipart body: {}", e.body_text()))
        })?;
        upload_multipart(&state, &caller, q, multipart).await?
    } else {
        upload_raw(&state, &caller, q, &headers, req.into_body()).await?
    };
    for s in &stored {
        tracing::info!(target: "activity", event = "upload", user = %s.key.owner(), key = %s.key, size = s.meta.size.unwrap_or(0));
    }
    Ok(Json(
        json!({ "files": stored.iter().map(|s| stored_json(&state, s)).collect::<Vec<_>>() }),
    ))
}

async fn upload_raw(
    state: &AppState,
    caller: &Caller,
    q: UploadQuery,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Vec<Stored>> {
    let user = caller.acting_for(q.user_id.as_deref().or(q.user_email.as_deref()))?;
    let name = q
        .filename
        .ok_or_else(|| ApiError::validation(&["query", "filename"], "Field required", "missing"))?;
    validate_client_filename(&name).map_err(|e| ApiError::BadRequest(e.0))?;
    let expected_sha = headers
        .get("x-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    let mut upload = state.store.begin_upload(&user).await?;
    let result = async {
        let mut sink = upload.begin_file().await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| body_error(&e))?;
            upload.write(&mut sink, chunk, 0).await?;
        }
        let folder = q.folder.as_deref().and_then(FolderPath::sanitize);
        let stored = upload
            .publish_file(sink, name, folder, mime, expected_sha, Map::new())
            .await?;
        Ok::<_, ApiError>(vec![stored])
    }
    .await;
    upload.finish().await;
    result
}

async fn upload_multipart(
    state: &AppState,
    caller: &Caller,
    q: UploadQuery,
    mut multipart: Multipart,
) -> ApiResult<Vec<Stored>> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut user: Option<UserId> = match caller {
        Caller::User(u) => Some(u.clone()),
        Caller::Service => q
            .user_id
            .as_deref()
            .or(q.user_email.as_deref())
            .map(|u| caller.acting_for(Some(u)))
            .transpose()?,
    };
    let mut upload = None;
    let mut received = Vec::new();
    let mut total = 0u64;
    let result = async {
        while let Some(mut field) = multipart
            .next_field()
            .await
            .map_err(|e| multipart_error(&e))?
        {
            let name = field.name().unwrap_or("").to_owned();
            if name != "file" && field.file_name().is_none() {
                let text = field.text().await.map_err(|e| multipart_error(&e))?;
                if text.len() > 64 * 1024 {
                    return Err(ApiError::BadRequest(format!("Field '{name}' is too long")));
                }
                if user.is_none() && (name == "user_id" || name == "user_email") {
                    user = Some(caller.acting_for(Some(&text))?);
                }
                fields.insert(name, text);
                continue;
            }
            let owner = match &user {
                Some(u) => u.clone(),
                None => caller.acting_for(None)?,
            };
            let file_name = field.file_name().unwrap_or("").to_owned();
            validate_client_filename(&file_name).map_err(|e| ApiError::BadRequest(e.0))?;
            let mime = field.content_type().map(str::to_owned);
            if upload.is_none() {
                upload = Some(state.store.begin_upload(&owner).await?);
            }
            let Some(up) = upload.as_mut() else { continue };
            let mut sink = up.begin_file().await?;
            while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
                up.write(&mut sink, chunk, total).await?;
            }
            total += sink.written();
            received.push((sink, file_name, mime));
        }
        if received.is_empty() {
            return Err(ApiError::validation(
                &["body", "file"],
                "Field required",
                "missing",
            ));
        }
        let folder = fields
            .get("folder")
            .map(String::as_str)
            .or(q.folder.as_deref())
            .and_then(FolderPath::sanitize);
        let extra = match fields.get("meta") {
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => client_fields(Some(m)),
                _ => {
                    return Err(ApiError::BadRequest(
                        "meta must be a JSON object".to_owned(),
                    ))
                }
            },
            None => Map::new(),
        };
        let Some(up) = upload.as_mut() else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "upload without a work folder"
            )));
        };
        let mut stored = Vec::new();
        for (sink, name, mime) in received {
            stored.push(
                up.publish_file(sink, name, folder.clone(), mime, None, extra.clone())
                    .await?,
            );
        }
        Ok(stored)
    }
    .await;
    if let Some(up) = upload {
        up.finish().await;
    }
    result
}

fn multipart_error(e: &axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge("Request body too large".to_owned());
    }
    if let Some(cause) = cause_of_body_error(e) {
        return cause;
    }
    ApiError::BadRequest(format!("Invalid multipart body: {}", e.body_text()))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::Invalid(m) => Self::BadRequest(m),
            StoreError::SizeMismatch { .. } => Self::BadRequest("Size mismatch".to_owned()),
            StoreError::ShaMismatch => Self::BadRequest("SHA256 mismatch".to_owned()),
            e @ StoreError::Quota { .. } => Self::TooLarge(e.to_string()),
            StoreError::TooLarge => {
                Self::TooLarge("Upload exceeds the declared or allowed size".to_owned())
            }
            StoreError::DiskFull => Self::InsufficientStorage,
            StoreError::Io(io) => Self::Internal(io.into()),
        }
    }
}
