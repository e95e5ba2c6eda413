//! What a GET or HEAD of a file asks for, by RFC 9110 §13.2.2 (preconditions) and §14
//! (ranges): the whole file, one range of it, 304, 412 or 416. Pure: no I/O, so every path
//! through it is a unit test (and a fuzz target). The range syntax itself is parsed by the
//! `http-range-header` crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, Method};
use http_range_header::RangeUnsatisfiableError;

/// What identifies the version of a representation.
#[derive(Debug, Clone)]
pub struct Validators {
    /// The strong entity tag, quotes included.
    pub etag: String,
    /// Its modification time, if it has one (ZIPs do not).
    pub last_modified: Option<SystemTime>,
    /// Its length in bytes.
    pub size: u64,
}

impl Validators {
    /// For a stored file: the tag is made of its modification time (nanoseconds) and size.
    pub fn for_file(modified: SystemTime, size: u64) -> Self {
        let since = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            etag: format!(
                "\"{:x}.{:x}-{size:x}\"",
                since.as_secs(),
                since.subsec_nanos()
            ),
            last_modified: Some(modified),
            size,
        }
    }

    /// `Last-Modified` as an HTTP date.
    pub fn last_modified_header(&self) -> Option<HeaderValue> {
        let t = self.last_modified?;
        HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()
    }
}

/// The answer to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with the whole representation.
    Full,
    /// 206 with bytes `start..end` (end exclusive).
    Partial {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Most ranges in one header looked at; longer lists are answered with the whole file.
const MAX_RANGES: usize = 16;

/// Whole seconds: HTTP dates have no finer resolution.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every value of a list header (`If-Match`, `If-None-Match`), as one comma-separated string.
fn list_values(headers: &HeaderMap, name: &header::HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let v = v.to_str().unwrap_or("");
        match &mut out {
            Some(s) => {
                s.push(',');
                s.push_str(v);
            }
            None => out = Some(v.to_owned()),
        }
    }
    out
}

/// The entity tags of an `If-Match`/`If-None-Match` value; `None` for `*`. Commas inside a
/// quoted tag do not split it.
///
/// Why not the `headers` crate's `IfMatch`/`IfNoneMatch`/`ETag` (0.4; issue 13 asked)? It
/// can express the rules (strong comparison for `If-Match`, weak for `If-None-Match`, `*`),
/// and on well-formed lists it gave the same answers in a differential run. But it drops
/// every list item that is not a whole `"..."` or `W/"..."` (and the whole value if any byte
/// is not visible ASCII), where this parser reads tags out of a list with missing commas or
/// stray bytes: `"x""<tag>"` is 304 here and 200 there, `"<tag>""` passes `If-Match` here and
/// is 412 there (about a quarter of random hostile lists got another answer). That is a
/// behaviour change, which swapping a parser for a crate must not make. Speed decided nothing
/// (within ±60 ns per `evaluate` either way), and it would add `headers`, `headers-core` and
/// an older `sha1`/`digest` to the build. Figures: bench/RESULTS.md, "Crate swaps of issue 13".
fn tags(list: &str) -> Option<Vec<&str>> {
    if list.trim() == "*" {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            break;
        }
        let weak = rest.starts_with("W/");
        let body = if weak { &rest[2..] } else { rest };
        let len = if let Some(inner) = body.strip_prefix('"') {
            match inner.find('"') {
                Some(i) => i + 2,
                None => body.len(),
            }
        } else {
            body.find(',').unwrap_or(body.len())
        };
        let tag_len = if weak { len + 2 } else { len };
        out.push(rest[..tag_len].trim());
        rest = &rest[tag_len..];
    }
    Some(out)
}

/// Strong comparison (RFC 9110 §8.8.3.2): both strong and identical.
fn strong_eq(a: &str, b: &str) -> bool {
    !a.starts_with("W/") && !b.starts_with("W/") && a == b
}

/// Weak comparison: identical once any `W/` is dropped.
fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

