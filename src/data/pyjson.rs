//! JSON written byte for byte as Python's `json.dump(obj, f)` writes it with default options:
//! `", "` and `": "` separators, and `ensure_ascii` escaping (every character outside
//! printable ASCII as lowercase `\uXXXX`, surrogate pairs above U+FFFF). The tutorial's
//! word map and caption files are written that way, and gaze writes identical bytes.

use std::io::Write;

/// Appends `s` as a JSON string literal, escaped as Python's `json` does with `ensure_ascii`.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Streams a JSON list (`[a, b, ...]`) whose items are integers or lists of integers.
pub struct ListWriter<W: Write> {
    out: W,
    first: bool,
    buf: String,
}

impl<W: Write> ListWriter<W> {
    /// Writes the opening `[`.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(b"[")?;
        Ok(ListWriter {
            out,
            first: true,
            buf: String::new(),
        })
    }

    fn separator(&mut self) {
        if !self.first {
            self.buf.push_str(", ");
        }
        self.first = false;
    }

    /// Appends one integer item.
    pub fn int(&mut self, v: u64) -> std::io::Result<()> {
        self.buf.clear();
        self.separator();
        self.buf.push_str(&v.to_string());
        self.out.write_all(self.buf.as_bytes())
    }

    /// Appends one item that is a list of integers.
    pub fn int_list(&mut self, values: &[u32]) -> std::io::Result<()> {
        use std::fmt::Write as _;
        self.buf.clear();
        self.separator();
        self.buf.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.buf.push_str(", ");
            }
            write!(self.buf, "{v}").expect("writing to a String cannot fail");
        }
        self.buf.push(']');
        self.out.write_all(self.buf.as_bytes())
    }

    /// Writes the closing `]` and returns the sink.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(b"]")?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_python() {
        // json.dumps(s) in CPython for each s.
        let cases = [
            ("café", r#""caf\u00e9""#),
            ("a\"b\\c", r#""a\"b\\c""#),
            ("\n\t\r\u{8}\u{c}", r#""\n\t\r\b\f""#),
            ("\u{1}\u{7f}", r#""\u0001\u007f""#),
            ("😀", r#""\ud83d\ude00""#),
            ("plain ~", r#""plain ~""#),
        ];
        for (s, want) in cases {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(out, want, "{s:?}");
        }
    }

    #[test]
    fn lists_use_python_separators() {
        let mut w = ListWriter::new(Vec::new()).unwrap();
        w.int_list(&[1, 2, 3]).unwrap();
        w.int_list(&[]).unwrap();
        w.int_list(&[4]).unwrap();
        assert_eq!(w.finish().unwrap(), b"[[1, 2, 3], [], [4]]");
        let mut w = ListWriter::new(Vec::new()).unwrap();
        w.int(7).unwrap();
        w.int(12).unwrap();
        assert_eq!(w.finish().unwrap(), b"[7, 12]");
        assert_eq!(
            ListWriter::new(Vec::new()).unwrap().finish().unwrap(),
            b"[]"
        );
    }
}
