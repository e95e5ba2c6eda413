//! Names that come from clients, parsed once into types that cannot leave `UPLOAD_ROOT`.

use std::fmt;

/// Why a client-supplied name was refused; `error.rs` words it for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    /// Not a valid user id (API.md §2).
    #[error("invalid user id ({0:?})")]
    UserId(NameFault),
    /// Not a valid client file name (API.md §3.1).
    #[error("invalid file name ({0:?})")]
    FileName(NameFault),
    /// Not a file key under `storage/{user}/`.
    #[error("invalid key")]
    Key,
    /// Not a file path under a user's directory.
    #[error("invalid path")]
    Path,
}

/// The rule a name broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameFault {
    /// Empty, or only white space.
    Empty,
    /// Starts with `.` (user ids: `.`, `..` and dot-folders are never served).
    LeadingDot,
    /// Longer than 255 bytes.
    TooLong,
    /// Contains `/`, `\` or a control character (user ids).
    Separator,
    /// Contains `..` (file names).
    DotDot,
    /// Contains `/` or `\` (file names).
    Slash,
    /// Contains NUL (file names).
    Nul,
    /// A device name Windows reserves (`CON`, `LPT1`, ...).
    Reserved,
}

/// A user id: exactly one safe path segment (API.md §2).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl TryFrom<String> for UserId {
    type Error = InvalidName;
    fn try_from(raw: String) -> Result<Self, InvalidName> {
        Self::parse(&raw)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> Self {
        u.0
    }
}

