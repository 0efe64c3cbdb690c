//! Literal masking of EXPLAIN plans in their structured formats (JSON, YAML, XML), as auto_explain
//! writes them into a log message, and of a plan tree already parsed into JSON values.
//!
//! Text-format plans are handled line by line in `entry.rs` (`messages::plan_statistics_lines`): the
//! SQL lexer sees their literals. In the structured formats the SQL sits inside `"..."` (JSON, YAML)
//! or XML text, where the SQL lexer reads a quoted identifier or keeps numbers: the cause of literals
//! leaving the host through auto_explain's JSON plans (issue 23). Here every string value is decoded,
//! masked like query text, and encoded again, unless its key is one of [`NAME_KEYS`] (node types,
//! relation and index names, join kinds: names, never SQL). Unknown keys are masked: a key a future
//! server adds fails safe. Numbers outside strings are EXPLAIN's statistics (costs, rows, times,
//! buffers) and are kept.

use std::borrow::Cow;

use super::obfuscate::{obfuscate_counted, ObfuscateOptions};
use super::PrivacyCounts;

/// Keys whose string values are names or enumerations, never SQL text (EXPLAIN's JSON key names;
/// XML's `Node-Type` is compared as `Node Type`).
pub const NAME_KEYS: &[&str] = &[
    "Node Type",
    "Strategy",
    "Partial Mode",
    "Parent Relationship",
    "Relation Name",
    "Schema",
    "Alias",
    "Index Name",
    "Scan Direction",
    "Join Type",
    "Operation",
    "Command",
    "Subplan Name",
    "CTE Name",
    "Function Name",
    "Sort Method",
    "Sort Space Type",
    "Table Function Name",
    "Tuplestore Name",
    "Trigger Name",
    "Constraint Name",
    "Relation",
    "Conflict Resolution",
    "Conflict Arbiter Indexes",
    "Sampling Method",
    "Storage",
    "Cache Mode",
];

/// Whether a string under `key` is a name that stays as it is.
pub fn is_name_key(key: &str) -> bool {
    NAME_KEYS.contains(&key)
}

/// The structured format a plan is written in, from its first non-blank byte; `None` for text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFormat {
    Json,
    Yaml,
    Xml,
}

/// The format of a plan as auto_explain logs it (the text after `plan:`): JSON starts with `{`,
/// XML with `<explain`, YAML with `Query Text: "` (text format writes the query unquoted).
pub fn structured_format(plan: &str) -> Option<PlanFormat> {
    let t = plan.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        Some(PlanFormat::Json)
    } else if t.starts_with("<explain") {
        Some(PlanFormat::Xml)
    } else if t.starts_with("Query Text: \"") || t.starts_with("Plan: ") || t.starts_with("- Plan")
    {
        Some(PlanFormat::Yaml)
    } else {
        None
    }
}

/// `plan` (a JSON, YAML or XML plan) with the literals of its SQL-bearing values masked; `None` when
/// it is text format (the caller masks it line by line).
pub fn mask_structured_plan<'p>(
    plan: &'p str,
    opts: ObfuscateOptions,
    counts: &mut PrivacyCounts,
) -> Option<Cow<'p, str>> {
    Some(match structured_format(plan)? {
        PlanFormat::Json | PlanFormat::Yaml => mask_quoted(plan, opts, counts),
        PlanFormat::Xml => mask_xml(plan, opts, counts),
    })
}

