//! The `otlp` protocol (`listener.protocol = otlp`, docs/otlp.md): each batch becomes OTLP/HTTP
//! protobuf requests, `ExportLogsServiceRequest` for `/v1/logs` or `ExportMetricsServiceRequest`
//! for `/v1/metrics`, stored gzip-compressed in the outbox like every other request.
//!
//! [`KINDS`] is the one mapping of batch types: which signal a type goes to and how its records
//! are written ([`Mapping`]). A type missing from it (one added later) goes as events named
//! `postgres_agent.<type>` whose body is the JSON record, so a new collector never fails the
//! encoder; adding a row gives it a proper mapping. The signal of a stored request is read from
//! the same table ([`signal`]), so the sender knows its path from the request's type.

mod events;
mod health;
mod host;
pub mod logs;
pub mod metrics;
pub mod proto;
pub mod resource;

use prost::Message;
use uuid::Uuid;

use super::{gzip, PrepareError};
use crate::batch::{Batch, BatchKind};
use crate::config::Protocol;
use crate::ship::outbox::NewBatch;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Logs,
    Metrics,
}

/// How the records of a batch type are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Server-log entries as log records ([`logs::entry`]).
    ServerLog,
    /// One event per record with this event name, the record as body ([`logs::event`]).
    Event(&'static str),
    /// Statement deltas as delta sums ([`metrics::statements`]).
    Statements,
    /// Host metrics as `system.*` metrics, plus the agent's own counters (`host::system`).
    System,
    /// Health views as metrics under the PostgreSQL receiver's names ([`health::metrics`]).
    Health,
    /// Settings: `postgres_agent.setting_change` per change, `postgres_agent.settings_snapshot`
    /// per setting of a snapshot (`events.rs`).
    Settings,
    /// Plans: `postgres_agent.plan` (the tree as body) and `postgres_agent.plan_change` (`events.rs`).
    Plans,
}

/// Every known batch type and its mapping (see the module doc for types not listed).
pub const KINDS: &[(BatchKind, Mapping)] = &[
    (BatchKind::PgLogs, Mapping::ServerLog),
    (
        BatchKind::PgActivity,
        Mapping::Event("db.server.query_sample"),
    ),
    (
        BatchKind::PgActivitySamples,
        Mapping::Event("db.server.top_query"),
    ),
    (
        BatchKind::Spike,
        Mapping::Event("postgres_agent.spike.session"),
    ),
    (BatchKind::Locks, Mapping::Event("postgres_agent.lock_wait")),
    (BatchKind::PgStatements, Mapping::Statements),
    (BatchKind::SystemMetrics, Mapping::System),
    (BatchKind::PgDatabase, Mapping::Health),
    (BatchKind::PgServerHealth, Mapping::Health),
    (BatchKind::PgTables, Mapping::Health),
    (BatchKind::PgSettings, Mapping::Settings),
    (BatchKind::PgPlans, Mapping::Plans),
];

/// The mapping of `kind`; None for a type not in [`KINDS`] (sent as generic events).
pub fn mapping(kind: BatchKind) -> Option<Mapping> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, m)| *m)
}

/// The signal a request of `kind` goes to.
pub fn signal(kind: BatchKind) -> Signal {
    match mapping(kind) {
        Some(Mapping::Statements | Mapping::System | Mapping::Health) => Signal::Metrics,
        _ => Signal::Logs,
    }
}

/// What the encoder knows besides the batch.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub project: &'a str,
    pub service_name: &'a str,
    /// Most statements sent per interval (`otlp.top_statements`).
    pub top_statements: usize,
    /// Largest protobuf body (before gzip) of one request.
    pub max_body: usize,
    /// The agent's own counters by name, sent with the host metrics (None: not sent).
    pub counters: Option<&'a std::collections::BTreeMap<&'static str, u64>>,
    /// When this process started (unix ns): the start time of the cumulative counters.
    pub process_start_ns: u64,
}

