//! auto_explain's YAML format parsed into EXPLAIN's JSON tree. EXPLAIN writes a small, regular
//! subset of YAML (`explain.c`): two-space indentation, `Key: value` pairs, `Key: ` opening a nested
//! mapping or a list, `- ` list items, every string quoted as a JSON string. This reads exactly
//! that subset, not YAML in general (no crate needed for it); anything else ends the value read so
//! far, nothing fails.

use serde_json::{Map, Value};

struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// The plan in `text` as `{"Query Text", "Plan", ...}`; `None` when it has no `Plan`.
pub fn parse(text: &str) -> Option<Value> {
    let lines: Vec<Line<'_>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let body = l.trim_start_matches(' ');
            Line {
                indent: l.len() - body.len(),
                text: body.trim_end(),
            }
        })
        .collect();
    let mut i = 0;
    let indent = lines.first()?.indent;
    let map = mapping(&lines, &mut i, indent, None);
    map.contains_key("Plan").then_some(Value::Object(map))
}

/// The mapping whose keys sit at `indent`; `first` is the text of a `- Key: value` item's first
/// pair (its key at `indent` too).
fn mapping(
    lines: &[Line<'_>],
    i: &mut usize,
    indent: usize,
    first: Option<&str>,
) -> Map<String, Value> {
    let mut m = Map::new();
    let mut pending = first;
    loop {
        let text = match pending.take() {
            Some(t) => t,
            None => match lines.get(*i) {
                Some(l) if l.indent == indent && !l.text.starts_with("- ") => {
                    *i += 1;
                    l.text
                }
                _ => break,
            },
        };
        let Some((key, value)) = text.split_once(':') else {
            break;
        };
        let value = value.trim();
        let v = if value.is_empty() {
            match lines.get(*i) {
                Some(next) if next.text.starts_with("- ") && next.indent >= indent => {
                    Value::Array(list(lines, i, next.indent))
                }
                Some(next) if next.indent > indent => {
                    Value::Object(mapping(lines, i, next.indent, None))
                }
                _ => Value::Null,
            }
        } else {
            scalar(value)
        };
        m.insert(key.trim().to_string(), v);
    }
    m
}

/// The list whose `- ` items sit at `indent`.
fn list(lines: &[Line<'_>], i: &mut usize, indent: usize) -> Vec<Value> {
    let mut items = Vec::new();
    while let Some(l) = lines.get(*i) {
        let Some(item) = l.text.strip_prefix("- ").filter(|_| l.indent == indent) else {
            break;
        };
        *i += 1;
        if item.starts_with('"') || !item.contains(": ") && !item.ends_with(':') {
            items.push(scalar(item));
        } else {
            items.push(Value::Object(mapping(lines, i, indent + 2, Some(item))));
        }
    }
    items
}

fn scalar(v: &str) -> Value {
    if v.starts_with('"') {
        return serde_json::from_str::<String>(v)
            .map_or_else(|_| Value::String(v.into()), Value::String);
    }
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => serde_json::from_str::<serde_json::Number>(v)
            .map_or_else(|_| Value::String(v.into()), Value::Number),
    }
}
