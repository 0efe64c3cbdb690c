//! The pg_stat_statements counters the agent reports, and which column holds each in every extension
//! version. Gated on the installed extension version, not the server's: a cluster upgraded without
//! `ALTER EXTENSION pg_stat_statements UPDATE` keeps the old columns (for example `total_time` on a
//! PostgreSQL 13 server still at 1.7).

/// An extension version such as 1.10, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExtVersion(pub u32, pub u32);

impl ExtVersion {
    /// Parses `extversion` ("1.10").
    pub fn parse(s: &str) -> Option<ExtVersion> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(ExtVersion(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl std::fmt::Display for ExtVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// How a counter is written in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count: a JSON integer.
    Count,
    /// Milliseconds: a JSON number rounded to microseconds.
    Ms,
}

/// One reported counter.
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    /// Field name in the pg_statements record.
    pub name: &'static str,
    pub unit: Unit,
    /// The column in the newest extension versions, and the first version that has it.
    pub column: &'static str,
    pub since: ExtVersion,
    /// The older column holding the same value before `since`, if there was one.
    pub older: Option<(&'static str, ExtVersion)>,
}

const fn c(name: &'static str, unit: Unit, column: &'static str, since: ExtVersion) -> Counter {
    Counter {
        name,
        unit,
        column,
        since,
        older: None,
    }
}

const V0: ExtVersion = ExtVersion(1, 0);
const V1_8: ExtVersion = ExtVersion(1, 8);
const V1_10: ExtVersion = ExtVersion(1, 10);
const V1_11: ExtVersion = ExtVersion(1, 11);
const V1_12: ExtVersion = ExtVersion(1, 12);

/// `pg_stat_statements_info`, `toplevel`: 1.9 (PostgreSQL 14).
pub const INFO_SINCE: ExtVersion = ExtVersion(1, 9);
/// `stats_since` per entry: 1.11 (PostgreSQL 17).
pub const STATS_SINCE_SINCE: ExtVersion = V1_11;

use Unit::{Count, Ms};

/// Every counter, in record order. `calls` must stay first and `total_exec_time_ms` second.
pub const COUNTERS: &[Counter] = &[
    c("calls", Count, "calls", V0),
    Counter {
        older: Some(("total_time", V0)),
        ..c("total_exec_time_ms", Ms, "total_exec_time", V1_8)
    },
    c("total_plan_time_ms", Ms, "total_plan_time", V1_8),
    c("plans", Count, "plans", V1_8),
    c("rows", Count, "rows", V0),
    c("shared_blks_hit", Count, "shared_blks_hit", V0),
    c("shared_blks_read", Count, "shared_blks_read", V0),
    c("shared_blks_dirtied", Count, "shared_blks_dirtied", V0),
    c("shared_blks_written", Count, "shared_blks_written", V0),
    c("local_blks_hit", Count, "local_blks_hit", V0),
    c("local_blks_read", Count, "local_blks_read", V0),
    c("local_blks_dirtied", Count, "local_blks_dirtied", V0),
    c("local_blks_written", Count, "local_blks_written", V0),
    c("temp_blks_read", Count, "temp_blks_read", V0),
    c("temp_blks_written", Count, "temp_blks_written", V0),
    Counter {
        older: Some(("blk_read_time", V0)),
        ..c("shared_blk_read_time_ms", Ms, "shared_blk_read_time", V1_11)
    },
    Counter {
        older: Some(("blk_write_time", V0)),
        ..c(
            "shared_blk_write_time_ms",
            Ms,
            "shared_blk_write_time",
            V1_11,
        )
    },
    c("local_blk_read_time_ms", Ms, "local_blk_read_time", V1_11),
    c("local_blk_write_time_ms", Ms, "local_blk_write_time", V1_11),
    c("temp_blk_read_time_ms", Ms, "temp_blk_read_time", V1_10),
    c("temp_blk_write_time_ms", Ms, "temp_blk_write_time", V1_10),
    c("wal_records", Count, "wal_records", V1_8),
    c("wal_fpi", Count, "wal_fpi", V1_8),
    c("wal_bytes", Count, "wal_bytes", V1_8),
    c("wal_buffers_full", Count, "wal_buffers_full", V1_12),
    c("jit_functions", Count, "jit_functions", V1_10),
    c("jit_generation_time_ms", Ms, "jit_generation_time", V1_10),
    c("jit_inlining_count", Count, "jit_inlining_count", V1_10),
    c("jit_inlining_time_ms", Ms, "jit_inlining_time", V1_10),
    c(
        "jit_optimization_count",
        Count,
        "jit_optimization_count",
        V1_10,
    ),
    c(
        "jit_optimization_time_ms",
        Ms,
        "jit_optimization_time",
        V1_10,
    ),
    c("jit_emission_count", Count, "jit_emission_count", V1_10),
    c("jit_emission_time_ms", Ms, "jit_emission_time", V1_10),
    c("jit_deform_count", Count, "jit_deform_count", V1_11),
    c("jit_deform_time_ms", Ms, "jit_deform_time", V1_11),
    c(
        "parallel_workers_to_launch",
        Count,
        "parallel_workers_to_launch",
        V1_12,
    ),
    c(
        "parallel_workers_launched",
        Count,
        "parallel_workers_launched",
        V1_12,
    ),
];

/// The columns of an entry's lifetime execution-time spread in version `v`: standard deviation,
/// smallest, largest (`*_exec_time` from 1.8, `*_time` before).
pub fn exec_spread_columns(v: ExtVersion) -> [&'static str; 3] {
    if v >= V1_8 {
        ["stddev_exec_time", "min_exec_time", "max_exec_time"]
    } else {
        ["stddev_time", "min_time", "max_time"]
    }
}

/// Index of `calls` in [`COUNTERS`].
pub const CALLS: usize = 0;
/// Index of `total_exec_time_ms` in [`COUNTERS`].
pub const TOTAL_EXEC: usize = 1;
/// Index of `total_plan_time_ms` in [`COUNTERS`].
pub const TOTAL_PLAN: usize = 2;

/// The column holding counter `c` in extension version `v`, if that version tracks it.
pub fn column_for(c: &Counter, v: ExtVersion) -> Option<&'static str> {
    if v >= c.since {
        return Some(c.column);
    }
    match c.older {
        Some((col, since)) if v >= since => Some(col),
        _ => None,
    }
}

/// The counters present in version `v`, as indexes into [`COUNTERS`]: the layout of a snapshot.
pub fn layout(v: ExtVersion) -> Vec<usize> {
    (0..COUNTERS.len())
        .filter(|&i| column_for(&COUNTERS[i], v).is_some())
        .collect()
}

/// The select list reading `layout`'s counters as float8 (integers up to 2^53 are exact).
pub fn select_list(v: ExtVersion, layout: &[usize]) -> String {
    layout
        .iter()
        .filter_map(|&i| column_for(&COUNTERS[i], v))
        .map(|col| {
            // Counters are int8 or float8 and read as they are (a cast per value costs the server
            // a function call for each of ~50 columns of every entry); `wal_bytes` is numeric,
            // which the client does not decode.
            if col == "wal_bytes" {
                format!("{col}::float8")
            } else {
                col.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_follow_the_extension_version() {
        let total = &COUNTERS[TOTAL_EXEC];
        assert_eq!(column_for(total, ExtVersion(1, 7)), Some("total_time"));
        assert_eq!(column_for(total, ExtVersion(1, 8)), Some("total_exec_time"));
        let read = COUNTERS
            .iter()
            .find(|c| c.name == "shared_blk_read_time_ms")
            .unwrap();
        assert_eq!(column_for(read, ExtVersion(1, 10)), Some("blk_read_time"));
        assert_eq!(
            column_for(read, ExtVersion(1, 11)),
            Some("shared_blk_read_time")
        );
        assert!(layout(ExtVersion(1, 7)).len() < layout(ExtVersion(1, 8)).len());
        assert_eq!(layout(ExtVersion(1, 12)).len(), COUNTERS.len());
        assert_eq!(COUNTERS[CALLS].name, "calls");
        assert_eq!(COUNTERS[TOTAL_PLAN].name, "total_plan_time_ms");
        assert!(ExtVersion::parse("1.10").unwrap() > ExtVersion::parse("1.9").unwrap());
        assert_eq!(ExtVersion::parse("x"), None);
    }
}
