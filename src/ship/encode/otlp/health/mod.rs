//! Health metrics of the `otlp` protocol (docs/otlp.md, "Health metrics"): `pg_database`,
//! `pg_server_health` and `pg_tables` records as OTLP metrics, driven by two tables. [`VIEWS`] says
//! per view which numbers are gauges, which fields are attributes and the name prefix of a column
//! without a receiver name (`postgresql.<prefix>.<column>`); [`NAMES`] gives the names, units and
//! attributes of the OpenTelemetry Collector's PostgreSQL receiver (its `metadata.yaml`) where one
//! exists. The collectors' contract (docs/health.md) decides the rest: in a cumulative view every
//! number that is not a gauge (or an ID) is a counter, already a per-interval delta, sent as a
//! delta-temporality sum when the record's `counters` is `delta`, `reset` or `new`, and never
//! for `first` (withheld). A column a new server version adds flows through under the generic name.

use serde_json::{Map, Value};

use super::metrics::{point, Builder, Kind, Num};
use super::proto::{kv_str, KeyValue, Metric};
use super::resource::{attr, collected_nanos};
use crate::batch::{Batch, BatchKind};

/// How the records of one view become metrics.
struct View {
    /// Which records: the batch type and, for several views in one type, the value of the
    /// record's `section` (`pg_server_health`) or `kind` (`pg_tables`).
    kind: BatchKind,
    selector: Option<&'static str>,
    /// `postgresql.<prefix>.<column>` for a column not in [`NAMES`].
    prefix: &'static str,
    /// Counters are per-interval deltas (every number not a gauge); false: every number a gauge.
    cumulative: bool,
    gauges: &'static [&'static str],
    /// Record fields sent as data-point attributes: (field, attribute).
    attrs: &'static [(&'static str, &'static str)],
    /// Numbers that are not metrics: duplicates (the checkpointer's old names) and the like.
    skip: &'static [&'static str],
}

/// Numbers that are never metrics in any view: object, process and port IDs.
const IDS: &[&str] = &[
    "datid",
    "relid",
    "indexrelid",
    "pid",
    "leader_pid",
    "usesysid",
    "client_port",
    "sender_port",
    "active_pid",
    "datoid",
    "index_relid",
    "cluster_index_relid",
];

const DB: (&str, &str) = ("datname", "db.namespace");
const TABLE: &[(&str, &str)] = &[
    DB,
    ("schemaname", "postgresql.schema.name"),
    ("relname", "postgresql.table.name"),
];
const INDEX: &[(&str, &str)] = &[
    DB,
    ("schemaname", "postgresql.schema.name"),
    ("relname", "postgresql.table.name"),
    ("indexrelname", "postgresql.index.name"),
];
const PROGRESS: &[(&str, &str)] = &[
    DB,
    ("pid", "postgresql.pid"),
    ("relid", "postgresql.relid"),
    ("phase", "postgresql.phase"),
    ("command", "postgresql.command"),
];
const CLIENT: (&str, &str) = ("client_addr", "replication_client");

const fn v(
    kind: BatchKind,
    selector: Option<&'static str>,
    prefix: &'static str,
    cumulative: bool,
    gauges: &'static [&'static str],
    attrs: &'static [(&'static str, &'static str)],
) -> View {
    View {
        kind,
        selector,
        prefix,
        cumulative,
        gauges,
        attrs,
        skip: &[],
    }
}

use BatchKind::{PgDatabase as D, PgServerHealth as S, PgTables as T};

/// Every view with a metric form, in the order of docs/health.md.
const VIEWS: &[View] = &[
    v(
        D,
        None,
        "database",
        true,
        &["numbackends", "datfrozenxid_age", "mxid_age"],
        &[DB],
    ),
    View {
        skip: &[
            "checkpoints_timed",
            "checkpoints_req",
            "checkpoint_write_time",
            "checkpoint_sync_time",
            "buffers_checkpoint",
        ],
        ..v(S, Some("checkpointer"), "checkpointer", true, &[], &[])
    },
    v(S, Some("bgwriter"), "bgwriter", true, &[], &[]),
    v(S, Some("wal"), "wal", true, &[], &[]),
    v(
        S,
        Some("io"),
        "io",
        true,
        &["op_bytes"],
        &[
            ("backend_type", "postgresql.backend_type"),
            ("object", "postgresql.io.object"),
            ("context", "postgresql.io.context"),
        ],
    ),
    v(
        S,
        Some("progress_vacuum"),
        "progress_vacuum",
        false,
        &[],
        PROGRESS,
    ),
    v(
        S,
        Some("progress_analyze"),
        "progress_analyze",
        false,
        &[],
        PROGRESS,
    ),
    v(
        S,
        Some("progress_create_index"),
        "progress_create_index",
        false,
        &[],
        PROGRESS,
    ),
    v(
        S,
        Some("progress_cluster"),
        "progress_cluster",
        false,
        &[],
        PROGRESS,
    ),
    v(
        S,
        Some("replication"),
        "replication",
        false,
        &[],
        &[
            CLIENT,
            ("application_name", "postgresql.application_name"),
            ("state", "postgresql.state"),
            ("sync_state", "postgresql.sync_state"),
        ],
    ),
    v(
        S,
        Some("replication_slot"),
        "replication_slot",
        false,
        &[],
        &[
            ("slot_name", "postgresql.slot.name"),
            ("slot_type", "postgresql.slot.type"),
            ("database", "db.namespace"),
        ],
    ),
    v(S, Some("recovery"), "recovery", false, &[], &[]),
    v(S, Some("wal_receiver"), "wal_receiver", false, &[], &[]),
    v(
        T,
        Some("table"),
        "table",
        true,
        &[
            "n_live_tup",
            "n_dead_tup",
            "n_mod_since_analyze",
            "n_ins_since_vacuum",
            "relpages",
            "reltuples",
            "size_bytes",
            "relfrozenxid_age",
            "relminmxid_age",
        ],
        TABLE,
    ),
    v(
        T,
        Some("index"),
        "index",
        true,
        &["relpages", "size_bytes"],
        INDEX,
    ),
];

