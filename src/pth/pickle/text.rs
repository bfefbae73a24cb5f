//! Decoding the text arguments of opcodes: UTF-8, Python 2 strings, integers and the
//! protocol-0 escapes.

use crate::pth::value::Value;

pub(super) fn text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("text argument is not UTF-8: {e}"))
}

pub(super) fn utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("string is not valid UTF-8: {e}"))
}

/// Python 2 `str` (bytes) as text where it is UTF-8, as torch loads them (`encoding="utf-8"`).
pub(super) fn str_or_bytes(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::Str(s.into()),
        Err(e) => Value::Bytes(e.into_bytes().into()),
    }
}

pub(super) fn parse_int(s: &str) -> Result<i128, String> {
    s.trim()
        .parse::<i128>()
        .map_err(|_| format!("bad integer {s:?}"))
}

/// A little-endian two's complement integer (`LONG1`, `LONG4`).
pub(super) fn long_from_le(bytes: Vec<u8>) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 16 {
        return Value::BigInt(bytes.into());
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 16] } else { [0u8; 16] };
    buf[..bytes.len()].copy_from_slice(&bytes);
    Value::Int(i128::from_le_bytes(buf))
}

/// The body of a protocol-0 `STRING`: a quoted Python 2 string literal with escapes.
pub(super) fn unquote_python_string(line: &[u8]) -> Result<Vec<u8>, String> {
    let n = line.len();
    if n < 2 || line[0] != line[n - 1] || !matches!(line[0], b'\'' | b'"') {
        return Err("STRING argument is not quoted".into());
    }
    let body = &line[1..n - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *body.get(i).ok_or("STRING ends with a backslash")?;
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match body.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let hex = body.get(i..i + 2).ok_or("bad \\x escape")?;
                let v =
                    u8::from_str_radix(std::str::from_utf8(hex).map_err(|_| "bad \\x escape")?, 16)
                        .map_err(|_| "bad \\x escape")?;
                out.push(v);
                i += 2;
            }
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Python's `raw-unicode-escape` decoding (protocol-0 `UNICODE`): `\uXXXX` and `\UXXXXXXXX`
/// escapes, every other byte is a Latin-1 character.
pub(super) fn raw_unicode_escape(line: &[u8]) -> Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        if c == b'\\' && matches!(line.get(i + 1), Some(b'u') | Some(b'U')) {
            let width = if line[i + 1] == b'u' { 4 } else { 8 };
            let hex = line
                .get(i + 2..i + 2 + width)
                .ok_or("bad \\u escape in UNICODE")?;
            let code =
                u32::from_str_radix(std::str::from_utf8(hex).map_err(|_| "bad \\u escape")?, 16)
                    .map_err(|_| "bad \\u escape in UNICODE")?;
            out.push(char::from_u32(code).ok_or_else(|| format!("invalid character U+{code:X}"))?);
            i += 2 + width;
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    Ok(out)
}
