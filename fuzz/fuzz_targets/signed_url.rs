//! Signed-URL verification (API.md §4.4), pure and end to end.
//!
//! Pure: on the input text, `decode_key` never panics and accepts only the canonical
//! base64url of a key (so one key has one URL form); `verify` accepts `sign`'s own
//! signature and refuses it for another expiry, another disposition or another key.
//!
//! End to end: `GET`/`HEAD` `/get/...` and `/v1/files/get/...` with a fuzzed encoded key and
//! query, built from placeholders (`{K0}` the encoded key of a file, `{SIG0}`/`{SIGA0}` its
//! inline/attachment signature for `{EXP}`, `{PAST}`, `{S0}` a whole URL, ...). No forgery:
//! a file is only ever sent when the URL carries the path of that very key, an expiry in
//! the future and the signature the server made for that key, expiry and disposition, and
//! it is sent with that disposition. Any answer also passes `check_file_answer`.
//! Input: `METHOD TARGET\nName: value...`; a target not under `/get/` or `/v1/files/get/`
//! is put under `/get/`.
#![no_main]

use fuzz_support::{
    check_file_answer, get_or_head, harness, lenient_target, percent_decode, query_values,
    FileRequest, HttpInput, FAR, SIGNING_KEY,
};
use libfuzzer_sys::fuzz_target;
use upload_server::signer::{self, Disposition};

fn pure(s: &str) {
    let secret = SIGNING_KEY.as_bytes();
    if let Some(key) = signer::decode_key(s) {
        assert_eq!(
            signer::encode_key(&key).trim_end_matches('='),
            s.trim_end_matches('='),
            "two URL forms for one key"
        );
    }
    let exp = s.len() as i64 * 7919 - 100_000;
    for d in [Disposition::Inline, Disposition::Attachment] {
        let sig = signer::sign(secret, s, exp, d);
        assert!(signer::verify(secret, s, exp, d, &sig));
        assert!(signer::verify(secret, s, exp, d, &sig.to_ascii_uppercase()));
        assert!(!signer::verify(secret, s, exp + 1, d, &sig));
        let other = match d {
            Disposition::Inline => Disposition::Attachment,
            Disposition::Attachment => Disposition::Inline,
        };
        assert!(!signer::verify(secret, s, exp, other, &sig));
        assert!(!signer::verify(secret, &format!("{s}x"), exp, d, &sig));
        assert!(!signer::verify(b"another key", s, exp, d, &sig));
        // The text itself as a signature: never accepted (it would be a forgery).
        assert!(!signer::verify(secret, "storage/u1/x", exp, d, s));
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    if let Ok(s) = std::str::from_utf8(data) {
        pure(s);
    }
    let Some(input) = HttpInput::parse(h, data) else {
        return;
    };
    let method = get_or_head(&input.method);
    let mut target = input.target.clone();
    if !(target.starts_with("/get/") || target.starts_with("/v1/files/get/")) {
        target = format!("/get/{}", target.trim_start_matches('/'));
    }
    let target = lenient_target(&target);
    let Some(req) = input.request(method.clone(), &target) else {
        return;
    };
    let file_req = FileRequest {
        head: method == axum::http::Method::HEAD,
        expected: None,
        signed_route: true,
        disposition: None,
    };
    let res = h.send(req);
    fuzz_support::trace(|| {
        format!(
            "{target}: {} {:?}",
            res.status,
            res.headers.get("content-range")
        )
    });
    let served = check_file_answer(h, &file_req, &res);
    let Some(f) = served else {
        return;
    };
    let status = res.status.as_u16();
    if !matches!(status, 200 | 206 | 304) {
        return;
    }
    // The request named this file, unexpired, with a signature made for it.
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let encoded = path
        .strip_prefix("/v1/files")
        .unwrap_or(path)
        .strip_prefix("/get/")
        .unwrap_or("");
    let encoded = String::from_utf8_lossy(&percent_decode(encoded)).into_owned();
    assert_eq!(
        signer::decode_key(&encoded).as_deref(),
        Some(f.key.as_str()),
        "served {} for the path {path:?}",
        f.key
    );
    let exps: Vec<i64> = query_values(query, "exp")
        .iter()
        .filter_map(|e| e.trim().parse().ok())
        .collect();
    assert!(exps.contains(&FAR), "served with expiries {exps:?}");
    let sigs: Vec<String> = query_values(query, "sig")
        .iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let made = |d| signer::sign(SIGNING_KEY.as_bytes(), &f.key, FAR, d);
    let signed: Vec<Disposition> = [Disposition::Inline, Disposition::Attachment]
        .into_iter()
        .filter(|d| sigs.contains(&made(*d)))
        .collect();
    assert!(
        !signed.is_empty(),
        "served without a signature for {}: {sigs:?}",
        f.key
    );
    if status != 304 {
        let cd = res.header("content-disposition");
        assert!(
            signed
                .iter()
                .any(|d| cd.starts_with(&format!("{}; ", d.as_str()))),
            "signed as {signed:?}, sent {cd:?}"
        );
    }
});
