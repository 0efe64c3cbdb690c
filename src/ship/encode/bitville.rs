//! The `bitville` protocol's aggregate payload: one request per batch, in the shapes the Bitville
//! Python agent sent (`sessions`/`count`/`with_correlation`, `statements`/`count`,
//! `entries`/`count`/`levels`, the system metrics object, `locks`/`count`/`has_blocking`), with this
//! agent's batch fields inside `data` (the listener keeps nothing else).
//!
//! `correlation_id` is `""` (the listener stores aggregates under the empty ID), `timestamp` is the
//! collection time. Locks have no source of their own on that listener, so they travel as
//! `pg_stat_activity` with `data.locks`; so do the sampling aggregate (`data.type` =
//! `pg_activity_samples`, groups in `data.top`) and spike snapshots (`data.type` = `spike`,
//! `data.trigger`, sessions in `data.sessions`). A payload over the request size limit is split into parts,
//! each with `data.part_of`, `data.part` and `data.parts`, as the batch protocol does.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::batch::split_by;
use super::{now_seconds, stored, unix_seconds, PrepareError};
use crate::batch::{Batch, BatchKind, Record};
use crate::ship::outbox::NewBatch;

/// The protocol's one mapping of batch types, read both ways: each type's listener `source`, and
/// the name of its record list inside `data` (none for system metrics, whose one record is
/// `data`). Several types share a source; reading a source back ([`kind_of_source`]) gives the first
/// type listed with it.
const KINDS: [(BatchKind, &str, Option<&str>); 12] = [
    (BatchKind::PgActivity, "pg_stat_activity", Some("sessions")),
    (
        BatchKind::PgStatements,
        "pg_stat_statements",
        Some("statements"),
    ),
    (BatchKind::PgLogs, "pg_log", Some("entries")),
    (BatchKind::SystemMetrics, "system_metrics", None),
    (BatchKind::Locks, "pg_stat_activity", Some("locks")),
    (
        BatchKind::PgActivitySamples,
        "pg_stat_activity",
        Some("top"),
    ),
    (BatchKind::Spike, "pg_stat_activity", Some("sessions")),
    // Server health: the listener accepts only four sources; these describe the server, not a
    // session or a statement, so they go with the host's metrics (docs/health.md).
    (BatchKind::PgDatabase, "system_metrics", Some("databases")),
    (
        BatchKind::PgServerHealth,
        "system_metrics",
        Some("sections"),
    ),
    (BatchKind::PgTables, "system_metrics", Some("tables")),
    (BatchKind::PgSettings, "system_metrics", Some("settings")),
    (BatchKind::PgPlans, "pg_log", Some("plans")),
];

fn entry(kind: BatchKind) -> (BatchKind, &'static str, Option<&'static str>) {
    KINDS.into_iter().find(|(k, _, _)| *k == kind).unwrap_or((
        kind,
        "pg_stat_activity",
        Some("sessions"),
    ))
}

/// The listener's `source` for a batch type.
pub fn source(kind: BatchKind) -> &'static str {
    entry(kind).1
}

/// The batch type a listener `source` stands for (a payload of the Python agent's buffer): the
/// first listed with it; an unknown source is taken as `pg_stat_activity`.
pub fn kind_of_source(source: &str) -> BatchKind {
    KINDS
        .into_iter()
        .find(|(_, s, _)| *s == source)
        .map_or(BatchKind::PgActivity, |(k, _, _)| k)
}

/// Name of the record list inside `data` (none for system metrics, whose one record is `data`).
fn list_key(kind: BatchKind) -> Option<&'static str> {
    entry(kind).2
}

/// One top-level Bitville payload.
#[derive(serde::Serialize)]
pub(super) struct Payload<'a, D: Serialize> {
    pub correlation_id: &'a str,
    pub project: &'a str,
    pub timestamp: f64,
    pub source: &'static str,
    pub data: D,
}

