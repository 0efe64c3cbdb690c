//! Query fingerprints: a stable hash of the normalised token stream, so the listener can group
//! activity records and log entries by query shape.
//!
//! Normalisation, on the lexer's tokens: whitespace and comments dropped; unquoted words (keywords and
//! identifiers, which PostgreSQL folds anyway) lower-cased; quoted identifiers kept exactly; every
//! literal and every `$n` parameter becomes `?` (a query sent with literals and the same query sent
//! with bind parameters are the same shape); a unary minus before a literal is dropped; a list made only
//! of literals after `IN` or `ARRAY` collapses to one `?`, so `IN (1, 2)` and `IN (3, 4, 5)` match.
//! Tokens are joined by single spaces. The hash is XXH3-64 (seed 0, xxhash-rust) of that UTF-8 text,
//! printed as 16 lower-case hex digits; XXH3 is a specified, frozen algorithm, so fingerprints are
//! stable across agent versions, platforms and Rust releases.
//!
//! A text cut by `track_activity_query_size` fingerprints differently from its full form: the missing
//! tail may hold anything, so no grouping across the cut is attempted.

use super::lexer::{tokens, Token, TokenKind};

/// 16 hex digits identifying the shape of `sql`.
pub fn fingerprint(sql: &str) -> String {
    Fingerprint(fingerprint_u64(sql)).to_string()
}

/// A fingerprint kept as its number, printed (and serialised) as 16 lower-case hex digits: log
/// entries carry one each, and formatting it only when the entry is written saves an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub u64);

impl Fingerprint {
    /// The 16 hex digits.
    pub fn digits(self) -> [u8; 16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = HEX[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Scratch space kept between fingerprints, per buffer.
const KEPT_BYTES: usize = 64 * 1024;

/// The fingerprint as a number.
pub fn fingerprint_u64(sql: &str) -> u64 {
    with_scratch(|scratch| scratch.norm.fingerprint(sql))
}

/// Per-thread buffers of the fingerprinting passes, kept between calls so they do not allocate.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) norm: Normalized,
    /// The text with each literal replaced by a NUL byte: its shape key (see [`ShapeCache`]).
    pub(super) key: Vec<u8>,
    pub(super) shapes: ShapeCache,
}

/// Runs `f` with this thread's [`Scratch`], so fingerprinting, which runs once per log entry and
/// activity record, does not allocate.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    thread_local! {
        static BUFFERS: std::cell::RefCell<Scratch> = Default::default();
    }
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut scratch) => {
            let r = f(&mut scratch);
            // A rare huge text must not pin its buffers for the life of the process.
            let norm = &mut scratch.norm;
            if norm.text.capacity() > KEPT_BYTES {
                norm.text = String::new();
            }
            if norm.stream.capacity() > KEPT_BYTES / std::mem::size_of::<Norm>() {
                norm.stream = Vec::new();
            }
            if scratch.key.capacity() > KEPT_BYTES {
                scratch.key = Vec::new();
            }
            r
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The fingerprints of the statement shapes met last, so a log full of the same few statements
/// (the usual case: an application runs its queries over and over with new values) normalises
/// each shape once.
///
/// The key is the raw text with each literal replaced by a NUL byte (which SQL text cannot hold).
/// It determines the fingerprint exactly: the lexer restarts after each literal, so texts with
/// the same key have the same tokens outside their literals, and normalisation reads nothing of
/// a literal but its place. A hit compares the whole key, never only its hash.
///
/// Direct-mapped, [`ShapeCache::SLOTS`] slots of keys up to [`ShapeCache::MAX_KEY`] bytes: at
/// most 128 KiB per thread, whatever the log holds.
#[derive(Debug, Default)]
pub(super) struct ShapeCache {
    slots: Vec<Option<Shape>>,
}

#[derive(Debug)]
struct Shape {
    hash: u64,
    key: Box<[u8]>,
    fingerprint: u64,
}

impl ShapeCache {
    pub(super) const SLOTS: usize = 256;
    pub(super) const MAX_KEY: usize = 512;

    /// The fingerprint cached for `key` (`hash` is its XXH3).
    pub(super) fn get(&self, hash: u64, key: &[u8]) -> Option<u64> {
        match self.slots.get(hash as usize % Self::SLOTS)? {
            Some(s) if s.hash == hash && *s.key == *key => Some(s.fingerprint),
            _ => None,
        }
    }

    pub(super) fn put(&mut self, hash: u64, key: &[u8], fingerprint: u64) {
        if key.len() > Self::MAX_KEY {
            return;
        }
        if self.slots.is_empty() {
            self.slots.resize_with(Self::SLOTS, || None);
        }
        self.slots[hash as usize % Self::SLOTS] = Some(Shape {
            hash,
            key: key.into(),
            fingerprint,
        });
    }
}

/// A token of the normalised stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Norm {
    Literal,
    /// A word, a quoted identifier, an operator or punctuation, by its span in the source.
    Text(usize, usize, TokenKind),
}

