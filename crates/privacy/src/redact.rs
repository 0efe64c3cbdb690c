//! Log secret redaction, by class, like pganalyze's `filter_log_secret`: which classes exist, how a
//! config list becomes a set, and what each class removes from the text fields of a log entry. Spans
//! are replaced by [`REDACTED`]. Obfuscation of the remaining literals is separate ([`super::entry`]).

use super::fields::{LogFields, TextField};
use super::lexer::{tokens, TokenKind};
use super::messages;
use super::PrivacyError;

/// What a redacted span becomes.
pub const REDACTED: &str = "[redacted]";

/// One class of secret in log entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedactClass {
    /// Passwords in `CREATE/ALTER ROLE|USER ... PASSWORD '...'` and `OPTIONS (password '...')`,
    /// `password=...` in connection strings, and the password of `postgres://user:pw@host` URIs.
    Credential,
    /// Statement text of entries that failed to parse (SQLSTATE 42601, or a lexer error message when
    /// the log line carries no SQLSTATE), and the token the error points at.
    ParsingError,
    /// All statement text: the `statement`/`query` fields, `statement: ...` and `execute ...:`
    /// messages, `prepare:` details and `SQL statement "..."` context lines.
    StatementText,
    /// Bind parameter values in `parameters: $1 = '...'` details and `with parameters:` context lines.
    StatementParameter,
    /// Row values: `Failing row contains (...)`, `Key (col)=(value)`, COPY context lines and the input
    /// quoted by `invalid input syntax for type ...: "..."`.
    TableData,
}

impl RedactClass {
    const ALL: [RedactClass; 5] = [
        RedactClass::Credential,
        RedactClass::ParsingError,
        RedactClass::StatementText,
        RedactClass::StatementParameter,
        RedactClass::TableData,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RedactClass::Credential => "credential",
            RedactClass::ParsingError => "parsing_error",
            RedactClass::StatementText => "statement_text",
            RedactClass::StatementParameter => "statement_parameter",
            RedactClass::TableData => "table_data",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`RedactClass`]es.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RedactClasses(u8);

impl RedactClasses {
    pub const NONE: RedactClasses = RedactClasses(0);
    pub const ALL: RedactClasses = RedactClasses(0b1_1111);
    /// The default of `privacy.redact_log_secrets`: `credential,parsing_error`.
    pub const DEFAULT: RedactClasses = RedactClasses(0b11);

    /// Parses config names: the five class names, `all` and `none` (alone). Names are trimmed and
    /// case-insensitive.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<RedactClasses, PrivacyError> {
        let mut set = RedactClasses::NONE;
        let mut none = false;
        for raw in names {
            let name = raw.as_ref().trim().to_ascii_lowercase();
            match name.as_str() {
                "" => {}
                "none" => none = true,
                "all" => set = RedactClasses::ALL,
                _ => {
                    let class = RedactClass::ALL
                        .into_iter()
                        .find(|c| c.name() == name)
                        .ok_or_else(|| PrivacyError::UnknownRedactClass {
                            name: raw.as_ref().to_string(),
                        })?;
                    set = set.with(class);
                }
            }
        }
        if none && set != RedactClasses::NONE {
            return Err(PrivacyError::NoneWithOtherClasses);
        }
        Ok(set)
    }

    pub fn with(self, class: RedactClass) -> RedactClasses {
        RedactClasses(self.0 | class.bit())
    }

    pub fn contains(self, class: RedactClass) -> bool {
        self.0 & class.bit() != 0
    }
}

/// SQLSTATEs whose statement failed to parse.
const PARSING_ERROR_CODES: &[&str] = &["42601"];

/// Messages of the scanner and grammar, for entries parsed from stderr lines without `%e`.
const PARSING_ERROR_MESSAGES: &[&str] = &[
    "syntax error at ",
    "unterminated quoted string",
    "unterminated dollar-quoted string",
    "unterminated quoted identifier",
    "unterminated /* comment",
    "unterminated bit string literal",
    "unterminated hexadecimal string literal",
    "zero-length delimited identifier",
    "trailing junk after ",
    "invalid Unicode escape",
];

