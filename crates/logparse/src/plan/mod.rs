//! auto_explain plans: the plan text of a `duration: ... ms  plan:` message parsed into one tree
//! with EXPLAIN's JSON keys whatever format the server wrote ([`parse`]), and the plan's identity
//! ([`plan_id`]): a hash of its shape, blind to costs, row counts and timings.
//!
//! Formats: JSON (read as it is), text (auto_explain's default, [`text`]), YAML ([`yaml`]) and XML
//! ([`xml`]), all into the same tree.

pub mod text;
pub mod xml;
pub mod yaml;

use serde_json::Value;
use xxhash_rust::xxh3::Xxh3;

/// The plan in the text after `plan:\n` as `{"Query Text", "Plan": {...}, ...}`; `None` for text
/// it cannot read.
pub fn parse(plan: &str) -> Option<Value> {
    let t = plan.trim_start();
    if t.starts_with('{') {
        let v: Value = serde_json::from_str(t.trim_end()).ok()?;
        return v.get("Plan").is_some().then_some(v);
    }
    if t.starts_with('<') {
        return xml::parse(plan);
    }
    if t.starts_with("Query Text: \"") || t.starts_with("Plan:") {
        return yaml::parse(plan);
    }
    text::parse(plan)
}

/// The keys of a node that make its shape: what it does and on what. Costs, rows, times, buffers,
/// output lists, workers and memory are left out; conditions are in, with their literals and `$n`
/// parameters masked, so `v = 1`, `v = 2` and `v = $1` (a generic plan) give one plan.
const SHAPE_KEYS: &[&str] = &[
    "Node Type",
    "Strategy",
    "Partial Mode",
    "Operation",
    "Join Type",
    "Relation Name",
    "Index Name",
    "Scan Direction",
    "CTE Name",
    "Function Name",
    "Parallel Aware",
    "Command",
];

/// Condition keys, hashed with their literals and `$n` parameters masked.
const CONDITION_KEYS: &[&str] = &[
    "Index Cond",
    "Recheck Cond",
    "Filter",
    "Join Filter",
    "Hash Cond",
    "Merge Cond",
    "One-Time Filter",
    "TID Cond",
];

/// The identity of a plan's shape: 16 hex digits of XXH3-64 over the node tree (node types,
/// relations, indexes, join and scan kinds, conditions with literals masked; children in order).
/// The same plan logged in text or JSON format gets the same `plan_id`. `plan` is the tree of
/// [`parse`] (with or without the `{"Plan": ...}` wrapper).
pub fn plan_id(plan: &Value) -> Option<String> {
    let root = plan.get("Plan").unwrap_or(plan);
    root.get("Node Type")?;
    let mut h = Xxh3::new();
    hash_node(root, &mut h);
    Some(format!("{:016x}", h.digest()))
}

fn hash_node(node: &Value, h: &mut Xxh3) {
    h.update(b"(");
    for key in SHAPE_KEYS.iter().chain(CONDITION_KEYS) {
        let Some(v) = node.get(*key) else { continue };
        // What the text format leaves unsaid, JSON writes as its default: hash neither.
        if *v == Value::Bool(false) || (*key == "Partial Mode" && v == "Simple") {
            continue;
        }
        h.update(key.as_bytes());
        h.update(b"=");
        match v {
            Value::String(s) if CONDITION_KEYS.contains(key) => {
                h.update(without_params(&pga_privacy::obfuscate_cow(s)).as_bytes())
            }
            Value::String(s) => h.update(s.as_bytes()),
            other => h.update(other.to_string().as_bytes()),
        }
        h.update(b";");
    }
    if let Some(Value::Array(children)) = node.get("Plans") {
        for c in children {
            hash_node(c, h);
        }
    }
    h.update(b")");
}

/// `$n` parameters as `?`, like masked literals: a generic plan (`v = $1`, EXPLAIN on demand) and a
/// custom plan of the same shape (`v = 42`, masked `v = ?`) hash alike.
fn without_params(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('$') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The node types of a plan, depth first (for tests and summaries: "Seq Scan", "Bitmap Heap Scan").
pub fn node_types(plan: &Value) -> Vec<String> {
    fn walk(n: &Value, out: &mut Vec<String>) {
        if let Some(t) = n.get("Node Type").and_then(Value::as_str) {
            out.push(t.to_string());
        }
        if let Some(Value::Array(children)) = n.get("Plans") {
            children.iter().for_each(|c| walk(c, out));
        }
    }
    let mut out = Vec::new();
    walk(plan.get("Plan").unwrap_or(plan), &mut out);
    out
}

#[cfg(test)]
mod tests;
