//! The router: merges the route modules and adds the service endpoints (API.md §5).

pub mod batch;
pub mod files;
pub mod serve;
pub mod service;
pub mod signed;
pub mod storage;

use axum::Router;

use crate::state::AppState;

/// Every route of the service.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(service::router())
        .merge(files::router())
        .merge(storage::router())
        .merge(signed::router())
        .merge(batch::router())
}