/// Whether the entry is a parse failure, by SQLSTATE or, lacking one, by message.
pub fn is_parsing_error(sqlstate: Option<&str>, message: Option<&str>) -> bool {
    match sqlstate {
        Some(code) if !code.is_empty() => PARSING_ERROR_CODES.contains(&code),
        // Every one of those messages starts with s, u, z, t or i: most messages are settled by
        // their first byte.
        _ => message.is_some_and(|m| {
            matches!(m.as_bytes().first(), Some(b's' | b'u' | b'z' | b't' | b'i'))
                && PARSING_ERROR_MESSAGES.iter().any(|p| m.starts_with(p))
        }),
    }
}

/// Redacts `classes` from the entry's fields in place; returns how many spans were replaced.
pub fn redact_log_secrets(fields: &mut LogFields<'_>, classes: RedactClasses) -> usize {
    let mut n = 0;
    if classes.contains(RedactClass::Credential) {
        for field in fields.texts() {
            n += edit(field, credential_spans);
        }
    }
    let parsing = classes.contains(RedactClass::ParsingError)
        && is_parsing_error(fields.sqlstate, fields.message.text());
    if parsing || classes.contains(RedactClass::StatementText) {
        n += whole(fields.statement) + whole(fields.query);
        n += edit(fields.message, |m| {
            message_sql_span(m)
                .into_iter()
                .chain(messages::near_token(m))
                .collect()
        });
        n += edit(fields.detail, |d| {
            messages::detail_sql(d)
                .map(|at| (at, d.len()))
                .into_iter()
                .collect()
        });
        n += edit(fields.context, messages::context_sql);
    }
    if classes.contains(RedactClass::StatementParameter) {
        n += edit(fields.detail, parameter_value_spans);
        n += edit(fields.context, parameter_value_spans);
    }
    if classes.contains(RedactClass::TableData) {
        n += edit(fields.message, messages::input_values);
        n += edit(fields.detail, messages::table_data);
        n += edit(fields.context, messages::table_data);
    }
    n
}

/// `text` with its credentials replaced (see [`credential_spans`]); borrowed when there are none.
pub fn redact_credentials(text: &str) -> std::borrow::Cow<'_, str> {
    redact_credentials_counted(text).0
}

/// [`redact_credentials`], and how many spans were replaced.
pub fn redact_credentials_counted(text: &str) -> (std::borrow::Cow<'_, str>, usize) {
    if credential_spans(text).is_empty() {
        return (std::borrow::Cow::Borrowed(text), 0);
    }
    let mut field = text.to_string();
    let n = edit(&mut field, credential_spans);
    (std::borrow::Cow::Owned(field), n)
}

/// Removes password values from any text: see [`RedactClass::Credential`]. A `PASSWORD` literal is
/// redacted through the end of its statement (the next `;` or the end of the text): if the literal was
/// lexed under the wrong `standard_conforming_strings`, its real end may lie further on.
pub fn credential_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    // Every form but the URI needs the word, and the URI needs `://`: one SIMD scan settles most
    // texts.
    let (password, scheme) = credential_markers(text.as_bytes());
    if password {
        password_spans(text, &mut spans);
        spans.extend(conninfo_spans(text));
    }
    if scheme {
        spans.extend(uri_spans(text));
    }
    spans
}

/// Whether `b` holds `password` (in any case) and whether it holds `://`, in one pass over the
/// bytes either starts with.
fn credential_markers(b: &[u8]) -> (bool, bool) {
    let (mut password, mut scheme) = (false, false);
    for i in memchr::memchr3_iter(b'p', b'P', b':', b) {
        if b[i] == b':' {
            scheme |= b[i + 1..].starts_with(b"//");
        } else {
            password |= b
                .get(i..i + 8)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"password"));
        }
        if password && scheme {
            break;
        }
    }
    (password, scheme)
}