/// Decides the answer to `method` with `headers` for a representation with validators `v`.
pub fn evaluate(method: &Method, headers: &HeaderMap, v: &Validators) -> Outcome {
    let read = method == Method::GET || method == Method::HEAD;
    // 1. If-Match, else 2. If-Unmodified-Since.
    if let Some(list) = list_values(headers, &header::IF_MATCH) {
        let ok = match tags(&list) {
            None => true,
            Some(tags) => tags.iter().any(|t| strong_eq(t, &v.etag)),
        };
        if !ok {
            return Outcome::PreconditionFailed;
        }
    } else if let (Some(date), Some(lm)) = (
        header_str(headers, &header::IF_UNMODIFIED_SINCE)
            .and_then(|d| httpdate::parse_http_date(d).ok()),
        v.last_modified,
    ) {
        if secs(lm) > secs(date) {
            return Outcome::PreconditionFailed;
        }
    }
    // 3. If-None-Match, else 4. If-Modified-Since (GET and HEAD only).
    if let Some(list) = list_values(headers, &header::IF_NONE_MATCH) {
        let matched = match tags(&list) {
            None => true,
            Some(tags) => tags.iter().any(|t| weak_eq(t, &v.etag)),
        };
        if matched {
            return if read {
                Outcome::NotModified
            } else {
                Outcome::PreconditionFailed
            };
        }
    } else if read {
        if let (Some(date), Some(lm)) = (
            header_str(headers, &header::IF_MODIFIED_SINCE)
                .and_then(|d| httpdate::parse_http_date(d).ok()),
            v.last_modified,
        ) {
            if secs(lm) <= secs(date) {
                return Outcome::NotModified;
            }
        }
    }
    if !read {
        return Outcome::Full;
    }
    // 5. Range, unless If-Range says the client's copy is another version.
    let Some(range) = header_str(headers, &header::RANGE) else {
        return Outcome::Full;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        if !if_range_matches(if_range.to_str().unwrap_or(""), v) {
            return Outcome::Full;
        }
    }
    // A Range that does not parse is ignored (RFC 9110 §14.2), not refused.
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return Outcome::Full;
    };
    if range.matches(',').count() >= MAX_RANGES {
        return Outcome::Full;
    }
    match parsed.validate(v.size) {
        Ok(ranges) => match ranges.as_slice() {
            // An empty file has no byte to send, so no range of it is satisfiable (RFC 9110
            // §14.1.1); the crate's validation makes `bytes=0-` the range 0-0 (found by fuzzing).
            [_] if v.size == 0 => Outcome::Unsatisfiable,
            [one] => Outcome::Partial {
                start: *one.start(),
                end: *one.end() + 1,
            },
            // Several ranges: the whole file (API.md §4.3 allows a plain 200), never more.
            _ => Outcome::Full,
        },
        // Overlapping ranges are refused by the parser's validation, but are not a reason for
        // 416 (RFC 9110 §14.2 lets a server ignore them): the whole file.
        Err(_) if range.contains(',') => Outcome::Full,
        // `bytes=5-1` is not a range at all (RFC 9110 §14.1.1): ignored like any malformed one.
        Err(_) if backwards(range) => Outcome::Full,
        // A suffix longer than the file asks for all of it (RFC 9110 §14.1.2); the crate
        // refuses it (found by fuzzing).
        Err(RangeUnsatisfiableError::FileSuffixOutOfBounds) if v.size > 0 => Outcome::Partial {
            start: 0,
            end: v.size,
        },
        Err(_) => Outcome::Unsatisfiable,
    }
}

/// Is this one `first-last` range with `last < first`?
fn backwards(range: &str) -> bool {
    let spec = range.trim().trim_start_matches("bytes=").trim();
    match spec.split_once('-') {
        Some((a, b)) => match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
            (Ok(first), Ok(last)) => last < first,
            _ => false,
        },
        None => false,
    }
}

