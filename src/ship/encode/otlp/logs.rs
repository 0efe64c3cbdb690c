//! Log records of the `otlp` protocol: server-log entries as log records ([`entry`]) and every
//! other logs-signal batch type as events ([`event`]), each with the OpenTelemetry database
//! attributes the record has (`db.namespace`, `db.query.text`, `db.response.status_code`) and the
//! W3C trace context of its statement when it carried a `traceparent`.
//!
//! The record texts are already masked by the collectors (privacy); nothing here reads SQL.

use serde_json::{Map, Value};

use super::proto::{self, any_value, kv_str, AnyValue, KeyValue, LogRecord};
use super::resource::{any, attr, collected_nanos, hex_id, unix_nanos};
use super::{mapping, Mapping};
use crate::batch::Batch;

/// The log records of one logs-signal batch, in record order; a batch with type-level fields
/// (a spike's trigger, the sampling series) gets one more event, `postgres_agent.<type>`, first.
pub fn records(batch: &Batch) -> Vec<LogRecord> {
    records_as(batch, mapping(batch.kind))
}

/// [`records`] with the mapping given: None is the generic one of a type not in `KINDS`.
fn records_as(batch: &Batch, mapping: Option<Mapping>) -> Vec<LogRecord> {
    let observed = collected_nanos(batch);
    let batch_id = batch.batch_id.to_string();
    let mut out = Vec::with_capacity(batch.data.len() + 1);
    let event_name = match mapping {
        Some(Mapping::ServerLog) => None,
        Some(Mapping::Event(name)) => Some(name.to_string()),
        _ => Some(format!("postgres_agent.{}", batch.kind)),
    };
    if event_name.is_some() {
        if let Some(summary) = summary(batch, observed, &batch_id) {
            out.push(summary);
        }
    }
    for (i, record) in batch.data.iter().enumerate() {
        let Ok(Value::Object(map)) = record.to_value() else {
            tracing::warn!(event = "otlp_record_skipped", batch_id = %batch.batch_id,
                kind = %batch.kind, "a record is not a JSON object; sent as a string body");
            out.push(LogRecord {
                time_unix_nano: observed,
                observed_time_unix_nano: observed,
                body: Some(string(record.json().to_string())),
                event_name: event_name.clone().unwrap_or_default(),
                attributes: vec![kv_str("postgres_agent.batch_id", batch_id.clone())],
                ..LogRecord::default()
            });
            continue;
        };
        let mut rec = match (mapping, &event_name) {
            (Some(m @ (Mapping::Settings | Mapping::Plans)), _) => {
                let shape = super::events::shape(m, &map);
                let mut rec = event(shape.name, &map, observed);
                rec.attributes.extend(shape.attributes);
                if shape.body.is_some() {
                    rec.body = shape.body;
                }
                rec
            }
            (_, None) => entry(&map, observed),
            (_, Some(name)) => event(name, &map, observed),
        };
        rec.attributes
            .push(kv_str("postgres_agent.batch_id", batch_id.clone()));
        rec.attributes
            .push(proto::kv_int("postgres_agent.record", i as i64));
        out.push(rec);
    }
    out
}

