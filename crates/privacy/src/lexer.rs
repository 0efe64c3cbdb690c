//! A PostgreSQL lexer for possibly truncated query text: it splits text into tokens with byte spans and
//! never fails. It owns the lexical rules of `scan.l` that decide where a literal starts and ends; it
//! does not parse. Whatever cannot be lexed cleanly (text cut inside a string, comment or dollar quote by
//! `track_activity_query_size`) becomes one unterminated token running to the end of the input, so a
//! caller masking literals masks the cut tail too.
//!
//! Token boundaries always fall on ASCII bytes or the end of input, so every span is a valid `&str`
//! slice: bytes >= 0x80 only ever occur inside identifiers, strings, comments or `Other` runs.

/// How backslashes in plain `'...'` strings are read: PostgreSQL's `standard_conforming_strings`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringMode {
    /// `standard_conforming_strings = on` (the default since 9.1): a backslash is an ordinary character.
    Standard,
    /// `standard_conforming_strings = off`: a backslash escapes the next character, as in `E'...'`.
    Escape,
    /// Not known: any session may turn the setting off for itself. The lexer reads plain strings as
    /// [`StringMode::Standard`]; a masker masks what either reading takes for a literal
    /// (see `obfuscate`).
    Either,
}

/// What a literal token is, for callers that treat styles differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralStyle {
    /// `'...'`, and `N'...'`.
    Plain,
    /// `E'...'` with backslash escapes.
    Escape,
    /// `U&'...'`.
    Unicode,
    /// `$$...$$` or `$tag$...$tag$`.
    Dollar,
    /// `B'...'` and `X'...'`.
    BitString,
    /// Integers, decimals, exponents, `0x`/`0o`/`0b` forms, with `_` separators.
    Number,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Whitespace,
    /// `-- ...` up to (not including) the newline.
    LineComment,
    /// `/* ... */`, nested.
    BlockComment {
        terminated: bool,
    },
    Literal {
        style: LiteralStyle,
        terminated: bool,
    },
    /// `$1`, kept by obfuscation: it carries no value.
    Param,
    /// An unquoted identifier or keyword.
    Word,
    /// `"..."` or `U&"..."`.
    QuotedIdent {
        terminated: bool,
    },
    /// A run of operator characters (`+ - * / < > = ~ ! @ # % ^ & | \` ?`), split as `scan.l` does.
    Operator,
    /// `::`
    Cast,
    OpenParen,
    CloseParen,
    OpenBracket,
    CloseBracket,
    Comma,
    Semicolon,
    Dot,
    /// `:` alone (array slices).
    Colon,
    /// Anything else, one character (for example a lone `$` or `\`).
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        // Spans end on ASCII bytes or the end of input (module doc), so this never falls back.
        src.get(self.start..self.end).unwrap_or("")
    }

    pub fn is_literal(&self) -> bool {
        matches!(self.kind, TokenKind::Literal { .. })
    }

    pub fn is_trivia(&self) -> bool {
        matches!(
            self.kind,
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. }
        )
    }
}

