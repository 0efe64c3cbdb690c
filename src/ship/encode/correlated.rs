//! The `bitville` protocol's correlated payloads: for every statement that carries a correlation ID
//! (a log entry with a duration, a session seen in pg_stat_activity or in a spike snapshot, a lock
//! waiter), one request with that top-level `correlation_id`, `timestamp` = when the statement
//! started, `data.query` (already through the privacy policy) and `data.duration_ms`. That is what
//! the Bitville listener's correlation API and timeline read.
//!
//! - A statement seen in several cycles (same pid and `query_start`) is sent once, at its first
//!   sighting; the memory of sent statements is bounded ([`MAX_SEEN`]) and forgets after
//!   [`FORGET_AFTER`].
//! - The [`Planner`] keeps these payloads within the request budget: `listener.max_requests_per_minute`
//!   less the aggregates the cycle sends. When a batch has more statements than the budget has room
//!   for, the statements of each correlation ID are merged into one payload (`data.queries`, total
//!   `data.duration_ms`, `data.query` the slowest), so every ID still links; the merged statements
//!   are counted, never dropped.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use uuid::Uuid;

use super::bitville::{source, Payload};
use super::{stored, PrepareError};
use crate::batch::{Batch, Record, SCHEMA_VERSION};
use crate::ship::outbox::NewBatch;

/// Statements remembered as sent (pid and start); the oldest half is forgotten beyond it.
pub const MAX_SEEN: usize = 50_000;
/// A sent statement not seen again for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
pub use crate::config::BITVILLE_AGGREGATES_PER_CYCLE as AGGREGATES_PER_CYCLE;

/// One statement with a correlation ID.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub correlation_id: String,
    /// Unix seconds when it started.
    pub started: f64,
    pub duration_ms: Option<f64>,
    pub query: Option<String>,
    pub source: &'static str,
    /// pid and query start, for statements seen running (sent once).
    pub key: Option<(i64, String)>,
    /// The rest of `data`: pid, database, user, state, waits, fingerprint, origin...
    pub detail: Map<String, Value>,
}

/// The correlated statements the producer attached to `batch` ([`Batch::correlated`]; none for
/// statements and system metrics), with the listener's `source` and the batch type as `origin`.
pub fn statements(batch: &Batch) -> Vec<Statement> {
    let origin = batch.kind.as_str();
    batch
        .correlated
        .iter()
        .map(|c| {
            let mut detail = c.detail.clone();
            detail.insert("origin".into(), Value::from(origin));
            Statement {
                correlation_id: c.correlation_id.clone(),
                started: c.started,
                duration_ms: c.duration_ms,
                query: c.query.clone(),
                source: source(batch.kind),
                key: c.key.clone(),
                detail,
            }
        })
        .collect()
}

/// Requests per minute the correlated payloads may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub per_minute: f64,
}

impl Budget {
    /// `max_requests_per_minute` less the aggregates of `interval`'s cycles (at least 1).
    pub fn new(max_requests_per_minute: u32, interval: Duration) -> Budget {
        Budget::with_aggregates(max_requests_per_minute, interval, AGGREGATES_PER_CYCLE)
    }

    /// As [`Budget::new`], with `per_cycle` aggregate requests per cycle.
    pub fn with_aggregates(
        max_requests_per_minute: u32,
        interval: Duration,
        per_cycle: u32,
    ) -> Budget {
        let cycles_per_minute = 60.0 / interval.as_secs_f64().max(1.0);
        let aggregates = f64::from(per_cycle) * cycles_per_minute;
        Budget {
            per_minute: (f64::from(max_requests_per_minute) - aggregates).max(1.0),
        }
    }
}

/// One correlated payload to send: one statement, or several of one correlation ID merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub statements: Vec<Statement>,
}

/// What [`Planner::plan`] decided for one batch.
#[derive(Debug, Default)]
pub struct Plan {
    pub payloads: Vec<Planned>,
    pub merged: usize,
    pub repeated: usize,
}

/// Deduplication and the request budget of correlated payloads (a token bucket holding at most
/// one minute of budget).
pub struct Planner {
    seen: HashMap<(i64, String), Instant>,
    tokens: f64,
    refilled: Instant,
    budget: Budget,
}

impl Planner {
    pub fn new(budget: &Budget, now: Instant) -> Planner {
        Planner {
            seen: HashMap::new(),
            tokens: budget.per_minute,
            refilled: now,
            budget: budget.clone(),
        }
    }

    pub fn set_budget(&mut self, budget: &Budget) {
        self.budget = budget.clone();
        self.tokens = self.tokens.min(budget.per_minute);
    }

