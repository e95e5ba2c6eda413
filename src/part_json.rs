//! A push parser for the JSON part body `{"uploadId":..,"partNumber":..,"chunkBase64":..}`
//! that decodes the base64 as it arrives, so a part of any size is received in bounded
//! memory (the old SDK sends a whole file as one base64 part). Pure: no IO.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// Largest value (other than the chunk) or key we hold, in bytes.
const MAX_SMALL: usize = 64 * 1024;
/// Deepest nesting skipped inside unknown fields.
const MAX_DEPTH: usize = 32;

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartJsonError {
    /// Not the JSON object expected (→ 422).
    Syntax(String),
    /// The chunk is not valid base64 (→ 400).
    Base64(String),
}

#[derive(Debug)]
enum State {
    Start,
    BeforeKey {
        first: bool,
    },
    Key {
        buf: Vec<u8>,
        esc: Esc,
    },
    Colon,
    BeforeValue,
    Str {
        buf: Vec<u8>,
        esc: Esc,
    },
    Chunk {
        esc: Esc,
    },
    Scalar {
        buf: Vec<u8>,
    },
    Nested {
        depth: usize,
        in_str: bool,
        esc: bool,
    },
    AfterValue,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Unicode { digits: u8, value: u32 },
}

/// The fields found, filled in as the body is parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartFields {
    /// `uploadId`.
    pub upload_id: Option<String>,
    /// `partNumber`, as its JSON text.
    pub part_number: Option<String>,
    /// Whether `chunkBase64` was seen.
    pub saw_chunk: bool,
}

/// The parser. Feed it slices; decoded chunk bytes are appended to the output buffer.
#[derive(Debug)]
pub struct PartJsonParser {
    state: State,
    key: Option<String>,
    fields: PartFields,
    /// Base64 characters not yet decoded (fewer than 4, or a block waiting).
    pending: Vec<u8>,
    padded: bool,
    pads: u8,
}

impl Default for PartJsonParser {
    fn default() -> Self {
        Self::new()
    }
}

fn syntax(msg: &str) -> PartJsonError {
    PartJsonError::Syntax(msg.to_owned())
}

