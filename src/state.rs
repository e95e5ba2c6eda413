//! What every handler can reach: settings, auth, keys. Cloned per request (an `Arc` inside).

use std::ops::Deref;
use std::sync::Arc;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::secrets::{Secrets, SecretsCell};
use crate::store::Store;

/// The application state, shared by all handlers.
#[derive(Debug, Clone)]
pub struct AppState(Arc<App>);

/// The parts of the application.
#[derive(Debug)]
pub struct App {
    /// The validated settings as read at start (a reload changes only [`App::secrets`]).
    pub settings: Settings,
    /// Tokens, keys and JWT checks: what `SIGHUP` reloads.
    pub secrets: SecretsCell,
    /// Files, sessions and quotas on disk.
    pub store: Store,
    /// This app's metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// The resumable appends running here (a newer request for an upload ends the older).
    pub appends: crate::routes::resumable::Appends,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(app: App) -> Self {
        Self(Arc::new(app))
    }

    /// The secrets now (see [`SecretsCell::get`]).
    pub fn secrets(&self) -> Arc<Secrets> {
        self.0.secrets.get()
    }
}

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
