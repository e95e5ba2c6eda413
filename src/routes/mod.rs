//! The router, and the one registry of routes. Each route module lists its routes as a
//! [`Routes`] table, one `route!` line per path naming its handler; the handler's
//! `#[utoipa::path]` says the path, the methods and the operation. From that one list come
//! the router, the OpenAPI document's paths and schemas ([`Routes::document`]) and the
//! routes the metrics count apart ([`counted`]): adding a route is one line plus its
//! `#[utoipa::path]`. There is no way to register an undocumented route.

pub mod batch;
pub mod conditional;
pub mod docs;
pub mod files;
pub mod resumable;
pub mod serve;
pub mod service;
pub mod signed;
pub mod signed_url;
pub mod storage;
pub mod upload_page;
pub mod uploads;

use std::sync::LazyLock;

use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;
use utoipa::openapi::path::{PathItem, Paths};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa_axum::router::UtoipaMethodRouter;

use crate::metrics::RouteKind;
use crate::state::AppState;

/// A [`Route`]: the handlers (one or more, on the same path) with what their
/// `#[utoipa::path]` attributes say, through utoipa-axum's `routes!`, which pairs each
/// handler with its own attribute (so the two cannot be mismatched).
macro_rules! route {
    ($($handler:path),+ $(,)?) => {
        $crate::routes::Route::new(utoipa_axum::routes!($($handler),+))
    };
}
pub(crate) use route;

/// Every route of the service.
pub fn router() -> Router<AppState> {
    // Built now, not on the first request.
    LazyLock::force(&COUNTED);
    routes().into_router()
}

/// Every route of the service, as a table (see [`Routes::table`]).
pub fn routes() -> Routes {
    Routes::new()
        .merge(service::routes())
        .merge(docs::routes())
        .merge(uploads::routes())
        .merge(resumable::tus::routes())
        .merge(resumable::ietf::routes())
        .merge(files::routes())
        .merge(signed_url::routes())
        .merge(storage::routes())
        .merge(signed::routes())
        .merge(batch::routes())
        .merge(upload_page::routes())
}

/// The routes whose requests the metrics count apart (every other is [`RouteKind::Other`]),
/// taken from the registry once.
static COUNTED: LazyLock<Vec<Served>> = LazyLock::new(|| {
    routes()
        .table
        .into_iter()
        .filter(|s| s.kind != RouteKind::Other)
        .collect()
});

/// The routes registered with a kind other than [`RouteKind::Other`] (see
/// [`Route::counted_as`]): a few entries, scanned per request by [`RouteKind::of`].
pub fn counted() -> &'static [Served] {
    &COUNTED
}

/// One (method, path) the router serves.
#[derive(Debug, Clone)]
pub struct Served {
    /// `GET` implies `HEAD`.
    pub method: Method,
    /// The path as axum matches it (and as `MatchedPath` names it), e.g. `/v1/files/{*key}`.
    pub path: String,
    /// What its requests count as in the metrics.
    pub kind: RouteKind,
}

/// One documented path: its handlers, their operations and schemas, and how it is served.
/// Made by `route!`.
pub struct Route {
    schemas: Vec<(String, RefOr<Schema>)>,
    paths: Paths,
    router: MethodRouter<AppState>,
    catch_all: bool,
    kind: RouteKind,
}

impl Route {
    /// What `utoipa_axum::routes!` made.
    pub fn new((schemas, paths, router): UtoipaMethodRouter<AppState>) -> Self {
        Self {
            schemas,
            paths,
            router,
            catch_all: false,
            kind: RouteKind::Other,
        }
    }

    /// The last path parameter takes the rest of the path, slashes included. OpenAPI has no
    /// such parameter: the path is documented as `/v1/files/{key}` and served as
    /// `/v1/files/{*key}` (see [`catch_all_path`]).
    pub fn catch_all(mut self) -> Self {
        self.catch_all = true;
        self
    }

    /// What its requests count as in the metrics (by default [`RouteKind::Other`]).
    pub fn counted_as(mut self, kind: RouteKind) -> Self {
        self.kind = kind;
        self
    }