/// The collection time of `batch` in Unix seconds.
pub(super) fn collected_seconds(batch: &Batch) -> f64 {
    unix_seconds(&batch.collected_at).unwrap_or_else(now_seconds)
}

/// The aggregate requests of `batch` (one, or parts when over `max_body` bytes).
pub fn aggregate(
    batch: &Batch,
    project: &str,
    max_body: usize,
) -> Result<Vec<NewBatch>, PrepareError> {
    let encode = |records: &[Record], id: Uuid, part: Option<(usize, usize)>| {
        let payload = Payload {
            correlation_id: "",
            project,
            timestamp: collected_seconds(batch),
            source: source(batch.kind),
            data: Data {
                batch,
                records,
                batch_id: id,
                part,
            },
        };
        serde_json::to_vec(&payload).map_err(|source| PrepareError::Json {
            batch_id: batch.batch_id,
            kind: batch.kind.to_string(),
            source,
        })
    };
    let whole = encode(&batch.data, batch.batch_id, None)?;
    if whole.len() <= max_body {
        return Ok(vec![stored(whole, batch.batch_id, batch)?]);
    }
    let whole_bytes = whole.len();
    drop(whole);
    let mut ranges = Vec::new();
    // Room for the part fields.
    let limit = max_body.saturating_sub(256);
    split_by(0, batch.data.len(), limit, &mut ranges, &mut |lo, hi| {
        encode(&batch.data[lo..hi], batch.batch_id, None).map(|j| j.len())
    })?;
    let parts = ranges.len();
    if parts > 1 {
        tracing::info!(event = "batch_split", batch_id = %batch.batch_id, kind = %batch.kind,
            records = batch.data.len(), bytes = whole_bytes, parts,
            "payload over the request size limit split into parts");
    }
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, (lo, hi))| {
            let (id, part) = match parts {
                1 => (batch.batch_id, None),
                _ => (Uuid::now_v7(), Some((i + 1, parts))),
            };
            let json = encode(&batch.data[lo..hi], id, part)?;
            if hi - lo != 1 || json.len() <= max_body {
                return stored(json, id, batch);
            }
            // One record over the limit on its own: its longest texts are cut.
            let trimmed = super::trim::trim_to_fit(&batch.data[lo], &mut |r: &Record| {
                encode(std::slice::from_ref(r), id, part).map(|j| j.len() <= max_body)
            })?;
            tracing::warn!(event = "record_trimmed", batch_id = %batch.batch_id,
                kind = %batch.kind, max_body_bytes = max_body,
                "a record over listener.max_body_bytes on its own: its longest texts were cut \
                 (marked truncated, with omitted_bytes)");
            stored(encode(std::slice::from_ref(&trimmed), id, part)?, id, batch)
        })
        .collect()
}

