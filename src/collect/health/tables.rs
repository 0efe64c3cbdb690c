//! `pg_tables`: table and index statistics of every database the role may connect to, every
//! `[health] table_interval_s`.
//!
//! A pass lists the databases that allow connections and that the role may `CONNECT` to, then
//! visits them one at a time: the configured database over the cycle's own session, every other
//! over ONE extra session, opened through [`crate::db::Db`] with the same safe settings (read-only,
//! `statement_timeout`, `application_name`) and closed before the next database, so the agent never
//! holds more than two sessions. A pass that does not fit in one collector budget goes on in the
//! next cycles. Per database, the records are `pg_stat_user_tables` joined with
//! `pg_statio_user_tables`, `age(relfrozenxid)` and a lock-free size estimate (`relpages` times
//! the block size, as of the last VACUUM or ANALYZE: `pg_table_size` would take a lock), and
//! `pg_stat_user_indexes` with `pg_statio_user_indexes`. Counters are deltas between passes.
//! Kept: the union of the top `table_top_n` by activity, by dead tuples and by size, for tables
//! and for indexes, then at most `table_max_bytes` of JSON; the rest are counted in `omitted`.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use super::delta::Baseline;
use super::{baseline_writer, begin_baseline, fold, save_baseline, Reader, Row};
use crate::batch::BatchKind;
use crate::collect::state_write::StateWriter;
use crate::collect::{CollectError, Collected, Collector, Context};
use crate::db::{Db, Session};

const DATABASES: &str = "SELECT row_to_json(x)::text AS json FROM (SELECT datname \
     FROM pg_database WHERE datallowconn AND NOT datistemplate \
     AND has_database_privilege(datname, 'CONNECT') ORDER BY datname) x";

const TABLES: &str = "SELECT row_to_json(x)::text AS json FROM (SELECT current_database() \
     AS datname, 'table' AS kind, s.*, io.heap_blks_read, io.heap_blks_hit, io.idx_blks_read, \
     io.idx_blks_hit, io.toast_blks_read, io.toast_blks_hit, io.tidx_blks_read, io.tidx_blks_hit, \
     c.relpages, c.reltuples, c.relpages::int8 * current_setting('block_size')::int8 AS size_bytes, \
     age(c.relfrozenxid) AS relfrozenxid_age, mxid_age(c.relminmxid) AS relminmxid_age \
     FROM pg_stat_user_tables s JOIN pg_statio_user_tables io USING (relid) \
     JOIN pg_class c ON c.oid = s.relid) x";

const INDEXES: &str = "SELECT row_to_json(x)::text AS json FROM (SELECT current_database() \
     AS datname, 'index' AS kind, i.*, io.idx_blks_read, io.idx_blks_hit, c.relpages, \
     c.relpages::int8 * current_setting('block_size')::int8 AS size_bytes \
     FROM pg_stat_user_indexes i JOIN pg_statio_user_indexes io USING (indexrelid) \
     JOIN pg_class c ON c.oid = i.indexrelid) x";

const TABLE_GAUGES: &[&str] = &[
    "relid",
    "n_live_tup",
    "n_dead_tup",
    "n_mod_since_analyze",
    "n_ins_since_vacuum",
    "relpages",
    "reltuples",
    "size_bytes",
    "relfrozenxid_age",
    "relminmxid_age",
];
const INDEX_GAUGES: &[&str] = &["relid", "indexrelid", "relpages", "size_bytes"];
/// The counters whose deltas rank a table (or an index) by activity.
const ACTIVITY: &[&str] = &[
    "seq_scan",
    "idx_scan",
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_del",
];

pub struct TablesCollector {
    baseline: Baseline,
    reader: Reader,
    saver: StateWriter,
    /// Databases left in the current pass.
    pending: VecDeque<String>,
    next_pass: Option<Instant>,
}

impl TablesCollector {
    pub fn new(state_dir: &Path, read_only: bool) -> TablesCollector {
        TablesCollector {
            saver: baseline_writer(state_dir, "tables", read_only),
            baseline: Baseline::new(state_dir, "tables"),
            reader: Reader::default(),
            pending: VecDeque::new(),
            next_pass: None,
        }
    }
}

