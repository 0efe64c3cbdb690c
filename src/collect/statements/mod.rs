//! `pg_statements`: per-interval deltas of pg_stat_statements, one record per (userid, dbid, queryid,
//! toplevel) that ran in the interval, the top `safety.max_statement_rows` by total time.
//!
//! Each cycle reads every entry's counters with `pg_stat_statements(false)` (no texts), subtracts the
//! baseline ([`baseline`]), keeps the top entries, and only then fetches the texts it lacks
//! ([`texts`]). The agent's own statements are left out. Without the extension (or its library) the
//! collector warns once with the fix and reports nothing until it appears; the others are unaffected.

pub mod baseline;
pub mod columns;
pub mod texts;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::types::Type;

use super::{col, counters, query_text, round_ms, CollectError, Collected, Collector, Context};
use crate::db::Session;
use crate::ship::batch::{now_rfc3339, BatchKind};
use baseline::{Delta, Entry, Key, Snapshot};
use columns::{
    ExtVersion, Unit, CALLS, COUNTERS, INFO_SINCE, STATS_SINCE_SINCE, TOTAL_EXEC, TOTAL_PLAN,
};
use texts::{Lookup, TextCache};

/// Upper bound on rows read from pg_stat_statements per cycle (pg_stat_statements.max is usually
/// 5,000; this only guards against a server configured far beyond that).
const MAX_ENTRIES: i64 = 100_000;

/// One statement's activity during the interval.
#[derive(Debug, Clone, Serialize)]
pub struct StatementRecord {
    /// Decimal string: 64-bit ids exceed JSON's exact integer range.
    pub queryid: String,
    pub userid: u32,
    pub dbid: u32,
    /// False for statements nested in functions; null before pg_stat_statements 1.9 (PostgreSQL 13).
    pub toplevel: Option<bool>,
    pub dbname: Option<String>,
    pub username: Option<String>,
    /// The normalised text; null when the server no longer had it.
    pub query: Option<String>,
    pub query_truncated: bool,
    pub interval_start: String,
    pub interval_end: String,
    /// The entry was reset or evicted during the interval: counters run from that point.
    pub reset: bool,
    pub mean_exec_time_ms: f64,
    /// Every counter of [`columns::COUNTERS`]; null when this server's extension does not track it.
    #[serde(flatten)]
    pub counters: Map<String, Value>,
}

pub struct StatementsCollector {
    state_dir: PathBuf,
    baseline: Option<Snapshot>,
    tried_disk: bool,
    texts: TextCache,
    warned_unavailable: bool,
    warned_save: bool,
}

/// Where the extension lives, and its version.
struct Extension {
    /// Schema-qualified function name, quoted.
    function: String,
    info_view: String,
    version: ExtVersion,
    version_text: String,
}

impl StatementsCollector {
    pub fn new(state_dir: &std::path::Path) -> StatementsCollector {
        StatementsCollector {
            state_dir: state_dir.to_path_buf(),
            baseline: None,
            tried_disk: false,
            texts: TextCache::default(),
            warned_unavailable: false,
            warned_save: false,
        }
    }

    fn unavailable(&mut self, dbname: &str, reason: &str) -> Option<Collected<StatementRecord>> {
        counters::STATEMENTS_UNAVAILABLE.incr();
        if !self.warned_unavailable {
            self.warned_unavailable = true;
            tracing::warn!(
                collector = "statements",
                database = dbname,
                reason,
                fix = "add pg_stat_statements to shared_preload_libraries in postgresql.conf, restart \
                       PostgreSQL, then run CREATE EXTENSION pg_stat_statements; in this database",
                "pg_stat_statements is not available: no pg_statements batches until it is (other \
                 collectors are unaffected)"
            );
        }
        None
    }

    /// The baseline to subtract from: in memory, else the saved one (once per process).
    fn previous(&mut self, cur: &Snapshot) -> Option<Snapshot> {
        if self.baseline.is_none() && !self.tried_disk {
            self.tried_disk = true;
            match baseline::load(&self.state_dir) {
                Ok(saved) => self.baseline = saved,
                Err(e) => {
                    counters::STATEMENTS_BASELINE_DISCARDED.incr();
                    tracing::warn!(error = %e, "saved statement baseline unusable; starting a new one");
                }
            }
        }
        let prev = self.baseline.take()?;
        if baseline::usable(&prev, cur) {
            Some(prev)
        } else {
            counters::STATEMENTS_BASELINE_DISCARDED.incr();
            tracing::info!(
                "statement baseline belongs to another server or extension version; starting a new one"
            );
            None
        }
    }

