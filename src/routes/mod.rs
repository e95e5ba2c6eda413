//! The router: merges the route modules, each a [`Routes`] table that registers its handlers
//! and remembers (method, path), so the OpenAPI document can be checked against what is served.

pub mod batch;
pub mod conditional;
pub mod docs;
pub mod files;
pub mod serve;
pub mod service;
pub mod signed;
pub mod signed_url;
pub mod storage;
pub mod uploads;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{self, MethodRouter};
use axum::Router;

use crate::state::AppState;

/// Every route of the service.
pub fn router() -> Router<AppState> {
    routes().into_router()
}

/// Every route of the service, as a table (see [`Routes::table`]).
pub fn routes() -> Routes {
    Routes::new()
        .merge(service::routes())
        .merge(docs::routes())
        .merge(uploads::routes())
        .merge(files::routes())
        .merge(signed_url::routes())
        .merge(storage::routes())
        .merge(signed::routes())
        .merge(batch::routes())
}

/// A router that records what it serves. Routes are only added through it, so
/// [`Routes::table`] is the router's own list, not a copy kept by hand.
#[derive(Debug, Default)]
pub struct Routes {
    router: Router<AppState>,
    table: Vec<(Method, &'static str)>,
}

impl Routes {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `GET` (and so `HEAD`) `path`.
    pub fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.route(path, &[Method::GET], routing::get(h))
    }

    /// `POST path`.
    pub fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.route(path, &[Method::POST], routing::post(h))
    }

    /// `PUT path`.
    pub fn put<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.route(path, &[Method::PUT], routing::put(h))
    }

    /// `DELETE path`.
    pub fn delete<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.route(path, &[Method::DELETE], routing::delete(h))
    }

    /// A method router built by hand (e.g. with a layer of its own), answering `methods`
    /// (the API tests probe every entry, so a wrong list fails them).
    pub fn route(
        mut self,
        path: &'static str,
        methods: &[Method],
        route: MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, route);
        self.table.extend(methods.iter().map(|m| (m.clone(), path)));
        self
    }

    /// Both tables in one.
    pub fn merge(mut self, other: Self) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// What the router serves: (method, path as axum matches it, e.g. `/v1/files/{*key}`).
    /// `GET` implies `HEAD`.
    pub fn table(&self) -> &[(Method, &'static str)] {
        &self.table
    }

    /// The router itself.
    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
