//! The batch envelope of the wire protocol (docs/protocol.md): one batch per data type per cycle.
//!
//! A leaf every layer may import: the kinds of data ([`BatchKind`]), the envelope ([`Batch`]) and its
//! records ([`Record`]), the correlated statements its records carry ([`correlated`]), and the
//! watched server's identity ([`ServerInfo`]). It does not store, encode or send batches; that is
//! [`crate::ship`].

pub mod correlated;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::clock::now_rfc3339;

/// Version of the envelope format.
pub const SCHEMA_VERSION: u32 = 1;

/// The kind of data a batch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    PgActivity,
    PgStatements,
    Locks,
    SystemMetrics,
    PgLogs,
    /// The per-cycle aggregate of active-session sampling (`collect::sampling`).
    PgActivitySamples,
    /// A snapshot taken when a spike trigger fired (`collect::spikes`).
    Spike,
    /// Per-database counters and wraparound ages (`collect::health::database`).
    PgDatabase,
    /// Checkpoints, WAL, I/O, progress and replication, one record per row of each section
    /// (`collect::health::server`).
    PgServerHealth,
    /// Table and index statistics of a table pass (`collect::health::tables`).
    PgTables,
    /// The settings snapshot and change records (`collect::health::settings`).
    PgSettings,
    /// Plans seen in the interval and plan changes (`collect::plans`).
    PgPlans,
}

impl BatchKind {
    pub const ALL: [BatchKind; 12] = [
        BatchKind::PgActivity,
        BatchKind::PgStatements,
        BatchKind::Locks,
        BatchKind::SystemMetrics,
        BatchKind::PgLogs,
        BatchKind::PgActivitySamples,
        BatchKind::Spike,
        BatchKind::PgDatabase,
        BatchKind::PgServerHealth,
        BatchKind::PgTables,
        BatchKind::PgSettings,
        BatchKind::PgPlans,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchKind::PgActivity => "pg_activity",
            BatchKind::PgStatements => "pg_statements",
            BatchKind::Locks => "locks",
            BatchKind::SystemMetrics => "system_metrics",
            BatchKind::PgLogs => "pg_logs",
            BatchKind::PgActivitySamples => "pg_activity_samples",
            BatchKind::Spike => "spike",
            BatchKind::PgDatabase => "pg_database",
            BatchKind::PgServerHealth => "pg_server_health",
            BatchKind::PgTables => "pg_tables",
            BatchKind::PgSettings => "pg_settings",
            BatchKind::PgPlans => "pg_plans",
        }
    }

    pub fn parse(s: &str) -> Option<BatchKind> {
        BatchKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for BatchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of the watched server, carried in every batch envelope (`db` fills it from the server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub system_identifier: String,
    pub version_num: i32,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub hostname: String,
}

impl AgentInfo {
    pub fn new(hostname: &str) -> AgentInfo {
        AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: hostname.to_string(),
        }
    }
}

/// One batch as sent to the listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub schema_version: u32,
    /// UUID v7, stable across retries (also sent as Idempotency-Key).
    pub batch_id: Uuid,
    pub project_id: String,
    #[serde(rename = "type")]
    pub kind: BatchKind,
    pub agent: AgentInfo,
    pub server: Option<ServerInfo>,
    /// RFC 3339 UTC with milliseconds.
    pub collected_at: String,
    pub interval_s: u64,
    pub count: usize,
    pub with_correlation: usize,
    /// Type-specific batch-level fields (for example `omitted` for pg_statements).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    pub data: Vec<Record>,
    /// The correlated statements of `data`, attached by the producer while its records were typed
    /// (empty for kinds without any). Not part of the wire format: a batch read back from JSON has
    /// none until [`Batch::restore_correlated`].
    #[serde(skip)]
    pub correlated: Vec<correlated::Correlated>,
}

/// One record of a batch, held as its serialized JSON from the moment it is collected: compact
/// (a tree of `Value`s costs several times the text) and written into the body as it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Record(Box<RawValue>);

impl Record {
    pub fn new<T: Serialize + ?Sized>(record: &T) -> Result<Record, serde_json::Error> {
        serde_json::value::to_raw_value(record).map(Record)
    }

    /// The record's JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The record parsed into a tree, for inspection.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// Whether the record has a non-null `correlation` (only that field is decoded).
    pub fn has_correlation(&self) -> bool {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            correlation: Option<IgnoredAny>,
        }
        serde_json::from_str::<Probe>(self.0.get()).is_ok_and(|p| p.correlation.is_some())
    }

    /// How many of `records` have a correlation: a batch's `with_correlation`.
    pub fn correlated(records: &[Record]) -> usize {
        records.iter().filter(|r| r.has_correlation()).count()
    }
}

/// Records are equal when their JSON texts are.
impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        self.json() == other.json()
    }
}

