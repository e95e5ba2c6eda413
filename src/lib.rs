//! Stream-Line upload server: uploads, per-user folders and quotas, public links, signed URLs
//! and streamed ZIPs over a local `UPLOAD_ROOT`. The binary is `src/main.rs`; this library
//! exists so the integration tests build the very same application.

pub mod auth;
pub mod body_timeout;
mod bufpool;
pub mod check;
pub mod config;
pub mod error;
pub mod jwt_keys;
pub mod metrics;
pub mod migrate;
pub mod part_json;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod signer;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod trust;
pub mod upload_grant;
pub mod zip_stream;
