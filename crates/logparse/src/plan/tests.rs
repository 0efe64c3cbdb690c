//! Plan parsing on real auto_explain output of PostgreSQL 15 (`tests/fixtures/auto_explain`).

use serde_json::Value;

use super::{node_types, parse, plan_id};

/// The plans of the fixture's jsonlog, in order: (format, plan tree), for the two test statements.
fn fixture_plans() -> Vec<(&'static str, Value)> {
    let text = include_str!("../../tests/fixtures/auto_explain/pg15.json");
    let mut out = Vec::new();
    for line in text.lines() {
        let e: Value = serde_json::from_str(line).expect("jsonlog line");
        let m = e["message"].as_str().unwrap_or("");
        let Some((_, plan)) = m.split_once("  plan:\n") else {
            continue;
        };
        if !plan.contains("918273645") && !plan.contains("zz9") {
            continue;
        }
        let format = match plan.trim_start().as_bytes().first() {
            Some(b'{') => "json",
            Some(b'<') => "xml",
            _ if plan.starts_with("Query Text: \"") => "yaml",
            _ => "text",
        };
        if let Some(tree) = parse(plan) {
            out.push((format, tree));
        }
    }
    out
}

#[test]
fn text_and_json_plans_parse_to_the_same_shape_and_plan_id() {
    let plans = fixture_plans();
    let text: Vec<&Value> = plans
        .iter()
        .filter(|p| p.0 == "text")
        .map(|p| &p.1)
        .collect();
    let json: Vec<&Value> = plans
        .iter()
        .filter(|p| p.0 == "json")
        .map(|p| &p.1)
        .collect();
    // 2 statements x analyze off/on x before/after the index.
    assert_eq!(text.len(), 8);
    assert_eq!(json.len(), 8);
    for (t, j) in text.iter().zip(&json) {
        assert_eq!(node_types(t), node_types(j), "{t:#}\n{j:#}");
        assert_eq!(plan_id(t), plan_id(j), "{t}\n{j}");
        for key in [
            "Relation Name",
            "Schema",
            "Alias",
            "Join Type",
            "Strategy",
            "Sort Key",
        ] {
            assert_eq!(find(t, key), find(j, key), "{key}: {t:#}\n{j:#}");
        }
        // The literals differ ('secret-text', 'secret-json'), the rest is equal.
        for key in ["Query Text", "Filter", "Hash Cond", "Output"] {
            let masked = |v: &Value| {
                find(v, key).map(|x| match x {
                    Value::String(s) => pga_privacy::obfuscate(&s),
                    other => pga_privacy::obfuscate(&other.to_string().replace('"', " ")),
                })
            };
            assert_eq!(masked(t), masked(j), "{key}");
        }
    }
}

#[test]
fn the_index_changes_the_plan_id_and_analyze_does_not() {
    let plans = fixture_plans();
    let count: Vec<&Value> = plans
        .iter()
        .filter(|p| p.0 == "text" && p.1["Query Text"].as_str().unwrap_or("").contains("count"))
        .map(|p| &p.1)
        .collect();
    assert_eq!(count.len(), 4, "analyze off/on, before/after");
    assert_eq!(node_types(count[0]), ["Aggregate", "Seq Scan"]);
    assert_eq!(
        node_types(count[2]),
        ["Aggregate", "Bitmap Heap Scan", "Bitmap Index Scan"]
    );
    assert_eq!(find(count[2], "Index Name"), Some(Value::from("t_v")));
    assert_eq!(
        plan_id(count[0]),
        plan_id(count[1]),
        "log_analyze on must not change it"
    );
    assert_eq!(plan_id(count[2]), plan_id(count[3]));
    assert_ne!(plan_id(count[0]), plan_id(count[2]));
}

