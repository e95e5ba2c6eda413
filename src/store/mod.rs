//! The filesystem store: files, sidecars, upload sessions and quotas under `UPLOAD_ROOT`.
//! Knows nothing of HTTP.

pub mod key;
