//! Signed upload grants (issue 15): what a signed upload URL allows, and its HMAC. Pure
//! functions, no IO, no HTTP (the extractor that uses them is `routes::uploads::grant`).
//!
//! Wire format, in the query string of any upload route:
//! `grant=<base64url, no padding, of {"u":user,"f":folder|null,"e":expiry,"m":max_size,"t":[types]}>`
//! `&sig=<lowercase hex HMAC-SHA256(key, "upload-grant\n" + grant)>`.
//! `t` is left out when any type is allowed. The HMAC covers the `grant` text exactly as
//! sent, so nothing has to be re-serialised the same way to verify it. The key is the
//! signed-URL key (`UPLOAD_SIGNING_KEY` or `UPLOAD_ROOT/.signing_key`); the `upload-grant\n`
//! prefix keeps the two kinds of signature apart: a download message is `{key}|{exp}...`
//! with a key that starts `storage/` and holds no newline, so neither can pass for the other.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What the HMAC of a grant starts with (domain separation from download signatures).
pub const DOMAIN: &str = "upload-grant\n";

/// Longest `grant` text signed or accepted (checked before anything is decoded). With the
/// signature and a path it keeps the request line under the 8 KiB nginx allows by default
/// (`large_client_header_buffers`).
pub const MAX_GRANT_LEN: usize = 6 * 1024;

/// What a signed upload URL allows, as it travels (compact field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The user the uploads belong to.
    pub u: String,
    /// The folder they go to (sanitised when signed); `None`: the user's top level.
    pub f: Option<String>,
    /// Expiry, Unix seconds.
    pub e: i64,
    /// Largest file, bytes.
    pub m: u64,
    /// Allowed MIME types (`type/subtype`, `type/*`, `*/*`); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<Vec<String>>,
}

/// Why a grant was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    /// The signature does not match, or the grant is not one of ours.
    Invalid,
    /// Signed, but past its expiry.
    Expired,
}

fn mac(secret: &[u8], grant: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(DOMAIN.as_bytes());
    mac.update(grant.as_bytes());
    mac
}

