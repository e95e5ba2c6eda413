//! HMAC-signed URLs, byte-compatible with the old service (API.md §4.4): pure functions.
//!
//! `sig = hex(HMAC_SHA256(key, "{key}|{exp}"))`, or `"{key}|{exp}|attachment"` for an
//! attachment URL, and the key travels as padded base64url.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How the file should be presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Shown in the browser (the old service's only form).
    Inline,
    /// Downloaded; part of the signed message, so it cannot be switched.
    Attachment,
}

impl Disposition {
    /// Parses `inline` or `attachment`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inline" => Some(Self::Inline),
            "attachment" => Some(Self::Attachment),
            _ => None,
        }
    }

    /// `inline` or `attachment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::Attachment => "attachment",
        }
    }
}

fn message(key: &str, exp: i64, disposition: Disposition) -> String {
    match disposition {
        Disposition::Inline => format!("{key}|{exp}"),
        Disposition::Attachment => format!("{key}|{exp}|attachment"),
    }
}

/// The hex signature of a key, expiry and disposition.
pub fn sign(secret: &[u8], key: &str, exp: i64, disposition: Disposition) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable_hmac());
    mac.update(message(key, exp, disposition).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

// HMAC takes keys of any length; this cannot happen.
fn unreachable_hmac() -> HmacSha256 {
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(b"k").expect("HMAC accepts any key length")
}

/// Checks a hex signature in constant time.
pub fn verify(secret: &[u8], key: &str, exp: i64, disposition: Disposition, sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(message(key, exp, disposition).as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// The key as it travels in a URL: base64url with `=` padding.
pub fn encode_key(key: &str) -> String {
    URL_SAFE.encode(key.as_bytes())
}

/// Decodes a key from a URL, padded or not; `None` when it is not base64url of UTF-8.
pub fn decode_key(encoded: &str) -> Option<String> {
    let trimmed = encoded.trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD.decode(trimmed.as_bytes()).ok()?;
    String::from_utf8(bytes).ok()
}

/// The whole signed URL.
pub fn signed_url(
    base: &str,
    secret: &[u8],
    key: &str,
    exp: i64,
    disposition: Disposition,
) -> String {
    let sig = sign(secret, key, exp, disposition);
    let mut url = format!("{base}/get/{}?exp={exp}&sig={sig}", encode_key(key));
    if disposition == Disposition::Attachment {
        url.push_str("&disposition=attachment");
    }
    url
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// URLs made by the old service's own signer (shared/fixtures/signed-url-vectors.json).
    #[test]
    fn old_service_vectors() {
        let text = include_str!("../tests/fixtures/signed-url-vectors.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let secret = v["signing_key"].as_str().unwrap().as_bytes();
        let base = v["public_base_url"].as_str().unwrap();
        let vectors = v["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 8);
        for t in vectors {
            let key = t["key"].as_str().unwrap();
            let exp = t["exp"].as_i64().unwrap();
            let url = t["url"].as_str().unwrap();
            assert_eq!(signed_url(base, secret, key, exp, Disposition::Inline), url);
            let sig = url.rsplit("sig=").next().unwrap();
            assert!(verify(secret, key, exp, Disposition::Inline, sig));
            assert!(!verify(secret, key, exp + 1, Disposition::Inline, sig));
            assert!(!verify(secret, key, exp, Disposition::Attachment, sig));
            assert!(!verify(b"other", key, exp, Disposition::Inline, sig));
            let encoded = url
                .split("/get/")
                .nth(1)
                .unwrap()
                .split('?')
                .next()
                .unwrap();
            assert_eq!(decode_key(encoded).as_deref(), Some(key));
            assert_eq!(
                decode_key(encoded.trim_end_matches('=')).as_deref(),
                Some(key)
            );
        }
    }

    #[test]
    fn attachment_is_signed_apart() {
        let url = signed_url(
            "https://x",
            b"k",
            "storage/u/a",
            10,
            Disposition::Attachment,
        );
        assert!(url.ends_with("&disposition=attachment"));
        let sig = sign(b"k", "storage/u/a", 10, Disposition::Attachment);
        assert!(verify(
            b"k",
            "storage/u/a",
            10,
            Disposition::Attachment,
            &sig
        ));
        assert!(!verify(b"k", "storage/u/a", 10, Disposition::Inline, &sig));
        assert!(!verify(b"k", "storage/u/a", 10, Disposition::Inline, "zz"));
        assert_eq!(decode_key("!!!"), None);
    }
}
