//! `log_line_prefix`, compiled once into a matcher that splits a stderr line into its prefix fields
//! and the text after the prefix, working on `&[u8]` without allocating.
//!
//! Every escape PostgreSQL 13 to 18 documents is understood (`%a %u %d %r %h %L %b %p %P %t %m %n %i
//! %e %c %l %s %v %x %q %Q %%`), with padding (`%-10u`, `%10p`). Escapes with a fixed shape (numbers, timestamps,
//! session ids, SQLSTATEs) are matched by shape; free text (user, database, application, host, ps
//! display, backend type) extends to a following literal, and the matcher backtracks when a value
//! contains that literal, bounded by a step budget so no input can make it slow. A match is only
//! accepted when the text after the prefix is what the caller expects (a severity such as `LOG:  `),
//! which is what disambiguates prefixes like `%u %d `. `%q` ends the prefix for processes that have no
//! session, so both shapes are tried.

use memchr::memchr;

use crate::time::{parse_epoch, pg_time_len};

/// Fields a prefix escape can carry; the index into [`PrefixFields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    AppName,
    User,
    Db,
    RemoteHostPort,
    RemoteHost,
    LocalHost,
    BackendType,
    Pid,
    LeaderPid,
    TimeNoMs,
    TimeMs,
    Epoch,
    Ps,
    SqlState,
    SessionId,
    LineNum,
    SessionStart,
    Vxid,
    Txid,
    QueryId,
}

const FIELDS: usize = 20;

/// Where each escape's value lies in the matched line (`start..end`, padding removed); None when
/// the escape is absent from the prefix or printed nothing.
pub type PrefixFields = [Option<(u32, u32)>; FIELDS];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Lit(Vec<u8>),
    Esc {
        field: Field,
        pad: i32,
    },
    /// `%q`: non-session processes stop writing the prefix here.
    Quit,
}

/// The most backtracking steps one line may take before it is declared not to match.
const STEP_BUDGET: u32 = 4096;

/// A compiled `log_line_prefix`.
#[derive(Debug, Clone)]
pub struct Prefix {
    items: Vec<Item>,
    source: String,
}

impl Prefix {
    /// Compiles a `log_line_prefix` value. Unknown escapes are ignored, as PostgreSQL ignores them.
    pub fn compile(source: &str) -> Prefix {
        let b = source.as_bytes();
        let mut items: Vec<Item> = Vec::new();
        let mut lit: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' || i + 1 >= b.len() {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            i += 1;
            if b[i] == b'%' {
                lit.push(b'%');
                i += 1;
                continue;
            }
            let mut pad: i32 = 0;
            let neg = b[i] == b'-';
            if neg {
                i += 1;
            }
            while i < b.len() && b[i].is_ascii_digit() {
                pad = pad.saturating_mul(10).saturating_add((b[i] - b'0') as i32);
                i += 1;
            }
            if neg {
                pad = -pad;
            }
            let Some(&c) = b.get(i) else { break };
            i += 1;
            let field = match c {
                b'a' => Field::AppName,
                b'u' => Field::User,
                b'd' => Field::Db,
                b'r' => Field::RemoteHostPort,
                b'h' => Field::RemoteHost,
                b'L' => Field::LocalHost,
                b'b' => Field::BackendType,
                b'p' => Field::Pid,
                b'P' => Field::LeaderPid,
                b't' => Field::TimeNoMs,
                b'm' => Field::TimeMs,
                b'n' => Field::Epoch,
                b'i' => Field::Ps,
                b'e' => Field::SqlState,
                b'c' => Field::SessionId,
                b'l' => Field::LineNum,
                b's' => Field::SessionStart,
                b'v' => Field::Vxid,
                b'x' => Field::Txid,
                b'Q' => Field::QueryId,
                b'q' => {
                    flush(&mut items, &mut lit);
                    items.push(Item::Quit);
                    continue;
                }
                _ => continue,
            };
            flush(&mut items, &mut lit);
            items.push(Item::Esc { field, pad });
        }
        flush(&mut items, &mut lit);
        Prefix {
            items,
            source: source.to_string(),
        }
    }

    /// How many escapes the prefix has (`%%` is not one).
    pub fn escapes(&self) -> usize {
        self.items
            .iter()
            .filter(|i| !matches!(i, Item::Lit(_)))
            .count()
    }

    /// The `log_line_prefix` text this was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Matches the prefix at the start of `line`. `accept(rest)` says whether the text after a
    /// candidate prefix is acceptable. Returns the fields and the offset where that text starts.
    pub fn matches(
        &self,
        line: &[u8],
        accept: &dyn Fn(&[u8]) -> bool,
    ) -> Option<(PrefixFields, usize)> {
        let mut fields: PrefixFields = [None; FIELDS];
        let end = self.matches_into(line, accept, &mut fields)?;
        Some((fields, end))
    }

    /// [`Prefix::matches`], writing the fields into `fields` (the hot path: no copies of them).
    /// `fields` must start cleared; after a failed match its contents are meaningless.
    pub fn matches_into(
        &self,
        line: &[u8],
        accept: &dyn Fn(&[u8]) -> bool,
        fields: &mut PrefixFields,
    ) -> Option<usize> {
        let mut budget = STEP_BUDGET;
        let mut m = Matcher {
            items: &self.items,
            line,
            accept,
            budget: &mut budget,
        };
        m.at(0, 0, fields)
    }
}

