//! Where PostgreSQL's log messages embed SQL text, parameter values or row data: byte spans found in
//! the exact wording of the server (`postgres.c`, `elog.c`, `ri_triggers.c`, `execMain.c`, `copyfrom*.c`).
//! This file only locates; obfuscation and redaction decide what to do with the spans.

/// What kind of text a span of a message holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlPart {
    /// A statement (`statement: ...`, `execute <unnamed>: ...`, `prepare: ...`).
    Statement,
    /// An auto_explain plan (`duration: 1.2 ms  plan:` followed by the plan text).
    Plan,
}

/// Where ` ms  ` ends the duration of a `duration: ` message (`after` starts after `duration: `).
/// One searcher for the process: building one per call (`str::find`, `memmem::find`) costs more
/// than the search itself.
pub fn duration_end(after: &str) -> Option<usize> {
    static MS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b" ms  "));
    // The server prints `%ld.%03d ms`: read the number, and search only if something else follows.
    let b = after.as_bytes();
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b'.')
        .count();
    if b[n..].starts_with(b" ms  ") {
        return Some(n);
    }
    MS.find(b)
}

/// Where the SQL of a `log_statement` / `log_min_duration_statement` / auto_explain message starts:
/// `statement: `, `execute <name>: `, `execute fetch from <name>/<portal>: `, `parse <name>: `,
/// `bind <name>: ` and `plan:`, each optionally after `duration: <ms> ms  `.
pub fn message_sql(message: &str) -> Option<(usize, SqlPart)> {
    let mut offset = 0;
    let mut rest = message;
    if let Some(after) = rest.strip_prefix("duration: ") {
        let sep = duration_end(after)?;
        offset += "duration: ".len() + sep + " ms  ".len();
        rest = &message[offset..];
    }
    if let Some(plan) = rest.strip_prefix("plan:") {
        return Some((message.len() - plan.len(), SqlPart::Plan));
    }
    if let Some(sql) = rest.strip_prefix("statement: ") {
        return Some((message.len() - sql.len(), SqlPart::Statement));
    }
    for verb in ["execute ", "parse ", "bind "] {
        if let Some(named) = rest.strip_prefix(verb) {
            // Prepared statement and portal names are identifiers in practice; the first ": " ends them.
            let colon = named.find(": ")?;
            return Some((offset + verb.len() + colon + 2, SqlPart::Statement));
        }
    }
    None
}

/// The lines of a text-format EXPLAIN plan whose numbers are statistics (costs, rows, widths, times,
/// buffers, memory), as byte ranges of `plan`. Everything else keeps numbers masked: condition and
/// filter lines (`Index Cond`, `Filter`, `Join Filter`, `Recheck Cond`, `Run Condition`...), key and
/// `Output` lines, and the `Query Text:` with every line that follows it up to the first plan node
/// (a line with `(cost=` or `(actual`). Unknown shapes thus fail safe: masked.
pub fn plan_statistics_lines(plan: &str) -> Vec<(usize, usize)> {
    let mut keep = Vec::new();
    let mut in_query_text = false;
    for (start, line) in lines(plan) {
        let trimmed = line.trim_start();
        let body = trimmed.strip_prefix("->").map_or(trimmed, str::trim_start);
        if body.starts_with("Query Text:") {
            in_query_text = true;
            continue;
        }
        // auto_explain always prints costs, so a node line ends the query; SQL text may itself hold
        // a line starting with `->` (jsonb), hence not that.
        let node = line.contains("(cost=") || line.contains("(actual");
        if in_query_text && !node {
            continue;
        }
        in_query_text = false;
        let label = body.split_once(": ").map_or("", |(label, _)| label);
        let condition = ["Cond", "Filter", "Key", "Output", "Condition", "Param"]
            .iter()
            .any(|w| label.contains(w));
        if !condition {
            keep.push((start, start + line.len()));
        }
    }
    keep
}

/// Where the statement in a DETAIL starts: `prepare: <sql>` (logged with `execute` of a named
/// prepared statement).
pub fn detail_sql(detail: &str) -> Option<usize> {
    detail.strip_prefix("prepare: ").map(|_| "prepare: ".len())
}

