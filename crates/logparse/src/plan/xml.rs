//! auto_explain's XML format parsed into EXPLAIN's JSON tree. EXPLAIN writes a small, regular XML
//! (`explain.c`): one element per key with `-` for spaces (`Node-Type`), text escaped with `&lt;`,
//! `&gt;`, `&amp;`, lists as `<Item>` children (`Output`, `Sort-Key`) or repeated `<Plan>` children
//! (`Plans`), no attributes except the root's namespace. This reads exactly that, not XML in general
//! (no crate needed for it); malformed input ends the tree read so far.

use serde_json::{Map, Value};

/// The plan in `text` as `{"Query Text", "Plan", ...}`; `None` when it has no `Plan`.
pub fn parse(text: &str) -> Option<Value> {
    let start = text.find("<explain")?;
    let open_end = text[start..].find('>')? + start + 1;
    let mut at = open_end;
    let v = children(text, &mut at, "explain")?;
    v.get("Plan").is_some().then_some(v)
}

/// The children of the element `name` (its start tag read, `at` after it) up to its end tag, as an
/// object, an array (children all `Item` or all `Plan`), or the element's text as a scalar.
fn children(text: &str, at: &mut usize, name: &str) -> Option<Value> {
    let mut m = Map::new();
    let mut list: Vec<Value> = Vec::new();
    let mut is_list = false;
    let content_start = *at;
    loop {
        let lt = text[*at..].find('<')? + *at;
        let gt = text[lt..].find('>')? + lt;
        let tag = &text[lt + 1..gt];
        if let Some(end) = tag.strip_prefix('/') {
            if end != name {
                return None;
            }
            let value = if is_list {
                Value::Array(list)
            } else if m.is_empty() {
                scalar(&unescape(&text[content_start..lt]))
            } else {
                Value::Object(m)
            };
            *at = gt + 1;
            return Some(value);
        }
        *at = gt + 1;
        if let Some(empty) = tag.strip_suffix('/') {
            m.insert(empty.trim().replace('-', " "), Value::Null);
            continue;
        }
        let child = children(text, at, tag)?;
        let in_list = tag == "Item" || (tag == "Plan" && name == "Plans");
        if in_list {
            is_list = true;
            list.push(child);
        } else {
            m.insert(tag.replace('-', " "), child);
        }
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn scalar(v: &str) -> Value {
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => serde_json::from_str::<serde_json::Number>(v)
            .map_or_else(|_| Value::String(v.to_string()), Value::Number),
    }
}