/// JSON and YAML as EXPLAIN writes them: every string is a JSON string (YAML output quotes every
/// string with `escape_json`). A JSON key is a string followed by `:`; a YAML key is the unquoted
/// `Key:` that starts a line (after indentation and `- `). A value belongs to the last key seen:
/// list items follow their key, and objects inside lists start with a key.
fn mask_quoted<'p>(
    plan: &'p str,
    opts: ObfuscateOptions,
    counts: &mut PrivacyCounts,
) -> Cow<'p, str> {
    let b = plan.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut key: Cow<'p, str> = Cow::Borrowed("");
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line_start = true;
                i += 1;
            }
            b'"' => {
                line_start = false;
                let end = string_end(b, i);
                let token = &plan[i..end];
                let after = plan[end..].trim_start_matches([' ', '\t']);
                if after.starts_with(':') {
                    key = decode(token).map_or(Cow::Borrowed(""), Cow::Owned);
                } else if !is_name_key(&key) {
                    // An undecodable (cut) string is masked whole.
                    let replacement = match decode(token) {
                        Some(text) => match obfuscate_counted(&text, opts, counts) {
                            Cow::Borrowed(_) => None,
                            Cow::Owned(masked) => Some(encode(&masked)),
                        },
                        None => Some("\"?\"".to_string()),
                    };
                    if let Some(r) = replacement {
                        let buf = out.get_or_insert_with(|| String::with_capacity(plan.len()));
                        buf.push_str(&plan[copied..i]);
                        buf.push_str(&r);
                        copied = end;
                    }
                }
                i = end;
            }
            b' ' | b'\t' | b'-' if line_start => i += 1,
            _ if line_start => {
                line_start = false;
                // YAML `Key: ...` (keys are unquoted words).
                let rest = &plan[i..];
                let line = rest.split('\n').next().unwrap_or("");
                if let Some((k, _)) = line.split_once(':') {
                    if !k.contains('"') {
                        key = Cow::Owned(k.trim().to_string());
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(plan),
        Some(mut buf) => {
            buf.push_str(&plan[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// The end (exclusive) of the JSON string starting at `b[start] == b'"'`; the end of the input when
/// it is cut before its closing quote.
fn string_end(b: &[u8], start: usize) -> usize {
    let mut j = start + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

/// A JSON string token decoded (escapes as in RFC 8259); `None` if it is not a complete one.
fn decode(token: &str) -> Option<String> {
    let inner = token.strip_prefix('"')?.strip_suffix('"')?;
    let mut s = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            s.push(c);
            continue;
        }
        match chars.next()? {
            'n' => s.push('\n'),
            't' => s.push('\t'),
            'r' => s.push('\r'),
            'b' => s.push('\u{8}'),
            'f' => s.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = u32::from_str_radix(&hex, 16).ok()?;
                // Surrogate pairs do not occur in PostgreSQL's escape_json (it writes UTF-8 as is).
                s.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
            }
            other => s.push(other),
        }
    }
    Some(s)
}

/// `s` as a JSON string token, escaped the way PostgreSQL's `escape_json` does.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// XML as EXPLAIN writes it: one element per key (`Node-Type`), list items as `<Item>` under their
/// key, text escaped with `&lt;`, `&gt;`, `&amp;` (and `&quot;`/`&apos;` read too). A text is
/// masked unless its element (or the element holding the `Item`) is a name key, or it is a plain
/// number or boolean outside an `Item` (statistics).
fn mask_xml<'p>(plan: &'p str, opts: ObfuscateOptions, counts: &mut PrivacyCounts) -> Cow<'p, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut key = String::new();
    let mut i = 0;
    while let Some(open) = plan[i..].find('<').map(|o| o + i) {
        let Some(close) = plan[open..].find('>').map(|c| c + open) else {
            break;
        };
        let tag = &plan[open + 1..close];
        i = close + 1;
        if tag.starts_with('/') || tag.ends_with('/') {
            continue;
        }
        let name = tag.split_whitespace().next().unwrap_or("");
        if name != "Item" {
            key = name.replace('-', " ");
        }
        // The element's text runs to the next tag; an element holding children has only blanks.
        let end = plan[i..].find('<').map_or(plan.len(), |e| e + i);
        let text = &plan[i..end];
        let trimmed = text.trim();
        // A list item is an expression (`Output`, `Sort Key`) even when it is a bare number.
        let statistic = name != "Item"
            && (trimmed.parse::<f64>().is_ok() || trimmed == "true" || trimmed == "false");
        if trimmed.is_empty() || is_name_key(&key) || statistic {
            continue;
        }
        let decoded = xml_unescape(text);
        if let Cow::Owned(masked) = obfuscate_counted(&decoded, opts, counts) {
            let buf = out.get_or_insert_with(|| String::with_capacity(plan.len()));
            buf.push_str(&plan[copied..i]);
            buf.push_str(&xml_escape(&masked));
            copied = end;
        }
        i = end;
    }
    match out {
        None => Cow::Borrowed(plan),
        Some(mut buf) => {
            buf.push_str(&plan[copied..]);
            Cow::Owned(buf)
        }
    }
}

fn xml_unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A plan tree (EXPLAIN's JSON keys, as parsed from any format) with the literals of every string
/// that may hold SQL masked: strings under keys other than [`NAME_KEYS`], in lists too (`Output`,
/// `Sort Key`). Numbers are statistics and stay.
pub fn mask_plan_tree(
    v: &mut serde_json::Value,
    opts: ObfuscateOptions,
    counts: &mut PrivacyCounts,
) {
    walk(v, "", opts, counts);
}

fn walk(v: &mut serde_json::Value, key: &str, opts: ObfuscateOptions, counts: &mut PrivacyCounts) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                walk(v, k, opts, counts);
            }
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|v| walk(v, key, opts, counts))
        }
        serde_json::Value::String(s) if !is_name_key(key) => {
            if let Cow::Owned(masked) = obfuscate_counted(s, opts, counts) {
                *s = masked;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(plan: &str) -> String {
        mask_structured_plan(
            plan,
            ObfuscateOptions::default(),
            &mut PrivacyCounts::default(),
        )
        .expect("structured")
        .into_owned()
    }

    #[test]
    fn text_format_is_not_structured() {
        assert_eq!(
            structured_format("\nQuery Text: select 1\nResult  (cost=0.00..0.01 rows=1 width=4)"),
            None
        );
    }

    #[test]
    fn json_plan_strings_are_masked_and_names_and_numbers_kept() {
        let plan = "\n{\n  \"Query Text\": \"SELECT * FROM t WHERE v = 918273645 AND n <> 'sec\\\"ret'\",\n  \"Plan\": {\n    \"Node Type\": \"Seq Scan\",\n    \"Relation Name\": \"t1\",\n    \"Total Cost\": 409.06,\n    \"Output\": [\"id\", \"('lit'::text)\"],\n    \"Filter\": \"(v = 918273645)\"\n  }\n}";
        let m = mask(plan);
        assert!(
            !m.contains("918273645") && !m.contains("sec") && !m.contains("lit"),
            "{m}"
        );
        assert!(
            m.contains("\"Relation Name\": \"t1\"") && m.contains("409.06"),
            "{m}"
        );
        assert!(m.contains("\"Filter\": \"(v = ?)\""), "{m}");
        let v: serde_json::Value = serde_json::from_str(&m).expect("still JSON");
        assert_eq!(v["Plan"]["Output"][1], "(?::text)");
    }

    #[test]
    fn yaml_plan_strings_are_masked() {
        let plan = "\nQuery Text: \"SELECT 1 WHERE v = 918273645\"\nPlan: \n  Node Type: \"Seq Scan\"\n  Relation Name: \"t2\"\n  Output: \n    - \"'abc'::text\"\n  Filter: \"(v = 918273645)\"\n  Total Cost: 12.50";
        let m = mask(plan);
        assert!(!m.contains("918273645") && !m.contains("abc"), "{m}");
        assert!(
            m.contains("Relation Name: \"t2\"") && m.contains("12.50"),
            "{m}"
        );
    }

    #[test]
    fn xml_plan_texts_are_masked_and_numbers_kept() {
        let plan = "\n<explain xmlns=\"http://www.postgresql.org/2009/explain\">\n  <Query-Text>SELECT 1 WHERE n &lt;&gt; 'x9' AND v = 918273645</Query-Text>\n  <Plan>\n    <Node-Type>Seq Scan</Node-Type>\n    <Relation-Name>t3</Relation-Name>\n    <Total-Cost>409.06</Total-Cost>\n    <Output>\n      <Item>918273645</Item>\n    </Output>\n    <Filter>(v = 918273645)</Filter>\n  </Plan>\n</explain>";
        let m = mask(plan);
        assert!(!m.contains("918273645") && !m.contains("x9"), "{m}");
        assert!(
            m.contains("<Relation-Name>t3</Relation-Name>") && m.contains("409.06"),
            "{m}"
        );
        assert!(m.contains("&lt;&gt;"), "{m}");
    }

    #[test]
    fn a_cut_json_string_is_masked_whole() {
        let m = mask("{\"Query Text\": \"SELECT 'abc");
        assert!(!m.contains("abc"), "{m}");
    }

    #[test]
    fn tree_masking_reaches_lists() {
        let mut v = serde_json::json!({"Plan": {"Node Type": "Seq Scan 1", "Output": ["'s3cret'::text", "42"], "Filter": "(v = 7)"}});
        mask_plan_tree(
            &mut v,
            ObfuscateOptions::default(),
            &mut PrivacyCounts::default(),
        );
        assert_eq!(v["Plan"]["Output"], serde_json::json!(["?::text", "?"]));
        assert_eq!(v["Plan"]["Filter"], "(v = ?)");
        assert_eq!(v["Plan"]["Node Type"], "Seq Scan 1");
    }
}
