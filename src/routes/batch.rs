//! Batch ZIP downloads (API.md §4.5): `POST /v1/files/batch-download` makes a token;
//! `GET`/`HEAD /v1/files/batch-download/{token}` streams the archive, with an exact length
//! and byte ranges by default.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::conditional::{self, Outcome, Validators};
use super::{route, Routes};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppJson, AppPath, ErrorBody};
use crate::metrics::RouteKind;
use crate::state::AppState;
use crate::store::batch::BatchToken;
use crate::store::key::Key;
use crate::store::read::FileEntry;
use crate::zip_stream::{self, Layout, ZipFile};

/// The batch routes.
pub fn routes() -> Routes {
    Routes::new()
        .route(route!(create_batch))
        .route(route!(download_batch).counted_as(RouteKind::BatchDownload))
}

/// Most keys in one batch.
const MAX_KEYS: usize = 1000;

/// The files of a ZIP.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// 1 to 1000 keys; a key may repeat (its entry is then renamed).
    #[schema(min_items = 1, max_items = 1000)]
    keys: Vec<String>,
    /// Deflate what is not already compressed (no `Content-Length` nor ranges then).
    #[serde(default)]
    compress: bool,
}

/// A batch-download token.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCreated {
    /// For `GET /v1/files/batch-download/{token}`.
    token: String,
    /// Seconds the token lives.
    expires_in: u64,
    /// Files in the batch.
    files: usize,
}

/// Makes a token for a ZIP of the given files.
#[utoipa::path(post, path = "/v1/files/batch-download", tag = "downloads",
    request_body = BatchRequest,
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The token", body = BatchCreated),
        (status = 400, description = "No keys, or more than 1000", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Another user's file", body = ErrorBody),
        (status = 404, description = "A file that does not exist", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Malformed JSON or a missing field", body = ErrorBody),
    ))]
async fn create_batch(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(req): AppJson<BatchRequest>,
) -> ApiResult<Json<BatchCreated>> {
    if req.keys.is_empty() || req.keys.len() > MAX_KEYS {
        return Err(ApiError::BadRequest(format!(
            "keys must hold 1 to {MAX_KEYS} keys"
        )));
    }
    for raw in &req.keys {
        let key =
            Key::parse(raw).map_err(|_| ApiError::NotFound(format!("File not found: {raw}")))?;
        if !caller.may_access(key.owner().as_str()) {
            return Err(ApiError::access_denied());
        }
        let entry = state
            .store
            .entry(&key)
            .await
            .map_err(|_| ApiError::NotFound(format!("File not found: {raw}")))?;
        // Record a missing CRC now, so the download can lay out its archive at once.
        state.store.ensure_crc(&entry).await?;
    }
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(state.settings.batch_token_ttl)
        .unwrap_or(chrono::Duration::hours(1));
    let requested_by = match &caller {
        Caller::Service => "service".to_owned(),
        Caller::User(u) => u.as_str().to_owned(),
    };
    let token = state
        .store
        .create_batch(BatchToken {
            keys: req.keys.clone(),
            compress: req.compress,
            requested_by,
            created_at: now,
            expires_at: now + ttl,
        })
        .await?;
    tracing::info!(target: "activity", event = "batch_create", files = req.keys.len(), compress = req.compress);
    Ok(Json(BatchCreated {
        token,
        expires_in: state.settings.batch_token_ttl.as_secs(),
        files: req.keys.len(),
    }))
}

fn archive_name(entries: &[FileEntry]) -> String {
    let stamp = Utc::now().format("%Y%m%d_%H%M%S");
    match entries {
        [one] => {
            let name = &one.meta.original_name;
            let stem = match name.rfind('.') {
                Some(i) if i > 0 => &name[..i],
                _ => name.as_str(),
            };
            let safe: String = stem
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_. ".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{}_{stamp}.zip", safe.trim())
        }
        _ => format!("batch_download_{stamp}.zip"),
    }
}

