//! Prometheus metrics (API.md §5): one registry per app (no process-wide recorder), fed by
//! the access-log middleware, plus what lives on disk, read when `/metrics` is scraped.

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
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
    disk_total: IntGauge,
    inodes_free: IntGauge,
    inodes_total: IntGauge,
    stored_bytes: IntGauge,
    stored_files: IntGauge,
    resident_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    /// Requests refused because the user's quota would be passed.
    pub quota_rejections: IntCounter,
    /// Uploads whose bytes did not match the SHA-256 the client gave.
    pub sha256_mismatches: IntCounter,
    /// Refused credentials, by reason (see [`crate::auth::Refusal`]).
    pub auth_failures: IntCounterVec,
    /// Failed fetches of `AUTH_JWKS_URL`.
    pub jwks_fetch_errors: IntCounter,
    expired_sessions_swept: IntCounter,
    /// The last walk of `storage/` and when it was made.
    stored_cache: std::sync::Mutex<Option<(std::time::Instant, crate::store::StoredTotals)>>,
}

/// How long a walk of `storage/` stands for the stored bytes and files.
const STORED_TOTALS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// What is read from the disk and the store when `/metrics` is scraped.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Unfinished upload sessions in `UPLOAD_ROOT/.parts`.
    pub sessions_on_disk: u64,
    /// `UPLOAD_ROOT`'s filesystem, when it can be read.
    pub disk: Option<DiskStats>,
    /// Bytes and files stored, all users together (see [`crate::store::StoredTotals`]).
    pub stored: Option<crate::store::StoredTotals>,
    /// Expired upload sessions the sweeps removed since start.
    pub expired_sessions_swept: u64,
}

/// Size and inodes of a filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskStats {
    /// Bytes in all.
    pub total_bytes: u64,
    /// Bytes free for an unprivileged user (what uploads can use).
    pub free_bytes: u64,
    /// Inodes in all (0 on filesystems without a fixed number).
    pub inodes_total: u64,
    /// Inodes free for an unprivileged user.
    pub inodes_free: u64,
}

impl DiskStats {
    /// The filesystem holding `path`; `None` when it cannot be read.
    pub fn of(path: &std::path::Path) -> Option<Self> {
        let st = rustix::fs::statvfs(path).ok()?;
        Some(Self {
            total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
            free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
            inodes_total: st.f_files,
            inodes_free: st.f_favail,
        })
    }
}

/// The commit the binary was built from (`build.rs`), `unknown` without git.
pub const GIT_COMMIT: &str = env!("UPLOAD_SERVER_GIT_COMMIT");