/// A number field of `row` (0 when absent: a first pass has no counters).
fn num(row: &Row, f: &str) -> f64 {
    row.get(f).and_then(Value::as_f64).unwrap_or(0.0)
}

/// A row read, held as compact JSON with the figures it is ranked by, so a database of thousands
/// of tables costs about a kilobyte per table while it is ranked.
struct Candidate {
    activity: f64,
    size: f64,
    dead: f64,
    json: String,
}

impl Candidate {
    fn of(row: &Row) -> Result<Candidate, CollectError> {
        Ok(Candidate {
            activity: activity(row),
            size: num(row, "size_bytes"),
            dead: num(row, "n_dead_tup"),
            json: serde_json::to_string(row).map_err(|e| CollectError::Column {
                query: "health_tables",
                column: "json",
                message: e.to_string(),
            })?,
        })
    }
}

/// The rows kept of one kind: the union of the top `n` by each ranking, most active first; with
/// how many were left out.
fn top(rows: Vec<Candidate>, n: usize, by_dead: bool) -> (Vec<Candidate>, usize) {
    let total = rows.len();
    let mut keep = vec![total <= n; total];
    if total > n {
        let mut mark = |key: &dyn Fn(&Candidate) -> f64| {
            let mut order: Vec<usize> = (0..total).collect();
            order.sort_by(|&a, &b| key(&rows[b]).total_cmp(&key(&rows[a])));
            for &i in order.iter().take(n) {
                keep[i] = true;
            }
        };
        mark(&|c| c.activity);
        mark(&|c| c.size);
        if by_dead {
            mark(&|c| c.dead);
        }
    }
    let mut kept: Vec<Candidate> = rows
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect();
    kept.sort_by(|a, b| b.activity.total_cmp(&a.activity));
    let omitted = total - kept.len();
    (kept, omitted)
}

fn activity(r: &Row) -> f64 {
    ACTIVITY.iter().map(|f| num(r, f)).sum()
}

impl TablesCollector {
    /// Reads one database over `session`: its tables and indexes, folded and bounded.
    async fn visit(
        &mut self,
        session: &mut Session,
        datname: &str,
        top_n: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Row>, usize), CollectError> {
        let mut out = Vec::new();
        let mut omitted = 0;
        let mut used = 0;
        for (view, sql, gauges, key) in [
            ("tables", TABLES, TABLE_GAUGES, "relid"),
            ("indexes", INDEXES, INDEX_GAUGES, "indexrelid"),
        ] {
            let section = format!("pg_stat_user_{view}");
            let view = format!("{view}/{datname}");
            let mut rows = Vec::new();
            let baseline = &mut self.baseline;
            let read = self
                .reader
                .each(session, &section, "health_tables", sql, |r| {
                    let k = super::text(&r, key);
                    rows.push(Candidate::of(&fold(baseline, &view, k, r, gauges))?);
                    Ok(())
                })
                .await?;
            if read.is_none() {
                continue;
            }
            self.baseline.finish(&view);
            let (kept, dropped) = top(rows, top_n, key == "relid");
            omitted += dropped;
            for c in kept {
                if used + c.json.len() > max_bytes {
                    omitted += 1;
                    continue;
                }
                used += c.json.len();
                if let Ok(r) = serde_json::from_str::<Row>(&c.json) {
                    out.push(r);
                }
            }
        }
        Ok((out, omitted))
    }
}

