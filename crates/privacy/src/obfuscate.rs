//! Literal masking of query text: every literal token (strings of every style, numbers, bit strings,
//! dollar-quoted bodies, and whatever is cut off unterminated at the end) becomes [`PLACEHOLDER`];
//! everything else (comments, identifiers, keywords, `$n` parameters, operators, whitespace) is copied
//! byte for byte, so the text keeps its shape and its correlation comments.

use std::borrow::Cow;

use super::fingerprint::{Scratch, ShapeCache};
use super::lexer::{Lexer, LiteralStyle, StringMode, TokenKind};
use super::PrivacyCounts;

/// What a masked literal becomes. `?` like the Datadog agent rather than pg_stat_statements' `$n`:
/// numbering would collide with the real `$n` parameters that stay in the text.
pub const PLACEHOLDER: &str = "?";

/// Options of [`obfuscate_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObfuscateOptions {
    /// How plain `'...'` strings treat backslashes (the server's `standard_conforming_strings`).
    pub strings: StringMode,
    /// Mask numbers too (true for query text); false masks strings only.
    pub numbers: bool,
}

impl Default for ObfuscateOptions {
    fn default() -> Self {
        ObfuscateOptions {
            strings: StringMode::Standard,
            numbers: true,
        }
    }
}

/// `sql` with every literal replaced by [`PLACEHOLDER`] (standard-conforming strings).
pub fn obfuscate(sql: &str) -> String {
    obfuscate_with(sql, ObfuscateOptions::default()).into_owned()
}

/// Like [`obfuscate`], without allocating when `sql` holds no literal.
pub fn obfuscate_cow(sql: &str) -> Cow<'_, str> {
    obfuscate_with(sql, ObfuscateOptions::default())
}

/// Masks literals per `options`; borrows `sql` unchanged when there is nothing to mask.
pub fn obfuscate_with(sql: &str, options: ObfuscateOptions) -> Cow<'_, str> {
    obfuscate_counted(sql, options, &mut PrivacyCounts::default())
}

/// [`obfuscate_with`], counting into `counts` a text whose unterminated trailing literal was masked.
pub fn obfuscate_counted<'s>(
    sql: &'s str,
    options: ObfuscateOptions,
    counts: &mut PrivacyCounts,
) -> Cow<'s, str> {
    mask(sql, options.strings, |_| !options.numbers, counts)
}

/// The fingerprint of `sql` (as [`super::fingerprint::fingerprint_u64`]) and `sql` with its literals
/// masked (as [`obfuscate_with`]), from one lexing pass when both read the text the same way (always,
/// unless a backslash sits in it and `options.strings` is not [`StringMode::Standard`]): the log
/// pipeline needs both for every statement it sees. A text whose unterminated trailing literal was
/// masked is counted into `counts`.
pub fn fingerprint_and_obfuscate<'s>(
    sql: &'s str,
    options: ObfuscateOptions,
    counts: &mut PrivacyCounts,
) -> (u64, Cow<'s, str>) {
    let one_pass = match options.strings {
        StringMode::Standard => true,
        _ => memchr::memchr(b'\\', sql.as_bytes()).is_none(),
    };
    if !one_pass || !options.numbers {
        return (
            super::fingerprint::fingerprint_u64(sql),
            obfuscate_counted(sql, options, counts),
        );
    }
    super::fingerprint::with_scratch(|scratch| {
        let Scratch { norm, key, shapes } = scratch;
        key.clear();
        let mut masked: Option<String> = None;
        let (mut copied, mut unterminated) = (0, false);
        let mut lexer = Lexer::new(sql, StringMode::Standard);
        while let Some(token) = lexer.next_literal() {
            let buf = masked.get_or_insert_with(|| String::with_capacity(sql.len()));
            let kept = &sql[copied..token.start];
            buf.push_str(kept);
            buf.push_str(PLACEHOLDER);
            key.extend_from_slice(kept.as_bytes());
            key.push(0);
            copied = token.end;
            unterminated |= matches!(
                token.kind,
                TokenKind::Literal {
                    terminated: false,
                    ..
                }
            );
        }
        if unterminated {
            counts.unterminated_literals_masked += 1;
        }
        let (text, key) = match masked {
            None => (Cow::Borrowed(sql), sql.as_bytes()),
            Some(mut buf) => {
                buf.push_str(&sql[copied..]);
                key.extend_from_slice(&sql.as_bytes()[copied..]);
                (Cow::Owned(buf), key.as_slice())
            }
        };
        // A NUL in the text itself would make its key ambiguous.
        let hash = (key.len() <= ShapeCache::MAX_KEY
            && memchr::memchr(0, sql.as_bytes()).is_none())
        .then(|| xxhash_rust::xxh3::xxh3_64(key));
        if let Some(fp) = hash.and_then(|h| shapes.get(h, key)) {
            return (fp, text);
        }
        // A new shape: lexed a second time, to normalise it (rare once the cache is warm).
        let fp = norm.fingerprint(sql);
        if let Some(h) = hash {
            shapes.put(h, key, fp);
        }
        (fp, text)
    })
}