/// A receiver name: (view prefix, column, metric, unit, one more attribute).
type Name = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

/// The OpenTelemetry Collector PostgreSQL receiver's names (`metadata.yaml`).
#[rustfmt::skip]
const NAMES: &[Name] = &[
    ("database", "xact_commit", "postgresql.commits", "1", None),
    ("database", "xact_rollback", "postgresql.rollbacks", "1", None),
    ("database", "blks_read", "postgresql.blks_read", "{blks_read}", None),
    ("database", "blks_hit", "postgresql.blks_hit", "{blks_hit}", None),
    ("database", "tup_returned", "postgresql.tup_returned", "{tup_returned}", None),
    ("database", "tup_fetched", "postgresql.tup_fetched", "{tup_fetched}", None),
    ("database", "tup_inserted", "postgresql.tup_inserted", "{tup_inserted}", None),
    ("database", "tup_updated", "postgresql.tup_updated", "{tup_updated}", None),
    ("database", "tup_deleted", "postgresql.tup_deleted", "{tup_deleted}", None),
    ("database", "temp_files", "postgresql.temp_files", "{temp_file}", None),
    ("database", "temp_bytes", "postgresql.temp.io", "By", None),
    ("database", "deadlocks", "postgresql.deadlocks", "{deadlock}", None),
    ("database", "numbackends", "postgresql.backends", "1", None),
    ("checkpointer", "num_timed", "postgresql.bgwriter.checkpoint.count", "{checkpoints}", Some(("type", "scheduled"))),
    ("checkpointer", "num_requested", "postgresql.bgwriter.checkpoint.count", "{checkpoints}", Some(("type", "requested"))),
    ("checkpointer", "write_time", "postgresql.bgwriter.duration", "ms", Some(("type", "write"))),
    ("checkpointer", "sync_time", "postgresql.bgwriter.duration", "ms", Some(("type", "sync"))),
    ("checkpointer", "buffers_written", "postgresql.bgwriter.buffers.writes", "{buffers}", Some(("source", "checkpoints"))),
    ("bgwriter", "buffers_clean", "postgresql.bgwriter.buffers.writes", "{buffers}", Some(("source", "bgwriter"))),
    ("bgwriter", "buffers_backend", "postgresql.bgwriter.buffers.writes", "{buffers}", Some(("source", "backend"))),
    ("bgwriter", "buffers_backend_fsync", "postgresql.bgwriter.buffers.writes", "{buffers}", Some(("source", "backend_fsync"))),
    ("bgwriter", "maxwritten_clean", "postgresql.bgwriter.maxwritten", "1", None),
    ("bgwriter", "buffers_alloc", "postgresql.bgwriter.buffers.allocated", "{buffers}", None),
    ("replication", "replay_lag_bytes", "postgresql.replication.data_delay", "By", None),
    ("replication", "write_lag_s", "postgresql.wal.delay", "s", Some(("operation", "write"))),
    ("replication", "flush_lag_s", "postgresql.wal.delay", "s", Some(("operation", "flush"))),
    ("replication", "replay_lag_s", "postgresql.wal.delay", "s", Some(("operation", "replay"))),
    ("table", "seq_scan", "postgresql.sequential_scans", "{sequential_scan}", None),
    ("table", "n_tup_ins", "postgresql.operations", "1", Some(("operation", "ins"))),
    ("table", "n_tup_upd", "postgresql.operations", "1", Some(("operation", "upd"))),
    ("table", "n_tup_del", "postgresql.operations", "1", Some(("operation", "del"))),
    ("table", "n_tup_hot_upd", "postgresql.operations", "1", Some(("operation", "hot_upd"))),
    ("table", "n_live_tup", "postgresql.rows", "1", Some(("state", "live"))),
    ("table", "n_dead_tup", "postgresql.rows", "1", Some(("state", "dead"))),
    ("table", "size_bytes", "postgresql.table.size", "By", None),
    ("table", "vacuum_count", "postgresql.table.vacuum.count", "{vacuum}", None),
    ("table", "heap_blks_read", "postgresql.blocks_read", "1", Some(("source", "heap_read"))),
    ("table", "heap_blks_hit", "postgresql.blocks_read", "1", Some(("source", "heap_hit"))),
    ("table", "idx_blks_read", "postgresql.blocks_read", "1", Some(("source", "idx_read"))),
    ("table", "idx_blks_hit", "postgresql.blocks_read", "1", Some(("source", "idx_hit"))),
    ("table", "toast_blks_read", "postgresql.blocks_read", "1", Some(("source", "toast_read"))),
    ("table", "toast_blks_hit", "postgresql.blocks_read", "1", Some(("source", "toast_hit"))),
    ("table", "tidx_blks_read", "postgresql.blocks_read", "1", Some(("source", "tidx_read"))),
    ("table", "tidx_blks_hit", "postgresql.blocks_read", "1", Some(("source", "tidx_hit"))),
    ("index", "idx_scan", "postgresql.index.scans", "{scans}", None),
    ("index", "size_bytes", "postgresql.index.size", "By", None),
];