    fn keep(&mut self, snap: Snapshot) {
        match baseline::save(&self.state_dir, &snap) {
            Ok(()) => self.warned_save = false,
            Err(e) if !self.warned_save => {
                self.warned_save = true;
                tracing::warn!(error = %e, "cannot save the statement baseline; deltas will not survive a restart");
            }
            Err(_) => {}
        }
        self.baseline = Some(snap);
    }
}

impl Collector for StatementsCollector {
    const NAME: &'static str = "statements";
    const KIND: BatchKind = BatchKind::PgStatements;
    type Record = StatementRecord;

    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<StatementRecord>>, CollectError> {
        let config = ctx.config;
        let dbname = config.postgres.database.clone();
        let (session, server) = ctx.db()?;
        let ext = match extension(session).await? {
            Ok(ext) => ext,
            Err(reason) => return Ok(self.unavailable(&dbname, &reason)),
        };
        let cur = match snapshot(session, &ext, &server.info.system_identifier).await {
            Ok(s) => s,
            // 55000: the extension exists but its library is not in shared_preload_libraries.
            Err(CollectError::Db(e)) if e.sqlstate() == Some("55000") => {
                return Ok(self.unavailable(&dbname, &e.to_string()));
            }
            Err(e) => return Err(e),
        };
        self.warned_unavailable = false;
        let Some(prev) = self.previous(&cur) else {
            let mut collected = Collected::new(Vec::new());
            batch_fields(&mut collected.extra, None, &cur, 0, false, "new");
            self.keep(cur);
            return Ok(Some(collected));
        };
        let (mut deltas, full_reset) = baseline::deltas(&prev, &cur);
        let resets = deltas.iter().filter(|d| d.reset).count() as u64;
        counters::STATEMENTS_RESET_ENTRIES.add(resets);
        let total = |d: &Delta| value(&cur, d, TOTAL_EXEC) + value(&cur, d, TOTAL_PLAN);
        // The agent's own cost to the server, for /metrics: its statements' time and calls.
        let agent_cost = |d: &Delta| {
            counters::AGENT_EXEC_TIME_US.add((total(d) * 1000.0) as u64);
            counters::AGENT_CALLS.add(value(&cur, d, CALLS) as u64);
        };
        let before = deltas.len();
        deltas.retain(|d| {
            let own = self.texts.is_agent(d.key.queryid);
            if own {
                agent_cost(d);
            }
            !own
        });
        let mut agent_own = (before - deltas.len()) as u64;
        deltas.sort_by(|a, b| total(b).total_cmp(&total(a)).then(a.key.cmp(&b.key)));

        let max = config.safety.max_statement_rows;
        let max_chars = (config.safety.max_query_length + 1).min(i32::MAX as usize) as i32;
        let mut chosen: Vec<Delta> = Vec::new();
        let mut next = 0;
        while chosen.len() < max && next < deltas.len() {
            let window = next..(next + max - chosen.len()).min(deltas.len());
            next = window.end;
            let mut unknown: Vec<i64> = deltas[window.clone()]
                .iter()
                .map(|d| d.key.queryid)
                .filter(|q| matches!(self.texts.lookup(*q), Lookup::Unknown))
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            self.texts
                .fetch(session, &ext.function, &unknown, max_chars)
                .await?;
            for d in &deltas[window] {
                if self.texts.is_agent(d.key.queryid) {
                    agent_own += 1;
                    agent_cost(d);
                } else {
                    chosen.push(d.clone());
                }
            }
        }
        let omitted = (deltas.len() - next) as u64
            - deltas[next..]
                .iter()
                .filter(|d| self.texts.is_agent(d.key.queryid))
                .count() as u64;
        counters::STATEMENTS_AGENT_OWN.add(agent_own);
        counters::STATEMENTS_OMITTED.add(omitted);

        let mut dbids: Vec<u32> = chosen.iter().map(|d| d.key.dbid).collect();
        let mut userids: Vec<u32> = chosen.iter().map(|d| d.key.userid).collect();
        dbids.sort_unstable();
        dbids.dedup();
        userids.sort_unstable();
        userids.dedup();
        let (dbs, roles) = if chosen.is_empty() {
            Default::default()
        } else {
            texts::names(session, &dbids, &userids).await?
        };

        let mut records = Vec::with_capacity(chosen.len());
        for d in &chosen {
            let (query, query_truncated) = match self.texts.lookup(d.key.queryid) {
                Lookup::Text(raw) => {
                    let (t, cut) = query_text(raw, config);
                    (Some(t), cut)
                }
                _ => {
                    counters::STATEMENTS_TEXT_MISSING.incr();
                    (None, false)
                }
            };
            records.push(record(d, &prev, &cur, query, query_truncated, &dbs, &roles));
        }
        let mut collected = Collected::new(records);
        let evicted = match (prev.dealloc, cur.dealloc) {
            (Some(a), Some(b)) if b >= a && !full_reset => Some(b - a),
            (_, Some(b)) if full_reset => Some(b),
            _ => None,
        };
        batch_fields(
            &mut collected.extra,
            Some(&prev),
            &cur,
            omitted,
            full_reset,
            "continued",
        );
        collected
            .extra
            .insert("evicted".into(), evicted.map_or(Value::Null, Value::from));
        self.keep(cur);
        Ok(Some(collected))
    }
}