fn flush(items: &mut Vec<Item>, lit: &mut Vec<u8>) {
    if !lit.is_empty() {
        items.push(Item::Lit(std::mem::take(lit)));
    }
}

struct Matcher<'p, 'a> {
    items: &'p [Item],
    line: &'a [u8],
    accept: &'p dyn Fn(&[u8]) -> bool,
    budget: &'p mut u32,
}

impl Matcher<'_, '_> {
    fn at(&mut self, i: usize, pos: usize, f: &mut PrefixFields) -> Option<usize> {
        if *self.budget == 0 {
            return None;
        }
        *self.budget -= 1;
        let line = self.line;
        let Some(item) = self.items.get(i) else {
            return (self.accept)(&line[pos..]).then_some(pos);
        };
        match item {
            Item::Lit(l) => {
                if starts_with(&line[pos..], l) {
                    self.at(i + 1, pos + l.len(), f)
                } else {
                    None
                }
            }
            Item::Quit => {
                if let Some(end) = self.at(i + 1, pos, f) {
                    return Some(end);
                }
                (self.accept)(&line[pos..]).then_some(pos)
            }
            Item::Esc { field, pad } => {
                let (field, pad) = (*field, *pad);
                let start = if pad > 0 { skip_spaces(line, pos) } else { pos };
                if let Some(n) = shape_len(field, &line[start..]) {
                    let mut end = start + n;
                    if pad < 0 {
                        while end < line.len() && line[end] == b' ' && end - pos < (-pad) as usize {
                            end += 1;
                        }
                    }
                    let r = self.at(i + 1, end, f)?;
                    f[field as usize] = (n > 0).then_some((start as u32, (start + n) as u32));
                    return Some(r);
                }
                if !is_free(field) {
                    return None;
                }
                if is_host(field) {
                    return self.host(i, field, pad, pos, f);
                }
                self.free_text(i, field, pad, pos, f)
            }
        }
    }

    /// A host escape: its value has a shape too, tried in this order so that an IPv6 address
    /// (`::1(5432)`) is not cut at a colon the prefix puts after it: `[local]` (a Unix socket),
    /// `host(port)` for `%r`, a host name or address (longest first), then nothing (a process
    /// without a client connection prints nothing). A host holds no spaces, commas, `@` or
    /// brackets, which is what resolves a free-text value before it (an application name).
    fn host(
        &mut self,
        i: usize,
        field: Field,
        pad: i32,
        pos: usize,
        f: &mut PrefixFields,
    ) -> Option<usize> {
        let line = self.line;
        let start = if pad > 0 { skip_spaces(line, pos) } else { pos };
        let b = &line[start..];
        let try_len = |m: &mut Self, n: usize, f: &mut PrefixFields| -> Option<usize> {
            let vend = start + n;
            let mut end = vend;
            if pad < 0 {
                while end < line.len()
                    && line[end] == b' '
                    && end - pos < pad.unsigned_abs() as usize
                {
                    end += 1;
                }
            }
            let r = m.at(i + 1, end, f)?;
            f[field as usize] = (n > 0).then_some((start as u32, vend as u32));
            Some(r)
        };
        if b.starts_with(b"[local]") {
            if let Some(r) = try_len(self, 7, f) {
                return Some(r);
            }
        }
        // `%L` prints `[none]` for a process without a client connection (PostgreSQL 18).
        // It is no address: the field is left without a value.
        if field == Field::LocalHost && b.starts_with(b"[none]") {
            if let Some(r) = try_len(self, 6, f) {
                f[field as usize] = None;
                return Some(r);
            }
        }
        let h = count_while(b, host_byte);
        if field == Field::RemoteHostPort && b.get(h) == Some(&b'(') {
            let d = count_while(&b[h + 1..], |c| c.is_ascii_digit());
            if d > 0 && b.get(h + 1 + d) == Some(&b')') {
                if let Some(r) = try_len(self, h + d + 2, f) {
                    return Some(r);
                }
            }
        }
        for n in (0..=h).rev() {
            if *self.budget == 0 {
                return None;
            }
            if let Some(r) = try_len(self, n, f) {
                return Some(r);
            }
        }
        None
    }

