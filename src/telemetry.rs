//! Logging and request metrics: the subscriber, and one access line per request, written
//! (and counted) when the response body has been sent, so bytes and duration cover streamed
//! bodies too.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use prometheus::IntCounter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::metrics::{Metrics, RouteKind, UNMATCHED};

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

/// Middleware: logs `method path status bytes duration client` once the body is done, and
/// counts the request in `metrics` by its route as matched (never the raw path).
pub async fn access_log(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let kind = RouteKind::of(req.method().as_str(), &route);
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
        route,
        _in_progress: InProgress::start(&metrics, kind),
        metrics,
    };
    let req = match kind {
        RouteKind::Upload => {
            let counter = line.metrics.uploaded_bytes.clone();
            req.map(|body| Body::new(CountedBody::new(body, counter)))
        }
        _ => req,
    };
    let res = next.run(req).await;
    let (parts, body) = res.into_parts();
    let mut line = line;
    line.status = parts.status;
    line.finished = body.is_end_stream();
    let body = match kind {
        RouteKind::Download | RouteKind::BatchDownload => {
            let counter = line.metrics.downloaded_bytes.clone();
            Body::new(CountedBody::new(body, counter))
        }
        _ => body,
    };
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
    /// The route as matched, the metrics' label.
    route: String,
    metrics: Arc<Metrics>,
    /// Counts the request as in progress until the line is written.
    _in_progress: InProgress,
}

/// An uploads- or batch-downloads-in-progress count held for a request's lifetime.
struct InProgress(Option<prometheus::IntGauge>);

impl InProgress {
    fn start(metrics: &Metrics, kind: RouteKind) -> Self {
        let gauge = match kind {
            RouteKind::Upload => Some(metrics.uploads_in_progress.clone()),
            RouteKind::BatchDownload => Some(metrics.batch_downloads_in_progress.clone()),
            RouteKind::Download | RouteKind::Other => None,
        };
        if let Some(g) = &gauge {
            g.inc();
        }
        Self(gauge)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        self.metrics.observe_request(
            self.method.as_str(),
            &self.route,
            self.status.as_u16(),
            self.start.elapsed().as_secs_f64(),
        );
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

pin_project_lite::pin_project! {
    /// A body that adds the bytes passing through it to a counter (a request's bytes as
    /// the handler reads them, or a response's as they are sent).
    struct CountedBody {
        #[pin]
        inner: Body,
        counter: IntCounter,
    }
}

impl CountedBody {
    fn new(inner: Body, counter: IntCounter) -> Self {
        Self { inner, counter }
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.counter.inc_by(data.len() as u64);
            }
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
