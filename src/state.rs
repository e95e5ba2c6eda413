//! What every handler can reach: settings, auth, keys. Cloned per request (an `Arc` inside).

use std::ops::Deref;
use std::sync::Arc;

use serde_json::Value;

use crate::auth::{Authenticator, TokenMinter};
use secrecy::SecretSlice;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::FileStore;

/// The application state, shared by all handlers.
#[derive(Debug, Clone)]
pub struct AppState(Arc<App>);

/// The parts of the application.
#[derive(Debug)]
pub struct App {
    /// The validated settings.
    pub settings: Settings,
    /// Service-token and JWT checks.
    pub auth: Authenticator,
    /// Token minting for `/v1/files/generate-token`, when a private key is configured.
    pub minter: Option<TokenMinter>,
    /// The document for `/.well-known/jwks.json`, when a public RSA key is configured.
    pub jwks: Option<Value>,
    /// The HMAC key for signed URLs.
    pub signing_key: SecretSlice<u8>,
    /// Files, sessions and quotas on disk.
    pub store: FileStore,
    /// This app's metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(app: App) -> Self {
        Self(Arc::new(app))
    }
}

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
