//! Unit tests of the health metrics: which numbers go as delta sums or gauges, the receiver
//! names and attributes, and the interval a counter covers.

use super::*;
use crate::batch::{AgentInfo, Record};
use crate::ship::encode::otlp::proto::{metric, number_data_point, NumberDataPoint};
use serde_json::json;

fn batch(kind: BatchKind, records: &[Value]) -> Batch {
    let data = records.iter().map(|r| Record::new(r).unwrap()).collect();
    Batch::new(kind, "p", AgentInfo::new("h"), None, 60, data)
}

/// (kind, points) of metric `name`.
fn find<'a>(m: &'a [Metric], name: &str) -> Option<(&'static str, &'a [NumberDataPoint])> {
    m.iter()
        .find(|x| x.name == name)
        .map(|x| match x.data.as_ref().unwrap() {
            metric::Data::Gauge(g) => ("gauge", &g.data_points[..]),
            metric::Data::Sum(s) if s.aggregation_temporality == 1 => ("delta", &s.data_points[..]),
            _ => ("other", &[][..]),
        })
}

fn attr_of<'a>(p: &'a NumberDataPoint, key: &str) -> Option<&'a str> {
    p.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            crate::ship::encode::otlp::proto::any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn int(p: &NumberDataPoint) -> i64 {
    match p.value {
        Some(number_data_point::Value::AsInt(i)) => i,
        _ => panic!("not an int: {p:?}"),
    }
}

#[test]
fn database_counters_are_delta_sums_only_when_counted_and_gauges_always() {
    let row = |counters: &str, datname: &str| {
        json!({"datid": 5, "datname": datname, "numbackends": 3, "xact_commit": 37,
            "blk_read_time": 1.5, "conflicts": 0, "stats_reset": null, "counters": counters})
    };
    let b = batch(
        BatchKind::PgDatabase,
        &[row("delta", "shop"), row("first", "crm")],
    );
    let m = metrics(&b);
    let (kind, commits) = find(&m, "postgresql.commits").unwrap();
    assert_eq!(kind, "delta");
    assert_eq!(
        commits.len(),
        1,
        "the first snapshot's counters are withheld"
    );
    assert_eq!(int(&commits[0]), 37);
    assert_eq!(attr_of(&commits[0], "db.namespace"), Some("shop"));
    assert_eq!(
        commits[0].time_unix_nano - commits[0].start_time_unix_nano,
        60_000_000_000
    );
    let (kind, backends) = find(&m, "postgresql.backends").unwrap();
    assert_eq!((kind, backends.len()), ("gauge", 2));
    let read_time = m
        .iter()
        .find(|x| x.name == "postgresql.database.blk_read_time");
    assert_eq!(read_time.map(|x| x.unit.as_str()), Some("ms"));
    assert!(find(&m, "postgresql.database.conflicts").is_some());
    assert!(
        !m.iter().any(|x| x.name.contains("datid")),
        "IDs are not metrics"
    );
}

#[test]
fn checkpointer_sends_each_counter_once_under_the_receiver_name() {
    let rec = json!({"section": "checkpointer", "counters": "reset", "num_timed": 2,
        "checkpoints_timed": 2, "num_requested": 1, "checkpoints_req": 1, "write_time": 10.0,
        "checkpoint_write_time": 10.0, "checkpoint_in_progress": false, "num_done": 3});
    let m = metrics(&batch(BatchKind::PgServerHealth, &[rec]));
    let (_, points) = find(&m, "postgresql.bgwriter.checkpoint.count").unwrap();
    let mut types: Vec<_> = points.iter().map(|p| attr_of(p, "type").unwrap()).collect();
    types.sort_unstable();
    assert_eq!(types, ["requested", "scheduled"]);
    assert_eq!(find(&m, "postgresql.bgwriter.duration").unwrap().1.len(), 1);
    assert!(find(&m, "postgresql.checkpointer.num_done").is_some());
    assert!(!m.iter().any(|x| x.name.contains("checkpoints_")));
}

#[test]
fn gauge_sections_send_every_number_with_their_attributes() {
    let recs = [
        json!({"section": "progress_vacuum", "pid": 77, "datname": "shop", "relid": 16384,
            "phase": "scanning heap", "heap_blks_total": 100, "heap_blks_scanned": 40}),
        json!({"section": "replication", "pid": 9, "client_addr": "10.0.0.2",
            "application_name": "standby1", "replay_lag_s": 0.25, "replay_lag_bytes": 4096}),
    ];
    let m = metrics(&batch(BatchKind::PgServerHealth, &recs));
    let (kind, p) = find(&m, "postgresql.progress_vacuum.heap_blks_scanned").unwrap();
    assert_eq!((kind, int(&p[0])), ("gauge", 40));
    assert_eq!(attr_of(&p[0], "postgresql.phase"), Some("scanning heap"));
    assert!(p[0].attributes.iter().any(|a| a.key == "postgresql.pid"));
    let (_, p) = find(&m, "postgresql.replication.data_delay").unwrap();
    assert_eq!(attr_of(&p[0], "replication_client"), Some("10.0.0.2"));
    let (_, p) = find(&m, "postgresql.wal.delay").unwrap();
    assert_eq!(attr_of(&p[0], "operation"), Some("replay"));
    assert!(!m.iter().any(|x| x.name.ends_with(".pid")));
}

#[test]
fn tables_and_indexes_carry_their_names_and_the_pass_interval() {
    let recs = [
        json!({"kind": "table", "datname": "shop", "schemaname": "public", "relname": "orders",
            "relid": 1, "n_tup_ins": 5, "n_dead_tup": 7, "size_bytes": 8192, "counters": "new"}),
        json!({"kind": "index", "datname": "shop", "schemaname": "public", "relname": "orders",
            "indexrelname": "orders_pkey", "idx_scan": 4, "counters": "delta"}),
    ];
    let mut b = batch(BatchKind::PgTables, &recs);
    b.extra.insert("table_interval_s".into(), json!(600));
    let m = metrics(&b);
    let (kind, p) = find(&m, "postgresql.operations").unwrap();
    assert_eq!((kind, int(&p[0])), ("delta", 5));
    assert_eq!(attr_of(&p[0], "operation"), Some("ins"));
    assert_eq!(attr_of(&p[0], "postgresql.table.name"), Some("orders"));
    assert_eq!(attr_of(&p[0], "postgresql.schema.name"), Some("public"));
    assert_eq!(
        p[0].time_unix_nano - p[0].start_time_unix_nano,
        600_000_000_000
    );
    let (kind, p) = find(&m, "postgresql.rows").unwrap();
    assert_eq!((kind, attr_of(&p[0], "state")), ("gauge", Some("dead")));
    let (_, p) = find(&m, "postgresql.index.scans").unwrap();
    assert_eq!(attr_of(&p[0], "postgresql.index.name"), Some("orders_pkey"));
}

#[test]
fn every_name_belongs_to_a_view_and_is_listed_once() {
    for n in NAMES {
        assert!(VIEWS.iter().any(|v| v.prefix == n.0), "{n:?}");
        assert_eq!(
            NAMES.iter().filter(|o| o.0 == n.0 && o.1 == n.1).count(),
            1,
            "{n:?}"
        );
    }
}