    /// Changes the method router: a layer or a fallback of its own. A method it adds is
    /// not in the document (the API tests probe every method on every path, so they find it).
    pub fn map(mut self, f: impl FnOnce(MethodRouter<AppState>) -> MethodRouter<AppState>) -> Self {
        self.router = f(self.router);
        self
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("paths", &self.paths.paths.keys().collect::<Vec<_>>())
            .field("catch_all", &self.catch_all)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The path axum serves for a documented catch-all path: the last segment `{name}` becomes
/// `{*name}`. A path whose last segment is not a parameter is served as it is (the API tests
/// reach every documented path with a sample value holding slashes, so that would fail them).
pub fn catch_all_path(documented: &str) -> String {
    match documented.rsplit_once('/') {
        Some((head, last)) if last.starts_with('{') && last.ends_with('}') => {
            format!("{head}/{{*{}", &last[1..])
        }
        _ => documented.to_owned(),
    }
}

/// The methods a path item documents.
fn methods(item: &PathItem) -> Vec<Method> {
    [
        (Method::GET, &item.get),
        (Method::PUT, &item.put),
        (Method::POST, &item.post),
        (Method::DELETE, &item.delete),
        (Method::OPTIONS, &item.options),
        (Method::HEAD, &item.head),
        (Method::PATCH, &item.patch),
        (Method::TRACE, &item.trace),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.is_some().then_some(method))
    .collect()
}

/// A router that records what it serves, and the documentation of each route. Routes are
/// only added through it, so [`Routes::table`] is the router's own list and
/// [`Routes::document`] describes exactly those routes.
#[derive(Default)]
pub struct Routes {
    router: Router<AppState>,
    table: Vec<Served>,
    paths: Paths,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Routes {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `route` at its documented path (or [`catch_all_path`] of it).
    pub fn route(mut self, route: Route) -> Self {
        let Route {
            schemas,
            paths,
            router,
            catch_all,
            kind,
        } = route;
        // `routes!` names one path unless handlers of different paths were listed together;
        // then, as utoipa-axum's own router does, each path gets the whole method router,
        // and the table says so (the document does not: the API tests fail).
        let all: Vec<Method> = paths.paths.values().flat_map(methods).collect();
        for documented in paths.paths.keys() {
            let path = if catch_all {
                catch_all_path(documented)
            } else {
                documented.clone()
            };
            self.router = self.router.route(&path, router.clone());
            self.table.extend(all.iter().map(|method| Served {
                method: method.clone(),
                path: path.clone(),
                kind,
            }));
        }
        self.paths.merge(paths);
        self.schemas.extend(schemas);
        self
    }

    /// Both tables in one.
    pub fn merge(mut self, other: Self) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self.paths.merge(other.paths);
        self.schemas.extend(other.schemas);
        self
    }

    /// What the router serves. `GET` implies `HEAD`.
    pub fn table(&self) -> &[Served] {
        &self.table
    }

    /// Puts the documented paths, and the schemas their operations use, into `doc`.
    pub fn document(self, doc: &mut utoipa::openapi::OpenApi) {
        doc.paths.merge(self.paths);
        doc.components
            .get_or_insert_with(Default::default)
            .schemas
            .extend(self.schemas);
    }

    /// The router itself.
    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_all_is_its_last_parameter() {
        assert_eq!(catch_all_path("/v1/files/{key}"), "/v1/files/{*key}");
        assert_eq!(
            catch_all_path("/storage/{user_id}/{path}"),
            "/storage/{user_id}/{*path}"
        );
        assert_eq!(catch_all_path("/v1/files/all"), "/v1/files/all");
    }

    /// The catch-alls served, pinned: a registration that loses `.catch_all()` shows here.
    #[test]
    fn the_catch_alls() {
        let mut catch_alls: Vec<_> = routes()
            .table()
            .iter()
            .filter(|s| s.path.contains("{*"))
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        catch_alls.sort();
        assert_eq!(
            catch_alls,
            [
                "DELETE /v1/files/{*key}",
                "GET /storage/{user_id}/{*path}",
                "GET /v1/files/metadata/{*key}",
            ]
        );
    }
}