/// `PASSWORD 'literal'` (CREATE/ALTER ROLE, CREATE USER MAPPING ...), through the end of the
/// statement.
fn password_spans(text: &str, spans: &mut Vec<(usize, usize)>) {
    let mut after_password = false;
    let mut redacting: Option<usize> = None;
    for t in tokens(text) {
        if t.is_trivia() {
            continue;
        }
        if let Some(start) = redacting {
            if t.kind == TokenKind::Semicolon {
                spans.push((start, t.start));
                redacting = None;
            }
            continue;
        }
        if after_password && t.is_literal() {
            redacting = Some(t.start);
        }
        after_password = t.kind == TokenKind::Word && t.text(text).eq_ignore_ascii_case("password");
    }
    if let Some(start) = redacting {
        spans.push((start, text.trim_end().len().max(start)));
    }
}

/// `password=value`, `password = 'quoted \' value'` (libpq conninfo), case-insensitive, anywhere.
fn conninfo_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(rel) = lower[from..].find("password") {
        let mut i = from + rel + "password".len();
        from = i;
        while bytes.get(i).is_some_and(|b| *b == b' ') {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while bytes.get(i).is_some_and(|b| *b == b' ') {
            i += 1;
        }
        let start = i;
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            while let Some(&b) = bytes.get(i) {
                i += 1;
                if b == b'\\' {
                    i += 1;
                } else if b == b'\'' {
                    break;
                }
            }
        } else {
            while bytes
                .get(i)
                .is_some_and(|b| !b.is_ascii_whitespace() && !b"'\";&)".contains(b))
            {
                i += 1;
            }
        }
        let end = i.min(text.len());
        if end > start {
            spans.push((start, end));
        }
        from = end.max(from);
    }
    spans
}

/// The password of `postgres://user:password@host` and `postgresql://...` URIs.
fn uri_spans(text: &str) -> Vec<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let mut spans = Vec::new();
    for scheme in ["postgresql://", "postgres://"] {
        let mut from = 0;
        while let Some(rel) = lower[from..].find(scheme) {
            let start = from + rel + scheme.len();
            from = start;
            let authority_end = text[start..]
                .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == '\'' || c == '"')
                .map_or(text.len(), |i| start + i);
            let authority = &text[start..authority_end];
            if let (Some(at), Some(colon)) = (authority.rfind('@'), authority.find(':')) {
                if colon < at {
                    spans.push((start + colon + 1, start + at));
                }
            }
        }
    }
    spans
}

fn message_sql_span(message: &str) -> Vec<(usize, usize)> {
    messages::message_sql(message)
        .map(|(at, _)| (at, message.len()))
        .into_iter()
        .collect()
}

/// Each quoted value of every `$n = '...'` list.
fn parameter_value_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for (start, end) in messages::parameter_lists(text) {
        let list = &text[start..end];
        spans.extend(
            tokens(list)
                .filter(|t| t.is_literal())
                .map(|t| (start + t.start, start + t.end)),
        );
    }
    spans
}

fn whole(field: &mut dyn TextField) -> usize {
    match field.text() {
        Some(text) if !text.is_empty() && text != REDACTED => {
            field.replace(REDACTED.to_string());
            1
        }
        _ => 0,
    }
}

/// Replaces the spans `find` returns in `field`; overlapping or touching spans become one.
fn edit(field: &mut dyn TextField, find: impl Fn(&str) -> Vec<(usize, usize)>) -> usize {
    let Some(text) = field.text() else {
        return 0;
    };
    let mut spans = find(text);
    if spans.is_empty() {
        return 0;
    }
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut count = 0;
    for (start, end) in merged {
        // Spans come from ASCII delimiters, so these are char boundaries; skip anything else.
        let (Some(keep), true) = (text.get(copied..start), text.is_char_boundary(end)) else {
            continue;
        };
        out.push_str(keep);
        out.push_str(REDACTED);
        copied = end;
        count += 1;
    }
    out.push_str(text.get(copied..).unwrap_or(""));
    field.replace(out);
    count
}