impl Collector for TablesCollector {
    const NAME: &'static str = "health_tables";
    const KIND: BatchKind = BatchKind::PgTables;
    type Record = Row;

    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<Row>>, CollectError> {
        let settings = ctx.settings;
        let health = &settings.health;
        let (true, Some(interval)) = (health.enabled, health.table_interval) else {
            return Ok(None);
        };
        let started = Instant::now();
        let counters = ctx.counters;
        let (session, server) = ctx.db()?;
        begin_baseline(&mut self.baseline, &server.info.system_identifier, counters);
        if self.pending.is_empty() {
            if self.next_pass.is_some_and(|t| started < t) {
                return Ok(None);
            }
            let Some(rows) = self
                .reader
                .rows(session, "pg_database", "health_databases", DATABASES)
                .await?
            else {
                return Ok(None);
            };
            self.pending = rows.iter().map(|r| super::text(r, "datname")).collect();
            self.next_pass = Some(started + interval);
        }
        // Half the collector's budget, so a slow database leaves room to end cleanly; the rest
        // of the pass goes on next cycle.
        let room = settings.safety.client_timeout;
        let mut records = Vec::new();
        let mut omitted = 0;
        let mut visited = Vec::new();
        while let Some(datname) = self.pending.front().cloned() {
            if !visited.is_empty() && started.elapsed() > room / 2 {
                break;
            }
            self.pending.pop_front();
            let result = if datname == settings.database {
                self.visit(
                    session,
                    &datname,
                    health.table_top_n,
                    health.table_max_bytes,
                )
                .await
            } else {
                match other_session(settings, &datname).await {
                    Ok((db, mut extra)) => {
                        let r = self
                            .visit(
                                &mut extra,
                                &datname,
                                health.table_top_n,
                                health.table_max_bytes,
                            )
                            .await;
                        drop(extra);
                        db.close();
                        r
                    }
                    Err(e) => {
                        tracing::warn!(database = %datname, error = %e,
                            "health: cannot connect to this database; its tables are skipped this pass");
                        continue;
                    }
                }
            };
            match result {
                Ok((rows, o)) => {
                    records.extend(rows);
                    omitted += o;
                    visited.push(Value::from(datname));
                }
                // A failed query on one database: said, and the pass goes on with the next.
                Err(CollectError::Db(e)) => {
                    tracing::warn!(database = %datname, error = %e,
                        "health: cannot read this database's tables; skipped this pass");
                }
                Err(e) => return Err(e),
            }
        }
        save_baseline(&self.baseline, &mut self.saver, counters);
        if visited.is_empty() {
            return Ok(None);
        }
        let mut out = Collected::new(records);
        out.extra.insert("omitted".into(), Value::from(omitted));
        out.extra.insert("databases".into(), Value::Array(visited));
        out.extra
            .insert("pass_complete".into(), Value::from(self.pending.is_empty()));
        // The deltas cover the time between passes, not the envelope's collection interval.
        out.extra
            .insert("table_interval_s".into(), Value::from(interval.as_secs()));
        Ok(Some(out))
    }
}

/// One session to `datname` with the configured role and safety settings, from a pool of one
/// that the caller closes after the visit.
async fn other_session(
    settings: &crate::collect::CollectSettings,
    datname: &str,
) -> Result<(Db, Session), crate::db::DbError> {
    let mut pg = settings.postgres.clone();
    pg.database = datname.to_string();
    let mut safety = settings.safety.clone();
    safety.max_connections = 1;
    let db = Db::new(&pg, &safety)?;
    let session = db.session().await?;
    Ok((db, session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn top_keeps_the_union_of_rankings_and_counts_the_rest() {
        let rows: Vec<Candidate> = (0..10)
            .map(|i| {
                let r = json!({"relid": i, "seq_scan": i, "size_bytes": 100 - i, "n_dead_tup": if i == 5 { 1000 } else { 0 }});
                Candidate::of(r.as_object().unwrap()).unwrap()
            })
            .collect();
        let (kept, omitted) = top(rows, 2, true);
        let ids: Vec<i64> = kept
            .iter()
            .map(|c| {
                serde_json::from_str::<Value>(&c.json).unwrap()["relid"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        // Most active first: 9, 8; largest: 0, 1; most dead tuples: 5 (and one tie).
        for id in [9, 8, 0, 1, 5] {
            assert!(ids.contains(&id), "{ids:?}");
        }
        assert_eq!(ids[0], 9);
        assert_eq!(kept.len() + omitted, 10);
    }
}
