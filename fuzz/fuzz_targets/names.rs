//! Folder and file-name sanitising (API.md §3.1, §7): `FolderPath::sanitize`,
//! `FileName::sanitize` and `ClientFileName::parse` on any text.
//!
//! §7 as invariants: every folder part and the file name hold no `<>:"/\|?*` and no
//! control character, do not start or end with a dot or a space, are never empty, `.` or
//! `..`; a folder part is at most 100 characters; whitespace-only parts are dropped and the
//! others kept, in order; a file name is at most 240 bytes, never ends in `.meta` (any
//! case), and `{8 hex}_{name}.meta` fits in 255 bytes; a kept extension survives the cut.
//! The key built from them stays in the user's directory and parses back to itself.
//! Input: `folder` and `name` separated by the first NUL byte (a NUL elsewhere is part of
//! the text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload_server::store::key::{
    ClientFileName, FileName, InvalidName, FolderPath, Key, UserId, MAX_NAME_BYTES,
};

fn clean(part: &str, what: &str) {
    assert!(!part.is_empty(), "{what}: empty");
    assert!(part != "." && part != "..", "{what}: {part:?}");
    for c in part.chars() {
        assert!(
            !matches!(c, '<' | '>' | ':' | '"' | '/' | '\\' | '|' | '?' | '*') && !c.is_control(),
            "{what}: {c:?} left in {part:?}"
        );
    }
    for end in [part.chars().next(), part.chars().last()] {
        assert!(
            !matches!(end, Some('.' | ' ')),
            "{what}: leading or trailing dot or space in {part:?}"
        );
    }
}

fn check_folder(raw: &str) -> Option<FolderPath> {
    let folder = FolderPath::sanitize(raw);
    let kept: Vec<&str> = raw.split('/').filter(|p| !p.trim().is_empty()).collect();
    match &folder {
        None => assert!(kept.is_empty(), "{raw:?}: parts {kept:?} all dropped"),
        Some(f) => {
            assert_eq!(
                f.segments().len(),
                kept.len(),
                "{raw:?} -> {:?}",
                f.segments()
            );
            for (seg, raw_seg) in f.segments().iter().zip(&kept) {
                clean(seg, "folder part");
                assert!(seg.chars().count() <= 100, "folder part over 100: {seg:?}");
                assert!(seg.len() <= 255);
                if *raw_seg == "." || *raw_seg == ".." {
                    assert_eq!(seg, "invalid");
                }
            }
            assert_eq!(f.as_string(), f.segments().join("/"));
        }
    }
    folder
}

fn check_name(raw: &str) -> FileName {
    let name = FileName::sanitize(raw);
    let n = name.as_str();
    clean(n, "file name");
    assert!(n.len() <= MAX_NAME_BYTES, "{} bytes", n.len());
    assert!(!n.to_ascii_lowercase().ends_with(".meta"), "{n:?}");
    assert!(format!("1a2b3c4d_{n}.meta").len() <= 255);
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    let lower = raw.to_ascii_lowercase();
    // A short extension after a real stem survives the cut.
    if raw.len() > MAX_NAME_BYTES
        && raw.chars().all(plain)
        && !raw.starts_with('.')
        && !raw.ends_with('.')
        && !lower.ends_with(".meta")
    {
        if let Some(dot) = raw.rfind('.').filter(|d| raw.len() - d <= 16) {
            assert!(n.ends_with(&raw[dot..]), "extension lost: {n:?}");
        }
    }
    // A plain name is kept as it is.
    if raw.len() <= 200
        && !raw.is_empty()
        && raw.chars().all(plain)
        && !raw.starts_with('.')
        && !raw.ends_with('.')
        && !lower.ends_with(".meta")
    {
        assert_eq!(n, raw, "a plain name must be kept as it is");
    }
    name
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (folder_raw, name_raw) = s.split_once('\0').unwrap_or((s, s));
    let folder = check_folder(folder_raw);
    let name = check_name(name_raw);
    if let Err(e) = ClientFileName::parse(name_raw) {
        assert!(matches!(e, InvalidName::FileName(_)), "{e}");
    } else {
        assert!(!name_raw.contains(".."), "accepted {name_raw:?}");
        assert!(!name_raw.contains('/') && !name_raw.contains('\\'));
        assert!(!name_raw.trim().is_empty());
    }
    let user = UserId::parse("u1").expect("a user");
    let stored = format!("1a2b3c4d_{}", name.as_str());
    let key = Key::new(&user, folder.as_ref(), &stored);
    let text = key.to_string();
    assert!(text.starts_with("storage/u1/"), "{text}");
    assert_eq!(
        Key::parse(&text).as_ref(),
        Ok(&key),
        "a key made from sanitised names must parse back: {text:?}"
    );
});