    /// Tries each place a free-text value could end, shortest first.
    fn free_text(
        &mut self,
        i: usize,
        field: Field,
        pad: i32,
        pos: usize,
        f: &mut PrefixFields,
    ) -> Option<usize> {
        let line = self.line;
        let width = pad.unsigned_abs() as usize;
        let try_end = |m: &mut Self, end: usize, f: &mut PrefixFields| -> Option<usize> {
            let r = m.at(i + 1, end, f)?;
            let (s, e) = if pad != 0 {
                trim_spaces(line, pos, end)
            } else {
                (pos, end)
            };
            f[field as usize] = (e > s).then_some((s as u32, e as u32));
            Some(r)
        };
        if width > 0 && pos + width <= line.len() {
            if let Some(r) = try_end(self, pos + width, f) {
                return Some(r);
            }
        }
        match self.items.get(i + 1) {
            Some(Item::Lit(l)) => {
                // Each place the literal occurs, found by its first byte (values are short: one
                // memchr and a comparison beat a substring searcher's setup).
                let first = *l.first()?;
                let mut from = pos;
                while let Some(off) = memchr(first, &line[from..]) {
                    if *self.budget == 0 {
                        return None;
                    }
                    let at = from + off;
                    if starts_with(&line[at..], l) {
                        if let Some(r) = try_end(self, at, f) {
                            return Some(r);
                        }
                    }
                    from = at + 1;
                }
                None
            }
            _ => {
                for end in pos..=line.len() {
                    if *self.budget == 0 {
                        return None;
                    }
                    if let Some(r) = try_end(self, end, f) {
                        return Some(r);
                    }
                }
                None
            }
        }
    }
}

fn is_free(field: Field) -> bool {
    matches!(
        field,
        Field::AppName
            | Field::User
            | Field::Db
            | Field::RemoteHostPort
            | Field::RemoteHost
            | Field::LocalHost
            | Field::BackendType
            | Field::Ps
    )
}

fn is_host(field: Field) -> bool {
    matches!(
        field,
        Field::RemoteHostPort | Field::RemoteHost | Field::LocalHost
    )
}

/// Bytes a host name or an IPv4/IPv6 address (with a `%zone`) is made of.
fn host_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b':' | b'-' | b'_' | b'%')
}

fn skip_spaces(line: &[u8], mut pos: usize) -> usize {
    while pos < line.len() && line[pos] == b' ' {
        pos += 1;
    }
    pos
}

fn trim_spaces(line: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && line[s] == b' ' {
        s += 1;
    }
    while e > s && line[e - 1] == b' ' {
        e -= 1;
    }
    (s, e)
}

/// `b.starts_with(lit)` for the short literals of a prefix, byte by byte: a call to `memcmp` per
/// literal costs more than the comparison.
fn starts_with(b: &[u8], lit: &[u8]) -> bool {
    b.len() >= lit.len() && b.iter().zip(lit).all(|(x, y)| x == y)
}

fn count_while(b: &[u8], pred: impl Fn(u8) -> bool) -> usize {
    b.iter().position(|c| !pred(*c)).unwrap_or(b.len())
}

