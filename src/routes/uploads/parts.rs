//! Parts of a session: base64 in JSON (`POST /v1/files/part`) or raw bytes
//! (`PUT /v1/files/part/{id}/{n}`), streamed to disk (API.md §3.1).

use axum::body::Body;
use axum::extract::State;
use axum::Json;
use futures_util::StreamExt as _;
use serde::Serialize;
use utoipa::ToSchema;

use super::{body_error, owned_session};
use crate::auth::Caller;
use crate::bufpool::PooledBuf;
use crate::error::{ApiError, ApiResult, AppPath, ErrorBody};
use crate::part_json::{PartJsonError, PartJsonParser};
use crate::state::AppState;
use crate::store::sessions::{PartNumber, Session, MAX_PART_NUMBER};
use crate::store::PartUpload;

pub(crate) fn part_number(raw: &str) -> ApiResult<PartNumber> {
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
        .and_then(PartNumber::new)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "partNumber must be between 0 and {MAX_PART_NUMBER}"
            ))
        })
}

/// One part, base64 in JSON (API.md §3.1).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only: the handler parses the body as a stream (part_json.rs)
pub struct PartRequest {
    /// The session.
    #[schema(rename = "uploadId")]
    upload_id: String,
    /// 0 to 100000; sending a part again replaces it.
    #[schema(rename = "partNumber", minimum = 0, maximum = 100000)]
    part_number: u32,
    /// The part's bytes, base64.
    #[schema(rename = "chunkBase64", format = Byte)]
    chunk_base64: String,
}

/// A part received.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartReceived {
    /// Always `success`.
    status: &'static str,
    #[serde(rename = "partNumber")]
    part_number: u32,
    /// The part's size in bytes.
    size: u64,
}

impl PartReceived {
    fn new(part_number: u32, size: u64) -> Self {
        Self {
            status: "success",
            part_number,
            size,
        }
    }
}

/// Sends one part as base64 in JSON; the body streams to disk whatever its size.
#[utoipa::path(post, path = "/v1/files/part", tag = "uploads",
    request_body = PartRequest,
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Stored", body = PartReceived),
        (status = 400, description = "Bad base64, a part number out of range, or a bad session id", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such session (or another user's)", body = ErrorBody),
        (status = 413, description = "Parts past the declared size", body = ErrorBody),
        (status = 423, description = "The upload is being completed, or (s3 mode) other parts of it kept it busy for 30 s; retry", body = ErrorBody),
        (status = 422, description = "Malformed JSON or a missing field", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn upload_part_json(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> ApiResult<Json<PartReceived>> {
    let mut parser = PartJsonParser::new();
    let mut stream = body.into_data_stream();
    // Decoded bytes gather in one pooled buffer and go to the writer HANDOFF at a time,
    // whatever the size of the frames received (a slow client's are a few KiB). The room
    // holds HANDOFF plus what one frame decodes to (hyper's frames stay under 408 KiB of
    // text), so the decoder never grows it and the buffer goes back to the pool.
    const HANDOFF: usize = 512 * 1024;
    const DECODE_ROOM: usize = 1024 * 1024;
    let mut decoded = PooledBuf::with_capacity(DECODE_ROOM);
    // The session, part number and file, once the uploadId and partNumber are known.
    let mut target: Option<(Session, PartNumber, PartUpload)> = None;
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
            parser.feed(c, decoded.vec_mut()).map_err(parse_err)?;
        }
        let done = chunk.is_none();
        let fields = if done {
            let p = std::mem::take(&mut parser);
            Some(p.finish(decoded.vec_mut()).map_err(parse_err)?)
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
                        let session = owned_session(&state, &caller, id).await?;
                        let n = part_number(n)?;
                        let part = state.store.begin_part(&session, n).await?;
                        target = Some((session, n, part));
                    }
                    None => {
                        let who = match &caller {
                            Caller::User(u) => Some(u),
                            Caller::Service => None,
                        };
                        staged = Some(state.store.begin_staged_part(who).await?);
                    }
                }
            }
            let sink: &mut PartUpload = if let Some((_, _, p)) = target.as_mut() {
                p
            } else if let Some(p) = staged.as_mut() {
                p
            } else {
                return Err(ApiError::Internal(anyhow::anyhow!("no part file open")));
            };
            if decoded.len() >= HANDOFF || (done && !decoded.is_empty()) {
                let full = std::mem::replace(&mut decoded, PooledBuf::with_capacity(DECODE_ROOM));
                sink.write(full.freeze(usize::MAX)).await?;
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
            let (session, n, part) = match (target, staged) {
                (Some(known), _) => known,
                (None, Some(part)) => (
                    owned_session(&state, &caller, &id).await?,
                    part_number(&n_raw)?,
                    part,
                ),
                (None, None) => {
                    return Err(ApiError::Internal(anyhow::anyhow!("part without a file")))
                }
            };
            let size = state.store.commit_part(&session, n, part).await?;
            return Ok(Json(PartReceived::new(n.get(), size)));
        }
    }
}

/// Sends one part as raw bytes; the body streams to disk.
#[utoipa::path(put, path = "/v1/files/part/{upload_id}/{part_number}", tag = "uploads",
    params(
        ("upload_id" = String, Path, description = "The session"),
        ("part_number" = u32, Path, minimum = 0, maximum = 100000, description = "0 to 100000"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The part's bytes"),
    security(("service_token" = []), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Stored", body = PartReceived),
        (status = 400, description = "A part number out of range, or a bad session id", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such session (or another user's)", body = ErrorBody),
        (status = 413, description = "Parts past the declared size", body = ErrorBody),
        (status = 423, description = "The upload is being completed, or (s3 mode) other parts of it kept it busy for 30 s; retry", body = ErrorBody),
        (status = 422, description = "The part number is not an integer", body = ErrorBody),
        (status = 507, description = "The disk is full", body = ErrorBody),
    ))]
pub(crate) async fn upload_part_raw(
    State(state): State<AppState>,
    caller: Caller,
    AppPath((upload_id, number)): AppPath<(String, String)>,
    body: Body,
) -> ApiResult<Json<PartReceived>> {
    let session = owned_session(&state, &caller, &upload_id).await?;
    let n = part_number(&number)?;
    let mut part = state.store.begin_part(&session, n).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(&e))?;
        part.write(chunk).await?;
    }
    let size = state.store.commit_part(&session, n, part).await?;
    Ok(Json(PartReceived::new(n.get(), size)))
}