fn gauge(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
        let r = &registry;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "upload_server_build_info",
                "Always 1; the labels say which build runs",
            ),
            &["version", "commit"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), GIT_COMMIT])
            .set(1);
        let start_time = gauge(
            r,
            "process_start_time_seconds",
            "Unix time the server started (its metrics were made), seconds",
        )?;
        start_time.set(chrono::Utc::now().timestamp());
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "upload_server_auth_failures_total",
                "Refused credentials by reason: missing, service_token, malformed, wrong_algorithm, \
                 unknown_kid, expired, not_yet_valid, bad_signature, wrong_audience, wrong_issuer, \
                 missing_claim, no_user",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        for reason in crate::auth::Refusal::ALL {
            auth_failures.with_label_values(&[reason.as_str()]);
        }
        Ok(Self {
            disk_total: gauge(
                r,
                "upload_server_disk_total_bytes",
                "Size of UPLOAD_ROOT's filesystem, at scrape time",
            )?,
            inodes_free: gauge(
                r,
                "upload_server_disk_inodes_free",
                "Inodes free for the server in UPLOAD_ROOT's filesystem, at scrape time",
            )?,
            inodes_total: gauge(
                r,
                "upload_server_disk_inodes_total",
                "Inodes in UPLOAD_ROOT's filesystem (0 where the filesystem has no fixed number)",
            )?,
            stored_bytes: gauge(
                r,
                "upload_server_stored_bytes",
                "Bytes of stored files, all users together (counted by a walk of storage/, \
                 at most every 5 minutes)",
            )?,
            stored_files: gauge(
                r,
                "upload_server_stored_files",
                "Stored files, all users together (counted with upload_server_stored_bytes)",
            )?,
            resident_memory: gauge(
                r,
                "process_resident_memory_bytes",
                "Resident memory of the server process, at scrape time",
            )?,
            open_fds: gauge(
                r,
                "process_open_fds",
                "Open file descriptors of the server process, at scrape time",
            )?,
            max_fds: gauge(
                r,
                "process_max_fds",
                "The server process's limit of open file descriptors (ulimit -n)",
            )?,
            quota_rejections: counter(
                r,
                "upload_server_quota_rejections_total",
                "Requests refused (413) because the user's quota would be passed",
            )?,
            sha256_mismatches: counter(
                r,
                "upload_server_sha256_mismatches_total",
                "Uploads refused because their bytes did not match the SHA-256 the client gave",
            )?,
            jwks_fetch_errors: counter(
                r,
                "upload_server_jwks_fetch_errors_total",
                "Fetches of AUTH_JWKS_URL that failed (the keys fetched before stay in use)",
            )?,
            expired_sessions_swept: counter(
                r,
                "upload_server_expired_sessions_swept_total",
                "Expired upload sessions removed by the sweeps since start",
            )?,
            auth_failures,
            stored_cache: std::sync::Mutex::new(None),
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

    /// The stored totals, walked again with `walk` when the last walk is older than five
    /// minutes (blocking).
    pub fn stored_totals(
        &self,
        walk: impl FnOnce() -> crate::store::StoredTotals,
    ) -> crate::store::StoredTotals {
        let cached = self.stored_cache.lock().ok().and_then(|c| *c);
        match cached {
            Some((at, totals)) if at.elapsed() < STORED_TOTALS_MAX_AGE => totals,
            _ => {
                let totals = walk();
                if let Ok(mut c) = self.stored_cache.lock() {
                    *c = Some((std::time::Instant::now(), totals));
                }
                totals
            }
        }
    }

    /// Everything in the text format, with the gauges read at scrape time set first.
    pub fn render(&self, scrape: &Scrape) -> anyhow::Result<String> {
        self.upload_sessions.set(to_i64(scrape.sessions_on_disk));
        let disk = scrape.disk.unwrap_or_default();
        self.disk_free.set(to_i64(disk.free_bytes));
        self.disk_total.set(to_i64(disk.total_bytes));
        self.inodes_free.set(to_i64(disk.inodes_free));
        self.inodes_total.set(to_i64(disk.inodes_total));
        if let Some(t) = &scrape.stored {
            self.stored_bytes.set(to_i64(t.bytes));
            self.stored_files.set(to_i64(t.files));
        }
        let swept = self.expired_sessions_swept.get();
        self.expired_sessions_swept
            .inc_by(scrape.expired_sessions_swept.saturating_sub(swept));
        let process = ProcessStats::read();
        self.resident_memory.set(to_i64(process.resident_bytes));
        self.open_fds.set(to_i64(process.open_fds));
        self.max_fds.set(to_i64(process.max_fds));
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}

/// What `/proc/self` says of the process (zeros where it cannot be read).
#[derive(Debug, Default)]
struct ProcessStats {
    resident_bytes: u64,
    open_fds: u64,
    max_fds: u64,
}

impl ProcessStats {
    fn read() -> Self {
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            })
            .unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            // Less the descriptor of the listing itself.
            .map_or(0, |d| d.count().saturating_sub(1) as u64);
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        Self {
            resident_bytes,
            open_fds,
            max_fds,
        }
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
                ("POST", "/v1/files/resumable/", RouteKind::Upload),
                (
                    "PATCH",
                    "/v1/files/resumable/{upload_id}",
                    RouteKind::Upload
                ),
                ("POST", "/v1/files/tus/", RouteKind::Upload),
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
        let text = m.render(&Scrape::default()).unwrap();
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
