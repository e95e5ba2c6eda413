//! Key decoding and validation (API.md §2, §4.3, §7): `Key::parse` (keys from clients and
//! from signed URLs), `Key::from_user_path` (public links) and `UserId::parse`, on any text.
//!
//! Whatever they accept must stay inside `UPLOAD_ROOT/storage/{user}/`: only plain segments,
//! none empty, `.`/`..` or a dot-file, no NUL, control character or backslash, none over
//! 255 bytes, no sidecar; and a key reads back as the very text that was accepted (signed
//! URLs sign that text, ownership is decided on it).
//! Input: the text; for `from_user_path`, the part before the first `/` is the user.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use upload_server::store::key::{InvalidName, Key, UserId};

fn plain_segment(seg: &str, what: &str) {
    assert!(!seg.is_empty(), "{what}: empty segment");
    assert!(seg != "." && seg != "..", "{what}: {seg:?}");
    assert!(!seg.starts_with('.'), "{what}: dot-file {seg:?}");
    assert!(seg.len() <= 255, "{what}: {} bytes", seg.len());
    assert!(!seg.contains('/'), "{what}: slash in {seg:?}");
    assert!(
        !seg.chars().any(|c| c == '\\' || c.is_control()),
        "{what}: backslash or control character in {seg:?}"
    );
}

fn check_user(u: &UserId) {
    plain_segment(u.as_str(), "user id");
}

fn check_key(k: &Key, accepted: &str) {
    check_user(k.owner());
    let text = k.to_string();
    assert_eq!(text, accepted, "a key must read back as the text accepted");
    let rel = k.relative_path();
    let home = Path::new("storage").join(k.owner().as_str());
    assert!(rel.starts_with(&home), "{rel:?} outside {home:?}");
    assert!(rel != home, "a key names the user's directory itself");
    for c in rel.components() {
        assert!(matches!(c, Component::Normal(_)), "{rel:?}: {c:?}");
    }
    let segs: Vec<&str> = text.split('/').collect();
    assert!(segs.len() >= 3, "{text}");
    for seg in &segs {
        plain_segment(seg, "key");
    }
    assert!(
        !k.file_name().ends_with(".meta"),
        "a sidecar is never a key: {text}"
    );
    // Joined onto a root, nothing climbs out.
    let root = Path::new("/srv/uploads");
    let full = root.join(&rel);
    assert!(full.starts_with(root.join("storage")));
    assert_eq!(
        Key::parse(&text).as_ref(),
        Ok(k),
        "parse(to_string) differs"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = Key::parse(s) {
        check_key(&k, s.strip_prefix('/').unwrap_or(s));
    }
    let (user, path) = s.split_once('/').unwrap_or((s, ""));
    if let Ok(k) = Key::from_user_path(user, path) {
        assert_eq!(k.owner().as_str(), user);
        check_key(&k, &format!("storage/{user}/{path}"));
    }
    match UserId::parse(s) {
        Ok(u) => {
            check_user(&u);
            assert_eq!(u.as_str(), s);
        }
        Err(e) => assert!(matches!(e, InvalidName::UserId(_)), "{e}"),
    }
    // Keys arrive in signed URLs as base64url: decoding never panics, and what it yields
    // is held to the same rules by `Key::parse` above (fed the decoded text here too).
    if let Some(decoded) = upload_server::signer::decode_key(s) {
        if let Ok(k) = Key::parse(&decoded) {
            check_key(&k, decoded.strip_prefix('/').unwrap_or(&decoded));
        }
    }
});