/// Where the `$1 = '...', ...` list starts in a DETAIL (`parameters: ...`) or a CONTEXT line
/// (`unnamed portal with parameters: ...`, `portal "p" with parameters: ...`, PG 13+), as spans of
/// whole lines: `(start of the values, end of that line)`.
pub fn parameter_lists(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for (line_start, line) in lines(text) {
        let found = line
            .strip_prefix("parameters: ")
            .map(|_| "parameters: ".len())
            .or_else(|| {
                line.find(" with parameters: ")
                    .map(|i| i + " with parameters: ".len())
            });
        if let Some(at) = found {
            spans.push((line_start + at, line_start + line.len()));
        }
    }
    spans
}

/// Spans of the statements quoted in CONTEXT lines: `SQL statement "<sql>"` (PL/pgSQL and SPI).
/// PostgreSQL does not escape quotes inside, so the statement runs to the last `"` of the line; a line
/// cut before its closing quote runs to the end of the line.
pub fn context_sql(context: &str) -> Vec<(usize, usize)> {
    const PREFIX: &str = "SQL statement \"";
    let mut spans = Vec::new();
    for (line_start, line) in lines(context) {
        if let Some(body) = line.strip_prefix(PREFIX) {
            let end = body.rfind('"').unwrap_or(body.len());
            spans.push((line_start + PREFIX.len(), line_start + PREFIX.len() + end));
        }
    }
    spans
}

/// Spans of row data: DETAIL `Failing row contains (...)`, the value lists of `Key (cols)=(vals) ...`
/// (unique, foreign key, exclusion, and duplicate-key-on-index-build messages), and the row or
/// column value in CONTEXT `COPY t, line 3: "..."` / `COPY t, line 3, column c: "..."`.
pub fn table_data(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for (line_start, line) in lines(text) {
        let mut local = Vec::new();
        if let Some(at) = line.find("Failing row contains (") {
            let start = at + "Failing row contains ".len();
            local.push((start, closing_paren_end(line, start)));
        }
        let mut search = 0;
        while let Some(rel) = line[search..].find(")=(") {
            let start = search + rel + ")=".len();
            let end = key_values_end(line, start);
            local.push((start, end));
            search = end.max(start + 1);
        }
        if line.starts_with("COPY ") {
            if let Some(at) = line.find(": \"") {
                let start = at + 2;
                local.push((start, line.len()));
            }
        }
        spans.extend(
            local
                .into_iter()
                .map(|(s, e)| (line_start + s, line_start + e)),
        );
    }
    spans
}

/// Spans of user input quoted by input-syntax errors: `invalid input syntax for type integer: "abc"`,
/// `invalid input value for enum mood: "x"`, `invalid byte sequence for encoding "UTF8": 0xc3 0x28`.
pub fn input_values(message: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for prefix in [
        "invalid input syntax for ",
        "invalid input value for ",
        "invalid byte sequence for encoding ",
        "value too long for type ",
    ] {
        if let Some(at) = message.find(prefix) {
            let from = at + prefix.len();
            if let Some(colon) = message[from..].find(": ") {
                spans.push((from + colon + 2, message.len()));
            }
        }
    }
    spans
}

/// Span of the token a syntax error points at: `syntax error at or near "<token>"`, and the same
/// suffix on `unterminated quoted string at or near "'...`.
pub fn near_token(message: &str) -> Option<(usize, usize)> {
    let at = message.find(" at or near \"")?;
    Some((at + " at or near ".len(), message.len()))
}