impl PartJsonParser {
    /// A parser at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Start,
            key: None,
            fields: PartFields::default(),
            pending: Vec::with_capacity(64 * 1024),
            padded: false,
            pads: 0,
        }
    }

    /// The fields seen so far (`uploadId` may be known before the chunk).
    pub fn fields(&self) -> &PartFields {
        &self.fields
    }

    /// Parses `input`, appending decoded chunk bytes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), PartJsonError> {
        let mut i = 0;
        while i < input.len() {
            // Fast path: plain base64 characters inside the chunk string.
            if let State::Chunk { esc: Esc::None } = self.state {
                let run = memchr::memchr2(b'"', b'\\', &input[i..]).unwrap_or(input.len() - i);
                self.push_b64(&input[i..i + run], out)?;
                i += run;
                if i >= input.len() {
                    break;
                }
            }
            let b = input[i];
            i += 1;
            self.step(b, out)?;
        }
        Ok(())
    }

    /// Ends the body: checks the object closed and decodes the chunk's tail.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<PartFields, PartJsonError> {
        if !matches!(self.state, State::Done) {
            return Err(syntax("unexpected end of the JSON body"));
        }
        self.decode_pending(out, true)?;
        Ok(self.fields)
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), PartJsonError> {
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        match &mut self.state {
            State::Start => {
                if b == b'{' {
                    self.state = State::BeforeKey { first: true };
                } else if !ws {
                    return Err(syntax("expected a JSON object"));
                }
            }
            State::BeforeKey { first } => {
                if b == b'"' {
                    self.state = State::Key {
                        buf: Vec::new(),
                        esc: Esc::None,
                    };
                } else if b == b'}' && *first {
                    self.state = State::Done;
                } else if !ws {
                    return Err(syntax("expected a field name"));
                }
            }
            State::Key { buf, esc } => {
                if let Some(done) = string_byte(buf, esc, b)? {
                    if done {
                        let key = String::from_utf8(std::mem::take(buf))
                            .map_err(|_| syntax("field name is not UTF-8"))?;
                        self.key = Some(key);
                        self.state = State::Colon;
                    }
                }
            }
            State::Colon => {
                if b == b':' {
                    self.state = State::BeforeValue;
                } else if !ws {
                    return Err(syntax("expected ':'"));
                }
            }
            State::BeforeValue => {
                if ws {
                    return Ok(());
                }
                let is_chunk = self.key.as_deref() == Some("chunkBase64");
                self.state = match b {
                    b'"' if is_chunk => {
                        if self.fields.saw_chunk {
                            return Err(syntax("chunkBase64 given twice"));
                        }
                        self.fields.saw_chunk = true;
                        State::Chunk { esc: Esc::None }
                    }
                    _ if is_chunk => return Err(syntax("chunkBase64 must be a string")),
                    b'"' => State::Str {
                        buf: Vec::new(),
                        esc: Esc::None,
                    },
                    b'{' | b'[' => State::Nested {
                        depth: 1,
                        in_str: false,
                        esc: false,
                    },
                    b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => State::Scalar { buf: vec![b] },
                    _ => return Err(syntax("expected a value")),
                };
            }
            State::Str { buf, esc } => {
                if let Some(done) = string_byte(buf, esc, b)? {
                    if done {
                        let text = String::from_utf8(std::mem::take(buf))
                            .map_err(|_| syntax("string is not UTF-8"))?;
                        self.take_value(Value::Str(text))?;
                        self.state = State::AfterValue;
                    }
                }
            }
            State::Chunk { esc } => match *esc {
                Esc::None => match b {
                    b'"' => self.state = State::AfterValue,
                    b'\\' => *esc = Esc::Backslash,
                    _ => self.push_b64(&[b], out)?,
                },
                Esc::Backslash => {
                    let c = match b {
                        b'/' => Some(b'/'),
                        b'n' | b'r' | b't' => None,
                        b'u' => {
                            *esc = Esc::Unicode {
                                digits: 0,
                                value: 0,
                            };
                            return Ok(());
                        }
                        _ => {
                            return Err(PartJsonError::Base64(
                                "unexpected escape in chunkBase64".to_owned(),
                            ))
                        }
                    };
                    *esc = Esc::None;
                    if let Some(c) = c {
                        self.push_b64(&[c], out)?;
                    }
                }
                Esc::Unicode { digits, value } => {
                    let d = (b as char)
                        .to_digit(16)
                        .ok_or_else(|| syntax("bad \\u escape"))?;
                    let value = value * 16 + d;
                    if digits == 3 {
                        *esc = Esc::None;
                        let c = u8::try_from(value)
                            .ok()
                            .filter(u8::is_ascii)
                            .ok_or_else(|| {
                                PartJsonError::Base64(
                                    "non-ASCII character in chunkBase64".to_owned(),
                                )
                            })?;
                        self.push_b64(&[c], out)?;
                    } else {
                        *esc = Esc::Unicode {
                            digits: digits + 1,
                            value,
                        };
                    }
                }
            },
            State::Scalar { buf } => {
                if ws || b == b',' || b == b'}' {
                    let text =
                        String::from_utf8(std::mem::take(buf)).map_err(|_| syntax("bad value"))?;
                    let value = match text.as_str() {
                        "true" | "false" | "null" => Value::Other,
                        t if t.parse::<f64>().is_ok() => Value::Num(text),
                        _ => return Err(syntax("bad value")),
                    };
                    self.take_value(value)?;
                    self.state = State::AfterValue;
                    return self.step(b, out);
                }
                if buf.len() >= MAX_SMALL {
                    return Err(syntax("value too long"));
                }
                buf.push(b);
            }
            State::Nested { depth, in_str, esc } => {
                if *in_str {
                    if *esc {
                        *esc = false;
                    } else if b == b'\\' {
                        *esc = true;
                    } else if b == b'"' {
                        *in_str = false;
                    }
                } else {
                    match b {
                        b'"' => *in_str = true,
                        b'{' | b'[' => {
                            *depth += 1;
                            if *depth > MAX_DEPTH {
                                return Err(syntax("nested too deeply"));
                            }
                        }
                        b'}' | b']' => {
                            *depth -= 1;
                            if *depth == 0 {
                                self.take_value(Value::Other)?;
                                self.state = State::AfterValue;
                            }
                        }
                        _ => {}
                    }
                }
            }
            State::AfterValue => match b {
                b',' => self.state = State::BeforeKey { first: false },
                b'}' => self.state = State::Done,
                _ if ws => {}
                _ => return Err(syntax("expected ',' or '}'")),
            },
            State::Done => {
                if !ws {
                    return Err(syntax("data after the JSON object"));
                }
            }
        }
        Ok(())
    }

    fn take_value(&mut self, value: Value) -> Result<(), PartJsonError> {
        match (self.key.take().as_deref(), value) {
            (Some("uploadId"), Value::Str(s)) => self.fields.upload_id = Some(s),
            (Some("uploadId"), _) => return Err(syntax("uploadId must be a string")),
            (Some("partNumber"), Value::Num(n) | Value::Str(n)) => {
                self.fields.part_number = Some(n)
            }
            (Some("partNumber"), _) => return Err(syntax("partNumber must be an integer")),
            _ => {}
        }
        Ok(())
    }

    fn push_b64(&mut self, chars: &[u8], out: &mut Vec<u8>) -> Result<(), PartJsonError> {
        if !self.padded && self.push_plain_b64(chars, out) {
            return Ok(());
        }
        for &c in chars {
            match c {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' => {
                    if self.padded {
                        return Err(PartJsonError::Base64("data after '=' padding".to_owned()));
                    }
                    self.pending.push(c);
                }
                b'=' => {
                    // At most two: anything more is not base64, and must not pile up.
                    self.pads += 1;
                    if self.pads > 2 {
                        return Err(PartJsonError::Base64("too much '=' padding".to_owned()));
                    }
                    self.padded = true;
                    self.pending.push(c);
                }
                b' ' | b'\n' | b'\r' | b'\t' => {}
                _ => {
                    return Err(PartJsonError::Base64(format!(
                        "invalid base64 character {:?}",
                        c as char
                    )))
                }
            }
        }
        if self.pending.len() >= 64 * 1024 && !self.padded {
            self.decode_pending(out, false)?;
        }
        Ok(())
    }

    /// The fast path, for the usual run of plain base64 (no padding, no whitespace): decodes
    /// straight from the input, keeping only the last incomplete quad, with one pass of the
    /// decoder over the run and no scan of our own. `false`, having changed nothing, when the
    /// run needs the careful path: `=` or whitespace at either end (where the decoder
    /// would take padding as valid), or any byte the decoder refuses (whitespace or `=`
    /// inside the run, or a character outside the alphabet, which the careful path reports).
    fn push_plain_b64(&mut self, chars: &[u8], out: &mut Vec<u8>) -> bool {
        let unusual = |c: &u8| *c == b'=' || c.is_ascii_whitespace();
        let head = &chars[..chars.len().min(3)];
        let tail = &chars[chars.len().saturating_sub(6)..];
        if head.iter().any(unusual) || tail.iter().any(unusual) {
            return false;
        }
        // The careful path may have left whole quads waiting (all checked characters).
        if self.pending.len() >= 4 && self.decode_pending(out, false).is_err() {
            return false;
        }
        let out_len = out.len();
        let saved_len = self.pending.len();
        let mut saved = [0u8; 4];
        saved[..saved_len].copy_from_slice(&self.pending);
        let mut rest = chars;
        if saved_len > 0 {
            let take = (4 - saved_len).min(rest.len());
            // Characters held back undecoded are checked now, not when their quad fills:
            // the error must not depend on how the body was split (found by fuzzing).
            if !rest[..take].iter().all(is_alphabet) {
                return false;
            }
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() < 4 {
                return true;
            }
            if B64.decode_vec(&self.pending, out).is_err() {
                out.truncate(out_len);
                self.pending.truncate(saved_len);
                return false;
            }
            self.pending.clear();
        }
        let whole = rest.len() / 4 * 4;
        // The bulk of every part: whole quads with no `=` (the tail was checked above, and
        // an `=` inside is an error here too), so the strict SIMD decoder means exactly what
        // the careful one does, at several times its speed.
        if base64_simd::STANDARD
            .decode_append(&rest[..whole], out)
            .is_err()
            || !rest[whole..].iter().all(is_alphabet)
        {
            out.truncate(out_len);
            self.pending.clear();
            self.pending.extend_from_slice(&saved[..saved_len]);
            return false;
        }
        self.pending.extend_from_slice(&rest[whole..]);
        true
    }

    fn decode_pending(&mut self, out: &mut Vec<u8>, last: bool) -> Result<(), PartJsonError> {
        let whole = if last {
            self.pending.len()
        } else {
            self.pending.len() / 4 * 4
        };
        if whole == 0 {
            return Ok(());
        }
        if last && self.pending.len() % 4 == 1 {
            return Err(PartJsonError::Base64("truncated base64".to_owned()));
        }
        B64.decode_vec(&self.pending[..whole], out)
            .map_err(|e| PartJsonError::Base64(e.to_string()))?;
        self.pending.drain(..whole);
        Ok(())
    }
}