fn batch_fields(
    extra: &mut Map<String, Value>,
    prev: Option<&Snapshot>,
    cur: &Snapshot,
    omitted: u64,
    stats_reset: bool,
    baseline: &str,
) {
    extra.insert(
        "interval_start".into(),
        prev.map_or(Value::Null, |p| p.taken_at.clone().into()),
    );
    extra.insert("interval_end".into(), cur.taken_at.clone().into());
    extra.insert("omitted".into(), omitted.into());
    extra.insert("stats_reset".into(), stats_reset.into());
    extra.insert("baseline".into(), baseline.into());
    extra.insert("extension_version".into(), cur.extversion.clone().into());
    extra.entry("evicted").or_insert(Value::Null);
}

/// The value of counter `counter` in a delta (0 when the layout lacks it).
fn value(snap: &Snapshot, d: &Delta, counter: usize) -> f64 {
    snap.layout
        .iter()
        .position(|&i| i == counter)
        .map_or(0.0, |p| d.values[p])
}

fn record(
    d: &Delta,
    prev: &Snapshot,
    cur: &Snapshot,
    query: Option<String>,
    query_truncated: bool,
    dbs: &HashMap<u32, String>,
    roles: &HashMap<u32, String>,
) -> StatementRecord {
    let mut counters = Map::new();
    for (i, c) in COUNTERS.iter().enumerate() {
        let v = match cur.layout.iter().position(|&l| l == i) {
            None => Value::Null,
            Some(p) => match c.unit {
                Unit::Count => Value::from(d.values[p].round() as i64),
                Unit::Ms => Value::from(round_ms(d.values[p])),
            },
        };
        counters.insert(c.name.to_string(), v);
    }
    let calls = value(cur, d, columns::CALLS);
    StatementRecord {
        queryid: d.key.queryid.to_string(),
        userid: d.key.userid,
        dbid: d.key.dbid,
        toplevel: d.key.toplevel,
        dbname: dbs.get(&d.key.dbid).cloned(),
        username: roles.get(&d.key.userid).cloned(),
        query,
        query_truncated,
        interval_start: prev.taken_at.clone(),
        interval_end: cur.taken_at.clone(),
        reset: d.reset,
        mean_exec_time_ms: if calls > 0.0 {
            round_ms(value(cur, d, TOTAL_EXEC) / calls)
        } else {
            0.0
        },
        counters,
    }
}