/// `data` of an aggregate payload, written straight from the batch's records.
struct Data<'a> {
    batch: &'a Batch,
    records: &'a [Record],
    /// This request's id (the batch's, or a part's).
    batch_id: Uuid,
    /// (part, parts) when split.
    part: Option<(usize, usize)>,
}

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.batch;
        let mut m = s.serialize_map(None)?;
        // Keys already written, so batch fields never repeat a record field (system metrics).
        let mut taken: Vec<String> = Vec::new();
        match list_key(b.kind) {
            Some(key) => {
                m.serialize_entry(key, self.records)?;
                m.serialize_entry("count", &self.records.len())?;
            }
            None => {
                for r in self.records {
                    match serde_json::from_str::<Map<String, Value>>(r.json()) {
                        Ok(fields) => {
                            for (k, v) in &fields {
                                m.serialize_entry(k, v)?;
                            }
                            taken.extend(fields.into_iter().map(|(k, _)| k));
                        }
                        Err(_) => m.serialize_entry("metrics", r)?,
                    }
                }
            }
        }
        match b.kind {
            BatchKind::PgActivity | BatchKind::Spike => {
                m.serialize_entry("with_correlation", &Record::correlated(self.records))?
            }
            BatchKind::Locks => m.serialize_entry("has_blocking", &!self.records.is_empty())?,
            BatchKind::PgLogs => m.serialize_entry("levels", &levels(self.records))?,
            BatchKind::PgStatements | BatchKind::SystemMetrics | BatchKind::PgActivitySamples => {}
            BatchKind::PgDatabase
            | BatchKind::PgServerHealth
            | BatchKind::PgTables
            | BatchKind::PgSettings => {}
            BatchKind::PgPlans => {}
        }
        let agent = serde_json::to_value(&b.agent).map_err(serde::ser::Error::custom)?;
        let server = serde_json::to_value(&b.server).map_err(serde::ser::Error::custom)?;
        let mut meta: Vec<(&str, Value)> = vec![
            ("schema_version", Value::from(b.schema_version)),
            ("batch_id", Value::from(self.batch_id.to_string())),
            ("type", Value::from(b.kind.as_str())),
            ("agent", agent),
            ("server", server),
            ("collected_at", Value::from(b.collected_at.as_str())),
            ("interval_s", Value::from(b.interval_s)),
        ];
        meta.extend(b.extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
        if let Some((part, parts)) = self.part {
            meta.push(("part_of", Value::from(b.batch_id.to_string())));
            meta.push(("part", Value::from(part)));
            meta.push(("parts", Value::from(parts)));
        }
        for (k, v) in &meta {
            if !taken.iter().any(|t| t == k) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Entries per `error_severity` (`UNKNOWN` when the line had none), as the Python agent counted
/// its `level`s.
fn levels(records: &[Record]) -> BTreeMap<String, usize> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        error_severity: Option<String>,
    }
    let mut out = BTreeMap::new();
    for r in records {
        let level = serde_json::from_str::<Probe>(r.json())
            .ok()
            .and_then(|p| p.error_severity)
            .unwrap_or_else(|| "UNKNOWN".to_string());
        *out.entry(level).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::AgentInfo;
    use serde_json::json;
    use std::io::Read;

    fn decode(row: &NewBatch) -> Value {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&row.body[..])
            .read_to_string(&mut s)
            .unwrap();
        serde_json::from_str(&s).unwrap()
    }

    fn batch(kind: BatchKind, records: Vec<Value>) -> Batch {
        let data = records.iter().map(|r| Record::new(r).unwrap()).collect();
        let mut b = Batch::new(kind, "shop", AgentInfo::new("h"), None, 60, data);
        b.extra.insert("omitted".into(), json!(3));
        b.restore_correlated();
        b
    }

    #[test]
    fn every_kind_is_mapped_once_and_each_source_reads_back() {
        for kind in BatchKind::ALL {
            assert_eq!(
                KINDS.iter().filter(|(k, _, _)| *k == kind).count(),
                1,
                "{kind}"
            );
        }
        for (source, kind) in [
            ("pg_stat_activity", BatchKind::PgActivity),
            ("pg_stat_statements", BatchKind::PgStatements),
            ("pg_log", BatchKind::PgLogs),
            ("system_metrics", BatchKind::SystemMetrics),
            ("something_else", BatchKind::PgActivity),
        ] {
            assert_eq!(kind_of_source(source), kind, "{source}");
        }
        assert_eq!(source(BatchKind::Spike), "pg_stat_activity");
        assert_eq!(list_key(BatchKind::SystemMetrics), None);
        assert_eq!(list_key(BatchKind::Locks), Some("locks"));
    }

    #[test]
    fn activity_has_the_python_shape_and_our_fields() {
        let b = batch(
            BatchKind::PgActivity,
            vec![
                json!({"pid": 1, "correlation": {"id": "a"}}),
                json!({"pid": 2, "correlation": null}),
            ],
        );
        let rows = aggregate(&b, "shop", 1 << 20).unwrap();
        assert_eq!(rows.len(), 1);
        let v = decode(&rows[0]);
        assert_eq!(v["correlation_id"], "");
        assert_eq!(v["project"], "shop");
        assert_eq!(v["source"], "pg_stat_activity");
        assert!(v["timestamp"].as_f64().unwrap() > 1.7e9);
        assert_eq!(v["data"]["count"], 2);
        assert_eq!(v["data"]["with_correlation"], 1);
        assert_eq!(v["data"]["sessions"][0]["pid"], 1);
        assert_eq!(v["data"]["omitted"], 3);
        assert_eq!(v["data"]["batch_id"], b.batch_id.to_string());
        assert_eq!(v["data"]["schema_version"], 1);
        assert_eq!(v["data"]["interval_s"], 60);
    }

    #[test]
    fn locks_travel_as_activity_and_logs_count_levels() {
        let b = batch(BatchKind::Locks, vec![json!({"pid": 1})]);
        let v = decode(&aggregate(&b, "p", 1 << 20).unwrap()[0]);
        assert_eq!(v["source"], "pg_stat_activity");
        assert_eq!(v["data"]["locks"][0]["pid"], 1);
        assert_eq!(v["data"]["has_blocking"], true);
        let b = batch(
            BatchKind::PgLogs,
            vec![
                json!({"error_severity": "LOG"}),
                json!({"error_severity": "LOG"}),
                json!({"error_severity": null}),
            ],
        );
        let v = decode(&aggregate(&b, "p", 1 << 20).unwrap()[0]);
        assert_eq!(v["source"], "pg_log");
        assert_eq!(v["data"]["levels"], json!({"LOG": 2, "UNKNOWN": 1}));
        assert_eq!(v["data"]["entries"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn system_metrics_is_the_object_and_keeps_its_own_interval() {
        let b = batch(
            BatchKind::SystemMetrics,
            vec![json!({"interval_s": 0.1, "load": {"load1": 2.0}})],
        );
        let text = {
            let mut s = String::new();
            let row = &aggregate(&b, "p", 1 << 20).unwrap()[0];
            flate2::read::GzDecoder::new(&row.body[..])
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        assert_eq!(text.matches("\"interval_s\"").count(), 1, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["source"], "system_metrics");
        assert_eq!(v["data"]["load"]["load1"], 2.0);
        assert_eq!(v["data"]["interval_s"], 0.1);
    }

    #[test]
    fn a_single_record_over_the_limit_is_trimmed_and_says_so() {
        let b = batch(
            BatchKind::PgActivity,
            vec![json!({"pid": 7, "query": "x".repeat(20_000)})],
        );
        let rows = aggregate(&b, "p", 4096).unwrap();
        assert_eq!(rows.len(), 1);
        let v = decode(&rows[0]);
        assert!(v.to_string().len() <= 4096, "{}", v.to_string().len());
        assert_eq!(v["data"]["batch_id"], b.batch_id.to_string());
        assert_eq!(v["data"]["sessions"][0]["pid"], 7);
        assert_eq!(v["data"]["sessions"][0]["truncated"], true);
        assert!(v["data"]["sessions"][0]["omitted_bytes"].as_u64().unwrap() > 10_000);
    }

    #[test]
    fn large_payload_is_split_into_parts_that_keep_every_record() {
        let records: Vec<Value> = (0..200)
            .map(|i| json!({"i": i, "text": "x".repeat(500)}))
            .collect();
        let b = batch(BatchKind::PgStatements, records.clone());
        let rows = aggregate(&b, "p", 16 * 1024).unwrap();
        assert!(rows.len() > 2);
        let mut all = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let v = decode(row);
            assert_eq!(v["data"]["part"], i + 1);
            assert_eq!(v["data"]["parts"], rows.len());
            assert_eq!(v["data"]["part_of"], b.batch_id.to_string());
            assert_eq!(v["data"]["batch_id"], row.batch_id.to_string());
            all.extend(v["data"]["statements"].as_array().unwrap().clone());
        }
        assert_eq!(all, records);
    }
}
