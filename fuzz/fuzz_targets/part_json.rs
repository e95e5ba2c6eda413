//! The streaming base64 JSON part parser (`src/part_json.rs`, API.md §3.1 `POST
//! /v1/files/part`), fed the same body in random chunk splits and compared with the whole
//! body fed at once and with a plain reference: `serde_json` for the JSON, the `base64`
//! crate for the chunk (JSON whitespace escapes dropped, padding optional).
//!
//! Invariants: the result (fields, decoded bytes, or the kind of error) does not depend on
//! how the body is split; whenever the reference accepts a body, the parser accepts it with
//! the same `uploadId`, `partNumber` and bytes; whenever the reference finds the chunk is not
//! base64, the parser refuses the body; and the parser never yields bytes the reference
//! would not decode.
//! Input: the first two bytes seed the split, the rest is the body.
#![no_main]

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use upload_server::part_json::{PartFields, PartJsonError, PartJsonParser};

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Syntax,
    Base64,
}

type Outcome = Result<(PartFields, Vec<u8>), Kind>;

fn run(body: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> Outcome {
    let mut p = PartJsonParser::new();
    let mut out = Vec::new();
    let kind = |e: PartJsonError| match e {
        PartJsonError::Syntax(_) => Kind::Syntax,
        PartJsonError::Base64(_) => Kind::Base64,
    };
    let mut rest = body;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        p.feed(&rest[..n], &mut out).map_err(kind)?;
        rest = &rest[n..];
    }
    let fields = p.finish(&mut out).map_err(kind)?;
    Ok((fields, out))
}

/// The members of a JSON object in order, duplicates kept.
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// The reference: `Err(Syntax)` for what is not the expected JSON object, `Err(Base64)` for
/// a chunk that is not base64.
fn reference(body: &[u8]) -> Outcome {
    let Members(members) = serde_json::from_slice(body).map_err(|_| Kind::Syntax)?;
    // The parser's own limits on what it holds or skips (part_json.rs `MAX_DEPTH`,
    // `MAX_SMALL`): deeper or longer values are refused on purpose.
    for (k, v) in &members {
        let chunk = k == "chunkBase64" && v.is_string();
        if depth(v) > 32 || k.len() >= 64 * 1024 || (!chunk && longest_text(v) >= 64 * 1024) {
            return Err(Kind::Syntax);
        }
    }
    let mut fields = PartFields::default();
    let mut chunk = None;
    for (k, v) in members {
        match (k.as_str(), v) {
            ("uploadId", Value::String(s)) => fields.upload_id = Some(s),
            ("uploadId", _) => return Err(Kind::Syntax),
            ("partNumber", Value::String(s)) => fields.part_number = Some(s),
            ("partNumber", Value::Number(n)) => fields.part_number = Some(n.to_string()),
            ("partNumber", _) => return Err(Kind::Syntax),
            ("chunkBase64", Value::String(s)) => {
                if chunk.is_some() {
                    return Err(Kind::Syntax);
                }
                fields.saw_chunk = true;
                chunk = Some(s);
            }
            ("chunkBase64", _) => return Err(Kind::Syntax),
            _ => {}
        }
    }
    let text: Vec<u8> = chunk
        .unwrap_or_default()
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
        .collect();
    let bytes = B64.decode(&text).map_err(|_| Kind::Base64)?;
    Ok((fields, bytes))
}

/// How deeply arrays and objects nest in `v` (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The longest string or number text in a scalar value (what the parser buffers).
fn longest_text(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Number(n) => n.to_string().len(),
        _ => 0,
    }
}

/// `partNumber` compared by value: the parser keeps the JSON text, serde normalises it,
/// and without its `float_roundtrip` feature serde may round a long decimal to a
/// neighbouring float, so numbers compare equal up to that rounding.
fn same_fields(a: &PartFields, b: &PartFields) -> bool {
    let same_number = |x: &str, y: &str| match (x.trim().parse::<f64>(), y.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => {
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Ok(x), Ok(y)) => x.is_finite() == y.is_finite(),
        _ => false,
    };
    a.upload_id == b.upload_id
        && a.saw_chunk == b.saw_chunk
        && match (&a.part_number, &b.part_number) {
            (Some(x), Some(y)) => x == y || same_number(x, y),
            (None, None) => true,
            _ => false,
        }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut seed = u32::from(data[0]) << 8 | u32::from(data[1]) | 1;
    let body = &data[2..];
    let whole = run(body, &mut std::iter::empty());
    let mut splits = std::iter::from_fn(|| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        // Mostly tiny pieces (every state boundary), sometimes larger ones.
        Some(if seed % 4 == 0 {
            (seed >> 8) as usize % 64 + 1
        } else {
            (seed >> 8) as usize % 5 + 1
        })
    });
    let split = run(body, &mut splits);
    let bytewise = run(body, &mut std::iter::repeat(1));
    assert_eq!(whole, split, "the split changed the result");
    assert_eq!(whole, bytewise, "byte-by-byte feeding changed the result");

    match (reference(body), &whole) {
        (Ok((rf, rb)), Ok((pf, pb))) => {
            assert!(
                same_fields(&rf, pf),
                "fields: reference {rf:?}, parser {pf:?}"
            );
            assert_eq!(&rb, pb, "decoded bytes differ from the reference");
        }
        (Ok(r), Err(k)) => panic!("the parser refused ({k:?}) a body the reference takes: {r:?}"),
        (Err(Kind::Base64), Ok(_)) => panic!("the parser took a chunk that is not base64"),
        // Bodies that are not JSON the parser may refuse either way (it reports what it
        // meets first); it may also take some (it does not check skipped values), but then
        // the chunk it decodes must be what the reference decodes from the same string.
        (Err(Kind::Syntax), Ok((_, pb))) => {
            if let Some(text) = chunk_text(body) {
                let clean: Vec<u8> = text
                    .bytes()
                    .filter(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
                    .collect();
                if let Ok(rb) = B64.decode(&clean) {
                    assert_eq!(&rb, pb, "decoded bytes differ (lenient body)");
                }
            }
        }
        (Err(_), Err(_)) => {}
    }
});

/// The text of the first `"chunkBase64": "..."` member of the outer object (strings and
/// nesting skipped as the parser skips them), decoded as a JSON string, if it is one.
fn chunk_text(body: &[u8]) -> Option<String> {
    let key = b"\"chunkBase64\"";
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &b) in body.iter().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' if depth == 1 && body[i..].starts_with(key) => {
                let rest = &body[i + key.len()..];
                let colon = rest.iter().position(|&b| b == b':')?;
                let mut de =
                    serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<String>();
                return de.next()?.ok();
            }
            b'"' => in_str = true,
            _ => {}
        }
    }
    None
}