/// Masks every literal except numbers that start inside one of the `keep` byte ranges (sorted):
/// for EXPLAIN plans, whose cost and row-count lines are not user data while their conditions are.
pub fn obfuscate_keeping_numbers_in<'s>(
    sql: &'s str,
    strings: StringMode,
    keep: &[(usize, usize)],
    counts: &mut PrivacyCounts,
) -> Cow<'s, str> {
    mask(
        sql,
        strings,
        |at| {
            let i = keep.partition_point(|&(_, end)| end <= at);
            keep.get(i).is_some_and(|&(start, _)| start <= at)
        },
        counts,
    )
}

fn mask<'s>(
    sql: &'s str,
    strings: StringMode,
    keep_number_at: impl Fn(usize) -> bool,
    counts: &mut PrivacyCounts,
) -> Cow<'s, str> {
    // The two readings differ only where a backslash sits in a plain string.
    if strings == StringMode::Either && memchr::memchr(b'\\', sql.as_bytes()).is_some() {
        let mut spans: Vec<Span> =
            literal_spans(sql, StringMode::Standard, &keep_number_at).collect();
        spans.extend(literal_spans(sql, StringMode::Escape, &keep_number_at));
        return replace_spans(sql, union(spans), counts);
    }
    let mode = match strings {
        StringMode::Either => StringMode::Standard,
        mode => mode,
    };
    replace_spans(sql, literal_spans(sql, mode, keep_number_at), counts)
}

/// A literal's byte range, and whether it ran unterminated to the end.
type Span = (usize, usize, bool);

/// The literals of `sql` read in `mode`, except numbers `keep_number_at` keeps, as they are lexed.
fn literal_spans<'s>(
    sql: &'s str,
    mode: StringMode,
    keep_number_at: impl Fn(usize) -> bool + 's,
) -> impl Iterator<Item = Span> + 's {
    Lexer::new(sql, mode).filter_map(move |t| match t.kind {
        TokenKind::Literal { style, .. }
            if style == LiteralStyle::Number && keep_number_at(t.start) =>
        {
            None
        }
        TokenKind::Literal { terminated, .. } => Some((t.start, t.end, !terminated)),
        _ => None,
    })
}

/// Overlapping spans merged into one (sorted by start).
fn union(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable_by_key(|s| s.0);
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.0 < last.1 => {
                last.1 = last.1.max(s.1);
                last.2 |= s.2;
            }
            _ => out.push(s),
        }
    }
    out
}

