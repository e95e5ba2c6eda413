//! Names that come from clients, parsed once into types that cannot leave `UPLOAD_ROOT`.

use std::fmt;

/// Why a client-supplied name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// A user id: exactly one safe path segment (API.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Accepts ids that are one path segment: not empty, not `.`/`..`, no `/`, `\`, NUL or
    /// control characters, at most 255 bytes. E-mail addresses are fine.
    pub fn parse(raw: &str) -> Result<Self, InvalidName> {
        let bad = |why: &str| Err(InvalidName(format!("Invalid user id: {why}")));
        if raw.is_empty() {
            return bad("empty");
        }
        if raw == "." || raw == ".." {
            return bad("'.' and '..' are not ids");
        }
        if raw.len() > 255 {
            return bad("longer than 255 bytes");
        }
        if raw.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
            return bad("contains '/', '\\' or a control character");
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text (also its directory name under `storage/`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        for ok in ["u1", "alice@example.com", "user123", "a.b", "..a", "Zoë"] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "a\nb", "\u{7f}", long.as_str()] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(UserId::parse(&"x".repeat(255)).is_ok());
    }
}
