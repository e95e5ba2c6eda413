//! `POST /v1/files/upload`: files in one request, multipart or raw, streamed to disk
//! (API.md §3.3).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use futures_util::StreamExt as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::grant::{UploadGrant, Uploader};
use super::{body_error, cause_of_body_error, client_fields};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, AppQuery, ErrorBody};
use crate::state::AppState;
use crate::store::cloud::NewFile;
use crate::store::key::{ClientFileName, FolderPath, Key, UserId};
use crate::store::{StoreError, Stored};

/// Query parameters of the one-request upload.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file name, for a raw body (required then).
    filename: Option<String>,
    /// The folder the file(s) go to.
    folder: Option<String>,
    /// The user (service callers must name one, here or as a form field).
    user_id: Option<String>,
    /// The user, when named by e-mail.
    user_email: Option<String>,
}

/// The form of a multipart upload.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only: the handler reads the form as a stream
pub struct UploadForm {
    /// One or more files.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
    /// The folder the files go to.
    folder: Option<String>,
    /// The user (service callers).
    user_id: Option<String>,
    /// A JSON object of client fields for the sidecars.
    meta: Option<String>,
}

/// The files stored by a one-request upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    files: Vec<UploadedFile>,
}

/// A stored file and its public link.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedFile {
    /// `storage/{user_id}/[{folder}/]{prefix}_{filename}`.
    key: String,
    size: Option<u64>,
    mime: String,
    /// Hex SHA-256.
    sha256: Option<String>,
    /// The public `/storage` URL.
    url: String,
}

/// What is percent-encoded in the path of a public `/storage` URL: every byte but RFC 3986
/// `pchar` (unreserved `A-Za-z0-9-._~`, sub-delims `!$&'()*+,;=`, `:` and `@`) and the `/`
/// between segments. Keys cannot hold `%`, so nothing is left that a client could read as an
/// escape; the old service's URLs had this form.
const STORAGE_URL_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'/');

/// The public `/storage` URL of a key.
pub fn public_url(base: &str, key: &Key) -> String {
    format!(
        "{base}/{}",
        utf8_percent_encode(&key.to_string(), STORAGE_URL_PATH)
    )
}

pub(crate) fn uploaded_file(state: &AppState, s: &Stored) -> UploadedFile {
    UploadedFile {
        key: s.key.to_string(),
        size: s.meta.size,
        mime: s.meta.mime.clone(),
        sha256: s.meta.sha256.clone(),
        url: public_url(&state.settings.public_base_url, &s.key),
    }
}