    /// Payloads for `statements`: repeats dropped (counted), the rest one payload each while the
    /// budget lasts, else merged per correlation ID.
    pub fn plan(&mut self, statements: Vec<Statement>, now: Instant) -> Plan {
        let mut plan = Plan::default();
        self.forget(now);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed / 60.0 * self.budget.per_minute).min(self.budget.per_minute);
        self.refilled = now;
        let mut fresh = Vec::with_capacity(statements.len());
        for s in statements {
            if let Some(key) = &s.key {
                if self.seen.insert(key.clone(), now).is_some() {
                    plan.repeated += 1;
                    continue;
                }
            }
            fresh.push(s);
        }
        if fresh.len() as f64 <= self.tokens {
            self.tokens -= fresh.len() as f64;
            plan.payloads = fresh
                .into_iter()
                .map(|s| Planned {
                    statements: vec![s],
                })
                .collect();
            return plan;
        }
        let total = fresh.len();
        let mut groups: BTreeMap<String, Vec<Statement>> = BTreeMap::new();
        for s in fresh {
            groups.entry(s.correlation_id.clone()).or_default().push(s);
        }
        plan.merged = total - groups.len();
        self.tokens = (self.tokens - groups.len() as f64).max(0.0);
        plan.payloads = groups
            .into_values()
            .map(|statements| Planned { statements })
            .collect();
        if plan.merged > 0 {
            tracing::info!(
                event = "correlated_merged",
                statements = total,
                payloads = plan.payloads.len(),
                merged = plan.merged,
                budget_per_minute = self.budget.per_minute,
                "more correlated statements than the request budget: merged per correlation ID"
            );
        }
        plan
    }

    fn forget(&mut self, now: Instant) {
        self.seen
            .retain(|_, at| now.saturating_duration_since(*at) < FORGET_AFTER);
        if self.seen.len() > MAX_SEEN {
            let mut ages: Vec<Instant> = self.seen.values().copied().collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            self.seen.retain(|_, at| *at > cutoff);
        }
    }
}