/// The ZIP, streamed; no authentication: the token is the capability. `HEAD`
/// too; `Range` and `If-Range` unless the batch asked for compression.
#[utoipa::path(get, path = "/v1/files/batch-download/{token}", tag = "downloads",
    params(
        ("token" = String, Path, description = "From `POST /v1/files/batch-download`"),
        ("Range" = Option<String>, Header, description = "e.g. `bytes=0-99`"),
    ),
    responses(
        (status = 200, description = "The archive", content_type = "application/zip", body = Vec<u8>),
        (status = 206, description = "A range of the archive", content_type = "application/zip", body = Vec<u8>),
        (status = 400, description = "A malformed token", body = ErrorBody),
        (status = 404, description = "Unknown or expired token, or none of the files exist any more", body = ErrorBody),
        (status = 416, description = "Range not satisfiable", body = ErrorBody),
    ))]
async fn download_batch(
    State(state): State<AppState>,
    AppPath(token): AppPath<String>,
    req: Request,
) -> ApiResult<Response> {
    let batch = state.store.batch(&token).await?;
    // Files deleted since the token was made are left out, before anything is sent.
    let mut entries = Vec::with_capacity(batch.keys.len());
    for raw in &batch.keys {
        let Ok(key) = Key::parse(raw) else { continue };
        match state.store.entry(&key).await {
            Ok(e) => entries.push(e),
            Err(_) => tracing::info!(key = %raw, "batch file gone: left out"),
        }
    }
    if entries.is_empty() {
        return Err(ApiError::NotFound(
            "None of the files exist any more".to_owned(),
        ));
    }
    let names = zip_stream::entry_names(
        &entries
            .iter()
            .map(|e| e.meta.original_name.clone())
            .collect::<Vec<_>>(),
    );
    let mut files = Vec::with_capacity(entries.len());
    let mut tag = Sha256::new();
    for (e, name) in entries.iter().zip(names) {
        let crc32 = state.store.ensure_crc(e).await?;
        let modified = e.modified;
        tag.update(format!("{name}\0{}\0{crc32}\0{:?}\0", e.size, modified).as_bytes());
        files.push(ZipFile {
            name,
            open: state.store.zip_source(&e.key),
            size: e.size,
            crc32,
            modified,
            deflate: batch.compress && zip_stream::compressible(&e.meta.mime),
        });
    }
    let etag = format!("\"{}\"", &hex::encode(tag.finalize())[..32]);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename={}", archive_name(&entries)))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let is_head = req.method() == Method::HEAD;
    // One chunk queued: with the one hyper is writing, the socket buffer and the next read
    // underway, that keeps the pipe full, and a client that stops reading holds two chunks
    // (eight were queued before: ~2.4 MB a stalled download, issue 16).
    let (tx, rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(1);
    tracing::info!(target: "activity", event = "batch_download", files = files.len(), compress = batch.compress);

    if batch.compress {
        if is_head {
            return Ok((StatusCode::OK, headers).into_response());
        }
        tokio::spawn(async move {
            if let Err(e) = zip_stream::write_compressed(&files, &tx).await {
                report(&tx, e).await;
            }
        });
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        return Ok((StatusCode::OK, headers, body).into_response());
    }

    let layout = Layout::stored(files);
    let len = layout.len();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    let validators = Validators {
        etag,
        last_modified: None,
        size: len,
    };
    let (status, start, end) = match conditional::evaluate(req.method(), req.headers(), &validators)
    {
        Outcome::Partial { start, end } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end)
        }
        Outcome::Full => (StatusCode::OK, 0, len),
        Outcome::NotModified => {
            headers.remove(header::CONTENT_TYPE);
            return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
        }
        Outcome::PreconditionFailed => return Err(ApiError::PreconditionFailed),
        Outcome::Unsatisfiable => return Err(ApiError::Range { size: len }),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if is_head {
        return Ok((status, headers).into_response());
    }
    tokio::spawn(async move {
        if let Err(e) = layout.write_range(start, end, &tx).await {
            report(&tx, e).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((status, headers, body).into_response())
}

/// A failure mid-archive can only cut the stream: log it, and end the body with an error
/// so the client sees a broken transfer rather than a short archive.
async fn report(tx: &mpsc::Sender<std::io::Result<bytes::Bytes>>, e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        tracing::info!("batch download: client went away");
        return;
    }
    tracing::warn!(error = %e, "batch download cut short");
    let _ = tx.send(Err(e)).await;
}
