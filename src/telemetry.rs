//! Logging and request metrics: the subscriber, and one access line per request, written
//! (and counted) when the response body has been sent, so bytes and duration cover streamed
//! bodies too.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use prometheus::IntCounter;
use tracing::Instrument as _;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::error::Counted;
use crate::metrics::{Metrics, RouteKind, UNMATCHED};
use crate::state::AppState;
use crate::trust::TrustedProxies;

/// Installs the global subscriber: `RUST_LOG` filtering (default `info`), text or JSON lines
/// on stdout. Colours only when stdout and stderr are both terminals (journald, files and
/// pipes get none). JSON lines carry `target` (`access`, `activity`, `auth`, or the module)
/// and the `request_id` of the request they belong to.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_target(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// The request id header: taken from the request when sane (nginx sets it to `$request_id`),
/// else made here; echoed in the response and logged.
pub const REQUEST_ID: &str = "x-request-id";

/// The request's id as found in its extensions (set by [`access_log`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A client's `X-Request-Id` when it is one header of 1 to 128 characters from
/// `A-Z a-z 0-9 - _ . : @ /`; anything else could forge or break log lines, and is replaced.
fn sane_request_id(headers: &HeaderMap) -> Option<String> {
    let mut all = headers.get_all(REQUEST_ID).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return None;
    };
    let v = v.to_str().ok()?;
    let ok = (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@/".contains(&b));
    ok.then(|| v.to_owned())
}

/// The client's address as logged; `-` when the connection's peer is unknown.
pub fn client_addr(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    proxies: &TrustedProxies,
) -> String {
    peer.map_or_else(
        || "-".to_owned(),
        |p| client_ip(headers, p.ip(), proxies).to_string(),
    )
}

/// The client's IP address. Forwarding headers are anyone's to write, so they are believed
/// only from a trusted proxy (`TRUSTED_PROXIES`), and only the parts that proxy wrote:
/// - a peer that is not a trusted proxy is the client;
/// - else `X-Real-IP` (nginx sets it to the address it saw) when it is one valid address;
/// - else `X-Forwarded-For` read from the right, skipping trusted proxies: each proxy
///   appends the address it saw, so the first other entry is the one the outermost trusted
///   proxy wrote (what is left of it, such as the first entry, the client wrote itself);
/// - else the peer.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, proxies: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !proxies.contains(peer) {
        return peer;
    }
    let mut real = headers.get_all("x-real-ip").iter();
    if let (Some(v), None) = (real.next(), real.next()) {
        if let Some(ip) = v.to_str().ok().and_then(parse_forwarded_ip) {
            return ip;
        }
    }
    // Several X-Forwarded-For headers form one list, in order.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        match parse_forwarded_ip(entry) {
            Some(ip) if proxies.contains(ip) => continue,
            Some(ip) => return ip,
            // Not written by a trusted proxy: nothing to its left can be believed.
            None => break,
        }
    }
    peer
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, and with a port,
/// `1.2.3.4:5678` or `[2001:db8::1]:5678`.
fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

