//! auto_explain's text format (its default) parsed into the tree EXPLAIN's JSON format writes: the
//! same keys ("Node Type", "Relation Name", "Index Name", "Plans", "Startup Cost", "Actual Rows",
//! "Shared Hit Blocks", ...), so everything after the parser sees one shape whatever the format.
//!
//! Hand-written: no crate parses EXPLAIN's text output. The text is read by indentation, as
//! `explain.c` writes it: a node line (`->  ` before every node but the root) with its costs and
//! actual figures in parentheses, its properties two columns right of the node's name, its children
//! as `->` lines two columns right of that, and `SubPlan n` / `InitPlan n` / `CTE name` labels before
//! the children they name. Lines it does not recognise become string properties (kept, masked by
//! the privacy step like any SQL-bearing value); nothing fails.

use serde_json::{Map, Number, Value};

/// The plan in `text` (what follows `plan:\n`), as `{"Query Text", "Plan", ...}`; `None` when no
/// node line is found.
pub fn parse(text: &str) -> Option<Value> {
    let mut top = Map::new();
    let mut query: Option<String> = None;
    let mut in_query = false;
    // (text column, node, pending subplan label with its indentation)
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Map<String, Value>> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        if root.is_none() && stack.is_empty() {
            if let Some(q) = body.strip_prefix("Query Text: ").filter(|_| indent == 0) {
                query = Some(q.to_string());
                in_query = true;
                continue;
            }
            if in_query && !is_node_line(body) {
                if let Some(q) = query.as_mut() {
                    q.push('\n');
                    q.push_str(raw);
                }
                continue;
            }
        }
        in_query = false;
        if let Some(node) = body.strip_prefix("->") {
            let col = indent + 2 + (node.len() - node.trim_start().len());
            close_frames(&mut stack, indent, &mut root);
            let mut frame = Frame::node(col, node.trim_start());
            if let Some(parent) = stack.last_mut() {
                frame.relationship = Some(parent.child_relationship(indent));
            }
            stack.push(frame);
            continue;
        }
        if stack.is_empty() && root.is_none() && is_node_line(body) {
            stack.push(Frame::node(indent, body));
            continue;
        }
        close_frames(&mut stack, indent, &mut root);
        match stack.last_mut() {
            Some(f) if is_subplan_label(body) => f.label = Some((body.to_string(), indent)),
            Some(f) => property(&mut f.map, body),
            None => property(&mut top, body),
        }
    }
    close_frames(&mut stack, 0, &mut root);
    let root = root?;
    let mut out = Map::new();
    if let Some(q) = query {
        out.insert("Query Text".into(), Value::String(q));
    }
    out.insert("Plan".into(), Value::Object(root));
    out.extend(top);
    Some(Value::Object(out))
}

struct Frame {
    col: usize,
    map: Map<String, Value>,
    children: Vec<Value>,
    label: Option<(String, usize)>,
    relationship: Option<(String, Option<String>)>,
}

impl Frame {
    fn node(col: usize, line: &str) -> Frame {
        Frame {
            col,
            map: node_line(line),
            children: Vec::new(),
            label: None,
            relationship: None,
        }
    }

