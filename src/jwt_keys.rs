//! JWT keys from PEM text, for the algorithm configured in `AUTH_JWT_ALG`. Its own module so
//! the dependencies point one way: `config` uses it to refuse a key that does not parse at
//! start, naming the variable; `auth` uses it to build the keys it verifies and signs with.
//! Neither of those is imported here.

use jsonwebtoken::errors::Result;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// A verification key for `alg` from a PEM text.
pub fn decoding_key_from_pem(alg: Algorithm, pem: &str) -> Result<DecodingKey> {
    use Algorithm::*;
    match alg {
        ES256 | ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
        EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
        _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
    }
}

/// A signing key for `alg` from a PEM text.
pub fn encoding_key_from_pem(alg: Algorithm, pem: &str) -> Result<EncodingKey> {
    use Algorithm::*;
    match alg {
        ES256 | ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
}