/// The normalised stream of a text being lexed, and the buffer its normalised text is written to
/// when it is hashed. (Writing the text as each token arrives measured slower: the unary minus and
/// IN-list rules take tokens back.)
#[derive(Debug, Default)]
pub(super) struct Normalized {
    stream: Vec<Norm>,
    text: String,
}

impl Normalized {
    /// Adds one lexer token (in source order).
    fn push(&mut self, sql: &str, token: Token) {
        let norm = match token.kind {
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. } => {
                return
            }
            TokenKind::Literal { .. } | TokenKind::Param => Norm::Literal,
            kind => Norm::Text(token.start, token.end, kind),
        };
        let stream = &mut self.stream;
        if norm == Norm::Literal && drops_unary_minus(sql, stream) {
            stream.pop();
        }
        stream.push(norm);
        if let Some(open) = collapsible_literal_list(sql, stream) {
            // `( ?, ?, ... )` after IN or ARRAY: keep the bracket, one `?` and the closing one.
            let close = stream[stream.len() - 1];
            stream.truncate(open + 1);
            stream.push(Norm::Literal);
            stream.push(close);
        }
    }

    /// The fingerprint of `sql`: every token of it normalised, then hashed.
    pub(super) fn fingerprint(&mut self, sql: &str) -> u64 {
        self.stream.clear();
        for token in tokens(sql) {
            self.push(sql, token);
        }
        self.hash(sql)
    }

    /// Writes the normalised text of the finished stream.
    fn write(&mut self, sql: &str) {
        let text = &mut self.text;
        text.clear();
        text.reserve(sql.len());
        for (i, norm) in self.stream.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            match *norm {
                Norm::Literal => text.push('?'),
                Norm::Text(start, end, TokenKind::Word) => {
                    let from = text.len();
                    text.push_str(&sql[start..end]);
                    text[from..].make_ascii_lowercase();
                }
                Norm::Text(start, end, _) => text.push_str(&sql[start..end]),
            }
        }
    }

    /// The hash of the finished stream.
    fn hash(&mut self, sql: &str) -> u64 {
        self.write(sql);
        xxhash_rust::xxh3::xxh3_64(self.text.as_bytes())
    }
}

/// The normalised text that [`fingerprint`] hashes (see the module doc).
pub fn normalize(sql: &str) -> String {
    let mut norm = Normalized::default();
    for token in tokens(sql) {
        norm.push(sql, token);
    }
    norm.write(sql);
    norm.text
}

fn text<'a>(sql: &'a str, norm: Option<&Norm>) -> Option<(&'a str, TokenKind)> {
    match norm {
        Some(&Norm::Text(s, e, kind)) => Some((&sql[s..e], kind)),
        _ => None,
    }
}

/// True when the last token is a `-` that is a sign (not a subtraction) for the literal that follows:
/// it comes after an operator, an opening bracket, a comma, a keyword-like word, or at the start.
fn drops_unary_minus(sql: &str, stream: &[Norm]) -> bool {
    let Some(("-", TokenKind::Operator)) = text(sql, stream.last()) else {
        return false;
    };
    let before = stream.len().checked_sub(2).map(|i| &stream[i]);
    match before {
        None => true,
        Some(Norm::Literal) => false,
        Some(&Norm::Text(s, e, kind)) => match kind {
            TokenKind::Operator
            | TokenKind::OpenParen
            | TokenKind::OpenBracket
            | TokenKind::Comma
            | TokenKind::Cast => true,
            TokenKind::Word => SIGN_KEYWORDS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&sql[s..e])),
            _ => false,
        },
    }
}

/// Keywords after which a `-` can only be a sign.
const SIGN_KEYWORDS: &[&str] = &[
    "select",
    "where",
    "and",
    "or",
    "not",
    "when",
    "then",
    "else",
    "values",
    "limit",
    "offset",
    "between",
    "returning",
    "set",
    "in",
    "is",
    "like",
    "by",
    "having",
    "on",
];

