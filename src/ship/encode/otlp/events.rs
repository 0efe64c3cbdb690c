//! Events of the `otlp` protocol whose name depends on the record (docs/otlp.md, "Settings" and
//! "Plans"): a `pg_settings` record is `postgres_agent.setting_change` or, in the snapshot taken
//! when the agent starts, `postgres_agent.settings_snapshot` (one event per setting); a `pg_plans`
//! record is `postgres_agent.plan` (the plan tree as body when the record carries it) or
//! `postgres_agent.plan_change`.
//!
//! Plan trees and texts are masked by the plans collector (docs/plans.md); nothing here reads SQL.

use serde_json::{Map, Value};

use super::proto::{AnyValue, KeyValue};
use super::resource::{any, attr};
use super::Mapping;

/// What a record of a Settings or Plans batch makes of its event (`logs::event`, which writes the
/// database attributes and the record as body).
pub struct Shape {
    pub name: &'static str,
    /// Attributes besides the event's own.
    pub attributes: Vec<KeyValue>,
    /// The body instead of the record (a plan's tree).
    pub body: Option<AnyValue>,
}

/// The event shape of one record of a Settings or Plans batch.
pub fn shape(mapping: Mapping, map: &Map<String, Value>) -> Shape {
    match mapping {
        Mapping::Settings => setting(map),
        _ => plan(map),
    }
}

fn setting(map: &Map<String, Value>) -> Shape {
    let name = match map.get("change").and_then(Value::as_str) {
        Some("snapshot") => "postgres_agent.settings_snapshot",
        _ => "postgres_agent.setting_change",
    };
    let attributes = [
        attr("postgresql.setting.name", map.get("name")),
        attr("postgresql.setting.change", map.get("change")),
        attr(
            "postgresql.setting.pending_restart",
            map.get("pending_restart"),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    Shape {
        name,
        attributes,
        body: None,
    }
}

/// Fields of a plan record sent under their own attribute names.
const PLAN_ATTRS: &[(&str, &str)] = &[
    ("dbname", "db.namespace"),
    ("queryid", "postgresql.queryid"),
    ("plan_id", "postgresql.plan_id"),
    ("previous_plan_id", "postgresql.previous_plan_id"),
];

fn plan(map: &Map<String, Value>) -> Shape {
    let name = match map.get("record_type").and_then(Value::as_str) {
        Some("plan_change") => "postgres_agent.plan_change",
        _ => "postgres_agent.plan",
    };
    let tree = map.get("plan").filter(|p| p.is_object());
    let mut attributes: Vec<KeyValue> = PLAN_ATTRS
        .iter()
        .filter_map(|(field, key)| attr(key, map.get(*field)))
        .chain(attr(
            "db.query.text",
            tree.and_then(|t| t.get("Query Text")),
        ))
        .collect();
    let Some(tree) = tree else {
        return Shape {
            name,
            attributes,
            body: None,
        };
    };
    // The tree is the body; the record's other fields go as attributes (`fingerprint` is one of
    // the event's own).
    for (field, value) in map {
        let named = PLAN_ATTRS.iter().any(|a| a.0 == field) || field == "fingerprint";
        if field == "plan" || named || value.is_object() || value.is_array() {
            continue;
        }
        if let Some(a) = attr(&format!("postgres_agent.plan.{field}"), Some(value)) {
            attributes.push(a);
        }
    }
    Shape {
        name,
        attributes,
        body: any(tree),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::encode::otlp::proto::{any_value, KeyValue};
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn has(attrs: &[KeyValue], key: &str) -> bool {
        attrs.iter().any(|a| a.key == key)
    }

    #[test]
    fn settings_are_changes_or_snapshot_events_named_by_setting() {
        let change = obj(
            json!({"name": "work_mem", "setting": "8MB", "previous_setting": "4MB",
            "change": "changed", "pending_restart": false}),
        );
        let r = shape(Mapping::Settings, &change);
        assert_eq!(r.name, "postgres_agent.setting_change");
        assert!(has(&r.attributes, "postgresql.setting.name"));
        let snap = obj(json!({"name": "work_mem", "setting": "4MB", "change": "snapshot"}));
        let r = shape(Mapping::Settings, &snap);
        assert_eq!(r.name, "postgres_agent.settings_snapshot");
    }

    #[test]
    fn a_plan_sends_its_tree_as_body_and_its_masked_text_as_db_query_text() {
        let rec = obj(
            json!({"record_type": "plan", "fingerprint": "ab12", "queryid": "42",
            "plan_id": "p1", "dbname": "shop", "times_seen": 3, "current": true,
            "plan": {"Query Text": "SELECT * FROM t WHERE id = ?",
                     "Plan": {"Node Type": "Index Scan"}}}),
        );
        let r = shape(Mapping::Plans, &rec);
        assert_eq!(r.name, "postgres_agent.plan");
        let Some(any_value::Value::KvlistValue(body)) = r.body.and_then(|b| b.value) else {
            panic!("the tree as a map body");
        };
        assert!(body.values.iter().any(|kv| kv.key == "Plan"));
        for k in [
            "db.namespace",
            "db.query.text",
            "postgresql.queryid",
            "postgresql.plan_id",
            "postgres_agent.plan.times_seen",
        ] {
            assert!(has(&r.attributes, k), "{k}: {:?}", r.attributes);
        }
        let text = r
            .attributes
            .iter()
            .find(|a| a.key == "db.query.text")
            .unwrap();
        assert!(format!("{text:?}").contains("id = ?"));

        let change = obj(json!({"record_type": "plan_change", "fingerprint": "ab12",
            "plan_id": "p2", "previous_plan_id": "p1", "changed_at": "2026-12-06T10:00:00Z"}));
        let r = shape(Mapping::Plans, &change);
        assert_eq!(r.name, "postgres_agent.plan_change");
        assert!(has(&r.attributes, "postgresql.previous_plan_id"));
        assert!(r.body.is_none(), "no tree: the record stays the body");
    }
}
