//! Who may upload: a [`Caller`] (headers, API.md §2) or a signed upload URL's grant (issue
//! 15). [`Uploader`] is the extractor every upload route that accepts signed upload URLs
//! takes; [`UploadGrant`] is a verified grant with the checks a route applies to it.
//!
//! Which wins when a request carries several:
//! - `X-Service-Token` or `Authorization: Bearer`: the headers; a grant in the query is
//!   ignored (not even verified).
//! - `grant`/`sig` in the query and only the `auth_token` cookie: the grant. The cookie is
//!   sent by the browser whatever the page meant, the grant is in the URL the page chose;
//!   the cookie is then not used at all, so its cross-site check does not apply.
//! - neither: the cookie, as [`Caller`] decides (or 401).

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap};
use percent_encoding::percent_decode_str;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::key::{FolderPath, UserId};
use crate::store::sidecar::guess_mime;
use crate::upload_grant::{self, GrantError};

/// What a tampered, unknown or malformed grant is told (403).
pub const INVALID_SIGNATURE: &str = "Invalid upload signature";
/// What an expired grant is told (403).
pub const EXPIRED: &str = "Upload URL expired";

/// Response header naming the stored file's key when an upload finishes (tus, the draft).
pub const UPLOAD_KEY_HEADER: &str = "X-Upload-Key";
/// Response header with the stored file's public URL when an upload finishes.
pub const UPLOAD_URL_HEADER: &str = "X-Upload-Url";

/// Who is uploading.
#[derive(Debug, Clone)]
pub enum Uploader {
    /// Authenticated by headers (service token, Bearer JWT, or the cookie).
    Caller(Caller),
    /// A signed upload URL, verified.
    Grant(UploadGrant),
}

/// A verified signed upload grant: uploads for one user and folder, each file at most
/// `max_size` bytes and, when `mime_types` is set, of one of those types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadGrant {
    /// Whose files the uploads become.
    pub user: UserId,
    /// Where they go; `None`: the user's top level.
    pub folder: Option<FolderPath>,
    /// Largest file, bytes (never above `MAX_BODY_MB`: checked when signed).
    pub max_size: u64,
    /// Allowed types, normalised (`type/subtype`, `type/*`, `*/*`); `None`: any.
    pub mime_types: Option<Vec<String>>,
    /// When the grant ends, Unix seconds. An upload started before may finish after it
    /// only where the route says so; the one-request upload checks it once, at the start.
    pub expires_at: i64,
    /// `grant=..&sig=..` as the request carried them, to hand on (e.g. in a tus
    /// `Location`, so that later requests to the upload carry the grant too).
    pub query: String,
}

impl Uploader {
    /// The user the upload belongs to: the grant's, or as [`Caller::acting_for`] decides.
    pub fn acting_for(&self, named: Option<&str>) -> Result<UserId, ApiError> {
        match self {
            Self::Caller(c) => c.acting_for(named),
            Self::Grant(g) => Ok(g.user.clone()),
        }
    }

    /// May this uploader touch an upload of `owner` made by the grant whose fingerprint is
    /// `made_by`? A header caller: as [`Caller::may_access`]. A grant: only the uploads it
    /// made itself (not the user's others).
    pub fn may_access(&self, owner: &str, made_by: Option<&str>) -> bool {
        match self {
            Self::Caller(c) => c.may_access(owner),
            Self::Grant(g) => {
                g.user.as_str() == owner && made_by.is_some_and(|f| f == g.fingerprint())
            }
        }
    }

    /// The fingerprint to store on an upload this uploader makes.
    pub fn fingerprint(&self) -> Option<String> {
        self.grant().map(UploadGrant::fingerprint)
    }

    /// `?grant=..&sig=..` to put on the URL of an upload this uploader made, so that the
    /// requests that go on with it carry the grant; empty for header callers.
    pub fn url_suffix(&self) -> String {
        match self {
            Self::Grant(g) => format!("?{}", g.query),
            Self::Caller(_) => String::new(),
        }
    }

    /// The grant, when the request is authorised by one.
    pub fn grant(&self) -> Option<&UploadGrant> {
        match self {
            Self::Grant(g) => Some(g),
            Self::Caller(_) => None,
        }
    }
}