impl Batch {
    /// Builds a batch around `data`, counting records whose `correlation` is not null.
    pub fn new(
        kind: BatchKind,
        project_id: &str,
        agent: AgentInfo,
        server: Option<ServerInfo>,
        interval_s: u64,
        data: Vec<Record>,
    ) -> Batch {
        let with_correlation = Record::correlated(&data);
        Batch {
            schema_version: SCHEMA_VERSION,
            batch_id: Uuid::now_v7(),
            project_id: project_id.to_string(),
            kind,
            agent,
            server,
            collected_at: now_rfc3339(),
            interval_s,
            count: data.len(),
            with_correlation,
            extra: Map::new(),
            data,
            correlated: Vec::new(),
        }
    }

    /// Rebuilds [`Batch::correlated`] from the records' JSON ([`correlated::from_stored`]): for a
    /// batch read back from storage or built from JSON.
    pub fn restore_correlated(&mut self) {
        self.correlated = correlated::from_stored(self.kind, &self.collected_at, &self.data);
    }
}

/// What every batch of this agent carries besides its records: the project, the agent's identity
/// and the interval the batch covers. Built once per configuration (in
/// [`crate::collect::CollectSettings`]); a [`Batch`] is then one call, so the envelope is filled in
/// one place.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    project_id: String,
    agent: AgentInfo,
    interval_s: u64,
}

impl Stamp {
    pub fn new(project_id: &str, hostname: &str, interval_s: u64) -> Stamp {
        Stamp {
            project_id: project_id.to_string(),
            agent: AgentInfo::new(hostname),
            interval_s,
        }
    }

    /// The same stamp for batches that cover another interval (a spike covers its lookback).
    pub fn with_interval(&self, interval_s: u64) -> Stamp {
        Stamp {
            interval_s,
            ..self.clone()
        }
    }

    /// A batch of `kind` around `data`, from `server` (the identity the cycle read, when it did):
    /// [`Batch::new`] with this stamp's fields, so the wire output is the same.
    pub fn batch(&self, kind: BatchKind, server: Option<ServerInfo>, data: Vec<Record>) -> Batch {
        Batch::new(
            kind,
            &self.project_id,
            self.agent.clone(),
            server,
            self.interval_s,
            data,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_are_written_verbatim_and_count_only_non_null_correlations() {
        let values = [
            json!({"pid": 1, "correlation": {"trace_id": "abc"}}),
            json!({"pid": 2, "correlation": null}),
            json!({"pid": 3, "query": "SELECT '\"correlation\": 1'"}),
            json!({"pid": 4, "nested": {"correlation": "x"}}),
        ];
        let data: Vec<Record> = values.iter().map(|v| Record::new(v).unwrap()).collect();
        let b = Batch::new(
            BatchKind::PgActivity,
            "p",
            AgentInfo::new("h"),
            None,
            60,
            data,
        );
        assert_eq!(b.count, 4);
        assert_eq!(b.with_correlation, 1);
        let text = serde_json::to_string(&b).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["data"], Value::from(values.to_vec()));
        let decoded: Batch = serde_json::from_str(&text).unwrap();
        assert_eq!(decoded, b);
        assert_eq!(decoded.data[2].to_value().unwrap(), values[2]);
    }

    /// The correlated statements ride beside the records, never on the wire: the batch-protocol
    /// body is the same with or without them.
    #[test]
    fn correlated_statements_are_not_serialized() {
        let data = vec![
            Record::new(&json!({"pid": 1, "state": "active", "query": "SELECT 1",
            "query_start": "2026-11-28T10:00:00.000Z", "query_duration_ms": 5.0,
            "correlation": {"id": "a"}}))
            .unwrap(),
        ];
        let mut b = Batch::new(
            BatchKind::PgActivity,
            "p",
            AgentInfo::new("h"),
            None,
            60,
            data,
        );
        let bare = serde_json::to_string(&b).unwrap();
        b.restore_correlated();
        assert_eq!(b.correlated.len(), 1);
        assert_eq!(serde_json::to_string(&b).unwrap(), bare);
    }

    #[test]
    fn a_stamp_fills_the_envelope_as_batch_new_does() {
        let data = vec![Record::new(&json!({"pid": 1})).unwrap()];
        let stamp = Stamp::new("p", "h", 60);
        let mut a = stamp.batch(BatchKind::Locks, None, data.clone());
        let mut b = Batch::new(
            BatchKind::Locks,
            "p",
            AgentInfo::new("h"),
            None,
            60,
            data.clone(),
        );
        // Only the batch id and the time differ between two calls.
        b.batch_id = a.batch_id;
        b.collected_at = a.collected_at.clone();
        assert_eq!(a, b);
        a = stamp.with_interval(5).batch(BatchKind::Spike, None, data);
        assert_eq!((a.interval_s, a.project_id.as_str()), (5, "p"));
    }
}