impl UserId {
    /// Accepts ids that are one path segment: not empty, not `.`/`..`, no `/`, `\`, NUL or
    /// control characters, at most 255 bytes. E-mail addresses are fine.
    pub fn parse(raw: &str) -> Result<Self, InvalidName> {
        let bad = |why| Err(InvalidName::UserId(why));
        if raw.is_empty() {
            return bad(NameFault::Empty);
        }
        if raw.starts_with('.') {
            // `.`, `..`, and any dot-folder: those are never served or listed (API.md §4.3).
            return bad(NameFault::LeadingDot);
        }
        if raw.len() > 255 {
            return bad(NameFault::TooLong);
        }
        if raw.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
            return bad(NameFault::Separator);
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

/// Is this character replaced by `_` in folder and file names (API.md §7)?
fn is_forbidden(c: char) -> bool {
    matches!(c, '<' | '>' | ':' | '"' | '/' | '\\' | '|' | '?' | '*') || c.is_control()
}

/// Unicode's format characters (general category Cf, Unicode 15): invisible, and some
/// reorder what a person reads (U+202E shows `\u{202E}gnp.exe` as `exe.png`).
const FORMAT_CHARS: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Is `c` a format character (bidirectional overrides and isolates, zero-width characters,
/// ...)? Names drop them, so a name shows what it is (issue 16).
pub fn is_format_char(c: char) -> bool {
    let c = u32::from(c);
    FORMAT_CHARS
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// The §7 character and stripping rules shared by folder parts and file names, and format
/// characters dropped.
fn clean_part(raw: &str) -> String {
    let replaced: String = raw
        .chars()
        .filter(|&c| !is_format_char(c))
        .map(|c| if is_forbidden(c) { '_' } else { c })
        .collect();
    replaced.trim_matches(|c| c == '.' || c == ' ').to_owned()
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A name ending in `.meta` (any case) gets a `_`: only sidecars end so, and a folder or file
/// named like one would be skipped by the listing and the quota count (issue 16: a folder
/// `a.meta` held files the quota never saw). The result stays within `max` bytes.
fn not_a_sidecar_name(mut name: String, max: usize) -> String {
    if name.to_ascii_lowercase().ends_with(".meta") {
        if name.len() + 1 > max {
            name.truncate(cut_bytes(&name, max - 1).len());
        }
        name.push('_');
    }
    name
}

/// A sanitised folder: one or more safe segments under a user's directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FolderPath(Vec<String>);

impl FolderPath {
    /// Sanitises a client folder as §7 says; `None` when nothing is left (no folder).
    pub fn sanitize(raw: &str) -> Option<Self> {
        let parts: Vec<String> = raw
            .split('/')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let cleaned = clean_part(p);
                if cleaned.is_empty() || p == "." || p == ".." {
                    "invalid".to_owned()
                } else {
                    // 100 characters, and never more than a file name's 255 bytes.
                    let cut: String = cleaned.chars().take(100).collect();
                    cut_bytes(&cut, 255).trim_end_matches([' ', '.']).to_owned()
                }
            })
            .map(|p| {
                if p.is_empty() {
                    "invalid".to_owned()
                } else {
                    not_a_sidecar_name(p, 255)
                }
            })
            .collect();
        (!parts.is_empty()).then_some(Self(parts))
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// `a/b/c`.
    pub fn as_string(&self) -> String {
        self.0.join("/")
    }
}

/// Device names Windows reserves; refused so keys stay portable to any client's disk.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Longest stored file name (without the `{8 hex}_` prefix), so that
/// `{8 hex}_{name}.meta` fits in 255 bytes.
pub const MAX_NAME_BYTES: usize = 240;

/// A client's file name as init checks it (API.md §3.1): not empty, no `..`, `/`, `\` or
/// NUL, not a reserved device name. Kept as the client wrote it (the sidecar's original
/// name); [`FileName::sanitize`] makes the stored name from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientFileName(String);

impl ClientFileName {
    /// Checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidName> {
        let bad = |why| Err(InvalidName::FileName(why));
        if raw.trim().is_empty() {
            return bad(NameFault::Empty);
        }
        if raw.contains("..") {
            return bad(NameFault::DotDot);
        }
        if raw.contains('/') || raw.contains('\\') {
            return bad(NameFault::Slash);
        }
        if raw.contains('\0') {
            return bad(NameFault::Nul);
        }
        let stem = raw.split('.').next().unwrap_or(raw).trim();
        if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
            return bad(NameFault::Reserved);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientFileName {
    type Error = InvalidName;
    fn try_from(raw: String) -> Result<Self, InvalidName> {
        Self::parse(&raw)
    }
}

impl From<ClientFileName> for String {
    fn from(n: ClientFileName) -> Self {
        n.0
    }
}

/// A sanitised file name (without prefix): safe as one path segment, never ending in `.meta`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileName(String);

impl FileName {
    /// Applies §7: forbidden characters to `_`, dots and spaces stripped at both ends,
    /// `unnamed_file` when empty, `_` after a trailing `.meta`, at most 240 bytes keeping the
    /// extension.
    pub fn sanitize(raw: &str) -> Self {
        let mut name = clean_part(raw);
        if name.is_empty() {
            name = "unnamed_file".to_owned();
        }
        if name.len() > MAX_NAME_BYTES {
            name = match name.rfind('.') {
                // Keep a plausible extension (short, after a non-empty stem).
                Some(dot) if dot > 0 && name.len() - dot <= 16 => {
                    let ext = &name[dot..];
                    let stem = cut_bytes(&name[..dot], MAX_NAME_BYTES - ext.len());
                    format!("{stem}{ext}")
                }
                _ => cut_bytes(&name, MAX_NAME_BYTES).to_owned(),
            };
            // The cut may end on a dot or a space, which §7 strips (found by fuzzing).
            name.truncate(name.trim_end_matches(['.', ' ']).len());
        }
        Self(not_a_sidecar_name(name, MAX_NAME_BYTES))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A file's key: `storage/{user_id}/[{folder}/]{prefix}_{name}`, relative to `UPLOAD_ROOT`.
/// A parsed key has only safe segments, so joining it onto the root stays inside `storage/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    owner: UserId,
    /// Segments after the user id; the last is the file.
    rest: Vec<String>,
}

impl Key {
    /// A new key for a file being stored.
    pub fn new(owner: &UserId, folder: Option<&FolderPath>, stored_name: &str) -> Self {
        let mut rest: Vec<String> = folder.map(|f| f.segments().to_vec()).unwrap_or_default();
        rest.push(stored_name.to_owned());
        Self {
            owner: owner.clone(),
            rest,
        }
    }

    /// Parses a key from a client. Refuses anything that is not a plain file under
    /// `storage/{user}/`: empty, `.` or `..` segments, dot-files, backslashes, control
    /// characters, sidecars (`.meta`).
    pub fn parse(raw: &str) -> Result<Self, InvalidName> {
        let bad = || InvalidName::Key;
        let raw = raw.strip_prefix('/').unwrap_or(raw);
        let mut segs = raw.split('/');
        if segs.next() != Some("storage") {
            return Err(bad());
        }
        let owner = UserId::parse(segs.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let rest: Vec<String> = segs.map(str::to_owned).collect();
        Self::from_parts(owner, rest).ok_or_else(bad)
    }

    /// A key from an owner and the path below the owner's directory.
    pub fn from_user_path(owner: &str, path: &str) -> Result<Self, InvalidName> {
        let bad = || InvalidName::Path;
        let owner = UserId::parse(owner).map_err(|_| bad())?;
        let rest = path.split('/').map(str::to_owned).collect();
        Self::from_parts(owner, rest).ok_or_else(bad)
    }

    fn from_parts(owner: UserId, rest: Vec<String>) -> Option<Self> {
        if owner.as_str().starts_with('.') || rest.is_empty() {
            return None;
        }
        for seg in &rest {
            if seg.is_empty()
                || seg.starts_with('.')
                || seg.len() > 255
                || seg.chars().any(|c| c == '\\' || c.is_control())
            {
                return None;
            }
        }
        if rest.last()?.ends_with(".meta") {
            return None;
        }
        Some(Self { owner, rest })
    }

    /// The user the file belongs to.
    pub fn owner(&self) -> &UserId {
        &self.owner
    }

    /// The stored file name (with its prefix).
    pub fn file_name(&self) -> &str {
        self.rest.last().map_or("", String::as_str)
    }

    /// The folder below the user's directory, if any.
    pub fn folder(&self) -> Option<String> {
        (self.rest.len() > 1).then(|| self.rest[..self.rest.len() - 1].join("/"))
    }

    /// Orders keys as their text (`storage/{user}/...`) would be ordered, without building
    /// it: listings sort thousands of keys whose `created_at` ties.
    pub fn cmp_text(&self, other: &Self) -> std::cmp::Ordering {
        fn text(k: &Key) -> impl Iterator<Item = u8> + '_ {
            k.owner.as_str().bytes().chain(
                k.rest
                    .iter()
                    .flat_map(|seg| std::iter::once(b'/').chain(seg.bytes())),
            )
        }
        text(self).cmp(text(other))
    }

    /// The path relative to `UPLOAD_ROOT`.
    pub fn relative_path(&self) -> std::path::PathBuf {
        let mut p = std::path::PathBuf::from("storage");
        p.push(self.owner.as_str());
        for seg in &self.rest {
            p.push(seg);
        }
        p
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage/{}/{}", self.owner, self.rest.join("/"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn user_ids() {
        for ok in ["u1", "alice@example.com", "user123", "a.b", "a..", "Zoë"] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            ".dot",
            "a/b",
            "a\\b",
            "a\0b",
            "a\nb",
            "\u{7f}",
            long.as_str(),
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(UserId::parse(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn folders_follow_section_7() {
        let f = |s: &str| FolderPath::sanitize(s).map(|f| f.as_string());
        assert_eq!(f("main/pictures"), Some("main/pictures".into()));
        assert_eq!(f(""), None);
        assert_eq!(f(" / /"), None);
        assert_eq!(f("../../etc"), Some("invalid/invalid/etc".into()));
        assert_eq!(f("/abs/path/"), Some("abs/path".into()));
        assert_eq!(f("a\\b"), Some("a_b".into()));
        assert_eq!(f("a<b>c:d"), Some("a_b_c_d".into()));
        assert_eq!(f(" .hidden. "), Some("hidden".into()));
        // Only sidecars end in `.meta` (issue 16: such a folder hid files from the quota).
        assert_eq!(f("a.meta/b.META"), Some("a.meta_/b.META_".into()));
        assert_eq!(f("a.metadata"), Some("a.metadata".into()));
        assert_eq!(f("..."), Some("invalid".into()));
        assert_eq!(f(&"x".repeat(150)).unwrap().len(), 100);
        assert!(f(&"𝄞".repeat(150)).unwrap().len() <= 255);
    }

    #[test]
    fn file_names_follow_section_7() {
        let n = |s: &str| FileName::sanitize(s).as_str().to_owned();
        assert_eq!(n("photo.jpg"), "photo.jpg");
        assert_eq!(n(""), "unnamed_file");
        assert_eq!(n("..."), "unnamed_file");
        assert_eq!(n("a\0b"), "a_b");
        assert_eq!(n("x.meta"), "x.meta_");
        assert_eq!(n("x.META"), "x.META_");
        assert_eq!(n("Résumé été.pdf"), "Résumé été.pdf");
        // Issue 16: a right-to-left override showed `\u{202E}gnp.exe` as `exe.png`.
        assert_eq!(n("\u{202E}gnp.exe"), "gnp.exe");
        assert_eq!(
            n("a\u{2066}b\u{2069}\u{200B}\u{FEFF}\u{E0041}.txt"),
            "ab.txt"
        );
        assert_eq!(n("\u{202E}"), "unnamed_file");
        let long = format!("{}.mp4", "é".repeat(200));
        let cut = n(&long);
        assert!(
            cut.len() <= MAX_NAME_BYTES && cut.ends_with(".mp4"),
            "{cut}"
        );
        let long = "y".repeat(300);
        assert_eq!(n(&long).len(), MAX_NAME_BYTES);
    }

    /// Found by fuzzing (`fuzz/`, target `names`): a name cut at 240 bytes kept the dot or
    /// space it was cut on, so it ended in one.
    #[test]
    fn cut_file_names_do_not_end_in_a_dot_or_space() {
        for raw in [
            format!("{}. {}", "x".repeat(239), "y".repeat(10)),
            format!("{}  .{}", "x".repeat(238), "y".repeat(20)),
            // The input the fuzzer found.
            format!(
                "𝄞{}.ME.metaTA{}.{}",
                "a".repeat(202),
                "a".repeat(23),
                "b".repeat(20)
            ),
        ] {
            let n = FileName::sanitize(&raw);
            let n = n.as_str();
            assert!(n.len() <= MAX_NAME_BYTES, "{n}");
            assert!(!n.ends_with(['.', ' ']), "{n:?}");
            assert!(!n.to_ascii_lowercase().ends_with(".meta"), "{n:?}");
        }
    }

    #[test]
    fn keys_compare_as_their_text() {
        let keys: Vec<Key> = [
            "storage/u1/a/b.txt",
            "storage/u1/a.b",
            "storage/u1/a/b",
            "storage/u10/x",
            "storage/u1/ab",
            "storage/u1/a",
            "storage/u1/é",
            "storage/u1/z/a",
        ]
        .iter()
        .map(|k| Key::parse(k).unwrap())
        .collect();
        for a in &keys {
            for b in &keys {
                assert_eq!(
                    a.cmp_text(b),
                    a.to_string().cmp(&b.to_string()),
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn format_chars_are_unicode_cf() {
        for c in [
            '\u{AD}',
            '\u{200E}',
            '\u{202A}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{E007F}',
        ] {
            assert!(is_format_char(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '\u{2065}', '\u{2029}', '\u{FFFC}', '𝄞'] {
            assert!(!is_format_char(c), "{c:?}");
        }
        assert!(FORMAT_CHARS.windows(2).all(|w| w[0].1 < w[1].0));
        assert_eq!(
            FolderPath::sanitize("\u{202E}cod/x").map(|f| f.as_string()),
            Some("cod/x".into())
        );
    }

    #[test]
    fn init_names_are_checked() {
        for bad in [
            "", "  ", "..", "a..b", "a/b", "a\\b", "CON", "con.txt", "LPT1", "nul",
        ] {
            assert!(ClientFileName::parse(bad).is_err(), "{bad:?}");
        }
        for ok in ["a.txt", "CONSOLE.txt", "Résumé été.pdf", ".env"] {
            assert!(ClientFileName::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn keys_parse_only_plain_files() {
        let k = Key::parse("storage/u1/a/b/1234abcd_x.txt").unwrap();
        assert_eq!(k.owner().as_str(), "u1");
        assert_eq!(k.folder().as_deref(), Some("a/b"));
        assert_eq!(k.to_string(), "storage/u1/a/b/1234abcd_x.txt");
        for bad in [
            "storage/u1",
            "storage/u1/",
            "storage/../x",
            "storage/u1/../u2/x",
            "storage/u1/./x",
            "storage/u1/a//x",
            "storage/u1/x.meta",
            "storage/u1/.signing_key",
            "storage/u1/a\\b",
            "storage/u1/a\0b",
            ".parts/x/y",
            "other/u1/x",
        ] {
            assert!(Key::parse(bad).is_err(), "{bad:?}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use std::path::{Component, Path};

        /// Any string, biased towards the characters that matter for paths.
        fn hostile() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    Just("..".to_owned()),
                    Just("/".to_owned()),
                    Just("\\".to_owned()),
                    Just(".".to_owned()),
                    Just("\0".to_owned()),
                    Just(" ".to_owned()),
                    Just(".meta".to_owned()),
                    Just("%2e".to_owned()),
                    any::<char>().prop_map(String::from),
                    "[a-zé]{1,5}",
                ],
                0..40,
            )
            .prop_map(|v| v.concat())
        }

        fn stays_inside(key: &Key) {
            let rel = key.relative_path();
            assert!(rel.starts_with(Path::new("storage").join(key.owner().as_str())));
            for c in rel.components() {
                assert!(matches!(c, Component::Normal(_)), "{rel:?}");
            }
            for seg in rel.iter() {
                let seg = seg.to_str().unwrap_or("");
                assert!(!seg.is_empty() && seg != "." && seg != "..");
                assert!(seg.len() <= 255, "{seg}");
                assert!(!seg.chars().any(|c| c == '\\' || c.is_control()));
            }
            // What we build, we can parse back: the same checks guard reads.
            assert_eq!(Key::parse(&key.to_string()).as_ref(), Ok(key));
        }

        proptest! {
            #[test]
            fn sanitised_names_stay_in_the_users_directory(folder in hostile(), name in hostile()) {
                let user = UserId::parse("u1").unwrap();
                let folder = FolderPath::sanitize(&folder);
                let name = FileName::sanitize(&name);
                prop_assert!(name.as_str().len() <= MAX_NAME_BYTES);
                prop_assert!(!name.as_str().to_ascii_lowercase().ends_with(".meta"));
                let stored = format!("1a2b3c4d_{}", name.as_str());
                let sidecar_len = stored.len() + ".meta".len();
                prop_assert!(sidecar_len <= 255);
                if let Some(f) = &folder {
                    for seg in f.segments() {
                        prop_assert!(!seg.to_ascii_lowercase().ends_with(".meta"), "{seg}");
                    }
                }
                let key = Key::new(&user, folder.as_ref(), &stored);
                stays_inside(&key);
            }

            #[test]
            fn parsed_keys_stay_inside(raw in hostile()) {
                if let Ok(key) = Key::parse(&format!("storage/u1/{raw}")) {
                    stays_inside(&key);
                }
            }
        }
    }
}
