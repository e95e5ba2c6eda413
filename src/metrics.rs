//! Prometheus metrics (API.md §5): one registry per app (no process-wide recorder), fed by
//! the access-log middleware, plus what lives on disk, read when `/metrics` is scraped.

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label for requests no route matched (so unknown paths cannot make new series).
pub const UNMATCHED: &str = "unmatched";

/// Request-duration buckets, seconds: from a health check to a multi-gigabyte transfer.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// What a request is, for the metrics that only count some routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Its body carries file bytes in.
    Upload,
    /// Its response carries a stored file out.
    Download,
    /// A `GET` of a batch ZIP (a download too).
    BatchDownload,
    /// Anything else.
    Other,
}

impl RouteKind {
    /// The kind of `method route`, `route` being the path as the router matched it. The
    /// kinds are given where routes are registered (`src/routes/mod.rs`, `counted_as`);
    /// `HEAD` is the `GET` route's, except that a `HEAD` of a batch ZIP streams nothing.
    pub fn of(method: &str, route: &str) -> Self {
        let head = method == "HEAD";
        let method = if head { "GET" } else { method };
        let kind = crate::routes::counted()
            .iter()
            .find(|s| s.path == route && s.method == method)
            .map_or(Self::Other, |s| s.kind);
        if head && kind == Self::BatchDownload {
            Self::Download
        } else {
            kind
        }
    }
}

/// The app's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Request body bytes received by the upload routes.
    pub uploaded_bytes: IntCounter,
    /// Response body bytes sent by the download routes.
    pub downloaded_bytes: IntCounter,
    /// Upload requests being received now.
    pub uploads_in_progress: IntGauge,
    /// Batch ZIPs being sent now.
    pub batch_downloads_in_progress: IntGauge,
    upload_sessions: IntGauge,
    disk_free: IntGauge,
}

impl Metrics {
    /// A fresh registry with every series at zero.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by method, route (as matched) and status",
            ),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from a request's arrival to the end of its response body, by method and route",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["method", "route"],
        )?;
        let uploaded_bytes = IntCounter::new(
            "upload_server_uploaded_bytes_total",
            "Request body bytes received by the upload routes (JSON and raw parts, one-request uploads)",
        )?;
        let downloaded_bytes = IntCounter::new(
            "upload_server_downloaded_bytes_total",
            "Response body bytes sent by the download routes (public links, signed URLs, batch ZIPs); \
             bytes nginx sends for X-Accel-Redirect are not seen here",
        )?;
        let uploads_in_progress = IntGauge::new(
            "upload_server_uploads_in_progress",
            "Upload requests (parts, raw parts, one-request uploads) being received now",
        )?;
        let batch_downloads_in_progress = IntGauge::new(
            "upload_server_batch_downloads_in_progress",
            "Batch ZIP downloads being sent now",
        )?;
        let upload_sessions = IntGauge::new(
            "upload_server_upload_sessions",
            "Unfinished upload sessions on disk (UPLOAD_ROOT/.parts), counted at scrape time",
        )?;
        let disk_free = IntGauge::new(
            "upload_server_disk_free_bytes",
            "Bytes free for the server in UPLOAD_ROOT's filesystem, at scrape time",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(uploaded_bytes.clone()))?;
        registry.register(Box::new(downloaded_bytes.clone()))?;
        registry.register(Box::new(uploads_in_progress.clone()))?;
        registry.register(Box::new(batch_downloads_in_progress.clone()))?;
        registry.register(Box::new(upload_sessions.clone()))?;
        registry.register(Box::new(disk_free.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            uploaded_bytes,
            downloaded_bytes,
            uploads_in_progress,
            batch_downloads_in_progress,
            upload_sessions,
            disk_free,
        })
    }

    /// Counts one answered request and its duration.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let method = method_label(method);
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// Everything in the text format, with the disk gauges set first (from the store).
    pub fn render(&self, sessions_on_disk: u64, free_bytes: Option<u64>) -> anyhow::Result<String> {
        self.upload_sessions
            .set(i64::try_from(sessions_on_disk).unwrap_or(i64::MAX));
        self.disk_free
            .set(free_bytes.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)));
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}

/// The method as a label: HTTP allows any token as a method, and each would be a new series.
fn method_label(method: &str) -> &str {
    const KNOWN: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The routes the registry counts apart, pinned: a registration that loses its
    /// `counted_as` (or gains one) shows here.
    #[test]
    fn the_registry_counts_these_routes() {
        let mut counted: Vec<_> = crate::routes::counted()
            .iter()
            .map(|s| (s.method.as_str(), s.path.as_str(), s.kind))
            .collect();
        counted.sort_by_key(|(m, p, _)| (*p, *m));
        let batch = "/v1/files/batch-download/{token}";
        assert_eq!(
            counted,
            [
                ("GET", "/get/{encoded}", RouteKind::Download),
                ("GET", "/storage/{user_id}/{*path}", RouteKind::Download),
                ("GET", batch, RouteKind::BatchDownload),
                ("GET", "/v1/files/get/{encoded}", RouteKind::Download),
                ("POST", "/v1/files/part", RouteKind::Upload),
                (
                    "PUT",
                    "/v1/files/part/{upload_id}/{part_number}",
                    RouteKind::Upload
                ),
                (
                    "PATCH",
                    "/v1/files/resumable/{upload_id}",
                    RouteKind::Upload
                ),
                ("PATCH", "/v1/files/tus/{upload_id}", RouteKind::Upload),
                ("POST", "/v1/files/upload", RouteKind::Upload),
            ]
        );
    }

    #[test]
    fn kinds() {
        let batch = "/v1/files/batch-download/{token}";
        assert_eq!(RouteKind::of("POST", "/v1/files/upload"), RouteKind::Upload);
        assert_eq!(RouteKind::of("GET", "/v1/files/upload"), RouteKind::Other);
        assert_eq!(RouteKind::of("HEAD", "/get/{encoded}"), RouteKind::Download);
        assert_eq!(RouteKind::of("POST", "/get/{encoded}"), RouteKind::Other);
        assert_eq!(RouteKind::of("GET", batch), RouteKind::BatchDownload);
        assert_eq!(RouteKind::of("HEAD", batch), RouteKind::Download);
        assert_eq!(RouteKind::of("GET", UNMATCHED), RouteKind::Other);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let m = Metrics::new().unwrap();
        for method in ["GET", "BREW", "X-ANY", "get"] {
            m.observe_request(method, UNMATCHED, 405, 0.001);
        }
        let text = m.render(0, None).unwrap();
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="unmatched",status="405"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"http_requests_total{method="OTHER",route="unmatched",status="405"} 3"#
            ),
            "{text}"
        );
    }
}
