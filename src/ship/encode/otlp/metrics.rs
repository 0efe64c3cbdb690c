//! Metrics of the `otlp` protocol: statement deltas as delta-temporality sums per statement
//! ([`statements`]), and the data-point builder the host metrics (`host.rs`) share. docs/otlp.md
//! has the full tables.

use serde_json::{Map, Value};

use super::proto::{
    metric, number_data_point, Gauge, KeyValue, Metric, NumberDataPoint, Sum,
    TEMPORALITY_CUMULATIVE, TEMPORALITY_DELTA,
};
use super::resource::{attr, collected_nanos, unix_nanos};
use crate::batch::Batch;

/// A number of a data point.
#[derive(Clone, Copy)]
pub(super) enum Num {
    Int(i64),
    Double(f64),
}

fn num(v: Option<&Value>) -> Option<Num> {
    let v = v?;
    match v.as_i64() {
        Some(i) => Some(Num::Int(i)),
        None => v.as_f64().map(Num::Double),
    }
}

pub(super) fn point(attributes: Vec<KeyValue>, start: u64, time: u64, n: Num) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(match n {
            Num::Int(i) => number_data_point::Value::AsInt(i),
            Num::Double(d) => number_data_point::Value::AsDouble(d),
        }),
    }
}

/// Collects data points by metric name, in first-seen order.
#[derive(Default)]
pub(super) struct Builder {
    metrics: Vec<(
        String,
        &'static str,
        &'static str,
        Kind,
        Vec<NumberDataPoint>,
    )>,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Gauge,
    DeltaSum,
    CumulativeSum,
}

impl Builder {
    pub(super) fn add(
        &mut self,
        name: &str,
        unit: &'static str,
        description: &'static str,
        kind: Kind,
        p: NumberDataPoint,
    ) {
        match self.metrics.iter_mut().find(|m| m.0 == name) {
            Some(m) => m.4.push(p),
            None => self
                .metrics
                .push((name.to_string(), unit, description, kind, vec![p])),
        }
    }

    pub(super) fn finish(self) -> Vec<Metric> {
        self.metrics
            .into_iter()
            .map(|(name, unit, description, kind, data_points)| Metric {
                name,
                unit: unit.into(),
                description: description.into(),
                data: Some(match kind {
                    Kind::Gauge => metric::Data::Gauge(Gauge { data_points }),
                    Kind::DeltaSum | Kind::CumulativeSum => metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: if kind == Kind::DeltaSum {
                            TEMPORALITY_DELTA
                        } else {
                            TEMPORALITY_CUMULATIVE
                        },
                        is_monotonic: true,
                    }),
                }),
            })
            .collect()
    }
}

/// The per-statement metrics: (record field, metric name, unit, kind, description).
const STATEMENT_METRICS: &[(&str, &str, &str, Kind, &str)] = &[
    (
        "calls",
        "postgresql.statement.calls",
        "{call}",
        Kind::DeltaSum,
        "Executions in the interval",
    ),
    (
        "total_exec_time_ms",
        "postgresql.statement.exec_time",
        "ms",
        Kind::DeltaSum,
        "Execution time in the interval",
    ),
    (
        "mean_exec_time_ms",
        "postgresql.statement.mean_exec_time",
        "ms",
        Kind::Gauge,
        "Mean execution time in the interval",
    ),
    (
        "rows",
        "postgresql.statement.rows",
        "{row}",
        Kind::DeltaSum,
        "Rows returned or affected in the interval",
    ),
    (
        "shared_blks_hit",
        "postgresql.statement.shared_blocks.hit",
        "{block}",
        Kind::DeltaSum,
        "Shared buffer hits",
    ),
    (
        "shared_blks_read",
        "postgresql.statement.shared_blocks.read",
        "{block}",
        Kind::DeltaSum,
        "Shared blocks read",
    ),
    (
        "shared_blks_dirtied",
        "postgresql.statement.shared_blocks.dirtied",
        "{block}",
        Kind::DeltaSum,
        "Shared blocks dirtied",
    ),
    (
        "shared_blks_written",
        "postgresql.statement.shared_blocks.written",
        "{block}",
        Kind::DeltaSum,
        "Shared blocks written",
    ),
    (
        "temp_blks_read",
        "postgresql.statement.temp_blocks.read",
        "{block}",
        Kind::DeltaSum,
        "Temporary blocks read",
    ),
    (
        "temp_blks_written",
        "postgresql.statement.temp_blocks.written",
        "{block}",
        Kind::DeltaSum,
        "Temporary blocks written",
    ),
];

/// The statement deltas of a pg_statements batch: the top `top` statements by total time, each a
/// data point keyed by its attributes (`postgresql.queryid`, `db.query.text` masked, database, user).
pub fn statements(batch: &Batch, top: usize) -> Vec<Metric> {
    let mut records: Vec<Map<String, Value>> = batch
        .data
        .iter()
        .filter_map(|r| match r.to_value() {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        })
        .collect();
    let total = |m: &Map<String, Value>| {
        m.get("total_exec_time_ms")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    records.sort_by(|a, b| total(b).total_cmp(&total(a)));
    records.truncate(top);
    let fallback = collected_nanos(batch);
    let mut b = Builder::default();
    for m in &records {
        let start = m
            .get("interval_start")
            .and_then(Value::as_str)
            .map_or(0, unix_nanos);
        let end = m
            .get("interval_end")
            .and_then(Value::as_str)
            .map_or(fallback, unix_nanos);
        let attributes: Vec<KeyValue> = [
            attr("postgresql.queryid", m.get("queryid")),
            attr("db.query.text", m.get("query")),
            attr("db.namespace", m.get("dbname")),
            attr("db.user", m.get("username")),
            attr("postgresql.toplevel", m.get("toplevel")),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (field, name, unit, kind, description) in STATEMENT_METRICS {
            if let Some(n) = num(m.get(*field)) {
                b.add(
                    name,
                    unit,
                    description,
                    *kind,
                    point(attributes.clone(), start, end, n),
                );
            }
        }
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_table_has_distinct_names() {
        let mut names: Vec<&str> = STATEMENT_METRICS.iter().map(|m| m.1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STATEMENT_METRICS.len());
    }
}