    /// "Parent Relationship" (and "Subplan Name") of the next child whose `->` is at `indent`.
    fn child_relationship(&self, indent: usize) -> (String, Option<String>) {
        if let Some((label, at)) = &self.label {
            if *at < indent {
                let kind = label.split_whitespace().next().unwrap_or("SubPlan");
                let kind = if kind == "CTE" { "InitPlan" } else { kind };
                return (kind.to_string(), Some(label.clone()));
            }
        }
        let node = self
            .map
            .get("Node Type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let plain = self
            .children
            .iter()
            .filter(|c| c.get("Subplan Name").is_none())
            .count();
        let kind = match node {
            "Append" | "Merge Append" | "BitmapAnd" | "BitmapOr" => "Member",
            "Subquery Scan" => "Subquery",
            _ if plain == 0 => "Outer",
            _ => "Inner",
        };
        (kind.to_string(), None)
    }

    fn finish(mut self) -> Value {
        if let Some((rel, name)) = self.relationship.take() {
            // Insert after "Node Type", as EXPLAIN orders them (Map keeps insertion order only with
            // serde_json's preserve_order; the order does not matter to readers).
            self.map
                .insert("Parent Relationship".into(), Value::String(rel));
            if let Some(name) = name {
                self.map.insert("Subplan Name".into(), Value::String(name));
            }
        }
        if !self.children.is_empty() {
            self.map.insert("Plans".into(), Value::Array(self.children));
        }
        Value::Object(self.map)
    }
}

/// Pops every frame whose text column is at or right of `indent` (a line at `indent` belongs to a
/// node left of it), attaching each to its parent, the last one as the root.
fn close_frames(stack: &mut Vec<Frame>, indent: usize, root: &mut Option<Map<String, Value>>) {
    while stack.last().is_some_and(|f| f.col >= indent) {
        let Some(frame) = stack.pop() else { break };
        let v = frame.finish();
        match stack.last_mut() {
            Some(parent) => parent.children.push(v),
            None => {
                if let Value::Object(m) = v {
                    *root = Some(m);
                }
            }
        }
    }
}

fn is_node_line(body: &str) -> bool {
    body.contains("  (cost=") || body.contains("  (actual ") || body.ends_with("(never executed)")
}

fn is_subplan_label(body: &str) -> bool {
    (body.starts_with("SubPlan ") || body.starts_with("InitPlan ") || body.starts_with("CTE "))
        && !body.contains(": ")
}

/// A node line: its description (`Hash Left Join`, `Index Scan Backward using i on s.t a`) and the
/// figures in parentheses.
fn node_line(line: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let (desc, figures) = match line.find("  (") {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, ""),
    };
    describe(desc.trim(), &mut m);
    for group in figures.split('(').skip(1) {
        let group = group.trim_end().trim_end_matches(')');
        if group == "never executed" {
            put(&mut m, "Actual Loops", "0");
            continue;
        }
        let actual = group.starts_with("actual");
        for part in group.split_whitespace() {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let range = v.split_once("..");
            match (k, actual, range) {
                ("cost", _, Some((a, b))) => {
                    put(&mut m, "Startup Cost", a);
                    put(&mut m, "Total Cost", b);
                }
                ("time", _, Some((a, b))) => {
                    put(&mut m, "Actual Startup Time", a);
                    put(&mut m, "Actual Total Time", b);
                }
                ("rows", false, _) => put(&mut m, "Plan Rows", v),
                ("width", _, _) => put(&mut m, "Plan Width", v),
                ("rows", true, _) => put(&mut m, "Actual Rows", v),
                ("loops", _, _) => put(&mut m, "Actual Loops", v),
                _ => {}
            }
        }
    }
    m
}