/// Finds the extension in the connected database. The inner `Err` is why it is not usable.
async fn extension(session: &mut Session) -> Result<Result<Extension, String>, CollectError> {
    const QUERY: &str = "statements_extension";
    let row = session
        .query_opt(
            QUERY,
            "SELECT /* postgres-agent */ e.extversion, n.nspname::text AS schema FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'",
            &[],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err("the extension is not created in this database".into()));
    };
    let version_text: String = col(&row, QUERY, "extversion")?;
    let schema: String = col(&row, QUERY, "schema")?;
    let Some(version) = ExtVersion::parse(&version_text) else {
        return Ok(Err(format!(
            "unrecognised extension version {version_text:?}"
        )));
    };
    let schema = format!("\"{}\"", schema.replace('"', "\"\""));
    Ok(Ok(Extension {
        function: format!("{schema}.pg_stat_statements"),
        info_view: format!("{schema}.pg_stat_statements_info"),
        version,
        version_text,
    }))
}

/// Reads every entry's counters (no texts) and, on 1.9+, the reset time and eviction count.
async fn snapshot(
    session: &mut Session,
    ext: &Extension,
    system_identifier: &str,
) -> Result<Snapshot, CollectError> {
    const QUERY: &str = "statements_snapshot";
    let (mut stats_reset, mut dealloc) = (None, None);
    if ext.version >= INFO_SINCE {
        let sql = format!(
            "SELECT /* postgres-agent */ dealloc, stats_reset FROM {}",
            ext.info_view
        );
        if let Some(row) = session.query_opt("statements_info", &sql, &[]).await? {
            dealloc = col::<Option<i64>>(&row, "statements_info", "dealloc")?;
            stats_reset =
                col::<Option<time::OffsetDateTime>>(&row, "statements_info", "stats_reset")?
                    .map(format_rfc3339_micros);
        }
    }
    let layout = columns::layout(ext.version);
    let toplevel = if ext.version >= INFO_SINCE {
        "toplevel"
    } else {
        "NULL::bool"
    };
    let since = if ext.version >= STATS_SINCE_SINCE {
        "(extract(epoch FROM stats_since) * 1000000)::int8"
    } else {
        "NULL::int8"
    };
    let sql = format!(
        "SELECT /* postgres-agent */ userid, dbid, {toplevel} AS toplevel, queryid, {since} AS since, {} \
         FROM {}(false) LIMIT $1",
        columns::select_list(ext.version, &layout),
        ext.function
    );
    let taken_at = now_rfc3339();
    // Rows are streamed into the compact snapshot one at a time: holding the result whole costs
    // several times the snapshot itself (every row keeps its wire buffer and column offsets).
    let mut entries = HashMap::new();
    session
        .for_each_row(QUERY, &sql, &[(&MAX_ENTRIES, Type::INT8)], |row| {
            let Some(queryid) = col::<Option<i64>>(row, QUERY, "queryid")? else {
                // Another role's entry, hidden without pg_read_all_stats.
                counters::STATEMENTS_NO_PRIVILEGE.incr();
                return Ok::<(), CollectError>(());
            };
            let key = Key {
                userid: col(row, QUERY, "userid")?,
                dbid: col(row, QUERY, "dbid")?,
                queryid,
                toplevel: col(row, QUERY, "toplevel")?,
            };
            let mut values = Vec::with_capacity(layout.len());
            for (i, &counter) in layout.iter().enumerate() {
                let v: Option<f64> = row.try_get(5 + i).map_err(|e| CollectError::Column {
                    query: QUERY,
                    column: COUNTERS[counter].name,
                    message: e.to_string(),
                })?;
                values.push(v.unwrap_or(0.0));
            }
            let stats_since = col(row, QUERY, "since")?;
            entries.insert(
                key,
                Entry {
                    stats_since,
                    values,
                },
            );
            Ok(())
        })
        .await?;
    Ok(Snapshot {
        system_identifier: system_identifier.to_string(),
        extversion: ext.version_text.clone(),
        layout,
        taken_at,
        stats_reset,
        dealloc,
        entries,
    })
}

/// stats_reset is compared across cycles: keep microseconds so two resets in one second differ.
fn format_rfc3339_micros(t: time::OffsetDateTime) -> String {
    const FMT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FMT)
        .unwrap_or_else(|_| t.unix_timestamp_nanos().to_string())
}