/// The end of a parenthesised list starting at `start` (`(`), nesting respected; end of line if it
/// never closes, so a cut line is covered whole.
fn closing_paren_end(line: &str, start: usize) -> usize {
    let mut depth = 0usize;
    for (i, b) in line.bytes().enumerate().skip(start) {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    line.len()
}

/// End of the `(vals)` list of a `Key (cols)=(vals)` message. Values are printed raw and may hold
/// parentheses, so the list ends at the last `)` before one of the server's fixed continuations,
/// else at the last `)` of the line.
fn key_values_end(line: &str, start: usize) -> usize {
    const AFTER: [&str; 5] = [
        ") already exists",
        ") is not present in table",
        ") is still referenced from table",
        ") conflicts with existing key",
        ") is duplicated",
    ];
    AFTER
        .iter()
        .filter_map(|s| line[start..].rfind(s).map(|i| start + i + 1))
        .min()
        .or_else(|| line[start..].rfind(')').map(|i| start + i + 1))
        .unwrap_or(line.len())
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut start = 0;
    text.split('\n').map(move |line| {
        let at = start;
        start += line.len() + 1;
        (at, line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str, spans: &[(usize, usize)]) -> Vec<String> {
        spans.iter().map(|&(s, e)| text[s..e].to_string()).collect()
    }

    #[test]
    fn statement_messages() {
        let cases = [
            ("statement: SELECT 1", Some("SELECT 1")),
            (
                "duration: 1.234 ms  statement: SELECT 'x'",
                Some("SELECT 'x'"),
            ),
            ("execute <unnamed>: SELECT $1", Some("SELECT $1")),
            (
                "duration: 0.050 ms  execute S_1: SELECT 2",
                Some("SELECT 2"),
            ),
            (
                "execute fetch from <unnamed>/C_1: SELECT 3",
                Some("SELECT 3"),
            ),
            (
                "duration: 0.1 ms  parse <unnamed>: SELECT 4",
                Some("SELECT 4"),
            ),
            ("duration: 0.1 ms  bind S_2: SELECT 5", Some("SELECT 5")),
            ("duration: 0.1 ms", None),
            ("connection authorized: user=x", None),
        ];
        for (msg, want) in cases {
            assert_eq!(message_sql(msg).map(|(at, _)| &msg[at..]), want, "{msg}");
        }
        let plan = "duration: 3.1 ms  plan:\nQuery Text: SELECT 'a'";
        assert_eq!(message_sql(plan).map(|(_, p)| p), Some(SqlPart::Plan));
    }

    #[test]
    fn parameter_lists_in_detail_and_context() {
        let d = "parameters: $1 = 'a@b.c', $2 = NULL";
        assert_eq!(cut(d, &parameter_lists(d)), ["$1 = 'a@b.c', $2 = NULL"]);
        let c = "SQL function \"f\"\nunnamed portal with parameters: $1 = '42'";
        assert_eq!(cut(c, &parameter_lists(c)), ["$1 = '42'"]);
    }

    #[test]
    fn context_statement_spans() {
        let c = "PL/pgSQL function f() line 3 at RAISE\nSQL statement \"SELECT \"x\" FROM t WHERE a = 'v'\"";
        assert_eq!(
            cut(c, &context_sql(c)),
            ["SELECT \"x\" FROM t WHERE a = 'v'"]
        );
    }

    #[test]
    fn table_data_spans() {
        let cases = [
            ("Key (email)=(x@y.z) already exists.", vec!["(x@y.z)"]),
            (
                "Key (a, b)=(1, f(2)) is not present in table \"t\".",
                vec!["(1, f(2))"],
            ),
            (
                "Key (r)=([1,5)) conflicts with existing key (r)=([2,3)).",
                vec!["([1,5))", "([2,3))"],
            ),
            (
                "Failing row contains (1, secret, null).",
                vec!["(1, secret, null)"],
            ),
            ("Failing row contains (1, cut", vec!["(1, cut"]),
            ("COPY t, line 2, column b: \"secret\"", vec!["\"secret\""]),
        ];
        for (text, want) in cases {
            assert_eq!(cut(text, &table_data(text)), want, "{text}");
        }
    }

    #[test]
    fn syntax_error_spans() {
        let m = "syntax error at or near \"secret\"";
        assert_eq!(near_token(m).map(|(s, e)| &m[s..e]), Some("\"secret\""));
        let m = "invalid input syntax for type integer: \"12ab\"";
        assert_eq!(cut(m, &input_values(m)), ["\"12ab\""]);
    }
}