/// Iterator over the tokens of `src`. Never panics, never stops before the end of input.
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    mode: StringMode,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str, mode: StringMode) -> Lexer<'a> {
        Lexer {
            src: src.as_bytes(),
            pos: 0,
            mode,
        }
    }

    fn peek(&self, ahead: usize) -> u8 {
        self.src.get(self.pos + ahead).copied().unwrap_or(0)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn lex_one(&mut self) -> TokenKind {
        let c = self.peek(0);
        let next = self.peek(1);
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                self.eat_while(is_space);
                TokenKind::Whitespace
            }
            b'-' if next == b'-' => {
                self.eat_while(|b| b != b'\n');
                TokenKind::LineComment
            }
            b'/' if next == b'*' => self.block_comment(),
            b'\'' => {
                self.pos += 1;
                let backslash = self.mode == StringMode::Escape;
                self.literal(LiteralStyle::Plain, backslash)
            }
            b'e' | b'E' if next == b'\'' => {
                self.pos += 2;
                self.literal(LiteralStyle::Escape, true)
            }
            b'b' | b'B' | b'x' | b'X' if next == b'\'' => {
                self.pos += 2;
                self.literal(LiteralStyle::BitString, false)
            }
            b'n' | b'N' if next == b'\'' => {
                self.pos += 2;
                let backslash = self.mode == StringMode::Escape;
                self.literal(LiteralStyle::Plain, backslash)
            }
            b'u' | b'U' if next == b'&' && self.peek(2) == b'\'' => {
                self.pos += 3;
                self.literal(LiteralStyle::Unicode, false)
            }
            b'u' | b'U' if next == b'&' && self.peek(2) == b'"' => {
                self.pos += 3;
                self.quoted_ident()
            }
            b'"' => {
                self.pos += 1;
                self.quoted_ident()
            }
            b'$' => self.dollar(),
            b'0'..=b'9' => self.number(),
            b'.' if next.is_ascii_digit() => self.number(),
            _ if is_ident_start(c) => {
                self.eat_while(is_ident_cont);
                TokenKind::Word
            }
            b':' if next == b':' => {
                self.pos += 2;
                TokenKind::Cast
            }
            _ if is_op_char(c) => self.operator(),
            _ => {
                self.pos += 1;
                match c {
                    b'(' => TokenKind::OpenParen,
                    b')' => TokenKind::CloseParen,
                    b'[' => TokenKind::OpenBracket,
                    b']' => TokenKind::CloseBracket,
                    b',' => TokenKind::Comma,
                    b';' => TokenKind::Semicolon,
                    b'.' => TokenKind::Dot,
                    b':' => TokenKind::Colon,
                    _ => TokenKind::Other,
                }
            }
        }
    }

    fn eat_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.pos < self.src.len() && keep(self.src[self.pos]) {
            self.pos += 1;
        }
    }

    fn block_comment(&mut self) -> TokenKind {
        self.pos += 2;
        let mut depth = 1usize;
        while !self.at_end() {
            match (self.peek(0), self.peek(1)) {
                (b'/', b'*') => {
                    depth += 1;
                    self.pos += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        return TokenKind::BlockComment { terminated: true };
                    }
                }
                _ => self.pos += 1,
            }
        }
        TokenKind::BlockComment { terminated: false }
    }

    /// The body of a quoted string after its opening quote. `''` is always an escaped quote; with
    /// `backslash`, `\x` escapes any x. Like `scan.l` (xqcat), a string followed by whitespace that
    /// contains a newline and then another `'` continues: the pieces are one literal.
    fn literal(&mut self, style: LiteralStyle, backslash: bool) -> TokenKind {
        loop {
            let Some(&c) = self.src.get(self.pos) else {
                return TokenKind::Literal {
                    style,
                    terminated: false,
                };
            };
            self.pos += 1;
            if backslash && c == b'\\' {
                self.pos = (self.pos + 1).min(self.src.len());
            } else if c == b'\'' {
                if self.peek(0) == b'\'' {
                    self.pos += 1;
                } else if let Some(after) = self.continuation() {
                    self.pos = after;
                } else {
                    return TokenKind::Literal {
                        style,
                        terminated: true,
                    };
                }
            }
        }
    }

    /// Position after `<whitespace with a newline>'` if the string continues there.
    fn continuation(&self) -> Option<usize> {
        let mut i = self.pos;
        let mut newline = false;
        while let Some(&b) = self.src.get(i) {
            if !is_space(b) {
                break;
            }
            newline |= b == b'\n' || b == b'\r';
            i += 1;
        }
        (newline && self.src.get(i) == Some(&b'\'')).then_some(i + 1)
    }

    fn quoted_ident(&mut self) -> TokenKind {
        while let Some(&c) = self.src.get(self.pos) {
            self.pos += 1;
            if c == b'"' {
                if self.peek(0) == b'"' {
                    self.pos += 1;
                } else {
                    return TokenKind::QuotedIdent { terminated: true };
                }
            }
        }
        TokenKind::QuotedIdent { terminated: false }
    }

    /// `$1` parameters, `$tag$...$tag$` / `$$...$$` strings, or a lone `$`.
    fn dollar(&mut self) -> TokenKind {
        let start = self.pos;
        self.pos += 1;
        if self.peek(0).is_ascii_digit() {
            self.eat_while(|b| b.is_ascii_digit());
            return TokenKind::Param;
        }
        // Tag: ident_start then ident_cont without `$`.
        if is_ident_start(self.peek(0)) {
            self.eat_while(|b| is_ident_cont(b) && b != b'$');
        }
        if self.peek(0) != b'$' {
            if self.at_end() {
                // `$tag` cut before its closing `$`: the text is not a dollar quote yet, and nothing
                // after it exists; mask it as an unterminated literal to be safe.
                return TokenKind::Literal {
                    style: LiteralStyle::Dollar,
                    terminated: false,
                };
            }
            self.pos = start + 1;
            return TokenKind::Other;
        }
        self.pos += 1;
        let delimiter = &self.src[start..self.pos];
        match memchr::memmem::find(&self.src[self.pos..], delimiter) {
            Some(at) => {
                self.pos += at + delimiter.len();
                TokenKind::Literal {
                    style: LiteralStyle::Dollar,
                    terminated: true,
                }
            }
            None => {
                self.pos = self.src.len();
                TokenKind::Literal {
                    style: LiteralStyle::Dollar,
                    terminated: false,
                }
            }
        }
    }

    /// Numbers per `scan.l` (PG 16 forms included). Trailing identifier characters (`123abc`, which
    /// PG 15+ rejects as junk and older versions read as `123 AS abc`) are folded into the number so a
    /// cut or odd literal is masked whole rather than half shown.
    fn number(&mut self) -> TokenKind {
        let c = self.peek(0);
        let radix = (c == b'0')
            .then(|| self.peek(1).to_ascii_lowercase())
            .filter(|r| matches!(r, b'x' | b'o' | b'b'));
        if let Some(r) = radix {
            self.pos += 2;
            let digit = move |b: u8| match r {
                b'x' => b.is_ascii_hexdigit() || b == b'_',
                b'o' => (b'0'..=b'7').contains(&b) || b == b'_',
                _ => b == b'0' || b == b'1' || b == b'_',
            };
            self.eat_while(digit);
        } else {
            self.eat_while(|b| b.is_ascii_digit() || b == b'_');
            // `1..2` is not SQL, but `1.` followed by `.` must not swallow the second dot.
            if self.peek(0) == b'.' && self.peek(1) != b'.' {
                self.pos += 1;
                self.eat_while(|b| b.is_ascii_digit() || b == b'_');
            }
            if matches!(self.peek(0), b'e' | b'E') {
                let sign = usize::from(matches!(self.peek(1), b'+' | b'-'));
                if self.peek(1 + sign).is_ascii_digit() || self.src.len() <= self.pos + 1 + sign {
                    self.pos += 1 + sign;
                    self.eat_while(|b| b.is_ascii_digit() || b == b'_');
                }
            }
        }
        self.eat_while(is_ident_cont);
        TokenKind::Literal {
            style: LiteralStyle::Number,
            terminated: true,
        }
    }

    /// An operator run, cut before a comment start, and without a trailing `+`/`-` unless the run
    /// holds one of ``~!@#%^&|`?`` (PostgreSQL's rule, so `=-1` is `=` then `-1`).
    fn operator(&mut self) -> TokenKind {
        let start = self.pos;
        while self.pos < self.src.len() && is_op_char(self.src[self.pos]) {
            let pair = (self.peek(0), self.peek(1));
            if self.pos > start && (pair == (b'-', b'-') || pair == (b'/', b'*')) {
                break;
            }
            self.pos += 1;
        }
        let run = &self.src[start..self.pos];
        if run.len() > 1 && !run.iter().any(|b| b"~!@#%^&|`?".contains(b)) {
            let mut len = run.len();
            while len > 1 && matches!(run[len - 1], b'+' | b'-') {
                len -= 1;
            }
            self.pos = start + len;
        }
        TokenKind::Operator
    }
}

