//! The JSON line of an entry, written directly: byte for byte what `serde_json::to_writer` makes of
//! [`LogEntry`]'s derived `Serialize` (the log tests check both on every entry of the corpus), at a
//! fraction of the cost. serde_json escapes strings one byte at a time; here a word of 8 bytes is
//! checked at once for the three things JSON escapes (`"`, `\` and control characters), which is
//! what `parse-log` spends most of its output time on.

use super::entry::LogEntry;

/// A key as written: `"name":`, put together at compile time.
macro_rules! q {
    ($k:literal) => {
        concat!("\"", $k, "\":")
    };
}

impl LogEntry<'_> {
    /// Appends the entry's JSON object (no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut w = Obj { out, first: true };
        if let Some(t) = self.timestamp {
            w.quoted(q!("timestamp"), &t.to_rfc3339());
        }
        w.opt_str(q!("user"), self.user.as_deref());
        w.opt_str(q!("dbname"), self.dbname.as_deref());
        w.opt_i64(q!("pid"), self.pid);
        w.opt_str(q!("remote_host"), self.remote_host.as_deref());
        w.opt_u64(q!("remote_port"), self.remote_port);
        w.opt_str(q!("session_id"), self.session_id.as_deref());
        w.opt_u64(q!("line_num"), self.line_num);
        w.opt_str(q!("ps"), self.ps.as_deref());
        if let Some(t) = self.session_start {
            w.quoted(q!("session_start"), &t.to_rfc3339());
        }
        w.opt_str(q!("vxid"), self.vxid.as_deref());
        w.opt_u64(q!("txid"), self.txid);
        w.key(q!("error_severity"));
        match self.error_severity {
            Some(s) => json_str(w.out, s),
            None => w.out.extend_from_slice(b"null"),
        }
        w.opt_str(q!("state_code"), self.state_code.as_deref());
        w.key(q!("message"));
        json_str(w.out, &self.message);
        w.opt_str(q!("detail"), self.detail.as_deref());
        w.opt_str(q!("hint"), self.hint.as_deref());
        w.opt_str(q!("internal_query"), self.internal_query.as_deref());
        w.opt_u64(q!("internal_position"), self.internal_position);
        w.opt_str(q!("context"), self.context.as_deref());
        w.opt_str(q!("statement"), self.statement.as_deref());
        w.opt_u64(q!("cursor_position"), self.cursor_position);
        w.opt_str(q!("func_name"), self.func_name.as_deref());
        w.opt_str(q!("file_name"), self.file_name.as_deref());
        w.opt_u64(q!("file_line_num"), self.file_line_num);
        w.opt_str(q!("application_name"), self.application_name.as_deref());
        w.opt_str(q!("backend_type"), self.backend_type.as_deref());
        w.opt_i64(q!("leader_pid"), self.leader_pid);
        w.opt_i64(q!("query_id"), self.query_id);
        w.key(q!("event"));
        match self.event {
            Some(s) => json_str(w.out, s),
            None => w.out.extend_from_slice(b"null"),
        }
        if let Some(d) = self.duration_ms {
            w.key(q!("duration_ms"));
            serde_json::to_writer(&mut *w.out, &d)?;
        }
        w.key(q!("correlation"));
        serde_json::to_writer(&mut *w.out, &self.correlation)?;
        if let Some(fp) = self.fingerprint {
            w.quoted(q!("fingerprint"), &fp.digits());
        }
        if let Some(x) = &self.extracted {
            w.key(q!("extracted"));
            serde_json::to_writer(&mut *w.out, x)?;
        }
        if self.truncated {
            w.key(q!("truncated"));
            w.out.extend_from_slice(b"true");
        }
        w.out.push(b'}');
        Ok(())
    }
}

struct Obj<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Obj<'_> {
    #[inline(always)]
    fn key(&mut self, k: &str) {
        self.out.push(if std::mem::take(&mut self.first) {
            b'{'
        } else {
            b','
        });
        self.out.extend_from_slice(k.as_bytes());
    }

    /// A key and a string value that needs no escaping (timestamps, hex digits).
    #[inline(always)]
    fn quoted(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        self.out.push(b'"');
        self.out.extend_from_slice(v);
        self.out.push(b'"');
    }

    #[inline(always)]
    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.key(k);
            json_str(self.out, v);
        }
    }

    #[inline(always)]
    fn opt_i64(&mut self, k: &str, v: Option<i64>) {
        if let Some(v) = v {
            self.key(k);
            write_int(self.out, v < 0, v.unsigned_abs());
        }
    }

    #[inline(always)]
    fn opt_u64(&mut self, k: &str, v: Option<impl Into<u64>>) {
        if let Some(v) = v {
            self.key(k);
            write_int(self.out, false, v.into());
        }
    }
}

/// An integer in decimal, as serde_json writes it.
fn write_int(out: &mut Vec<u8>, negative: bool, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of the word is `"`, `\` or below 0x20 (false positives possible, never false
/// negatives: a positive is looked at byte by byte).
fn may_need_escape(w: u64) -> bool {
    let control = w.wrapping_sub(LO * 0x20) & !w;
    let q = w ^ (LO * b'"' as u64);
    let quote = q.wrapping_sub(LO) & !q;
    let b = w ^ (LO * b'\\' as u64);
    let backslash = b.wrapping_sub(LO) & !b;
    (control | quote | backslash) & HI != 0
}

/// A JSON string as serde_json writes it: `"` `\` and control characters escaped (`\n`, `\t`, ...
/// or `\u00XX` in lower case), everything else (UTF-8 included) as is.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        while let Some(word) = b.get(i..i + 8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(word);
            if may_need_escape(u64::from_le_bytes(a)) {
                break;
            }
            i += 8;
        }
        let Some(&c) = b.get(i) else { break };
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            c if c < 0x20 => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 0xf) as usize],
            ],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_match_serde_json() {
        let mut all = String::new();
        for c in 0u8..0x80 {
            all.push(c as char);
        }
        for s in [
            "",
            "plain ascii text that is long enough for words",
            "quote \" backslash \\ tab \t newline \n done",
            "héllo ✓ 😀 \u{7f} \u{1}\u{1f}",
            all.as_str(),
        ] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
