//! What `SIGHUP` reloads (issue 17): the service tokens, the signing keys and the JWT keys
//! and settings, built together and swapped as one, so a request sees either the old set or
//! the new one, never half of each. Everything else needs a restart.

use std::sync::{Arc, RwLock};

use secrecy::{ExposeSecret as _, SecretSlice};
use serde_json::Value;

use crate::auth::{Authenticator, TokenMinter};
use crate::signer::{self, Disposition};

/// The reloadable part of the application.
#[derive(Debug)]
pub struct Secrets {
    /// Service-token and JWT checks.
    pub auth: Authenticator,
    /// Token minting for `/v1/files/generate-token`, when a private key is configured.
    pub minter: Option<TokenMinter>,
    /// The document for `/.well-known/jwks.json`, when a public RSA key is configured.
    pub jwks: Option<Value>,
    /// The keys of signed URLs.
    pub signing: SigningKeys,
}

/// The key new URLs are signed with, and the one before it, which still verifies.
#[derive(Debug)]
pub struct SigningKeys {
    current: SecretSlice<u8>,
    previous: Option<SecretSlice<u8>>,
}

impl SigningKeys {
    /// `current` signs and verifies; `previous` (`UPLOAD_SIGNING_KEY_PREVIOUS`) only verifies.
    pub fn new(current: SecretSlice<u8>, previous: Option<SecretSlice<u8>>) -> Self {
        Self { current, previous }
    }

    /// The key to sign new URLs with.
    pub fn current(&self) -> &[u8] {
        self.current.expose_secret()
    }

    /// The keys that verify: the current one, then the previous one if any.
    pub fn verifying(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.current()).chain(self.previous.as_ref().map(|p| p.expose_secret()))
    }

    /// Whether `sig` was made by the current key or by the previous one (each compared in
    /// constant time).
    pub fn verify(&self, key: &str, exp: i64, disposition: Disposition, sig: &str) -> bool {
        let current = signer::verify(self.current(), key, exp, disposition, sig);
        let previous = self
            .previous
            .as_ref()
            .is_some_and(|p| signer::verify(p.expose_secret(), key, exp, disposition, sig));
        current | previous
    }
}

/// The current [`Secrets`], swapped whole by a reload.
#[derive(Debug)]
pub struct SecretsCell(RwLock<Arc<Secrets>>);

impl SecretsCell {
    /// A cell holding `secrets`.
    pub fn new(secrets: Secrets) -> Self {
        Self(RwLock::new(Arc::new(secrets)))
    }

    /// The secrets now; a request keeps the set it took for its whole life.
    pub fn get(&self) -> Arc<Secrets> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `secrets` in place of the current ones.
    pub fn replace(&self, secrets: Secrets) {
        let new = Arc::new(secrets);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_key_verifies_but_does_not_sign() {
        let keys = SigningKeys::new(
            SecretSlice::from(b"new".to_vec()),
            Some(SecretSlice::from(b"old".to_vec())),
        );
        assert_eq!(keys.current(), b"new");
        let old = signer::sign(b"old", "storage/u/a", 10, Disposition::Inline);
        let new = signer::sign(b"new", "storage/u/a", 10, Disposition::Inline);
        let other = signer::sign(b"other", "storage/u/a", 10, Disposition::Inline);
        assert!(keys.verify("storage/u/a", 10, Disposition::Inline, &old));
        assert!(keys.verify("storage/u/a", 10, Disposition::Inline, &new));
        assert!(!keys.verify("storage/u/a", 10, Disposition::Inline, &other));
        assert!(!keys.verify("storage/u/a", 11, Disposition::Inline, &old));
        let only_new = SigningKeys::new(SecretSlice::from(b"new".to_vec()), None);
        assert!(!only_new.verify("storage/u/a", 10, Disposition::Inline, &old));
    }
}