#[test]
fn analyze_figures_and_buffers_are_read_from_text() {
    let plans = fixture_plans();
    let (_, analyzed) = plans
        .iter()
        .filter(|p| p.0 == "text")
        .nth(2)
        .expect("an analyzed text plan");
    let root = &analyzed["Plan"];
    assert_eq!(root["Node Type"], "Aggregate");
    assert_eq!(root["Actual Rows"], 1);
    assert_eq!(root["Actual Loops"], 1);
    assert!(root["Actual Total Time"].is_number());
    assert!(
        root["Shared Hit Blocks"].as_i64().is_some_and(|n| n > 0),
        "{root:#}"
    );
    assert_eq!(root["Output"], serde_json::json!(["count(*)"]));
    let scan = &root["Plans"][0];
    assert_eq!(scan["Parent Relationship"], "Outer");
    assert_eq!(scan["Rows Removed by Filter"], 20000);
}

#[test]
fn join_nodes_subplans_and_modifiers_follow_explain_json() {
    let text = "Query Text: select\n  1\nInsert on public.t  (cost=0.00..1.00 rows=0 width=0)\n  InitPlan 1 (returns $0)\n    ->  Result  (cost=0.00..0.01 rows=1 width=4)\n  ->  Hash Right Anti Join  (cost=1.00..2.00 rows=1 width=4)\n        Hash Cond: (a.id = b.id)\n        ->  Index Scan Backward using t_pkey on public.t a  (cost=0.1..1 rows=1 width=4) (never executed)\n        ->  Hash  (cost=0.5..0.5 rows=1 width=4)\n              Buckets: 1024  Batches: 1  Memory Usage: 9kB\n              ->  Parallel Seq Scan on t b  (cost=0.00..0.50 rows=1 width=4)\nQuery Identifier: -42";
    let v = parse(text).expect("plan");
    assert_eq!(v["Query Text"], "select\n  1");
    assert_eq!(v["Query Identifier"], -42);
    let root = &v["Plan"];
    assert_eq!(root["Node Type"], "ModifyTable");
    assert_eq!(root["Operation"], "Insert");
    assert_eq!(root["Plans"][0]["Parent Relationship"], "InitPlan");
    assert_eq!(root["Plans"][0]["Subplan Name"], "InitPlan 1 (returns $0)");
    let join = &root["Plans"][1];
    assert_eq!(join["Node Type"], "Hash Join");
    assert_eq!(join["Join Type"], "Right Anti");
    assert_eq!(join["Parent Relationship"], "Outer");
    let scan = &join["Plans"][0];
    assert_eq!(scan["Index Name"], "t_pkey");
    assert_eq!(scan["Scan Direction"], "Backward");
    assert_eq!(scan["Alias"], "a");
    assert_eq!(scan["Actual Loops"], 0);
    let hash = &join["Plans"][1];
    assert_eq!(hash["Parent Relationship"], "Inner");
    assert_eq!(hash["Hash Buckets"], 1024);
    assert_eq!(hash["Plans"][0]["Parallel Aware"], true);
    assert_eq!(hash["Plans"][0]["Relation Name"], "t");
}

/// The first value of `key` in the tree, depth first.
fn find(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .cloned()
            .or_else(|| m.values().find_map(|c| find(c, key))),
        Value::Array(items) => items.iter().find_map(|c| find(c, key)),
        _ => None,
    }
}

#[test]
fn a_generic_plan_and_a_custom_plan_of_one_shape_share_the_plan_id() {
    let custom =
        parse("Query Text: x\nSeq Scan on t  (cost=0.00..1.00 rows=1 width=4)\n  Filter: (v = 42)")
            .unwrap();
    let generic =
        parse("Query Text: x\nSeq Scan on t  (cost=0.00..9.00 rows=5 width=4)\n  Filter: (v = $1)")
            .unwrap();
    let other =
        parse("Query Text: x\nSeq Scan on t  (cost=0.00..1.00 rows=1 width=4)\n  Filter: (w = 42)")
            .unwrap();
    assert_eq!(plan_id(&custom), plan_id(&generic));
    assert_ne!(plan_id(&custom), plan_id(&other));
}

