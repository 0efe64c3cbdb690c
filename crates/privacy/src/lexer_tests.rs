//! Unit tests of the lexer: every literal style, numbers, comments, operators and truncated input.

use super::lexer::*;

fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
    tokens(sql)
        .filter(|t| t.kind != TokenKind::Whitespace)
        .map(|t| (t.kind, t.text(sql)))
        .collect()
}

fn lit(style: LiteralStyle) -> TokenKind {
    TokenKind::Literal {
        style,
        terminated: true,
    }
}

#[test]
fn strings_of_every_style() {
    use LiteralStyle::*;
    let sql = r"SELECT 'it''s', E'a\'b\\', U&'d\0061t', $$x$y$$, $f$ $$ $f$, B'1010', X'1F', N'n'";
    let lits: Vec<_> = kinds(sql)
        .into_iter()
        .filter(|(k, _)| matches!(k, TokenKind::Literal { .. }))
        .collect();
    assert_eq!(
        lits,
        vec![
            (lit(Plain), "'it''s'"),
            (lit(Escape), r"E'a\'b\\'"),
            (lit(Unicode), r"U&'d\0061t'"),
            (lit(Dollar), "$$x$y$$"),
            (lit(Dollar), "$f$ $$ $f$"),
            (lit(BitString), "B'1010'"),
            (lit(BitString), "X'1F'"),
            (lit(Plain), "N'n'"),
        ]
    );
}

#[test]
fn backslash_in_plain_string_depends_on_standard_conforming_strings() {
    let sql = r"'a\' x '";
    let standard: Vec<_> = Lexer::new(sql, StringMode::Standard).collect();
    assert_eq!(standard[0].text(sql), r"'a\'");
    let escape: Vec<_> = Lexer::new(sql, StringMode::Escape).collect();
    assert_eq!(escape.len(), 1);
    assert_eq!(escape[0].text(sql), sql);
}

#[test]
fn numbers_of_every_form() {
    for n in [
        "42",
        "3.14",
        ".5",
        "5.",
        "1e10",
        "2.5E-3",
        "0x1F",
        "0o17",
        "0b101",
        "1_000_000",
        "0x_FF",
    ] {
        let sql = format!("SELECT {n} FROM t");
        assert_eq!(kinds(&sql)[1], (lit(LiteralStyle::Number), n), "number {n}");
    }
}

#[test]
fn params_identifiers_comments_and_operators() {
    let sql = "SELECT \"Weird \"\"name\"\"\", $1::int, a$b /* x /* nested */ y */ -- tail\n>= -1";
    let got = kinds(sql);
    assert_eq!(
        got[1],
        (
            TokenKind::QuotedIdent { terminated: true },
            "\"Weird \"\"name\"\"\""
        )
    );
    assert_eq!(got[3], (TokenKind::Param, "$1"));
    assert_eq!(got[4], (TokenKind::Cast, "::"));
    assert_eq!(got[7], (TokenKind::Word, "a$b"));
    assert_eq!(
        got[8],
        (
            TokenKind::BlockComment { terminated: true },
            "/* x /* nested */ y */"
        )
    );
    assert_eq!(got[9], (TokenKind::LineComment, "-- tail"));
    assert_eq!(got[10], (TokenKind::Operator, ">="));
    assert_eq!(got[11], (TokenKind::Operator, "-"));
    assert_eq!(got[12], (lit(LiteralStyle::Number), "1"));
}

#[test]
fn operator_run_stops_before_comment_and_trailing_minus() {
    assert_eq!(kinds("a=-1")[1], (TokenKind::Operator, "="));
    assert_eq!(kinds("a=/*c*/1")[1], (TokenKind::Operator, "="));
    assert_eq!(kinds("j @- 1")[1], (TokenKind::Operator, "@-"));
}

#[test]
fn string_continuation_across_newline_is_one_literal() {
    let got = kinds("SELECT 'a'\n  'b', 'c' 'd'");
    assert_eq!(got[1], (lit(LiteralStyle::Plain), "'a'\n  'b'"));
    // Without a newline it is two tokens (a syntax error in PostgreSQL, but lexed safely).
    assert_eq!(got[3], (lit(LiteralStyle::Plain), "'c'"));
}

#[test]
fn truncated_input_ends_in_an_unterminated_token() {
    let cases = [
        ("SELECT 'abc", LiteralStyle::Plain),
        (r"SELECT E'ab\", LiteralStyle::Escape),
        ("SELECT $q$ab $q", LiteralStyle::Dollar),
        ("SELECT $q", LiteralStyle::Dollar),
        ("SELECT U&'x", LiteralStyle::Unicode),
        ("SELECT B'10", LiteralStyle::BitString),
    ];
    for (sql, style) in cases {
        let last = tokens(sql).last().unwrap();
        assert_eq!(
            last.kind,
            TokenKind::Literal {
                style,
                terminated: false
            },
            "{sql}"
        );
        assert_eq!(last.end, sql.len());
    }
    let last = tokens("SELECT /* a /* b */").last().unwrap();
    assert_eq!(last.kind, TokenKind::BlockComment { terminated: false });
}

#[test]
fn non_ascii_text_keeps_char_boundaries() {
    let sql = "SELECT naïve, 'ünïcode', \"ß\" FROM 表 WHERE x = '日本";
    let toks: Vec<_> = tokens(sql).collect();
    assert_eq!(toks.iter().map(|t| t.text(sql)).collect::<String>(), sql);
}