impl Grant {
    /// The `grant` text: base64url (no padding) of the compact JSON.
    pub fn encode(&self) -> String {
        // A struct of strings and numbers always serialises.
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// `grant=..&sig=..`, ready for a query string (base64url and hex need no escaping).
    pub fn query(&self, secret: &[u8]) -> String {
        let grant = self.encode();
        let sig = sign(secret, &grant);
        format!("grant={grant}&sig={sig}")
    }
}

/// The lowercase hex signature of a `grant` text.
pub fn sign(secret: &[u8], grant: &str) -> String {
    hex::encode(mac(secret, grant).finalize().into_bytes())
}

/// Checks the signature (constant time), then decodes the grant and checks its expiry
/// against `now` (Unix seconds). A grant that is signed but cannot be decoded is
/// [`GrantError::Invalid`] too.
pub fn verify(secret: &[u8], grant: &str, sig_hex: &str, now: i64) -> Result<Grant, GrantError> {
    if grant.len() > MAX_GRANT_LEN {
        return Err(GrantError::Invalid);
    }
    let sig = hex::decode(sig_hex.trim()).map_err(|_| GrantError::Invalid)?;
    mac(secret, grant)
        .verify_slice(&sig)
        .map_err(|_| GrantError::Invalid)?;
    let json = URL_SAFE_NO_PAD
        .decode(grant.as_bytes())
        .map_err(|_| GrantError::Invalid)?;
    let g: Grant = serde_json::from_slice(&json).map_err(|_| GrantError::Invalid)?;
    if now >= g.e {
        return Err(GrantError::Expired);
    }
    Ok(g)
}

/// Normalises an allowed-type pattern: lower case, parameters dropped; `None` when it is
/// not `type/subtype`, `type/*` or `*/*` made of token characters.
pub fn normalize_pattern(raw: &str) -> Option<String> {
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (top, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let ok = match (top, sub) {
        ("*", "*") => true,
        ("*", _) => false,
        (t, "*") => token(t),
        (t, s) => token(t) && token(s),
    };
    ok.then_some(essence)
}

/// Does `mime` (parameters ignored, any case) match one of `patterns` (normalised, see
/// [`normalize_pattern`]; `type/*` matches any subtype)?
pub fn mime_allowed(patterns: &[String], mime: &str) -> bool {
    let essence = crate::store::sidecar::mime_essence(mime);
    let Some((top, _)) = essence.split_once('/') else {
        return false;
    };
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        match p.split_once('/') {
            Some(("*", "*")) => true,
            Some((t, "*")) => t == top,
            _ => p == essence,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grant() -> Grant {
        Grant {
            u: "u1".into(),
            f: Some("a/b".into()),
            e: 2_000_000_000,
            m: 1024,
            t: Some(vec!["image/png".into(), "video/*".into()]),
        }
    }

    #[test]
    fn the_wire_format_is_compact_json_in_base64url() {
        let g = grant();
        let text = g.encode();
        assert!(!text.contains('=') && !text.contains('+') && !text.contains('/'));
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(&text).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"u":"u1","f":"a/b","e":2000000000,"m":1024,"t":["image/png","video/*"]}"#
        );
        let any = Grant {
            t: None,
            f: None,
            ..g
        };
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(any.encode()).unwrap()).unwrap();
        assert_eq!(json, r#"{"u":"u1","f":null,"e":2000000000,"m":1024}"#);
    }

    #[test]
    fn the_signature_is_hmac_of_the_prefixed_text() {
        let text = grant().encode();
        let mut m = HmacSha256::new_from_slice(b"k").unwrap();
        m.update(format!("upload-grant\n{text}").as_bytes());
        let want = hex::encode(m.finalize().into_bytes());
        assert_eq!(sign(b"k", &text), want);
        assert_eq!(grant().query(b"k"), format!("grant={text}&sig={want}"));
    }

    #[test]
    fn verify_checks_signature_then_expiry() {
        let g = grant();
        let text = g.encode();
        let sig = sign(b"k", &text);
        assert_eq!(verify(b"k", &text, &sig, 1_000).unwrap(), g);
        assert_eq!(verify(b"k", &text, &sig.to_uppercase(), 1_000).unwrap(), g);
        assert_eq!(
            verify(b"other", &text, &sig, 1_000),
            Err(GrantError::Invalid)
        );
        assert_eq!(verify(b"k", &text, "zz", 1_000), Err(GrantError::Invalid));
        assert_eq!(verify(b"k", &text, "", 1_000), Err(GrantError::Invalid));
        let tampered = Grant { m: 1 << 40, ..g }.encode();
        assert_eq!(
            verify(b"k", &tampered, &sig, 1_000),
            Err(GrantError::Invalid)
        );
        assert_eq!(
            verify(b"k", &text, &sig, 2_000_000_000),
            Err(GrantError::Expired)
        );
        // Signed but not a grant: still invalid, never a panic.
        let junk = URL_SAFE_NO_PAD.encode(b"[1,2]");
        assert_eq!(
            verify(b"k", &junk, &sign(b"k", &junk), 0),
            Err(GrantError::Invalid)
        );
    }

    #[test]
    fn a_download_signature_is_never_a_grant_signature() {
        use crate::signer::{self, Disposition};
        let text = grant().encode();
        let download = signer::sign(b"k", &text, 2_000_000_000, Disposition::Inline);
        assert_eq!(verify(b"k", &text, &download, 0), Err(GrantError::Invalid));
        let sig = sign(b"k", &text);
        assert!(!signer::verify(
            b"k",
            &text,
            2_000_000_000,
            Disposition::Inline,
            &sig
        ));
    }

    #[test]
    fn patterns_are_normalised_and_checked() {
        assert_eq!(normalize_pattern("Image/PNG").as_deref(), Some("image/png"));
        assert_eq!(
            normalize_pattern(" text/plain; charset=utf-8").as_deref(),
            Some("text/plain")
        );
        assert_eq!(normalize_pattern("video/*").as_deref(), Some("video/*"));
        assert_eq!(normalize_pattern("*/*").as_deref(), Some("*/*"));
        for bad in [
            "",
            "image",
            "*/png",
            "/png",
            "image/",
            "im age/png",
            "a/b/c",
        ] {
            assert_eq!(normalize_pattern(bad), None, "{bad}");
        }
    }

    #[test]
    fn types_match_exactly_or_by_wildcard() {
        let p = vec!["image/png".to_owned(), "video/*".to_owned()];
        assert!(mime_allowed(&p, "image/png"));
        assert!(mime_allowed(&p, "IMAGE/PNG; q=1"));
        assert!(mime_allowed(&p, "video/mp4"));
        assert!(!mime_allowed(&p, "image/jpeg"));
        assert!(!mime_allowed(&p, "videox/mp4"));
        assert!(!mime_allowed(&p, "text/plain"));
        assert!(!mime_allowed(&p, "nonsense"));
        assert!(mime_allowed(&["*/*".to_owned()], "application/zip"));
    }
}
