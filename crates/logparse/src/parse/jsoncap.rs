//! A streaming cap on the string values of one JSON line, so a jsonlog entry far larger than the
//! entry cap (a multi-megabyte statement) still parses, with its long strings cut, instead of
//! becoming an unparsed fragment.
//!
//! Bytes are fed as they arrive; inside a string, once `per_string` bytes are kept, the rest of that
//! string is dropped up to its closing quote. Cuts fall on a character boundary and never inside an
//! escape sequence, so the output stays valid JSON and valid UTF-8. The whole output is bounded by
//! `total`; beyond it nothing more is kept (the line then fails to parse and is kept unparsed).

#[derive(Debug, Default)]
pub struct JsonCapper {
    pub out: Vec<u8>,
    pub cut: bool,
    in_string: bool,
    /// Bytes still to copy of an escape sequence (`\x` or `\uXXXX`).
    escape_left: u8,
    after_backslash: bool,
    kept: usize,
    dropping: bool,
}

impl JsonCapper {
    pub fn feed(&mut self, bytes: &[u8], per_string: usize, total: usize) {
        for &b in bytes {
            if self.out.len() >= total {
                self.cut = true;
                return;
            }
            if !self.in_string {
                self.out.push(b);
                if b == b'"' {
                    self.in_string = true;
                    self.kept = 0;
                    self.dropping = false;
                }
                continue;
            }
            if self.dropping {
                // Only the closing quote matters; an escaped quote does not close the string.
                if self.after_backslash {
                    self.after_backslash = false;
                } else if b == b'\\' {
                    self.after_backslash = true;
                } else if b == b'"' {
                    self.out.push(b);
                    self.in_string = false;
                }
                continue;
            }
            if self.after_backslash {
                self.after_backslash = false;
                self.escape_left = if b == b'u' { 4 } else { 0 };
                self.out.push(b);
                self.kept += 1;
                continue;
            }
            if self.escape_left > 0 {
                self.escape_left -= 1;
                self.out.push(b);
                self.kept += 1;
                continue;
            }
            if b == b'"' {
                self.out.push(b);
                self.in_string = false;
                continue;
            }
            let starts_char = b & 0xC0 != 0x80;
            if self.kept >= per_string && starts_char {
                self.dropping = true;
                self.cut = true;
                self.after_backslash = b == b'\\';
                continue;
            }
            if b == b'\\' {
                self.after_backslash = true;
            }
            self.out.push(b);
            self.kept += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_strings_and_keeps_json_valid() {
        let long = format!("{}\\\"é\\u00e9{}", "x".repeat(100), "y".repeat(100));
        let line = format!("{{\"message\":\"{long}\",\"pid\":7,\"s\":\"a\\\"b\"}}");
        for split in [1, 7, 50, line.len()] {
            let mut c = JsonCapper::default();
            for chunk in line.as_bytes().chunks(split) {
                c.feed(chunk, 103, 10_000);
            }
            let v: serde_json::Value = serde_json::from_slice(&c.out).expect("valid JSON");
            assert!(c.cut);
            assert_eq!(v["pid"], 7);
            assert_eq!(v["s"], "a\"b");
            assert!(v["message"].as_str().unwrap().starts_with(&"x".repeat(100)));
            assert!(v["message"].as_str().unwrap().len() < 110);
        }
    }
}
