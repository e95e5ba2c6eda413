//! The Range path end to end (API.md §4.3, §4.4): `GET`/`HEAD` on `/storage/...` and on
//! signed `/get/...` URLs through the real app, with fuzzed paths and fuzzed `Range`,
//! `If-Range`, `If-None-Match`, `If-Modified-Since` (any header, really).
//!
//! Input: `METHOD TARGET\nName: value\n...` with placeholders (`{P0}` a public path,
//! `{S0}`/`{A0}` a signed URL, `{ETAG0}`, `{LM0}`, ...; see `Harness::expand`). A target that
//! is not under `/storage/`, `/get/` or `/v1/files/get/` is put under `/storage/`.
//!
//! Every answer must pass `check_file_answer`. When the target is an unchanged placeholder,
//! RFC 9110 also gives the exact outcome of the simple cases, checked here.
#![no_main]

use axum::http::{header, HeaderName, StatusCode};
use fuzz_support::{
    check_file_answer, content_range, get_or_head, harness, lenient_target, FileRequest, Harness,
    HttpInput,
};
use libfuzzer_sys::fuzz_target;
use upload_server::signer::Disposition;

const CONDITIONALS: &[HeaderName] = &[
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// The fixture and disposition an unchanged placeholder target names.
fn named_target(h: &Harness, raw: &str) -> Option<(usize, bool, Option<Disposition>)> {
    let (v1, raw) = match raw.strip_prefix("/v1/files") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let inner = raw.strip_prefix('{')?.strip_suffix('}')?;
    let kind = inner.chars().next()?;
    let num = &inner[kind.len_utf8()..];
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: usize = num.parse().ok()?;
    (i < h.files.len()).then_some(())?;
    match kind {
        'P' if !v1 => Some((i, false, None)),
        'S' => Some((i, true, Some(Disposition::Inline))),
        'A' => Some((i, true, Some(Disposition::Attachment))),
        _ => None,
    }
}

/// A single range in its plainest form, as (first, last): `bytes=a-b`, `bytes=a-`,
/// `bytes=-n` (first = None). Anything else is not judged here, nor numbers with leading
/// zeros (valid ABNF, but the range crate refuses them and the whole file is sent, which
/// RFC 9110 §14.2 allows: a server MAY ignore Range).
fn strict_range(v: &str) -> Option<(Option<u64>, Option<u64>)> {
    let spec = v.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| {
        (!s.is_empty()
            && s.len() <= 15
            && s.bytes().all(|c| c.is_ascii_digit())
            && (s == "0" || !s.starts_with('0')))
        .then(|| s.parse::<u64>().ok())
        .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Some((None, Some(num(b)?))),
        (false, true) => Some((Some(num(a)?), None)),
        (false, false) => Some((Some(num(a)?), Some(num(b)?))),
        (true, true) => None,
    }
}

/// What RFC 9110 says about a strict single range on a file of `size` bytes: the exact
/// range for a 206, or the statuses allowed.
enum Expect {
    Partial(u64, u64),
    OneOf(&'static [u16]),
}

fn expect_range(r: (Option<u64>, Option<u64>), size: u64) -> Expect {
    match r {
        (Some(a), Some(b)) if a > b => Expect::OneOf(&[200, 416]), // invalid: ignore or refuse
        (Some(a), _) if a >= size => Expect::OneOf(&[416]),
        (Some(a), Some(b)) => Expect::Partial(a, b.min(size - 1)),
        (Some(a), None) => Expect::Partial(a, size - 1),
        (None, Some(0)) => Expect::OneOf(&[200, 416]),
        (None, Some(_)) if size == 0 => Expect::OneOf(&[200, 416]),
        (None, Some(n)) => Expect::Partial(size - n.min(size), size - 1),
        (None, None) => Expect::OneOf(&[200]),
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some(input) = HttpInput::parse(h, data) else {
        return;
    };
    let raw_target = std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.split('\n').next())
        .map(|l| l.split_once(' ').map_or(l, |(_, t)| t))
        .unwrap_or("");
    let method = get_or_head(&input.method);
    let mut target = input.target.clone();
    if !["/storage/", "/get/", "/v1/files/get/"]
        .iter()
        .any(|p| target.starts_with(p))
    {
        target = format!("/storage/{}", target.trim_start_matches('/'));
    }
    let target = lenient_target(&target);
    let Some(req) = input.request(method.clone(), &target) else {
        return;
    };
    let named = named_target(h, raw_target);
    let signed_route = target.starts_with("/get/") || target.starts_with("/v1/files/get/");
    let file_req = FileRequest {
        head: method == axum::http::Method::HEAD,
        expected: named.map(|(i, _, _)| &h.files[i]),
        signed_route,
        disposition: named.and_then(|(_, _, d)| d),
    };
    let res = h.send(req);
    fuzz_support::trace(|| {
        format!(
            "{target}: {} {:?}",
            res.status,
            res.headers.get("content-range")
        )
    });
    check_file_answer(h, &file_req, &res);
    // HEAD answers as GET would, without the body (RFC 9110 §9.3.2).
    if file_req.head {
        if let Some(get) = input.request(axum::http::Method::GET, &target) {
            let g = h.send(get);
            assert_eq!(res.status, g.status, "HEAD and GET differ");
            for name in [
                "content-length",
                "content-range",
                "content-type",
                "etag",
                "last-modified",
                "accept-ranges",
                "content-disposition",
                "content-security-policy",
            ] {
                assert_eq!(
                    res.header(name),
                    g.header(name),
                    "HEAD and GET differ in {name}"
                );
            }
        }
    }

    // The exact outcomes RFC 9110 gives for the simple cases on a named file.
    let Some(f) = file_req.expected else {
        return;
    };
    let size = f.bytes.len() as u64;
    let status = res.status.as_u16();
    let ranges = input.values(&header::RANGE);
    let conds: Vec<&HeaderName> = CONDITIONALS
        .iter()
        .filter(|n| !input.values(n).is_empty())
        .collect();
    let text = |n: &HeaderName| {
        let v = input.values(n);
        (v.len() == 1).then(|| v[0].to_str().ok()).flatten()
    };
    if ranges.is_empty() && conds.is_empty() {
        assert_eq!(res.status, StatusCode::OK, "a plain GET of a file");
        return;
    }
    let strict = (ranges.len() == 1)
        .then(|| ranges[0].to_str().ok().and_then(strict_range))
        .flatten();
    if conds.is_empty() {
        if let Some(r) = strict {
            match expect_range(r, size) {
                Expect::Partial(a, b) => {
                    assert_eq!(status, 206, "range {r:?} of {size} bytes");
                    let cr = content_range(res.header("content-range"));
                    assert_eq!(cr, Some((a, b, size)), "range {r:?} of {size} bytes");
                }
                Expect::OneOf(ok) => {
                    assert!(ok.contains(&status), "range {r:?} of {size}: {status}");
                }
            }
        }
        return;
    }
    // If-Range alone, with a satisfiable strict range: it decides between 206 and 200.
    if conds == [&header::IF_RANGE] {
        let satisfiable =
            strict.is_some_and(|r| matches!(expect_range(r, size), Expect::Partial(..)));
        if satisfiable && input.values(&header::IF_RANGE).len() == 1 {
            match text(&header::IF_RANGE) {
                Some(v) if v == f.etag => {
                    assert_eq!(status, 206, "If-Range with the current ETag");
                }
                // A date equal to Last-Modified may count as a match (RFC 9110 §13.1.5).
                Some(v) if v == f.last_modified => {}
                Some(v) => {
                    assert_eq!(status, 200, "If-Range {v:?} does not match: whole file");
                }
                // Not text (obs-text bytes): it can match no validator.
                None => assert_eq!(status, 200, "an If-Range that cannot match"),
            }
        }
        return;
    }
    let unconditional_match = input.values(&header::IF_MATCH).is_empty()
        && input.values(&header::IF_UNMODIFIED_SINCE).is_empty();
    if let (Some(v), true) = (text(&header::IF_NONE_MATCH), unconditional_match) {
        if v == f.etag || v == "*" {
            assert_eq!(status, 304, "If-None-Match {v:?} matches");
        }
        return;
    }
    if let (Some(v), true, true) = (
        text(&header::IF_MODIFIED_SINCE),
        unconditional_match,
        input.values(&header::IF_NONE_MATCH).is_empty(),
    ) {
        let lm = httpdate::parse_http_date(&f.last_modified).ok();
        if let (Ok(ims), Some(lm)) = (httpdate::parse_http_date(v), lm) {
            if ims >= lm {
                assert_eq!(status, 304, "If-Modified-Since {v:?} >= {lm:?}");
            } else {
                assert_ne!(status, 304, "If-Modified-Since {v:?} < {lm:?}");
            }
        }
    }
});