/// The requests of one batch.
pub fn encode(batch: &Batch, ctx: &Context<'_>) -> Result<Vec<NewBatch>, PrepareError> {
    let resource = resource::resource(batch, ctx);
    let scope = resource::scope();
    let bodies: Vec<Vec<u8>> = match signal(batch.kind) {
        Signal::Logs => {
            let records = logs::records(batch);
            pack(records, ctx.max_body, |records| {
                proto::ExportLogsServiceRequest {
                    resource_logs: vec![proto::ResourceLogs {
                        resource: Some(resource.clone()),
                        scope_logs: vec![proto::ScopeLogs {
                            scope: Some(scope.clone()),
                            log_records: records,
                            schema_url: String::new(),
                        }],
                        schema_url: String::new(),
                    }],
                }
                .encode_to_vec()
            })
        }
        Signal::Metrics => {
            let metrics = match mapping(batch.kind) {
                Some(Mapping::Statements) => metrics::statements(batch, ctx.top_statements),
                Some(Mapping::Health) => health::metrics(batch),
                _ => host::system(batch, ctx),
            };
            pack(metrics, ctx.max_body, |metrics| {
                proto::ExportMetricsServiceRequest {
                    resource_metrics: vec![proto::ResourceMetrics {
                        resource: Some(resource.clone()),
                        scope_metrics: vec![proto::ScopeMetrics {
                            scope: Some(scope.clone()),
                            metrics,
                            schema_url: String::new(),
                        }],
                        schema_url: String::new(),
                    }],
                }
                .encode_to_vec()
            })
        }
    };
    let parts = bodies.len();
    if parts > 1 {
        tracing::info!(event = "batch_split", batch_id = %batch.batch_id, kind = %batch.kind,
            parts, "OTLP request over the size limit split into parts");
    }
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let batch_id = if i == 0 {
                batch.batch_id
            } else {
                Uuid::now_v7()
            };
            Ok(NewBatch {
                batch_id,
                kind: batch.kind,
                collected_at: batch.collected_at.clone(),
                body: gzip(&body).map_err(|source| PrepareError::Gzip { batch_id, source })?,
                protocol: Protocol::Otlp,
            })
        })
        .collect()
}

/// Room kept for the resource and scope around the items of one request.
const ENVELOPE_ROOM: usize = 4096;

/// Packs `items` into as few requests as keep each body under `max_body` (an item larger than
/// that goes alone). No items: one request without any, so that every batch (and the log cursor
/// stored with a pg_logs batch) has a request.
fn pack<T: Message>(
    items: Vec<T>,
    max_body: usize,
    mut encode: impl FnMut(Vec<T>) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    let limit = max_body.saturating_sub(ENVELOPE_ROOM).max(1);
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0usize;
    for item in items {
        let len = item.encoded_len() + 8;
        if !chunk.is_empty() && size + len > limit {
            out.push(encode(std::mem::take(&mut chunk)));
            size = 0;
        }
        size += len;
        chunk.push(item);
    }
    if !chunk.is_empty() || out.is_empty() {
        out.push(encode(chunk));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_signal_and_the_health_kinds_are_metrics() {
        for kind in BatchKind::ALL {
            let _ = signal(kind);
        }
        for kind in [
            BatchKind::PgStatements,
            BatchKind::SystemMetrics,
            BatchKind::PgDatabase,
            BatchKind::PgServerHealth,
            BatchKind::PgTables,
        ] {
            assert_eq!(signal(kind), Signal::Metrics, "{kind}");
        }
        for kind in [BatchKind::PgLogs, BatchKind::PgSettings, BatchKind::PgPlans] {
            assert_eq!(signal(kind), Signal::Logs, "{kind}");
        }
    }

    #[test]
    fn pack_splits_over_the_limit() {
        let items: Vec<proto::KeyValue> = (0..100)
            .map(|i| proto::kv_str("k", "x".repeat(100 + i)))
            .collect();
        let bodies = pack(items, ENVELOPE_ROOM + 2000, |c| {
            proto::KeyValueList { values: c }.encode_to_vec()
        });
        assert!(bodies.len() > 5, "{}", bodies.len());
        let total: usize = bodies
            .iter()
            .map(|b| proto::KeyValueList::decode(&b[..]).unwrap().values.len())
            .sum();
        assert_eq!(total, 100);
    }
}