/// The unit of a column without a receiver name, from PostgreSQL's naming of it.
fn unit_of(column: &str) -> &'static str {
    if column.ends_with("_time") {
        "ms"
    } else if column.ends_with("_bytes") || column == "safe_wal_size" {
        "By"
    } else if column.ends_with("_s") {
        "s"
    } else {
        "1"
    }
}

/// The view of a record of `kind`.
fn view_of(kind: BatchKind, m: &Map<String, Value>) -> Option<&'static View> {
    let selector = match kind {
        BatchKind::PgServerHealth => m.get("section").and_then(Value::as_str),
        BatchKind::PgTables => m.get("kind").and_then(Value::as_str),
        _ => None,
    };
    VIEWS
        .iter()
        .find(|v| v.kind == kind && v.selector == selector)
}

/// The metrics of a pg_database, pg_server_health or pg_tables batch. Counters cover the interval
/// before the collection time: the batch's `table_interval_s` for a table pass, else its
/// `interval_s`.
pub fn metrics(batch: &Batch) -> Vec<Metric> {
    let time = collected_nanos(batch);
    let secs = batch
        .extra
        .get("table_interval_s")
        .and_then(Value::as_u64)
        .unwrap_or(batch.interval_s);
    let start = time.saturating_sub(secs.saturating_mul(1_000_000_000));
    let mut b = Builder::default();
    for record in &batch.data {
        let Ok(Value::Object(m)) = record.to_value() else {
            continue;
        };
        if let Some(view) = view_of(batch.kind, &m) {
            add(&mut b, view, &m, start, time);
        }
    }
    b.finish()
}

/// Whether the counters of a record of a cumulative view are deltas to send.
fn counted(m: &Map<String, Value>) -> bool {
    matches!(
        m.get("counters").and_then(Value::as_str),
        Some("delta" | "reset" | "new")
    )
}

fn add(b: &mut Builder, view: &View, m: &Map<String, Value>, start: u64, time: u64) {
    let base: Vec<KeyValue> = view
        .attrs
        .iter()
        .filter_map(|(field, key)| attr(key, m.get(*field)))
        .collect();
    let counters = view.cumulative && counted(m);
    for (column, value) in m {
        let c = column.as_str();
        if IDS.contains(&c) || view.skip.contains(&c) || view.attrs.iter().any(|a| a.0 == c) {
            continue;
        }
        let n = match (value.as_i64(), value.as_f64()) {
            (Some(i), _) => Num::Int(i),
            (None, Some(d)) => Num::Double(d),
            _ => continue,
        };
        let gauge = !view.cumulative || view.gauges.contains(&c);
        if !gauge && !counters {
            continue;
        }
        let named = NAMES.iter().find(|n| n.0 == view.prefix && n.1 == c);
        let generic;
        let (name, unit) = match named {
            Some(n) => (n.2, n.3),
            None => {
                generic = format!("postgresql.{}.{c}", view.prefix);
                (generic.as_str(), unit_of(c))
            }
        };
        let mut attributes = base.clone();
        if let Some((k, val)) = named.and_then(|n| n.4) {
            attributes.push(kv_str(k, val));
        }
        let (kind, from) = if gauge {
            (Kind::Gauge, time)
        } else {
            (Kind::DeltaSum, start)
        };
        b.add(name, unit, "", kind, point(attributes, from, time, n));
    }
}

#[cfg(test)]
mod tests;