/// `sql` with each span replaced by [`PLACEHOLDER`]; spans are sorted, disjoint and on char
/// boundaries (lexer tokens always are). Borrows `sql` when there is no span.
fn replace_spans<'s>(
    sql: &'s str,
    spans: impl IntoIterator<Item = Span>,
    counts: &mut PrivacyCounts,
) -> Cow<'s, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut unterminated = false;
    for (start, end, cut) in spans {
        let buf = out.get_or_insert_with(|| String::with_capacity(sql.len()));
        buf.push_str(&sql[copied..start]);
        buf.push_str(PLACEHOLDER);
        copied = end;
        unterminated |= cut;
    }
    if unterminated {
        counts.unterminated_literals_masked += 1;
    }
    match out {
        None => Cow::Borrowed(sql),
        Some(mut buf) => {
            buf.push_str(&sql[copied..]);
            Cow::Owned(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_literal_style_is_masked() {
        let cases = [
            (
                "SELECT * FROM u WHERE email = 'a@b.c'",
                "SELECT * FROM u WHERE email = ?",
            ),
            ("SELECT 'it''s secret'", "SELECT ?"),
            (r"SELECT E'it\'s \\ secret'", "SELECT ?"),
            (r"SELECT e'\x41'", "SELECT ?"),
            (r"SELECT U&'d\0061ta' UESCAPE '!'", "SELECT ? UESCAPE ?"),
            ("SELECT $$body ' with quote$$", "SELECT ?"),
            ("SELECT $fn$ $$ nested $$ $fn$", "SELECT ?"),
            ("SELECT B'1010', X'DEADBEEF'", "SELECT ?, ?"),
            ("SELECT 42, -3.5, 1e10, 2.5E-3, .5", "SELECT ?, -?, ?, ?, ?"),
            ("SELECT 0xFF, 0o17, 0b1010, 1_000_000", "SELECT ?, ?, ?, ?"),
            ("SELECT N'national'", "SELECT ?"),
            ("SELECT '2024-01-01'::date", "SELECT ?::date"),
            ("SELECT 'a'\n'b'", "SELECT ?"),
        ];
        for (sql, want) in cases {
            assert_eq!(obfuscate(sql), want, "input {sql:?}");
        }
    }

    #[test]
    fn structure_comments_params_and_identifiers_are_kept() {
        let sql = "/*controller='users',traceparent='00-abc-def-01'*/ SELECT \"Col 1\", t.x2\n\
                   FROM t -- note 'kept'\nWHERE id = $1 AND tag IN ('a', 'b') LIMIT 10";
        let want = "/*controller='users',traceparent='00-abc-def-01'*/ SELECT \"Col 1\", t.x2\n\
                    FROM t -- note 'kept'\nWHERE id = $1 AND tag IN (?, ?) LIMIT ?";
        assert_eq!(obfuscate(sql), want);
    }

    #[test]
    fn no_literal_means_no_allocation() {
        let sql = "SELECT a, b FROM t WHERE id = $1 /* app='x' */";
        assert!(matches!(obfuscate_cow(sql), Cow::Borrowed(_)));
    }

    #[test]
    fn unterminated_tails_are_masked_whole() {
        for (sql, want) in [
            (
                "SELECT * FROM t WHERE pw = 'hunt",
                "SELECT * FROM t WHERE pw = ?",
            ),
            (r"SELECT E'ab\'cd", "SELECT ?"),
            ("DO $x$ BEGIN RAISE 'secret", "DO ?"),
            ("SELECT X'DEAD", "SELECT ?"),
            ("SELECT 1 /* trace='abc", "SELECT ? /* trace='abc"),
        ] {
            assert_eq!(obfuscate(sql), want, "input {sql:?}");
        }
    }

    #[test]
    fn unterminated_tails_are_counted_by_the_caller() {
        let mut counts = PrivacyCounts::default();
        let opts = ObfuscateOptions::default();
        obfuscate_counted("SELECT 1, 'done'", opts, &mut counts);
        obfuscate_counted("SELECT 1 /* trace='abc", opts, &mut counts);
        assert_eq!(counts.unterminated_literals_masked, 0);
        obfuscate_counted("SELECT * FROM t WHERE pw = 'hunt", opts, &mut counts);
        fingerprint_and_obfuscate("SELECT E'ab", opts, &mut counts);
        let either = ObfuscateOptions {
            strings: StringMode::Either,
            numbers: true,
        };
        obfuscate_counted(r"SELECT 'a\' , 'cut", either, &mut counts);
        assert_eq!(counts.unterminated_literals_masked, 3);
        assert_eq!(counts.log_spans_redacted, 0);
    }

    #[test]
    fn standard_conforming_strings_off() {
        let sql = r"SELECT 'a\' secret' FROM t";
        let off = ObfuscateOptions {
            strings: StringMode::Escape,
            numbers: true,
        };
        assert_eq!(obfuscate_with(sql, off), "SELECT ? FROM t");
    }

    #[test]
    fn an_unknown_setting_masks_what_either_reading_calls_a_literal() {
        let either = ObfuscateOptions {
            strings: StringMode::Either,
            numbers: true,
        };
        for (sql, want) in [
            // Written for `off`: the standard reading alone would send "secret" (and takes the
            // last quote for an unterminated string, so the rest is masked too).
            (r"SELECT 'a\' secret' FROM t", "SELECT ?"),
            // Written for `on`: the escape reading alone would send "secret".
            (r"SELECT 'a\', 'secret' FROM t", "SELECT ?"),
            (r"SELECT 'C:\dir\' AS p, 5", "SELECT ?"),
            // No backslash in a string: both readings agree, nothing extra is masked.
            ("SELECT 'x', 5 FROM t", "SELECT ?, ? FROM t"),
            (r"SELECT E'\'', 5 FROM t", "SELECT ?, ? FROM t"),
        ] {
            assert_eq!(obfuscate_with(sql, either), want, "input {sql:?}");
        }
    }

    #[test]
    fn numbers_can_be_kept_for_plans() {
        let plan =
            "Seq Scan on t  (cost=0.00..35.50 rows=10 width=4)\n  Filter: (email = 'x@y'::text)";
        let opts = ObfuscateOptions {
            numbers: false,
            ..ObfuscateOptions::default()
        };
        assert_eq!(
            obfuscate_with(plan, opts),
            "Seq Scan on t  (cost=0.00..35.50 rows=10 width=4)\n  Filter: (email = ?::text)"
        );
    }

    #[test]
    fn obfuscation_is_idempotent() {
        let sql = "SELECT data ? 'k', 'v' FROM t WHERE n > 5";
        let once = obfuscate(sql);
        assert_eq!(obfuscate(&once), once);
    }

    #[test]
    fn cached_shapes_give_the_fingerprint_of_their_own_text() {
        let opts = ObfuscateOptions {
            strings: StringMode::Either,
            numbers: true,
        };
        // Pairs whose masked texts read alike but whose fingerprints differ, texts that share a
        // shape, and texts the cache must not take (a NUL byte, a key over the size limit).
        let long = format!("SELECT {} FROM t WHERE a = 1", "c, ".repeat(200));
        let texts = [
            "SELECT a ? b FROM t",
            "SELECT a 'x' b FROM t",
            "SELECT a ?- 5",
            "SELECT 'x'-5",
            "SELECT * FROM t WHERE id IN (1, 2, 3)",
            "SELECT * FROM t WHERE id IN (4, 5)",
            "SELECT * FROM t WHERE id IN ($1, $2)",
            "UPDATE t SET v = v + -1 WHERE id = 7",
            "UPDATE t SET v = v + -2 WHERE id = 8",
            "SELECT a\u{0}b",
            "SELECT a'x'b",
            long.as_str(),
        ];
        // Twice over: the second round is answered from the cache.
        for round in 0..2 {
            for t in texts {
                let (fp, masked) =
                    fingerprint_and_obfuscate(t, opts, &mut PrivacyCounts::default());
                assert_eq!(
                    fp,
                    super::super::fingerprint::fingerprint_u64(t),
                    "round {round}: {t:?}"
                );
                assert_eq!(masked, obfuscate_with(t, opts), "round {round}: {t:?}");
            }
        }
    }
}