/// The length of a fixed-shape escape's value at the start of `b`, or None when `b` does not start
/// with that shape (or the escape is free text).
fn shape_len(field: Field, b: &[u8]) -> Option<usize> {
    let digits = count_while(b, |c| c.is_ascii_digit());
    match field {
        Field::Pid | Field::LineNum | Field::Txid => (digits > 0).then_some(digits),
        Field::LeaderPid => Some(digits),
        Field::QueryId => {
            let sign = usize::from(b.first() == Some(&b'-'));
            let n = count_while(&b[sign..], |c| c.is_ascii_digit());
            (n > 0).then_some(sign + n)
        }
        // %m always has milliseconds, %t and %s never: telling them apart lets prefix inference
        // choose between `%m ` and `%t `.
        Field::TimeMs => pg_time_len(b).filter(|_| b.get(19) == Some(&b'.')),
        Field::TimeNoMs | Field::SessionStart => {
            pg_time_len(b).filter(|_| b.get(19) == Some(&b' '))
        }
        Field::Epoch => parse_epoch(b).map(|(_, n)| n),
        Field::SessionId => {
            let a = count_while(b, |c| c.is_ascii_hexdigit());
            if a == 0 || b.get(a) != Some(&b'.') {
                return None;
            }
            let c = count_while(&b[a + 1..], |c| c.is_ascii_hexdigit());
            (c > 0).then_some(a + 1 + c)
        }
        Field::Vxid => {
            if digits == 0 || b.get(digits) != Some(&b'/') {
                // Processes without a backend id print nothing here.
                return Some(0);
            }
            let c = count_while(&b[digits + 1..], |c| c.is_ascii_digit());
            Some(if c > 0 { digits + 1 + c } else { 0 })
        }
        Field::SqlState => {
            let n = count_while(&b[..b.len().min(5)], |c| {
                c.is_ascii_digit() || c.is_ascii_uppercase()
            });
            (n == 5).then_some(5)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_accept(rest: &[u8]) -> bool {
        rest.starts_with(b"LOG:  ") || rest.starts_with(b"ERROR:  ")
    }

    fn get<'a>(line: &'a [u8], f: &PrefixFields, k: Field) -> Option<&'a str> {
        f[k as usize].map(|(s, e)| std::str::from_utf8(&line[s as usize..e as usize]).unwrap())
    }

    #[test]
    fn matches_common_prefix_and_quit() {
        let p = Prefix::compile("%m [%p] %q%u@%d ");
        let line = b"2026-11-27 03:05:14.889 UTC [11309] postgres@my db LOG:  hi";
        let (f, end) = p.matches(line, &log_accept).unwrap();
        assert_eq!(&line[end..], b"LOG:  hi");
        assert_eq!(get(line, &f, Field::User), Some("postgres"));
        assert_eq!(get(line, &f, Field::Db), Some("my db"));
        assert_eq!(get(line, &f, Field::Pid), Some("11309"));
        let line = b"2026-11-27 03:05:14.889 UTC [11300] LOG:  starting";
        let (f, end) = p.matches(line, &log_accept).unwrap();
        assert_eq!(&line[end..], b"LOG:  starting");
        assert_eq!(get(line, &f, Field::User), None);
    }

    #[test]
    fn backtracks_when_a_value_contains_the_literal() {
        let p = Prefix::compile("%u@%d:%a ");
        let line = b"a@b@c:x y:psql ERROR:  boom";
        let (f, end) = p.matches(line, &log_accept).unwrap();
        assert_eq!(get(line, &f, Field::User), Some("a"));
        assert_eq!(get(line, &f, Field::Db), Some("b@c"));
        assert_eq!(get(line, &f, Field::AppName), Some("x y:psql"));
        assert_eq!(&line[end..], b"ERROR:  boom");
    }

    #[test]
    fn handles_padding() {
        let p = Prefix::compile("%-10u|%8p|%-6v|");
        let line = b"bob       |     123|3/7   |LOG:  x";
        let (f, _) = p.matches(line, &log_accept).unwrap();
        assert_eq!(get(line, &f, Field::User), Some("bob"));
        assert_eq!(get(line, &f, Field::Pid), Some("123"));
        assert_eq!(get(line, &f, Field::Vxid), Some("3/7"));
        let line = b"          |     123|      |LOG:  x";
        let (f, _) = p.matches(line, &log_accept).unwrap();
        assert_eq!(get(line, &f, Field::User), None);
        assert_eq!(get(line, &f, Field::Vxid), None);
    }

    fn sev_accept(rest: &[u8]) -> bool {
        log_accept(rest) || rest.starts_with(b"LOG:  ")
    }

    #[test]
    fn amazon_rds_prefix_every_value_shape() {
        let p = Prefix::compile("%t:%r:%u@%d:[%p]:");
        type Case<'a> = (&'a [u8], Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let cases: &[Case] = &[
            (b"2026-11-27 00:18:57 UTC::@:[6831]:LOG:  checkpoint starting: time", None, None, None),
            (b"2026-11-27 00:18:57 UTC:10.0.1.7(53412):app_user@shop:[7001]:LOG:  connection authorized", Some("10.0.1.7(53412)"), Some("app_user"), Some("shop")),
            (b"2026-11-27 00:18:57 UTC:[local]:postgres@postgres:[7002]:ERROR:  boom", Some("[local]"), Some("postgres"), Some("postgres")),
            (b"2026-11-27 00:18:57 UTC:::1(5432):a:b@c@d:e:[7003]:LOG:  x", Some("::1(5432)"), Some("a:b"), Some("c@d:e")),
            (b"2026-11-27 00:18:57 UTC:fe80::1%eth0(41000):u@[d]:[7004]:LOG:  x", Some("fe80::1%eth0(41000)"), Some("u"), Some("[d]")),
        ];
        let h = Prefix::compile("%t:%h:%u@%d:");
        let line = b"2026-11-27 00:18:57 UTC:::1:post:gres@db:LOG:  x";
        let (f, _) = h.matches(line, &sev_accept).unwrap();
        assert_eq!(get(line, &f, Field::RemoteHost), Some("::1:post"));
        assert_eq!(get(line, &f, Field::User), Some("gres"));
        for (line, r, u, d) in cases {
            let (f, end) = p
                .matches(line, &sev_accept)
                .unwrap_or_else(|| panic!("no match: {}", String::from_utf8_lossy(line)));
            assert!(sev_accept(&line[end..]));
            assert!(get(line, &f, Field::TimeNoMs).is_some());
            assert_eq!(get(line, &f, Field::RemoteHostPort), *r);
            assert_eq!(get(line, &f, Field::User), *u);
            assert_eq!(get(line, &f, Field::Db), *d);
            assert!(get(line, &f, Field::Pid).is_some());
        }
    }

    #[test]
    fn application_names_with_separators_are_resolved_by_the_fields_after_them() {
        let p = Prefix::compile("%t [%p]: user=%u,db=%d,app=%a,client=%h ");
        let line = b"2026-11-27 00:18:57 CET [9]: user=u,db=d,app=my app: [1], x,client=y,client=::1 LOG:  hi";
        let (f, end) = p.matches(line, &sev_accept).unwrap();
        assert_eq!(
            get(line, &f, Field::AppName),
            Some("my app: [1], x,client=y")
        );
        assert_eq!(get(line, &f, Field::RemoteHost), Some("::1"));
        assert_eq!(&line[end..], b"LOG:  hi");
        let p = Prefix::compile("%m [%p] %q[user=%u,db=%d,app=%a] ");
        let line = b"2026-11-27 00:18:57.123 UTC [9] [user=u,db=d,app=a] b, [c]] ERROR:  hi";
        let (f, _) = p.matches(line, &sev_accept).unwrap();
        assert_eq!(get(line, &f, Field::AppName), Some("a] b, [c]"));
        let line = b"2026-11-27 00:18:57.123 UTC [9] LOG:  background";
        let (f, _) = p.matches(line, &sev_accept).unwrap();
        assert_eq!(get(line, &f, Field::AppName), None);
    }

    #[test]
    fn azure_prefix_and_local_address() {
        let p = Prefix::compile("%t-%c-");
        let line = b"2026-11-27 00:18:57 UTC-6746c2d1.1a2b-LOG:  x";
        let (f, _) = p.matches(line, &sev_accept).unwrap();
        assert_eq!(get(line, &f, Field::SessionId), Some("6746c2d1.1a2b"));
        let p = Prefix::compile("%m %-15L|%r ");
        let line = b"2026-11-27 00:18:57.001 UTC 127.0.0.1      |127.0.0.1(5000) LOG:  x";
        let (f, _) = p.matches(line, &sev_accept).unwrap();
        assert_eq!(get(line, &f, Field::LocalHost), Some("127.0.0.1"));
        assert_eq!(
            get(line, &f, Field::RemoteHostPort),
            Some("127.0.0.1(5000)")
        );
        let line = b"2026-11-27 00:18:57.001 UTC                |[local] LOG:  x";
        let (f, _) = p.matches(line, &sev_accept).unwrap();
        assert_eq!(get(line, &f, Field::LocalHost), None);
        // PostgreSQL 18: `[local]` for a Unix socket, `[none]` without a client connection.
        let line = b"2026-11-27 00:18:57.001 UTC [local]        |[local] LOG:  x";
        let (f, _) = p.matches(line, &sev_accept).unwrap();
        assert_eq!(get(line, &f, Field::LocalHost), Some("[local]"));
        let line = b"2026-11-27 00:18:57.001 UTC [none]         | LOG:  x";
        let (f, _) = p.matches(line, &sev_accept).unwrap();
        assert_eq!(get(line, &f, Field::LocalHost), None);
        assert_eq!(get(line, &f, Field::RemoteHostPort), None);
    }

    #[test]
    fn rejects_lines_without_the_prefix() {
        let p = Prefix::compile("%m [%p] ");
        assert!(p.matches(b"\tcontinued", &log_accept).is_none());
        assert!(p
            .matches(b"2026-11-27 03:05:14.889 UTC [x] LOG:  a", &log_accept)
            .is_none());
        assert_eq!(
            Prefix::compile("%%%z").items,
            vec![Item::Lit(b"%".to_vec())]
        );
    }
}