/// Uploads in one request: a multipart form with one or more `file` fields,
/// or the raw bytes with `filename` in the query. Bodies stream to disk.
///
/// With a signed upload URL's `grant` and `sig` in the query (from `POST
/// /v1/files/sign-upload`) no other credential is needed: the files go to the grant's user
/// and folder (another `folder` → 403), each at most its `max_size` (413, nothing kept) and
/// of one of its types (403; the type is the one the file is stored with: from the name's
/// extension, else the declared one).
#[utoipa::path(post, path = "/v1/files/upload", tag = "uploads",
    params(
        UploadQuery,
        ("X-Content-SHA256" = Option<String>, Header, description = "Hex SHA-256 of a raw body; checked when given"),
        ("grant" = Option<String>, Query, description = "A signed upload URL's grant (with `sig`): authenticates instead of a token"),
        ("sig" = Option<String>, Query, description = "The grant's signature"),
    ),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (Vec<u8> = "application/octet-stream"),
    )),
    security(("service_token" = []), ("bearer" = []), ("cookie" = []), ("upload_grant" = [])),
    responses(
        (status = 200, description = "The stored files", body = Uploaded),
        (status = 400, description = "An invalid file name, a bad form, SHA256 mismatch, or a service caller named no user", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "A signed upload URL that is invalid or expired, or a type or folder it does not allow", body = ErrorBody),
        (status = 413, description = "Over `MAX_BODY_MB`, the quota, or a signed upload URL's `max_size`", body = ErrorBody),
        (status = 422, description = "No file given", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn upload_files(
    State(state): State<AppState>,
    caller: Uploader,
    AppQuery(q): AppQuery<UploadQuery>,
    headers: HeaderMap,
    req: Request,
) -> ApiResult<Json<Uploaded>> {
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let stored = if is_multipart {
        let multipart = Multipart::from_request(req, &state).await.map_err(|e| {
            ApiError::BadRequest(format!("Invalid multipart body: {}", e.body_text()))
        })?;
        upload_multipart(&state, &caller, q, multipart).await
    } else {
        upload_raw(&state, &caller, q, &headers, req.into_body()).await
    };
    let stored = stored.map_err(|e| with_declared_size(e, &headers))?;
    for s in &stored {
        // `signed_upload`: made with a signed upload URL (no token), so the log shows which.
        tracing::info!(target: "activity", event = "upload", user = %s.key.owner(), key = %s.key, size = s.meta.size.unwrap_or(0), signed_upload = caller.grant().is_some());
    }
    Ok(Json(Uploaded {
        files: stored.iter().map(|s| uploaded_file(&state, s)).collect(),
    }))
}

/// A quota refusal comes as soon as the bytes received pass the room left, so the store
/// knows only what had arrived; the client asked for the whole body, which its
/// `Content-Length` says (a multipart body's includes the form's few hundred bytes).
fn with_declared_size(e: ApiError, headers: &HeaderMap) -> ApiError {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (e, declared) {
        (
            ApiError::Quota {
                used,
                quota,
                requested,
            },
            Some(declared),
        ) => ApiError::Quota {
            used,
            quota,
            requested: requested.max(declared),
        },
        (e, _) => e,
    }
}

pub(crate) async fn upload_raw(
    state: &AppState,
    caller: &Uploader,
    q: UploadQuery,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Vec<Stored>> {
    let user = caller.acting_for(q.user_id.as_deref().or(q.user_email.as_deref()))?;
    let grant = caller.grant();
    let name = q
        .filename
        .ok_or_else(|| ApiError::validation(&["query", "filename"], "Field required", "missing"))?;
    let name = ClientFileName::parse(&name)?;
    let expected_sha = headers
        .get("x-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    let folder = match grant {
        Some(g) => {
            // Everything the grant decides is checked before a byte is read.
            g.check_file(name.as_str(), mime.as_deref(), content_length(headers))?;
            g.folder_for(q.folder.as_deref())?
        }
        None => q.folder.as_deref().and_then(FolderPath::sanitize),
    };
    // The request's own failures (a body cut short, a grant's size) keep their answer; the
    // store sees only that the body failed.
    let failed: std::sync::Mutex<Option<ApiError>> = std::sync::Mutex::new(None);
    let mut written = 0u64;
    let body = body.into_data_stream().map(|chunk| {
        let checked = chunk.map_err(|e| body_error(&e)).and_then(|chunk| {
            check_grant_size(grant, written, &chunk)?;
            written += chunk.len() as u64;
            Ok(chunk)
        });
        checked.map_err(|e| {
            let text = e.to_string();
            if let Ok(mut f) = failed.lock() {
                f.get_or_insert(e);
            }
            StoreError::Io(std::io::Error::other(text))
        })
    });
    let new = NewFile {
        user,
        name,
        folder,
        declared_mime: mime,
        expected_sha,
        extra: Map::new(),
    };
    match state
        .store
        .put_file(new, body, state.settings.max_body_bytes)
        .await
    {
        Ok(stored) => Ok(vec![stored]),
        Err(e) => Err(failed
            .into_inner()
            .ok()
            .flatten()
            .unwrap_or_else(|| e.into())),
    }
}

/// The request's `Content-Length`, when it has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// With a grant, 413 as soon as a file's bytes would pass its `max_size` (the chunk is not
/// written, and the caller's error drops everything received).
fn check_grant_size(grant: Option<&UploadGrant>, written: u64, chunk: &[u8]) -> ApiResult<()> {
    match grant {
        Some(g) => g.check_size(written + chunk.len() as u64),
        None => Ok(()),
    }
}

pub(crate) async fn upload_multipart(
    state: &AppState,
    caller: &Uploader,
    q: UploadQuery,
    mut multipart: Multipart,
) -> ApiResult<Vec<Stored>> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut text_bytes = 0usize;
    let grant = caller.grant();
    if let Some(g) = grant {
        // A folder in the query is known now: refuse it before reading the body.
        g.folder_for(q.folder.as_deref())?;
    }
    let mut user: Option<UserId> = match caller {
        Uploader::Grant(g) => Some(g.user.clone()),
        Uploader::Caller(Caller::User(u)) => Some(u.clone()),
        Uploader::Caller(Caller::Service) => q
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
                if !TEXT_FIELDS.contains(&name.as_str()) {
                    // Not ours: read past it, keeping nothing (issue 16: thousands of
                    // unknown fields were all held in memory).
                    while field
                        .chunk()
                        .await
                        .map_err(|e| multipart_error(&e))?
                        .is_some()
                    {}
                    continue;
                }
                // Read a text field a chunk at a time, so a huge one is refused early. The
                // limit covers all the text fields together, repeats included.
                let mut raw = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
                    text_bytes += chunk.len();
                    if text_bytes > MAX_TEXT_FIELDS {
                        return Err(ApiError::TooLarge(format!(
                            "The form's text fields ({}) exceed {MAX_TEXT_FIELDS} bytes together",
                            TEXT_FIELDS.join(", ")
                        )));
                    }
                    raw.extend_from_slice(&chunk);
                }
                let text = String::from_utf8(raw)
                    .map_err(|_| ApiError::BadRequest(format!("Field '{name}' is not UTF-8")))?;
                if user.is_none() && (name == "user_id" || name == "user_email") {
                    user = Some(caller.acting_for(Some(&text))?);
                }
                fields.insert(name, text);
                continue;
            }
            if received.len() >= MAX_FILES_PER_UPLOAD {
                return Err(ApiError::BadRequest(format!(
                    "At most {MAX_FILES_PER_UPLOAD} files per request"
                )));
            }
            // The file streams to disk under its owner's quota as it arrives, so the owner
            // must be known by then; `folder` and `meta` may come after the file.
            let Some(owner) = user.clone() else {
                return Err(ApiError::BadRequest(
                    "user_id is required for service calls: name the user in the query \
                     (?user_id=...) or in a user_id (or user_email) form field placed before \
                     the file part"
                        .to_owned(),
                ));
            };
            let file_name = ClientFileName::parse(field.file_name().unwrap_or(""))?;
            let mime = field.content_type().map(str::to_owned);
            if let Some(g) = grant {
                g.check_file(file_name.as_str(), mime.as_deref(), None)?;
            }
            if upload.is_none() {
                upload = Some(state.store.begin_upload(&owner).await?);
            }
            let Some(up) = upload.as_mut() else { continue };
            let mut sink = up.begin_file().await?;
            while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
                check_grant_size(grant, sink.written(), &chunk)?;
                up.write(&mut sink, chunk, total).await?;
            }
            total += sink.written();
            // Finished now: a waiting file holds no buffer, only its temp file.
            received.push((sink.finish().await?, file_name, mime));
        }
        if received.is_empty() {
            return Err(ApiError::validation(
                &["body", "file"],
                "Field required",
                "missing",
            ));
        }
        let asked = fields
            .get("folder")
            .map(String::as_str)
            .or(q.folder.as_deref());
        let folder = match grant {
            Some(g) => g.folder_for(asked)?,
            None => asked.and_then(FolderPath::sanitize),
        };
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
        let mut stored: Vec<Stored> = Vec::new();
        for (file, name, mime) in received {
            match up
                .publish_file(file, name, folder.clone(), mime, None, extra.clone())
                .await
            {
                Ok(s) => stored.push(s),
                Err(e) => {
                    // All or nothing: the files of this request already published go too.
                    for s in &stored {
                        let _ = state.store.delete(&s.key).await;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(stored)
    }
    .await;
    if let Some(up) = upload {
        up.finish().await;
    }
    result
}

/// The text fields of a multipart upload (API.md §3.3); any other is read past and dropped.
const TEXT_FIELDS: [&str; 4] = ["folder", "user_id", "user_email", "meta"];
/// Most bytes of [`TEXT_FIELDS`] in one multipart upload, together.
const MAX_TEXT_FIELDS: usize = 64 * 1024;
/// Most files in one multipart upload.
const MAX_FILES_PER_UPLOAD: usize = 1000;

pub(crate) fn multipart_error(e: &axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::BodyTooLarge;
    }
    if let Some(cause) = cause_of_body_error(e) {
        return cause;
    }
    ApiError::BadRequest(format!("Invalid multipart body: {}", e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ASCII byte is kept or escaped as the hand-written encoder this set replaced did.
    #[test]
    fn storage_url_path_keeps_pchar_and_slash() {
        for b in 0u8..=127 {
            let kept = b.is_ascii_alphanumeric() || b"-._~@!$&'()*+,;=:/".contains(&b);
            let one = char::from(b).to_string();
            let want = if kept {
                one.clone()
            } else {
                format!("%{b:02X}")
            };
            assert_eq!(
                utf8_percent_encode(&one, STORAGE_URL_PATH).to_string(),
                want,
                "{b}"
            );
        }
        let hostile = "a b/\"%<>?#[]\\^`{|}\u{7f}\t\r\n-._~!$&'()*+,;=:@é😀\u{202e}";
        assert_eq!(
            utf8_percent_encode(hostile, STORAGE_URL_PATH).to_string(),
            "a%20b/%22%25%3C%3E%3F%23%5B%5D%5C%5E%60%7B%7C%7D%7F%09%0D%0A-._~!$&'()*+,;=:@\
             %C3%A9%F0%9F%98%80%E2%80%AE"
        );
    }

    #[test]
    fn public_url_encodes_each_segment() {
        let key = Key::parse("storage/u1/a b/ab12_R\u{e9}sum\u{e9} (1)+&.pdf");
        let Ok(key) = key else {
            panic!("test key refused: {key:?}");
        };
        assert_eq!(
            public_url("https://files.example", &key),
            "https://files.example/storage/u1/a%20b/ab12_R%C3%A9sum%C3%A9%20(1)+&.pdf"
        );
    }
}