/// Node type and what it works on, from the description explain.c writes (`ExplainNode`).
fn describe(desc: &str, m: &mut Map<String, Value>) {
    let mut d = desc;
    for (prefix, key) in [("Parallel ", "Parallel Aware"), ("Async ", "Async Capable")] {
        if let Some(rest) = d.strip_prefix(prefix) {
            m.insert(key.into(), Value::Bool(true));
            d = rest;
        }
    }
    for mode in ["Partial", "Finalize"] {
        if let Some(rest) = d.strip_prefix(mode).and_then(|r| r.strip_prefix(' ')) {
            m.insert("Partial Mode".into(), Value::String(mode.into()));
            d = rest;
        }
    }
    let (head, index, target) = match (d.split_once(" using "), d.split_once(" on ")) {
        (Some((head, rest)), _) => match rest.split_once(" on ") {
            Some((index, target)) => (head, Some(index), Some(target)),
            None => (head, Some(rest), None),
        },
        (None, Some((head, target))) => (head, None, Some(target)),
        (None, None) => (d, None, None),
    };
    let mut head = head.to_string();
    if let Some(h) = head.strip_suffix(" Backward") {
        m.insert("Scan Direction".into(), Value::String("Backward".into()));
        head = h.to_string();
    }
    let node = node_type(&head, m);
    m.insert("Node Type".into(), Value::String(node.clone()));
    // Bitmap Index Scan names its index with `on`.
    let (index, target) = if node == "Bitmap Index Scan" {
        (target, None)
    } else {
        (index, target)
    };
    if let Some(i) = index {
        m.insert("Index Name".into(), Value::String(unquote(i.trim())));
    }
    if let Some(t) = target {
        let mut words = t.split_whitespace();
        let name = words.next().unwrap_or("");
        let (schema, rel) = match name.rsplit_once('.') {
            Some((s, r)) if !r.is_empty() => (Some(s), r),
            _ => (None, name),
        };
        let key = match node.as_str() {
            "Function Scan" => "Function Name",
            "CTE Scan" => "CTE Name",
            "Subquery Scan" | "Values Scan" | "WorkTable Scan" => "Alias",
            _ => "Relation Name",
        };
        m.insert(key.into(), Value::String(unquote(rel)));
        if let Some(s) = schema {
            m.insert("Schema".into(), Value::String(unquote(s)));
        }
        // EXPLAIN's JSON always writes the alias; the text only when it differs from the name.
        let alias = words.next().map_or_else(|| unquote(rel), unquote);
        m.insert("Alias".into(), Value::String(alias));
    }
}

/// EXPLAIN's JSON "Node Type" for a text node name, with the details the text folds into it.
fn node_type(head: &str, m: &mut Map<String, Value>) -> String {
    let s = |v: &str| Value::String(v.to_string());
    match head {
        "Aggregate" => {
            m.insert("Strategy".into(), s("Plain"));
            return "Aggregate".into();
        }
        "HashAggregate" | "GroupAggregate" | "MixedAggregate" => {
            let strategy = match head {
                "HashAggregate" => "Hashed",
                "GroupAggregate" => "Sorted",
                _ => "Mixed",
            };
            m.insert("Strategy".into(), s(strategy));
            return "Aggregate".into();
        }
        "Insert" | "Update" | "Delete" | "Merge" => {
            m.insert("Operation".into(), s(head));
            return "ModifyTable".into();
        }
        _ => {}
    }
    for setop in ["SetOp", "HashSetOp"] {
        if let Some(cmd) = head.strip_prefix(setop).and_then(|r| r.strip_prefix(' ')) {
            let strategy = if setop == "HashSetOp" {
                "Hashed"
            } else {
                "Sorted"
            };
            m.insert("Strategy".into(), s(strategy));
            m.insert("Command".into(), s(cmd));
            return "SetOp".into();
        }
    }
    for join in ["Hash", "Merge", "Nested Loop"] {
        let Some(rest) = head.strip_prefix(join) else {
            continue;
        };
        let kind = rest.trim().strip_suffix("Join").unwrap_or(rest).trim();
        let node = if join == "Nested Loop" {
            "Nested Loop".to_string()
        } else if rest.trim().ends_with("Join") {
            format!("{join} Join")
        } else {
            // `Hash` (the node below a Hash Join), `Merge Append`.
            return head.to_string();
        };
        let kind = if kind.is_empty() { "Inner" } else { kind };
        m.insert("Join Type".into(), s(kind));
        return node;
    }
    head.to_string()
}

fn unquote(s: &str) -> String {
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .map_or_else(|| s.to_string(), |t| t.replace("\"\"", "\""))
}

/// A number as EXPLAIN's JSON writes it (integers without a fraction).
fn number(v: &str) -> Option<Value> {
    if let Ok(i) = v.parse::<i64>() {
        return Some(Value::Number(i.into()));
    }
    v.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
}

fn put(m: &mut Map<String, Value>, key: &str, v: &str) {
    if let Some(n) = number(v) {
        m.insert(key.into(), n);
    }
}

/// Keys whose text value is a comma-separated list of expressions in EXPLAIN's JSON.
const LIST_KEYS: &[&str] = &[
    "Output",
    "Sort Key",
    "Presorted Key",
    "Group Key",
    "Hash Key",
    "Cache Key",
    "Conflict Arbiter Indexes",
];