/// A character of the standard base64 alphabet (not `=`).
fn is_alphabet(c: &u8) -> bool {
    c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/'
}

enum Value {
    Str(String),
    Num(String),
    Other,
}

/// One byte of a small JSON string; `Some(true)` at its closing quote.
fn string_byte(buf: &mut Vec<u8>, esc: &mut Esc, b: u8) -> Result<Option<bool>, PartJsonError> {
    if buf.len() >= MAX_SMALL {
        return Err(syntax("string too long"));
    }
    match *esc {
        Esc::None => match b {
            b'"' => return Ok(Some(true)),
            b'\\' => *esc = Esc::Backslash,
            0..=0x1f => return Err(syntax("control character in a string")),
            _ => buf.push(b),
        },
        Esc::Backslash => {
            *esc = Esc::None;
            let c = match b {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    *esc = Esc::Unicode {
                        digits: 0,
                        value: 0,
                    };
                    return Ok(Some(false));
                }
                _ => return Err(syntax("bad escape")),
            };
            buf.push(c);
        }
        Esc::Unicode { digits, value } => {
            let d = (b as char)
                .to_digit(16)
                .ok_or_else(|| syntax("bad \\u escape"))?;
            let value = value * 16 + d;
            if digits == 3 {
                *esc = Esc::None;
                let c = char::from_u32(value).unwrap_or('\u{fffd}');
                let mut tmp = [0u8; 4];
                buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            } else {
                *esc = Esc::Unicode {
                    digits: digits + 1,
                    value,
                };
            }
        }
    }
    Ok(Some(false))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_in_pieces(body: &[u8], piece: usize) -> Result<(PartFields, Vec<u8>), PartJsonError> {
        let mut p = PartJsonParser::new();
        let mut out = Vec::new();
        for c in body.chunks(piece) {
            p.feed(c, &mut out)?;
        }
        let f = p.finish(&mut out)?;
        Ok((f, out))
    }

    #[test]
    fn decodes_whatever_the_split() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let body = format!(
            r#"{{"uploadId":"abc","partNumber":3,"chunkBase64":"{b64}","x":{{"a":[1,"}}"]}}}}"#
        );
        for piece in [1, 2, 3, 5, 7, 64, 4096, body.len()] {
            let (f, out) = parse_in_pieces(body.as_bytes(), piece).unwrap();
            assert_eq!(f.upload_id.as_deref(), Some("abc"));
            assert_eq!(f.part_number.as_deref(), Some("3"));
            assert!(f.saw_chunk);
            assert_eq!(out, data, "piece {piece}");
        }
    }

    #[test]
    fn chunk_before_id_and_escaped_slashes() {
        let body = br#" { "chunkBase64" : "aGk\/", "partNumber": "1", "uploadId": "u" } "#;
        let (f, out) = parse_in_pieces(body, 3).unwrap();
        assert_eq!(f.upload_id.as_deref(), Some("u"));
        assert_eq!(
            out,
            base64::engine::general_purpose::STANDARD
                .decode("aGk/")
                .unwrap()
        );
    }

    /// Found by fuzzing (`fuzz/`, target `part_json`): a bad character held back in an
    /// incomplete quad was only seen once the quad filled, so the same body was a base64
    /// error (400) or a JSON error (422) depending on how it arrived.
    #[test]
    fn errors_do_not_depend_on_the_split() {
        let body = b"{\"chunkBase64\":\"QU\r\xe1\"}x";
        for piece in [1, 2, 3, body.len()] {
            assert!(
                matches!(parse_in_pieces(body, piece), Err(PartJsonError::Base64(_))),
                "piece {piece}"
            );
        }
        let body = br#"{"chunkBase64":"QUJDQUJD!"}x"#;
        for piece in [1, 5, 17, body.len()] {
            assert!(
                matches!(parse_in_pieces(body, piece), Err(PartJsonError::Base64(_))),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn unpadded_tail_is_accepted() {
        let (_, out) = parse_in_pieces(br#"{"chunkBase64":"aGk"}"#, 2).unwrap();
        assert_eq!(out, b"hi");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(
            parse_in_pieces(br#"{"chunkBase64":"@@@@"}"#, 4),
            Err(PartJsonError::Base64(_))
        ));
        assert!(matches!(
            parse_in_pieces(br#"{"chunkBase64":"aGk=aGk="}"#, 4),
            Err(PartJsonError::Base64(_))
        ));
        assert!(matches!(
            parse_in_pieces(br#"{"chunkBase64":"a"}"#, 4),
            Err(PartJsonError::Base64(_))
        ));
        assert!(matches!(
            parse_in_pieces(br#"{"uploadId":"x""#, 4),
            Err(PartJsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_in_pieces(br#"[1,2]"#, 4),
            Err(PartJsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_in_pieces(br#"{"chunkBase64":5}"#, 4),
            Err(PartJsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_in_pieces(br#"{"a":1} x"#, 4),
            Err(PartJsonError::Syntax(_))
        ));
        // Padding is refused as soon as it passes two '=', so it cannot pile up in memory.
        let pads = format!(r#"{{"chunkBase64":"AAAA{}"}}"#, "=".repeat(100_000));
        let mut p = PartJsonParser::new();
        let mut out = Vec::new();
        let fed = pads
            .as_bytes()
            .chunks(4096)
            .try_for_each(|c| p.feed(c, &mut out));
        assert!(matches!(fed, Err(PartJsonError::Base64(_))));
        assert!(p.pending.len() < 16, "{}", p.pending.len());
    }

    mod props {
        use super::super::*;
        use super::parse_in_pieces;
        use proptest::prelude::*;

        /// A change to the base64 text: whitespace, JSON escapes, stray or missing padding.
        #[derive(Debug, Clone)]
        enum Edit {
            Insert(usize, &'static str),
            EscapeSlashes,
            StripPadding,
        }

        fn edit() -> impl Strategy<Value = Edit> {
            prop_oneof![
                (
                    any::<usize>(),
                    prop_oneof![
                        Just(" "),
                        Just("\\n"),
                        Just("\\r\\n"),
                        Just("\t"),
                        Just("=")
                    ]
                )
                    .prop_map(|(i, s)| Edit::Insert(i, s)),
                Just(Edit::EscapeSlashes),
                Just(Edit::StripPadding),
            ]
        }

        proptest! {
            /// Whatever the split and the oddities in the text, the parser decodes exactly
            /// what a careful decoder makes of the text (whitespace and escapes removed),
            /// and refuses what it refuses.
            #[test]
            fn the_fast_path_agrees_with_a_careful_decode(
                data in prop::collection::vec(any::<u8>(), 0..400),
                edits in prop::collection::vec(edit(), 0..4),
                piece in 1usize..70,
            ) {
                let mut text = B64.encode(&data);
                for e in &edits {
                    match e {
                        Edit::Insert(i, s) => {
                            let i = i % (text.len() + 1);
                            text.insert_str(i, s);
                        }
                        Edit::EscapeSlashes => text = text.replace('/', "\\/"),
                        Edit::StripPadding => text = text.trim_end_matches('=').to_owned(),
                    }
                }
                let careful: String = text
                    .replace("\\/", "/")
                    .replace("\\n", "")
                    .replace("\\r", "")
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                let expected = B64.decode(careful.as_bytes()).ok();
                let body = format!(r#"{{"uploadId":"u","partNumber":1,"chunkBase64":"{text}"}}"#);
                let got = parse_in_pieces(body.as_bytes(), piece).ok().map(|(_, out)| out);
                prop_assert_eq!(got, expected, "text {:?}", text);
            }
        }
    }
}