/// The stored request of one planned payload.
/// The payload of `planned`; one over `max_body` bytes has its longest texts cut
/// ([`super::trim`]), marked in `data`.
pub fn encode(
    planned: &Planned,
    batch: &Batch,
    project: &str,
    max_body: usize,
) -> Result<NewBatch, PrepareError> {
    let id = Uuid::now_v7();
    let json_err = |source| PrepareError::Json {
        batch_id: batch.batch_id,
        kind: batch.kind.to_string(),
        source,
    };
    let meta = |data: &mut Map<String, Value>| {
        data.insert("schema_version".into(), Value::from(SCHEMA_VERSION));
        data.insert("batch_id".into(), Value::from(id.to_string()));
        data.insert("of_batch".into(), Value::from(batch.batch_id.to_string()));
    };
    let (first, rest) = match planned.statements.split_first() {
        Some(x) => x,
        None => {
            return Err(json_err(serde::ser::Error::custom(
                "a correlated payload without statements",
            )))
        }
    };
    let (timestamp, data) = if rest.is_empty() {
        let mut data = first.detail.clone();
        data.insert("type".into(), Value::from("statement"));
        data.insert("query".into(), Value::from(first.query.clone()));
        data.insert("duration_ms".into(), Value::from(first.duration_ms));
        meta(&mut data);
        (first.started, data)
    } else {
        let all = &planned.statements;
        let slowest = all
            .iter()
            .max_by(|a, b| {
                a.duration_ms
                    .unwrap_or(0.0)
                    .total_cmp(&b.duration_ms.unwrap_or(0.0))
            })
            .unwrap_or(first);
        let started = all.iter().map(|s| s.started).fold(f64::INFINITY, f64::min);
        let total: f64 = all.iter().filter_map(|s| s.duration_ms).sum();
        let queries: Vec<Value> = all
            .iter()
            .map(|s| {
                let mut q = s.detail.clone();
                q.remove("correlation");
                q.insert("query".into(), Value::from(s.query.clone()));
                q.insert("duration_ms".into(), Value::from(s.duration_ms));
                q.insert("started".into(), Value::from(s.started));
                Value::Object(q)
            })
            .collect();
        let mut data = Map::new();
        data.insert("type".into(), Value::from("statements"));
        data.insert("query".into(), Value::from(slowest.query.clone()));
        data.insert("duration_ms".into(), Value::from(total));
        data.insert("merged".into(), Value::from(all.len()));
        data.insert("queries".into(), Value::Array(queries));
        if let Some(c) = first.detail.get("correlation") {
            data.insert("correlation".into(), c.clone());
        }
        meta(&mut data);
        (started, data)
    };
    let to_json = |data: &Value| {
        serde_json::to_vec(&Payload {
            correlation_id: &first.correlation_id,
            project,
            timestamp,
            source: first.source,
            data,
        })
        .map_err(json_err)
    };
    let mut json = to_json(&Value::Object(data))?;
    if json.len() > max_body {
        // Only `data` is cut, so the payload's own fields stay as the listener needs them.
        let full: Value = serde_json::from_slice::<Map<String, Value>>(&json)
            .ok()
            .and_then(|mut m| m.remove("data"))
            .unwrap_or(Value::Null);
        if let Ok(record) = Record::new(&full) {
            let trimmed = super::trim::trim_to_fit(&record, &mut |r: &Record| {
                let v = r.to_value().map_err(json_err)?;
                to_json(&v).map(|j| j.len() <= max_body)
            })?;
            let v = trimmed.to_value().map_err(json_err)?;
            json = to_json(&v)?;
            tracing::warn!(event = "record_trimmed", batch_id = %batch.batch_id,
                max_body_bytes = max_body,
                "a correlated payload over listener.max_body_bytes: its longest texts were cut \
                 (marked truncated, with omitted_bytes)");
        }
    }
    stored(json, id, batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{AgentInfo, BatchKind, Record};
    use serde_json::json;

    fn batch(kind: BatchKind, records: Vec<Value>) -> Batch {
        let data = records.iter().map(|r| Record::new(r).unwrap()).collect();
        let mut b = Batch::new(kind, "p", AgentInfo::new("h"), None, 60, data);
        b.collected_at = "2026-11-28T10:00:10.000Z".into();
        b.restore_correlated();
        b
    }

    fn session(pid: i64, id: &str, start: &str) -> Value {
        json!({"pid": pid, "state": "active", "query": "SELECT ?", "query_start": start,
               "query_duration_ms": 1500.0, "correlation": {"id": id}})
    }

    #[test]
    fn sessions_and_log_entries_become_statements_that_start_when_they_started() {
        let b = batch(
            BatchKind::PgActivity,
            vec![
                session(1, "a", "2026-11-28T10:00:00.000Z"),
                json!({"pid": 2, "correlation": null, "query_start": "2026-11-28T10:00:00.000Z"}),
            ],
        );
        let s = statements(&b);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].correlation_id, "a");
        assert_eq!(s[0].source, "pg_stat_activity");
        assert_eq!(s[0].duration_ms, Some(1500.0));
        assert!(
            (s[0].started - 1_795_860_000.0).abs() < 0.01,
            "{}",
            s[0].started
        );
        let b = batch(
            BatchKind::PgLogs,
            vec![
                json!({"timestamp": "2026-11-28T10:00:02.000Z", "duration_ms": 2000.0,
                "message": "duration: 2000.000 ms  statement: /* correlation:x */ SELECT ?",
                "correlation": {"id": "x"}}),
            ],
        );
        let s = statements(&b);
        assert_eq!(s[0].source, "pg_log");
        assert_eq!(s[0].query.as_deref(), Some("/* correlation:x */ SELECT ?"));
        assert!((s[0].started - 1_795_860_000.0).abs() < 0.01);
    }

    #[test]
    fn a_statement_seen_again_is_sent_once() {
        let now = Instant::now();
        let mut p = Planner::new(&Budget::new(90, Duration::from_secs(60)), now);
        let b = batch(
            BatchKind::PgActivity,
            vec![session(1, "a", "2026-11-28T10:00:00.000Z")],
        );
        assert_eq!(p.plan(statements(&b), now).payloads.len(), 1);
        let again = p.plan(statements(&b), now + Duration::from_secs(60));
        assert_eq!((again.payloads.len(), again.repeated), (0, 1));
        let next = batch(
            BatchKind::PgActivity,
            vec![session(1, "a", "2026-11-28T10:01:00.000Z")],
        );
        assert_eq!(
            p.plan(statements(&next), now + Duration::from_secs(61))
                .payloads
                .len(),
            1
        );
    }

    #[test]
    fn over_the_budget_statements_are_merged_per_id_and_counted() {
        let now = Instant::now();
        // 10 per minute less 5 aggregates of a 60 s cycle: 5 payloads.
        let mut p = Planner::new(&Budget::new(10, Duration::from_secs(60)), now);
        let records: Vec<Value> = (0..12)
            .map(|i| {
                session(
                    i,
                    ["a", "b", "c"][i as usize % 3],
                    "2026-11-28T10:00:00.000Z",
                )
            })
            .collect();
        let b = batch(BatchKind::PgActivity, records);
        let plan = p.plan(statements(&b), now);
        assert_eq!(plan.payloads.len(), 3);
        assert_eq!(plan.merged, 9);
        let row = encode(&plan.payloads[0], &b, "p", 1 << 20).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&row.body[..]), &mut text)
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["correlation_id"], "a");
        assert_eq!(v["data"]["merged"], 4);
        assert_eq!(v["data"]["queries"].as_array().unwrap().len(), 4);
        assert_eq!(v["data"]["duration_ms"], 6000.0);
        assert_eq!(v["data"]["query"], "SELECT ?");
    }

    #[test]
    fn a_correlated_payload_over_the_body_limit_is_trimmed_and_says_so() {
        let now = Instant::now();
        let mut p = Planner::new(&Budget::new(1000, Duration::from_secs(60)), now);
        let mut r = session(1, "a", "2026-11-28T10:00:00.000Z");
        r["query"] = Value::from(format!("SELECT {}", "x".repeat(20_000)));
        let b = batch(BatchKind::PgActivity, vec![r]);
        let plan = p.plan(statements(&b), now);
        let row = encode(&plan.payloads[0], &b, "p", 4096).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&row.body[..]), &mut text)
            .unwrap();
        assert!(text.len() <= 4096, "{} bytes", text.len());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["correlation_id"], "a");
        assert_eq!(v["data"]["truncated"], true);
        assert!(v["data"]["omitted_bytes"].as_u64().unwrap() > 15_000);
    }
}
