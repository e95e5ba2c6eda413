//! The JSON sidecar (`{file}.meta`) beside every stored file (API.md §7), read leniently so
//! the old service's thin sidecars (or none) work too.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A file's metadata, as kept in its sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// The name the client gave, before sanitising.
    pub original_name: String,
    /// The MIME type.
    pub mime: String,
    /// Hex SHA-256 of the bytes, when known.
    pub sha256: Option<String>,
    /// CRC-32 of the bytes, when known (old sidecars lack it).
    pub crc32: Option<u32>,
    /// The owner.
    pub user_id: String,
    /// The size in bytes, when recorded.
    pub size: Option<u64>,
    /// When the file was stored (RFC 3339), when recorded.
    pub created_at: Option<String>,
    /// The client's own fields (and the old service's `filename`/`folder`).
    pub extra: Map<String, Value>,
}

/// Fields the server owns: a client's `meta` can never set them.
pub const SERVER_FIELDS: &[&str] = &[
    "original_name",
    "mime",
    "sha256",
    "crc32",
    "user_id",
    "size",
    "created_at",
];

impl Meta {
    /// The sidecar of a file just uploaded by `user` as `original_name` into `folder`: MIME
    /// type guessed from the name (else the declared one), size and hashes of the bytes
    /// received, stored now; the client's `extra` fields with the old service's `filename`
    /// and `folder` beside them.
    pub fn for_upload(
        user: &super::key::UserId,
        original_name: &super::key::ClientFileName,
        folder: Option<&super::key::FolderPath>,
        declared_mime: Option<&str>,
        extra: Map<String, Value>,
        (size, sha256, crc32): (u64, Option<String>, Option<u32>),
    ) -> Self {
        let original_name = original_name.as_str();
        let mut meta = Self {
            original_name: original_name.to_owned(),
            mime: guess_mime(original_name, declared_mime),
            sha256,
            crc32,
            user_id: user.as_str().to_owned(),
            size: Some(size),
            created_at: Some(super::now_rfc3339()),
            extra,
        };
        meta.extra
            .insert("filename".into(), Value::from(original_name));
        if let Some(f) = folder {
            meta.extra
                .insert("folder".into(), Value::from(f.as_string()));
        }
        meta
    }

    /// The sidecar's path for a data file.
    pub fn path_for(data: &Path) -> PathBuf {
        let mut s = data.as_os_str().to_owned();
        s.push(".meta");
        PathBuf::from(s)
    }

    /// Reads a sidecar's JSON text; unknown or ill-typed fields are tolerated.
    pub fn from_json(text: &[u8], fallback_name: &str, fallback_user: &str) -> Option<Self> {
        let Value::Object(mut map) = serde_json::from_slice(text).ok()? else {
            return None;
        };
        let mut take_str = |k: &str| match map.remove(k) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let original_name = take_str("original_name").unwrap_or_else(|| fallback_name.to_owned());
        let mime = take_str("mime").unwrap_or_else(|| guess_mime(&original_name, None));
        let sha256 = take_str("sha256").filter(|s| !s.is_empty());
        let user_id = take_str("user_id").unwrap_or_else(|| fallback_user.to_owned());
        let created_at = take_str("created_at");
        let crc32 = map
            .remove("crc32")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok());
        let size = map.remove("size").and_then(|v| v.as_u64());
        Some(Self {
            original_name,
            mime,
            sha256,
            crc32,
            user_id,
            size,
            created_at,
            extra: map,
        })
    }

    /// The sidecar's JSON: client fields first, then the server's, which win.
    pub fn to_json(&self) -> std::io::Result<Vec<u8>> {
        let mut map = Map::new();
        for (k, v) in &self.extra {
            if !SERVER_FIELDS.contains(&k.as_str()) {
                map.insert(k.clone(), v.clone());
            }
        }
        map.insert("original_name".into(), self.original_name.clone().into());
        map.insert("mime".into(), self.mime.clone().into());
        if let Some(s) = &self.sha256 {
            map.insert("sha256".into(), s.clone().into());
        }
        if let Some(c) = self.crc32 {
            map.insert("crc32".into(), c.into());
        }
        map.insert("user_id".into(), self.user_id.clone().into());
        if let Some(s) = self.size {
            map.insert("size".into(), s.into());
        }
        if let Some(c) = &self.created_at {
            map.insert("created_at".into(), c.clone().into());
        }
        Ok(serde_json::to_vec_pretty(&Value::Object(map))?)
    }
}

/// A MIME type's essence: `type/subtype`, lower case, parameters dropped.
pub fn mime_essence(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The type from the file name's extension; else the declared one; else octet-stream.
pub fn guess_mime(name: &str, declared: Option<&str>) -> String {
    if let Some(m) = mime_guess::from_path(name).first() {
        return m.essence_str().to_owned();
    }
    declared
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.contains('/') && !d.chars().any(char::is_control))
        .unwrap_or("application/octet-stream")
        .to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn old_sidecars_read() {
        let old = br#"{"original_name":"photo.jpg","mime":"image/jpeg","sha256":"ab","user_id":"alice","album":"summer","tags":["a","b"]}"#;
        let m = Meta::from_json(old, "x", "y").unwrap();
        assert_eq!(m.original_name, "photo.jpg");
        assert_eq!(m.crc32, None);
        assert_eq!(m.extra["tags"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn client_fields_never_override() {
        let mut extra = Map::new();
        extra.insert("mime".into(), "text/html".into());
        extra.insert("size".into(), 1.into());
        extra.insert("custom".into(), "yes".into());
        let m = Meta {
            original_name: "a.txt".into(),
            mime: "text/plain".into(),
            sha256: Some("00".into()),
            crc32: Some(7),
            user_id: "u".into(),
            size: Some(5),
            created_at: Some("2026-01-01T00:00:00Z".into()),
            extra,
        };
        let v: Value = serde_json::from_slice(&m.to_json().unwrap()).unwrap();
        assert_eq!(v["mime"], "text/plain");
        assert_eq!(v["size"], 5);
        assert_eq!(v["custom"], "yes");
        let back = Meta::from_json(&m.to_json().unwrap(), "", "").unwrap();
        assert_eq!(back.crc32, Some(7));
    }

    #[test]
    fn mime_from_extension_then_declared() {
        assert_eq!(guess_mime("a.jpg", Some("text/plain")), "image/jpeg");
        assert_eq!(
            guess_mime("a.unknownext", Some("video/x-custom")),
            "video/x-custom"
        );
        assert_eq!(guess_mime("noext", None), "application/octet-stream");
    }
}