fn string(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

fn text<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// PostgreSQL's `error_severity` as an OpenTelemetry severity number (logs data model).
pub fn severity(level: &str) -> i32 {
    match level {
        "DEBUG5" | "DEBUG4" => 5,
        "DEBUG3" => 6,
        "DEBUG2" => 7,
        "DEBUG1" => 8,
        "LOG" | "INFO" => 9,
        "NOTICE" => 10,
        "WARNING" => 13,
        "ERROR" => 17,
        "FATAL" => 21,
        "PANIC" => 24,
        _ => 0,
    }
}

/// One server-log entry (docs/otlp.md, "Server log").
pub fn entry(map: &Map<String, Value>, observed: u64) -> LogRecord {
    let level = text(map, "error_severity").unwrap_or("");
    let message = text(map, "message").unwrap_or("").to_string();
    let query = text(map, "statement").map(str::to_string).or_else(|| {
        crate::privacy::messages::message_sql(&message)
            .and_then(|(at, _)| message.get(at..))
            .map(str::to_string)
    });
    let mut attributes: Vec<KeyValue> = [
        attr("db.namespace", map.get("dbname")),
        query.map(|q| kv_str("db.query.text", q)),
        attr("db.response.status_code", map.get("state_code")),
        attr("db.user", map.get("user")),
        attr("process.pid", map.get("pid")),
        attr("client.address", map.get("remote_host")),
        attr("postgresql.application_name", map.get("application_name")),
        attr("postgresql.backend_type", map.get("backend_type")),
        attr("postgresql.session_id", map.get("session_id")),
        attr("postgresql.query_id", map.get("query_id")),
        attr("postgresql.event", map.get("event")),
        attr("postgresql.duration_ms", map.get("duration_ms")),
        attr("postgresql.fingerprint", map.get("fingerprint")),
        attr("postgresql.detail", map.get("detail")),
        attr("postgresql.hint", map.get("hint")),
        attr("postgresql.context", map.get("context")),
        attr("postgresql.extracted", map.get("extracted")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (trace_id, span_id, flags) = trace(map, &mut attributes);
    let time = text(map, "timestamp").map_or(0, unix_nanos);
    LogRecord {
        time_unix_nano: if time == 0 { observed } else { time },
        observed_time_unix_nano: observed,
        severity_number: severity(level),
        severity_text: level.to_string(),
        body: Some(string(message)),
        attributes,
        flags,
        trace_id,
        span_id,
        event_name: String::new(),
    }
}

/// One record of an event type: the record as body, the database attributes it has.
pub fn event(name: &str, map: &Map<String, Value>, observed: u64) -> LogRecord {
    let mut attributes: Vec<KeyValue> = [
        attr("db.namespace", map.get("datname")),
        attr("db.query.text", map.get("query")),
        attr("db.user", map.get("usename")),
        attr("postgresql.query_id", map.get("query_id")),
        attr("postgresql.fingerprint", map.get("fingerprint")),
        attr("process.pid", map.get("pid")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (trace_id, span_id, flags) = trace(map, &mut attributes);
    LogRecord {
        time_unix_nano: observed,
        observed_time_unix_nano: observed,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: any(&Value::Object(map.clone())),
        attributes,
        flags,
        trace_id,
        span_id,
        event_name: name.to_string(),
    }
}

/// The trace ID, span ID and W3C trace flags of a record's `correlation` (from a `traceparent`;
/// the flags are its last field), and its correlation ID as `postgres_agent.correlation_id`.
fn trace(map: &Map<String, Value>, attributes: &mut Vec<KeyValue>) -> (Vec<u8>, Vec<u8>, u32) {
    let Some(c) = map.get("correlation").and_then(Value::as_object) else {
        return (Vec::new(), Vec::new(), 0);
    };
    if let Some(a) = attr("postgres_agent.correlation_id", c.get("id")) {
        attributes.push(a);
    }
    let trace_id = text(c, "trace_id").and_then(|t| hex_id(t, 16));
    let span_id = text(c, "span_id").and_then(|s| hex_id(s, 8));
    let flags = c
        .get("tags")
        .and_then(|t| t.get("traceparent"))
        .and_then(Value::as_str)
        .and_then(|tp| tp.rsplit('-').next())
        .and_then(|f| u8::from_str_radix(f, 16).ok())
        .map_or(0, u32::from);
    match (trace_id, span_id) {
        (Some(t), Some(s)) => (t, s, flags),
        (Some(t), None) => (t, Vec::new(), flags),
        _ => (Vec::new(), Vec::new(), 0),
    }
}

/// The batch's type-level fields as one event (None when it has none worth sending).
fn summary(batch: &Batch, observed: u64, batch_id: &str) -> Option<LogRecord> {
    let fields: Map<String, Value> = batch
        .extra
        .iter()
        .filter(|(k, _)| k.as_str() != "log_position")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if fields.is_empty() {
        return None;
    }
    Some(LogRecord {
        time_unix_nano: observed,
        observed_time_unix_nano: observed,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: any(&Value::Object(fields)),
        attributes: vec![
            kv_str("postgres_agent.batch_id", batch_id.to_string()),
            proto::kv_int("postgres_agent.records", batch.data.len() as i64),
        ],
        event_name: format!("postgres_agent.{}", batch.kind),
        ..LogRecord::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_without_a_mapping_goes_as_generic_events() {
        use crate::batch::{AgentInfo, BatchKind, Record};
        let rec = serde_json::json!({"relname": "orders", "n_dead_tup": 12, "datname": "shop"});
        let mut batch = Batch::new(
            BatchKind::Locks,
            "p",
            AgentInfo::new("h"),
            None,
            60,
            vec![Record::new(&rec).unwrap()],
        );
        batch.extra.insert("omitted".into(), Value::from(3));
        let out = records_as(&batch, None);
        assert_eq!(
            out.len(),
            2,
            "one event for the batch's fields, one per record"
        );
        assert_eq!(out[0].event_name, "postgres_agent.locks");
        assert_eq!(out[1].event_name, "postgres_agent.locks");
        let Some(any_value::Value::KvlistValue(body)) = out[1].body.clone().and_then(|b| b.value)
        else {
            panic!("the record as a map body");
        };
        assert!(body.values.iter().any(|kv| kv.key == "n_dead_tup"));
        assert!(out[1].attributes.iter().any(|a| a.key == "db.namespace"));
    }

    #[test]
    fn an_entry_with_a_traceparent_carries_it() {
        let map: Map<String, Value> = serde_json::from_str(
            r#"{"timestamp":"2026-11-28T10:00:02.000Z","error_severity":"ERROR","state_code":"42P01",
            "message":"relation \"x\" does not exist","statement":"SELECT * FROM x",
            "dbname":"shop","correlation":{"id":"5bd66ef5095369c7b0d1f8f4bd33716a",
            "trace_id":"5bd66ef5095369c7b0d1f8f4bd33716a","span_id":"c532cb4098ac3dd2",
            "tags":{"traceparent":"00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01"}}}"#,
        )
        .unwrap();
        let r = entry(&map, 1);
        assert_eq!(r.severity_number, 17);
        assert_eq!(r.trace_id.len(), 16);
        assert_eq!(r.flags, 1);
        assert_eq!(
            r.span_id,
            vec![0xc5, 0x32, 0xcb, 0x40, 0x98, 0xac, 0x3d, 0xd2]
        );
        let keys: Vec<&str> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        for k in ["db.namespace", "db.query.text", "db.response.status_code"] {
            assert!(keys.contains(&k), "{keys:?}");
        }
    }
}
