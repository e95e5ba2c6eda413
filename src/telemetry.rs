//! Logging: the subscriber, and one access line per request, written when the response
//! body has been sent (so bytes and duration cover streamed bodies too).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber: `RUST_LOG` filtering (default `info`), text or JSON lines.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The client's address: the first `X-Forwarded-For` entry, else `X-Real-IP`, else the peer.
pub fn client_addr(headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    header("x-forwarded-for")
        .or_else(|| header("x-real-ip"))
        .or_else(|| peer.map(|p| p.ip().to_string()))
        .unwrap_or_else(|| "-".to_owned())
}

/// Middleware: logs `method path status bytes duration client` once the body is done.
pub async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let line = AccessLine {
        method: req.method().clone(),
        path: loggable_path(req.uri().path()),
        client: client_addr(req.headers(), peer),
        // Until a response exists: a request whose handler was dropped because the client
        // went away is logged as 499, as nginx does.
        status: StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        bytes: 0,
        start,
        finished: false,
    };
    let res = next.run(req).await;
    let (parts, body) = res.into_parts();
    let mut line = line;
    line.status = parts.status;
    line.finished = body.is_end_stream();
    Response::from_parts(parts, Body::new(LoggedBody { inner: body, line }))
}

/// The path as logged: a batch-download token is a bearer capability, so it is masked.
fn loggable_path(path: &str) -> String {
    const BATCH: &str = "/v1/files/batch-download/";
    match path.strip_prefix(BATCH) {
        Some(token) if !token.is_empty() => {
            format!("{BATCH}{}…", token.chars().take(6).collect::<String>())
        }
        _ => path.to_owned(),
    }
}

struct AccessLine {
    method: Method,
    path: String,
    client: String,
    status: StatusCode,
    bytes: u64,
    start: Instant,
    finished: bool,
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            bytes = self.bytes,
            duration_ms = (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            client = %self.client,
            complete = self.finished,
            "{} {} {}",
            self.method,
            self.path,
            self.status.as_u16(),
        );
    }
}

pin_project_lite::pin_project! {
    struct LoggedBody {
        #[pin]
        inner: Body,
        line: AccessLine,
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.line.bytes += data.len() as u64;
                }
                // hyper stops polling once a sized body is complete.
                if this.inner.is_end_stream() {
                    this.line.finished = true;
                }
            }
            Poll::Ready(None) => this.line.finished = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tokens_are_masked() {
        assert_eq!(
            loggable_path("/v1/files/batch-download/abcdefghijk"),
            "/v1/files/batch-download/abcdef…"
        );
        assert_eq!(
            loggable_path("/v1/files/batch-download/ééééééééé"),
            "/v1/files/batch-download/éééééé…"
        );
        assert_eq!(loggable_path("/storage/u/x"), "/storage/u/x");
    }
}