impl UploadGrant {
    /// What identifies the grant (its user, folder, limits and expiry), as stored on the
    /// uploads it makes: hex SHA-256, nothing secret.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let text = format!(
            "{}\n{}\n{}\n{}\n{}",
            self.user.as_str(),
            self.folder
                .as_ref()
                .map(FolderPath::as_string)
                .unwrap_or_default(),
            self.max_size,
            self.mime_types.as_deref().unwrap_or_default().join(","),
            self.expires_at
        );
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    }

    /// Checks a declared or actual file size: 413 naming the limit when over it.
    pub fn check_size(&self, size: u64) -> Result<(), ApiError> {
        if size > self.max_size {
            return Err(ApiError::TooLarge(format!(
                "File too large for this upload URL: at most {} bytes",
                self.max_size
            )));
        }
        Ok(())
    }

    /// Checks a type (parameters and case ignored; `type/*` matches any subtype): 403
    /// naming the allowed types when it is not one of them.
    pub fn check_mime(&self, mime: &str) -> Result<(), ApiError> {
        match &self.mime_types {
            Some(allowed) if !upload_grant::mime_allowed(allowed, mime) => {
                Err(ApiError::Forbidden(format!(
                    "File type '{}' is not allowed by this upload URL (allowed: {})",
                    mime.split(';').next().unwrap_or("").trim(),
                    allowed.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    /// Checks a file about to be uploaded: its type as it will be stored (from `name`'s
    /// extension, else `declared_mime`; see [`guess_mime`]) and, when known, its size.
    /// Returns that type.
    pub fn check_file(
        &self,
        name: &str,
        declared_mime: Option<&str>,
        size: Option<u64>,
    ) -> Result<String, ApiError> {
        let mime = guess_mime(name, declared_mime);
        self.check_mime(&mime)?;
        if let Some(size) = size {
            self.check_size(size)?;
        }
        Ok(mime)
    }

    /// The folder an upload goes to: the grant's. A client may repeat it (compared after
    /// sanitising, so `a//b/` is `a/b`) or send none; any other folder is refused (403),
    /// rather than the file quietly landing somewhere the client did not ask for.
    pub fn folder_for(&self, requested: Option<&str>) -> Result<Option<FolderPath>, ApiError> {
        let requested = requested.and_then(FolderPath::sanitize);
        if requested.is_some() && requested != self.folder {
            return Err(ApiError::Forbidden(format!(
                "This upload URL is for {}",
                match &self.folder {
                    Some(f) => format!("folder '{}' only", f.as_string()),
                    None => "the top-level folder only".to_owned(),
                }
            )));
        }
        Ok(self.folder.clone())
    }

    /// Verifies `grant` and `sig` (as they came in the query) with the signed-URL key.
    pub fn verify(state: &AppState, grant: &str, sig: &str) -> Result<Self, ApiError> {
        let now = chrono::Utc::now().timestamp();
        // Signed with the current key, or with the previous one during a rotation.
        let secrets = state.secrets();
        let mut verdict = Err(GrantError::Invalid);
        for key in secrets.signing.verifying() {
            verdict = upload_grant::verify(key, grant, sig, now);
            if !matches!(verdict, Err(GrantError::Invalid)) {
                break;
            }
        }
        let g = verdict.map_err(|e| match e {
            GrantError::Invalid => ApiError::Forbidden(INVALID_SIGNATURE.to_owned()),
            GrantError::Expired => ApiError::Forbidden(EXPIRED.to_owned()),
        })?;
        let invalid = || ApiError::Forbidden(INVALID_SIGNATURE.to_owned());
        let user = UserId::parse(&g.u).map_err(|_| invalid())?;
        let folder = match g.f.as_deref() {
            None => None,
            Some(f) => Some(FolderPath::sanitize(f).ok_or_else(invalid)?),
        };
        Ok(Self {
            user,
            folder,
            max_size: g.m,
            mime_types: g.t,
            expires_at: g.e,
            query: format!("grant={grant}&sig={}", sig.trim()),
        })
    }
}

/// The `grant` and `sig` of a query string. `Some` when either is there (a lone one fails
/// verification); two of either is invalid.
pub fn grant_in_query(query: Option<&str>) -> Option<Result<(String, String), ApiError>> {
    let mut grant = Vec::new();
    let mut sig = Vec::new();
    for pair in query?.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(&value.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        match name {
            "grant" => grant.push(value),
            "sig" => sig.push(value),
            _ => {}
        }
    }
    if grant.is_empty() && sig.is_empty() {
        return None;
    }
    Some(match (grant.as_slice(), sig.as_slice()) {
        ([g], [s]) => Ok((g.clone(), s.clone())),
        _ => Err(ApiError::Forbidden(INVALID_SIGNATURE.to_owned())),
    })
}

/// Does the request authenticate by a header a page cannot make a browser send on its own
/// (`X-Service-Token`, `Authorization: Bearer ...`)?
fn has_explicit_credentials(headers: &HeaderMap) -> bool {
    if headers.contains_key("x-service-token") {
        return true;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
}

impl FromRequestParts<AppState> for Uploader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !has_explicit_credentials(&parts.headers) {
            if let Some(found) = grant_in_query(parts.uri.query()) {
                let (grant, sig) = found?;
                return UploadGrant::verify(state, &grant, &sig).map(Self::Grant);
            }
        }
        Caller::from_request_parts(parts, state)
            .await
            .map(Self::Caller)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grant(folder: Option<&str>, types: Option<&[&str]>) -> UploadGrant {
        UploadGrant {
            user: UserId::parse("u1").unwrap(),
            folder: folder.and_then(FolderPath::sanitize),
            max_size: 100,
            mime_types: types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
            expires_at: 0,
            query: String::new(),
        }
    }

    #[test]
    fn size_is_checked_against_the_limit() {
        let g = grant(None, None);
        assert!(g.check_size(100).is_ok());
        let e = g.check_size(101).unwrap_err();
        assert_eq!(e.status(), 413);
        assert!(e.to_string().contains("100 bytes"));
    }

    #[test]
    fn types_are_checked_only_when_listed() {
        assert!(grant(None, None)
            .check_mime("application/x-anything")
            .is_ok());
        let g = grant(None, Some(&["image/png", "video/*"]));
        assert!(g.check_mime("image/png").is_ok());
        assert!(g.check_mime("Video/MP4; codecs=x").is_ok());
        let e = g.check_mime("text/html").unwrap_err();
        assert_eq!(e.status(), 403);
        assert_eq!(
            e.to_string(),
            "File type 'text/html' is not allowed by this upload URL (allowed: image/png, video/*)"
        );
    }

    #[test]
    fn a_file_is_checked_by_its_stored_type_and_size() {
        let g = grant(None, Some(&["image/*"]));
        assert_eq!(g.check_file("a.png", None, Some(100)).unwrap(), "image/png");
        assert_eq!(
            g.check_file("a", Some("image/gif"), None).unwrap(),
            "image/gif"
        );
        assert_eq!(
            g.check_file("a.html", Some("image/png"), None)
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            g.check_file("a.png", None, Some(101)).unwrap_err().status(),
            413
        );
    }

    #[test]
    fn the_grant_folder_wins_and_another_is_refused() {
        let g = grant(Some("a/b"), None);
        let want = FolderPath::sanitize("a/b");
        assert_eq!(g.folder_for(None).unwrap(), want);
        assert_eq!(g.folder_for(Some("")).unwrap(), want);
        assert_eq!(g.folder_for(Some("/a//b/")).unwrap(), want);
        assert_eq!(g.folder_for(Some("c")).unwrap_err().status(), 403);
        let top = grant(None, None);
        assert_eq!(top.folder_for(None).unwrap(), None);
        assert_eq!(top.folder_for(Some("x")).unwrap_err().status(), 403);
    }

    #[test]
    fn the_query_holds_one_grant_and_one_sig() {
        assert!(grant_in_query(None).is_none());
        assert!(grant_in_query(Some("filename=a")).is_none());
        let (g, s) = grant_in_query(Some("a=1&grant=eyJ1&sig=ab%63"))
            .unwrap()
            .unwrap();
        assert_eq!((g.as_str(), s.as_str()), ("eyJ1", "abc"));
        assert!(grant_in_query(Some("grant=a&grant=b&sig=c"))
            .unwrap()
            .is_err());
        assert!(grant_in_query(Some("sig=c")).unwrap().is_err());
    }

    #[test]
    fn explicit_credentials_are_service_or_bearer() {
        let mut h = HeaderMap::new();
        assert!(!has_explicit_credentials(&h));
        h.insert(header::COOKIE, "auth_token=x".parse().unwrap());
        assert!(!has_explicit_credentials(&h));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(!has_explicit_credentials(&h));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert!(has_explicit_credentials(&h));
        let mut s = HeaderMap::new();
        s.insert("x-service-token", "t".parse().unwrap());
        assert!(has_explicit_credentials(&s));
    }
}