impl Lexer<'_> {
    /// The next token's kind and span: what [`Iterator::next`] returns, for the loops below.
    #[inline(always)]
    fn token(&mut self) -> Token {
        let start = self.pos;
        let kind = self.lex_one();
        // Every branch consumes at least one byte; this guards the invariant against future edits.
        if self.pos <= start {
            self.pos = start + 1;
        }
        // Keep spans on char boundaries even if a branch stopped inside a multi-byte character.
        while self.pos < self.src.len() && (self.src[self.pos] & 0xC0) == 0x80 {
            self.pos += 1;
        }
        Token {
            kind,
            start,
            end: self.pos.min(self.src.len()),
        }
    }

    /// The next literal token, skipping every other token: exactly the literals the iterator
    /// yields, without handing each word and space out (the masking pass needs only literals).
    pub fn next_literal(&mut self) -> Option<Token> {
        while !self.at_end() {
            let token = self.token();
            if token.is_literal() {
                return Some(token);
            }
        }
        None
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        if self.at_end() {
            return None;
        }
        Some(self.token())
    }
}

/// Lexes `src` with standard-conforming strings.
pub fn tokens(src: &str) -> Lexer<'_> {
    Lexer::new(src, StringMode::Standard)
}

const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CONT: u8 = 4;
const OP_CHAR: u8 = 8;

/// The character classes of every byte, looked up once per byte in the hot loops.
static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            class |= SPACE;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            class |= IDENT_START | IDENT_CONT;
        }
        if c.is_ascii_digit() || c == b'$' {
            class |= IDENT_CONT;
        }
        if matches!(
            c,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
        ) {
            class |= OP_CHAR;
        }
        t[b] = class;
        b += 1;
    }
    t
}

fn is_space(b: u8) -> bool {
    CLASSES[b as usize] & SPACE != 0
}

fn is_ident_start(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_START != 0
}

fn is_ident_cont(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_CONT != 0
}

fn is_op_char(b: u8) -> bool {
    CLASSES[b as usize] & OP_CHAR != 0
}
