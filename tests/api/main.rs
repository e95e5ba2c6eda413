//! The integration tests: one binary (STYLE.md §2.5). Each module covers a part of the
//! contract (API.md) against the real app on 127.0.0.1, or against the real binary.
#![allow(clippy::unwrap_used)]

mod auth;
mod batch;
mod config;
mod cors;
mod crash;
mod csrf;
mod docs;
mod errors;
mod forwarded;
mod fuzz_found;
mod health;
mod helpers;
mod nginx;
mod parts;
mod reading;
mod security;
mod shutdown;
mod slow;
mod stalled;
mod tus_clients;
mod upload;