/// After a closing `)` or `]`: if the bracket holds only `?, ?, ...` (two or more) and is preceded
/// by `IN` or `ARRAY`, the index of the opening bracket, so the list can become `( ? )`.
fn collapsible_literal_list(sql: &str, stream: &[Norm]) -> Option<usize> {
    let open = match stream.last()? {
        Norm::Text(_, _, TokenKind::CloseParen) => TokenKind::OpenParen,
        Norm::Text(_, _, TokenKind::CloseBracket) => TokenKind::OpenBracket,
        _ => return None,
    };
    let end = stream.len() - 1;
    let mut i = end;
    let mut literals = 0;
    loop {
        if i == 0 {
            return None;
        }
        i -= 1;
        match stream[i] {
            Norm::Literal => literals += 1,
            Norm::Text(_, _, TokenKind::Comma) => {}
            Norm::Text(_, _, kind) if kind == open => break,
            _ => return None,
        }
    }
    if literals < 2 || i == 0 {
        return None;
    }
    matches!(text(sql, stream.get(i - 1)), Some((w, TokenKind::Word))
        if w.eq_ignore_ascii_case("in") || w.eq_ignore_ascii_case("array"))
    .then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_text() {
        assert_eq!(
            normalize(
                "/* app='x' */ SELECT  *\nFROM Users WHERE \"Id\" = 5 AND x IN (1, -2, 3) -- c"
            ),
            "select * from users where \"Id\" = ? and x in ( ? )"
        );
        assert_eq!(normalize("SELECT ARRAY[1,2,3]"), "select array [ ? ]");
        assert_eq!(normalize("SELECT a - 1, -1"), "select a - ? , ?");
    }

    #[test]
    fn equal_for_literal_comment_whitespace_and_case_differences() {
        let same = [
            "SELECT * FROM users WHERE email = 'a@b.c' AND age > 30",
            "select *   from users\nwhere email = E'x\\'y' and age > -1 /* trace='1' */",
            "/*controller='u'*/ SELECT * FROM USERS WHERE email = $1 AND age > $2",
            "SELECT * FROM users WHERE email = $$z$$ AND age > 1e3",
        ];
        let first = fingerprint(same[0]);
        assert_eq!(first.len(), 16);
        for sql in same {
            assert_eq!(fingerprint(sql), first, "{sql}");
        }
        assert_eq!(
            fingerprint("SELECT 1 FROM t WHERE id IN (1, 2)"),
            fingerprint("SELECT 1 FROM t WHERE id IN (7, 8, 9, 10)")
        );
    }

    #[test]
    fn different_for_different_queries() {
        let base = fingerprint("SELECT * FROM users WHERE email = 'a'");
        for other in [
            "SELECT * FROM users WHERE name = 'a'",
            "SELECT * FROM accounts WHERE email = 'a'",
            "SELECT * FROM \"Users\" WHERE email = 'a'",
            "SELECT id FROM users WHERE email = 'a'",
            "SELECT * FROM users WHERE email <> 'a'",
            "DELETE FROM users WHERE email = 'a'",
        ] {
            assert_ne!(fingerprint(other), base, "{other}");
        }
        assert_ne!(
            fingerprint("SELECT * FROM t WHERE a IN (1, 2)"),
            fingerprint("SELECT * FROM t WHERE a IN (b, 2)")
        );
    }

    #[test]
    fn stable_across_releases() {
        // XXH3-64's published test vector for empty input: the algorithm is the specified one.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        // Pinned values: a change here breaks grouping on the listener for every user.
        assert_eq!(normalize("SELECT 1"), "select ?");
        assert_eq!(fingerprint("SELECT 1"), "61a0463a1c92eb55");
        assert_eq!(
            fingerprint("select * from t where id in (4, 5)"),
            "f6f36b88c7184c9a"
        );
    }

    /// Issue 23's join key: pg_stat_statements' normalised text (`$n` for constants) and the text
    /// a log entry or auto_explain plan carries (literals) give one fingerprint.
    #[test]
    fn normalised_text_and_logged_text_share_the_fingerprint() {
        assert_eq!(
            fingerprint("SELECT count(*) FROM t WHERE v = $1 AND name <> $2"),
            fingerprint("SELECT count(*) FROM t WHERE v = 918273645 AND name <> 'secret-text'")
        );
        assert_eq!(
            fingerprint("select * from t where id in ($1, $2, $3)"),
            fingerprint("select * from t where id in (4, 5)")
        );
    }
}