/// A text-format plan as syslog carries it (one syslog line per message line, continuation lines
/// numbered `[n-2]`, `[n-3]`, ..., the stderr tab written `#011`) gives the tree and plan_id the
/// jsonlog entry of the same plan gives.
#[test]
fn syslog_plans_parse_like_jsonlog() {
    use crate::log_format::LogFormat;
    use crate::parse::{End, Frame, Parser};

    let text = include_str!("../../tests/fixtures/auto_explain/pg15.json");
    let mut checked = 0;
    for line in text.lines() {
        let e: Value = serde_json::from_str(line).expect("jsonlog line");
        let m = e["message"].as_str().unwrap_or("");
        let Some((_, plan)) = m.split_once("  plan:\n") else {
            continue;
        };
        if !plan.starts_with("Query Text: ") || plan.starts_with("Query Text: \"") {
            continue;
        }
        let mut log = String::new();
        for (i, l) in m.lines().enumerate() {
            let body = if i == 0 {
                format!("LOG:  {l}")
            } else {
                format!("#011{l}")
            };
            log.push_str(&format!(
                "Dec  6 14:38:21 h postgres[77]: [5-{}] {body}\n",
                i + 1
            ));
        }
        let mut parser = Parser::new(LogFormat::Syslog, "", 1 << 20);
        let bytes = log.as_bytes();
        let Frame::Entry(n) = parser.frame(bytes, End::Eof) else {
            panic!("no entry in {log}");
        };
        assert_eq!(n, bytes.len(), "one entry: {log}");
        let entry = parser.build(&bytes[..n]);
        let (_, from_syslog) = entry
            .message
            .split_once("  plan:\n")
            .expect("a plan message");
        let tree = parse(from_syslog).expect("a tree");
        assert_eq!(plan_id(&tree), plan_id(&parse(plan).unwrap()), "{log}");
        assert_eq!(tree["Query Text"], parse(plan).unwrap()["Query Text"]);
        checked += 1;
    }
    assert!(checked >= 8, "{checked} text plans");
}

#[test]
fn yaml_plans_parse_to_the_json_plans_shape_and_plan_id() {
    let plans = fixture_plans();
    let yaml: Vec<&Value> = plans
        .iter()
        .filter(|p| p.0 == "yaml")
        .map(|p| &p.1)
        .collect();
    let json: Vec<&Value> = plans
        .iter()
        .filter(|p| p.0 == "json")
        .map(|p| &p.1)
        .collect();
    assert_eq!(yaml.len(), 8);
    for (y, j) in yaml.iter().zip(&json) {
        assert_eq!(node_types(y), node_types(j), "{y:#}");
        assert_eq!(plan_id(y), plan_id(j), "{y}\n{j}");
        assert_eq!(y["Plan"]["Total Cost"], j["Plan"]["Total Cost"]);
        assert!(y["Plan"]["Output"].is_array(), "{y:#}");
    }
}

#[test]
fn xml_plans_parse_to_the_json_plans_shape_and_plan_id() {
    let plans = fixture_plans();
    let xml: Vec<&Value> = plans
        .iter()
        .filter(|p| p.0 == "xml")
        .map(|p| &p.1)
        .collect();
    let json: Vec<&Value> = plans
        .iter()
        .filter(|p| p.0 == "json")
        .map(|p| &p.1)
        .collect();
    assert_eq!(xml.len(), 8);
    for (x, j) in xml.iter().zip(&json) {
        assert_eq!(node_types(x), node_types(j), "{x:#}");
        assert_eq!(plan_id(x), plan_id(j), "{x}\n{j}");
        assert_eq!(x["Plan"]["Total Cost"], j["Plan"]["Total Cost"]);
        assert!(x["Plan"]["Output"].is_array(), "{x:#}");
    }
}
