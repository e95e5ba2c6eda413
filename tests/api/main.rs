//! The integration tests: one binary (STYLE.md §2.5). Each module covers a part of the
//! contract (API.md) against the real app on 127.0.0.1, or against the real binary.
#![allow(clippy::unwrap_used)]

mod actionable_errors;
mod alerts;
mod auth;
mod batch;
mod check;
mod config;
mod cors;
mod crash;
mod cross_origin;
mod csrf;
mod docs;
mod errors;
mod forwarded;
mod fuzz_found;
mod health;
mod helpers;
mod instances;
mod logs;
mod migrate;
mod nginx;
mod parts;
mod parts_s3;
mod pg_catalog;
mod pg_server;
mod reading;
mod resumable;
mod rotation;
mod s3_bytes;
mod s3_server;
mod security;
mod shutdown;
mod slow;
mod stalled;
mod tus_clients;
mod upload;
mod upload_grant;
mod upload_page;