/// `If-Range`: a strong tag equal to ours, or a date equal to our `Last-Modified`.
fn if_range_matches(value: &str, v: &Validators) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return strong_eq(value, &v.etag);
    }
    match (httpdate::parse_http_date(value), v.last_modified) {
        (Ok(date), Some(lm)) => secs(date) == secs(lm),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validators {
        Validators::for_file(UNIX_EPOCH + Duration::new(1_700_000_000, 5), 1000)
    }

    fn eval(pairs: &[(&str, &str)]) -> Outcome {
        eval_method(&Method::GET, pairs)
    }

    fn eval_method(m: &Method, pairs: &[(&str, &str)]) -> Outcome {
        let mut h = HeaderMap::new();
        for (k, val) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::RANGE),
                HeaderValue::from_str(val).unwrap_or(HeaderValue::from_static("")),
            );
        }
        evaluate(m, &h, &v())
    }

    const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

    #[test]
    fn etag_shape() {
        assert_eq!(v().etag, "\"6553f100.5-3e8\"");
        assert_eq!(
            v().last_modified_header()
                .unwrap_or(HeaderValue::from_static("")),
            LM
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(eval(&[]), Outcome::Full);
        let p = |start, end| Outcome::Partial { start, end };
        assert_eq!(eval(&[("range", "bytes=0-99")]), p(0, 100));
        assert_eq!(eval(&[("range", "bytes=-10")]), p(990, 1000));
        assert_eq!(eval(&[("range", "bytes=900-")]), p(900, 1000));
        assert_eq!(eval(&[("range", "bytes=999-5000")]), p(999, 1000));
        assert_eq!(eval(&[("range", "bytes=1000-")]), Outcome::Unsatisfiable);
        // A suffix longer than the file: all of it (found by fuzzing).
        assert_eq!(eval(&[("range", "bytes=-5000")]), p(0, 1000));
        assert_eq!(
            eval(&[("range", "bytes=5000-6000")]),
            Outcome::Unsatisfiable
        );
        // Malformed, other units, several, overlapping, too many: the whole file.
        for r in [
            "bytes=abc",
            "items=0-1",
            "bytes=5-1",
            "bytes=",
            "bytes=0-1,5-9",
            "bytes=0-500,100-600",
            "bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7,8-8,9-9,10-10,11-11,12-12,13-13,14-14,15-15,16-16",
        ] {
            assert_eq!(eval(&[("range", r)]), Outcome::Full, "{r}");
        }
        // Not for other methods.
        assert_eq!(
            eval_method(&Method::POST, &[("range", "bytes=0-1")]),
            Outcome::Full
        );
        assert_eq!(
            eval_method(&Method::HEAD, &[("range", "bytes=0-1")]),
            p(0, 2)
        );
    }

    /// Found by fuzzing (`fuzz/`, target `range`): `bytes=0-` of an empty file was the
    /// range 0-0, and the answer a 500 when its one byte could not be read.
    #[test]
    fn no_range_of_an_empty_file() {
        let empty = Validators::for_file(UNIX_EPOCH + Duration::new(1_700_000_000, 5), 0);
        for r in [
            "bytes=0-",
            "bytes=0-0",
            "bytes=0-10",
            "bytes=-1",
            "bytes=-5",
            "bytes=3-",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, HeaderValue::from_static(r));
            assert_eq!(
                evaluate(&Method::GET, &h, &empty),
                Outcome::Unsatisfiable,
                "{r}"
            );
        }
    }

    #[test]
    fn if_range() {
        let tag = v().etag;
        let p = Outcome::Partial { start: 0, end: 10 };
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", &tag)]), p);
        assert_eq!(eval(&[("range", "bytes=0-9"), ("if-range", LM)]), p);
        for stale in [
            "\"stale\"",
            "W/\"6553f100.5-3e8\"",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Tue, 14 Nov 2023 22:13:21 GMT",
            "garbage",
        ] {
            assert_eq!(
                eval(&[("range", "bytes=0-9"), ("if-range", stale)]),
                Outcome::Full,
                "{stale}"
            );
        }
    }

    #[test]
    fn preconditions() {
        let tag = v().etag;
        let weak = format!("W/{tag}");
        assert_eq!(eval(&[("if-none-match", &tag)]), Outcome::NotModified);
        assert_eq!(eval(&[("if-none-match", &weak)]), Outcome::NotModified);
        assert_eq!(
            eval(&[("if-none-match", &format!("\"a\", \"b,c\", {tag}"))]),
            Outcome::NotModified
        );
        assert_eq!(eval(&[("if-none-match", "*")]), Outcome::NotModified);
        assert_eq!(eval(&[("if-none-match", "\"other\"")]), Outcome::Full);
        // Lists with missing commas or stray bytes still yield their tags (see `tags`).
        assert_eq!(
            eval(&[("if-none-match", &format!("\"x\"{tag}"))]),
            Outcome::NotModified
        );
        assert_eq!(eval(&[("if-match", &format!("{tag}\""))]), Outcome::Full);
        assert_eq!(
            eval(&[("if-none-match", "\"a\""), ("if-none-match", &tag)]),
            Outcome::NotModified
        );
        assert_eq!(eval(&[("if-modified-since", LM)]), Outcome::NotModified);
        assert_eq!(
            eval(&[("if-modified-since", "Tue, 14 Nov 2023 22:13:19 GMT")]),
            Outcome::Full
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            eval(&[("if-none-match", "\"other\""), ("if-modified-since", LM)]),
            Outcome::Full
        );
        assert_eq!(eval(&[("if-match", &tag)]), Outcome::Full);
        assert_eq!(eval(&[("if-match", "*")]), Outcome::Full);
        assert_eq!(eval(&[("if-match", &weak)]), Outcome::PreconditionFailed);
        assert_eq!(
            eval(&[("if-match", "\"other\"")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            eval(&[("if-unmodified-since", "Tue, 14 Nov 2023 22:13:19 GMT")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(eval(&[("if-unmodified-since", LM)]), Outcome::Full);
        // A failed precondition wins over a range.
        assert_eq!(
            eval(&[("if-match", "\"other\""), ("range", "bytes=0-1")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            eval(&[("if-none-match", &tag), ("range", "bytes=0-1")]),
            Outcome::NotModified
        );
    }
}