/// A `Key: value` line of a node (or of the plan, at the top level), in EXPLAIN's JSON keys.
fn property(m: &mut Map<String, Value>, body: &str) {
    let Some((key, value)) = body.split_once(": ") else {
        // `Sort Method: ...` lines always have a colon; a bare line is kept as it is.
        extend_other(m, body);
        return;
    };
    match key {
        "Buffers" | "Planning Buffers" => buffers(m, value),
        "I/O Timings" => {
            for (k, v) in pairs(value) {
                let name = match k.as_str() {
                    "read" | "shared read" => "I/O Read Time",
                    "write" | "shared write" => "I/O Write Time",
                    "temp read" => "Temp I/O Read Time",
                    "temp write" => "Temp I/O Write Time",
                    _ => continue,
                };
                put(m, name, &v);
            }
        }
        "Heap Blocks" => {
            for (k, v) in pairs(value) {
                let name = match k.as_str() {
                    "exact" => "Exact Heap Blocks",
                    "lossy" => "Lossy Heap Blocks",
                    _ => continue,
                };
                put(m, name, &v);
            }
        }
        // `Sort Method: quicksort  Memory: 25kB`, `Buckets: 1024  Batches: 1  Memory Usage: 9kB`
        _ if value.contains("  ") && (key == "Sort Method" || key == "Buckets") => {
            for (i, item) in body.split("  ").enumerate() {
                let Some((k, v)) = item.split_once(": ") else {
                    continue;
                };
                let v = v.trim_end_matches("kB");
                let k = match (key, i, k) {
                    ("Sort Method", 0, _) => {
                        m.insert("Sort Method".into(), Value::String(v.into()));
                        continue;
                    }
                    ("Sort Method", _, t) => {
                        m.insert("Sort Space Type".into(), Value::String(t.into()));
                        "Sort Space Used"
                    }
                    (_, _, "Buckets") => "Hash Buckets",
                    (_, _, "Batches") => "Hash Batches",
                    (_, _, "Memory Usage") => "Peak Memory Usage",
                    (_, _, other) => other,
                };
                put(m, k, v);
            }
        }
        _ if LIST_KEYS.contains(&key) => {
            let items = split_list(value).into_iter().map(Value::String).collect();
            m.insert(key.into(), Value::Array(items));
        }
        _ => {
            let v = number(value).unwrap_or_else(|| Value::String(value.to_string()));
            m.insert(key.into(), v);
        }
    }
}

fn extend_other(m: &mut Map<String, Value>, body: &str) {
    let entry = m.entry("Other").or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = entry {
        items.push(Value::String(body.to_string()));
    }
}

/// `shared hit=1 read=2, local hit=3, temp read=4 written=5` as "Shared Hit Blocks", ...
fn buffers(m: &mut Map<String, Value>, value: &str) {
    for group in value.split(", ") {
        let mut words = group.split_whitespace();
        let Some(scope) = words.next() else { continue };
        let scope = match scope {
            "shared" => "Shared",
            "local" => "Local",
            "temp" => "Temp",
            _ => continue,
        };
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                continue;
            };
            let what = match k {
                "hit" => "Hit",
                "read" => "Read",
                "dirtied" => "Dirtied",
                "written" => "Written",
                _ => continue,
            };
            put(m, &format!("{scope} {what} Blocks"), v);
        }
    }
}

/// `shared read=0.1 write=0.2, temp read=...` or `read=0.1 write=0.2` as ("shared read", "0.1")...
fn pairs(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in value.split(", ") {
        let mut scope = "";
        for w in group.split_whitespace() {
            match w.split_once('=') {
                Some((k, v)) if scope.is_empty() => out.push((k.to_string(), v.to_string())),
                Some((k, v)) => out.push((format!("{scope} {k}"), v.to_string())),
                None => scope = w,
            }
        }
    }
    out
}

/// A comma-separated expression list split at top-level commas (not inside parentheses, brackets
/// or quotes).
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in value.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(value[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim().to_string());
    out
}