/// Middleware: logs `method path status bytes duration client` once the body is done, and
/// counts the request in the app's metrics by its route as matched (never the raw path).
pub async fn access_log(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let metrics = state.metrics.clone();
    let start = Instant::now();
    let request_id =
        sane_request_id(req.headers()).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let id_value = HeaderValue::from_str(&request_id).ok();
    if let Some(v) = &id_value {
        req.headers_mut().insert(REQUEST_ID, v.clone());
    }
    req.extensions_mut().insert(RequestId(request_id.clone()));
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
        client: client_addr(req.headers(), peer, &state.settings.trusted_proxies),
        // Until a response exists: a request whose handler was dropped because the client
        // went away is logged as 499, as nginx does.
        status: StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        bytes: 0,
        start,
        finished: false,
        route,
        request_id: request_id.clone(),
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
    let span = tracing::info_span!("request", request_id = %request_id);
    let res = next.run(req).instrument(span).await;
    let (mut parts, body) = res.into_parts();
    if let Some(v) = id_value {
        parts.headers.insert(REQUEST_ID, v);
    }
    match parts.extensions.get::<Counted>() {
        Some(Counted::QuotaRejected) => line.metrics.quota_rejections.inc(),
        Some(Counted::ShaMismatch) => line.metrics.sha256_mismatches.inc(),
        _ => {}
    }
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
    /// `X-Request-Id`.
    request_id: String,
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
            request_id = %self.request_id,
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
    #![allow(clippy::unwrap_used)]
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

    fn client(peer: &str, pairs: &[(&'static str, &'static str)], proxies: &str) -> String {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        let proxies = TrustedProxies::parse(proxies).unwrap();
        client_ip(&headers, peer.parse().unwrap(), &proxies).to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let spoof = [
            ("x-forwarded-for", "203.0.113.7"),
            ("x-real-ip", "203.0.113.8"),
        ];
        assert_eq!(client("198.51.100.1", &spoof, LOOPBACK), "198.51.100.1");
        assert_eq!(client("127.0.0.2", &spoof, LOOPBACK), "127.0.0.2");
        assert_eq!(
            client("::ffff:198.51.100.1", &spoof, LOOPBACK),
            "198.51.100.1"
        );
    }

    #[test]
    fn a_trusted_proxy_is_believed_for_what_it_wrote() {
        // nginx: X-Real-IP $remote_addr, X-Forwarded-For $proxy_add_x_forwarded_for.
        let nginx = [
            ("x-real-ip", "198.51.100.9"),
            ("x-forwarded-for", "203.0.113.7, 198.51.100.9"),
        ];
        assert_eq!(client("127.0.0.1", &nginx, LOOPBACK), "198.51.100.9");
        assert_eq!(client("::1", &nginx, LOOPBACK), "198.51.100.9");
        // Without X-Real-IP (or with a bad one), the right-most entry a client did not write.
        let xff = [("x-forwarded-for", "203.0.113.7, 198.51.100.9")];
        assert_eq!(client("127.0.0.1", &xff, LOOPBACK), "198.51.100.9");
        let bad_real = [
            ("x-real-ip", "not-an-ip"),
            ("x-forwarded-for", "203.0.113.7, 198.51.100.9"),
        ];
        assert_eq!(client("127.0.0.1", &bad_real, LOOPBACK), "198.51.100.9");
        let two_real = [("x-real-ip", "203.0.113.7"), ("x-real-ip", "198.51.100.9")];
        assert_eq!(client("127.0.0.1", &two_real, LOOPBACK), "127.0.0.1");
        // Trusted proxies in the chain are skipped; ports are dropped.
        let chain = [
            ("x-forwarded-for", "203.0.113.7, 198.51.100.9:4711"),
            ("x-forwarded-for", "10.0.0.5, 10.0.0.6"),
        ];
        assert_eq!(
            client("127.0.0.1", &chain, "127.0.0.1, 10.0.0.0/8"),
            "198.51.100.9"
        );
        let v6 = [("x-forwarded-for", "[2001:db8::7]:443")];
        assert_eq!(client("127.0.0.1", &v6, LOOPBACK), "2001:db8::7");
    }

    #[test]
    fn a_trusted_proxy_without_a_usable_header_is_the_client() {
        assert_eq!(client("127.0.0.1", &[], LOOPBACK), "127.0.0.1");
        let only_proxies = [("x-forwarded-for", "127.0.0.1, ::1")];
        assert_eq!(client("127.0.0.1", &only_proxies, LOOPBACK), "127.0.0.1");
        // Garbage stops the walk: what is left of it was not written by a trusted proxy.
        let garbage = [("x-forwarded-for", "203.0.113.7, junk, 127.0.0.1")];
        assert_eq!(client("127.0.0.1", &garbage, LOOPBACK), "127.0.0.1");
        let empty = [("x-forwarded-for", ""), ("x-real-ip", "")];
        assert_eq!(client("127.0.0.1", &empty, LOOPBACK), "127.0.0.1");
        let headers = HeaderMap::new();
        assert_eq!(client_addr(&headers, None, &TrustedProxies::default()), "-");
    }

    const LOOPBACK: &str = TrustedProxies::DEFAULT;
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
