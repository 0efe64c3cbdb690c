//! `locks`: one record per waiting lock with its chain of blockers ([`chain`]), plus a summary of the
//! locks held, by mode. Three bounded queries: the waiting locks (with `pg_blocking_pids`, called only
//! for them), the backends in their chains with the locks they hold on contended objects, and the
//! summary. Relation names resolve only for the connected database (pg_class is per database); other
//! databases' relations carry their OID.

pub mod chain;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::Type;

use super::{
    col, query_text, round_ms, CollectError, CollectSettings, Collected, Collector, Context,
};
use crate::batch::correlated::{Correlated, Detail, Session};
use crate::batch::BatchKind;
use crate::correlation::{self, Correlation};
use crate::identity::APPLICATION_NAME;
use crate::telemetry::registry::{Counters, Event};
use chain::{Blocker, Proc, Wait};

/// One waiting lock.
#[derive(Debug, Clone, Serialize)]
pub struct LockRecord {
    pub pid: i32,
    pub locktype: Option<String>,
    pub mode: Option<String>,
    /// OID of the database of the locked object (null for shared objects and transaction locks).
    pub database: Option<u32>,
    pub datname: Option<String>,
    pub relation: Option<u32>,
    /// `schema.table`, quoted where needed; null outside the connected database.
    pub relation_name: Option<String>,
    pub page: Option<i32>,
    pub tuple: Option<i16>,
    pub virtualxid: Option<String>,
    pub transactionid: Option<String>,
    pub classid: Option<u32>,
    pub objid: Option<u32>,
    pub objsubid: Option<i16>,
    /// How long it has waited (PostgreSQL 14+: since pg_locks.waitstart; 13: since its query started).
    pub waiting_ms: Option<f64>,
    pub state: Option<String>,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    pub backend_type: Option<String>,
    pub query: Option<String>,
    pub query_truncated: bool,
    pub xact_duration_ms: Option<f64>,
    /// When the waiting statement started (RFC 3339 UTC).
    pub query_start: Option<String>,
    pub correlation: Option<Correlation>,
    pub blocked_by: Vec<Blocker>,
    /// The chain contains a cycle (a deadlock not yet broken by the server).
    pub cycle: bool,
    /// The chain was cut at its depth or size bound.
    pub chain_truncated: bool,
}

impl LockRecord {
    /// The waiting statement when it has a correlation ID: running since `query_start`, so until
    /// `collected_at` (the batch's time) so far, with its lock and the pids blocking it.
    pub fn correlated(&self, collected_at: &str) -> Option<Correlated> {
        let correlation = serde_json::to_value(self.correlation.as_ref()?).ok()?;
        let mut lock = Detail::default()
            .put("locktype", &self.locktype)
            .put("mode", &self.mode)
            .put("relation_name", &self.relation_name)
            .put("waiting_ms", &self.waiting_ms)
            .put("cycle", &self.cycle)
            .0;
        let blockers: Vec<i32> = self.blocked_by.iter().map(|b| b.pid).collect();
        lock.insert("blocked_by_pids".into(), serde_json::Value::from(blockers));
        let session = Session {
            correlation,
            pid: i64::from(self.pid),
            query_start: self.query_start.as_deref()?,
            query_duration_ms: None,
            query: self.query.as_deref(),
            running: true,
            detail: Detail::default()
                .put("pid", &self.pid)
                .put("database", &self.datname)
                .put("user", &self.usename)
                .put("application_name", &self.application_name)
                .put("state", &self.state)
                .put("query_truncated", &self.query_truncated)
                .put("query_start", &self.query_start),
            lock: Some(lock),
        };
        Correlated::session(session, collected_at)
    }
}

pub struct LocksCollector;

const TAG: &str =
    "concat_ws(':', l.locktype, l.database, l.relation, l.page, l.tuple, l.virtualxid, \
                   l.transactionid, l.classid, l.objid, l.objsubid)";

fn waiting_sql(version_num: i32) -> String {
    let since = if version_num >= 140000 {
        "l.waitstart"
    } else {
        "a.query_start"
    };
    format!(
        "SELECT /* postgres-agent */ l.pid, l.locktype, l.mode, l.database, d.datname::text AS datname, l.relation, \
         CASE WHEN c.oid IS NOT NULL THEN format('%I.%I', n.nspname, c.relname) END AS relation_name, \
         l.page, l.tuple, l.virtualxid, l.transactionid::text AS transactionid, l.classid, l.objid, \
         l.objsubid, {TAG} AS tag, \
         (extract(epoch FROM now() - {since}) * 1000)::float8 AS waiting_ms, \
         pg_blocking_pids(l.pid) AS blockers, a.state, a.usename::text AS usename, a.application_name, \
         a.backend_type, left(a.query, $1) AS query, \
         (extract(epoch FROM now() - a.xact_start) * 1000)::float8 AS xact_ms, \
         a.query_start, count(*) OVER () AS total \
         FROM pg_locks l \
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         LEFT JOIN pg_database d ON d.oid = l.database \
         LEFT JOIN pg_class c ON c.oid = l.relation \
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT l.granted AND l.pid <> pg_backend_pid() \
           AND a.application_name IS DISTINCT FROM $2 \
         ORDER BY {since} ASC NULLS LAST, l.pid \
         LIMIT $3"
    )
}

const PROCS_SQL: &str = "SELECT /* postgres-agent */ a.pid, a.state, left(a.query, $2) AS query, \
     a.application_name, \
     (extract(epoch FROM now() - a.xact_start) * 1000)::float8 AS xact_ms, \
     ARRAY(SELECT l.tag || '=' || l.mode FROM \
           (SELECT concat_ws(':', l.locktype, l.database, l.relation, l.page, l.tuple, l.virtualxid, \
                   l.transactionid, l.classid, l.objid, l.objsubid) AS tag, l.mode \
            FROM pg_locks l WHERE l.pid = a.pid AND l.granted) l \
           WHERE l.tag = ANY($3)) AS held \
     FROM pg_stat_activity a WHERE a.pid = ANY($1)";

const SUMMARY_SQL: &str = "SELECT /* postgres-agent */ mode, count(*) AS n FROM pg_locks \
     WHERE granted AND pid IS DISTINCT FROM pg_backend_pid() GROUP BY mode ORDER BY mode";

impl Collector for LocksCollector {
    const NAME: &'static str = "locks";
    const KIND: BatchKind = BatchKind::Locks;
    type Record = LockRecord;

    fn correlated(record: &LockRecord, collected_at: &str) -> Option<Correlated> {
        record.correlated(collected_at)
    }

    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<LockRecord>>, CollectError> {
        const Q: &str = "locks_waiting";
        let settings = ctx.settings;
        let counters = ctx.counters;
        let keys = &settings.correlation.keys;
        let (session, server) = ctx.db()?;
        let text_chars = (settings.safety.max_query_length + 1).min(i32::MAX as usize) as i32;
        let limit = settings.safety.max_activity_rows as i64;
        let tas = server.track_activity_query_size;
        let rows = session
            .query(
                Q,
                &waiting_sql(server.info.version_num),
                &[
                    (&text_chars, Type::INT4),
                    (&APPLICATION_NAME, Type::TEXT),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        let total: i64 = match rows.first() {
            Some(r) => col(r, Q, "total")?,
            None => 0,
        };
        let omitted = (total - rows.len() as i64).max(0) as u64;
        counters.add(Event::LocksOmitted, omitted);

        let mut waits = HashMap::new();
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let pid: i32 = col(row, Q, "pid")?;
            let tag: String = col(row, Q, "tag")?;
            let blockers: Vec<i32> =
                col::<Option<Vec<i32>>>(row, Q, "blockers")?.unwrap_or_default();
            waits.insert(pid, Wait { tag, blockers });
            let raw: Option<String> = col(row, Q, "query")?;
            let application_name: Option<String> = col(row, Q, "application_name")?;
            let (query, query_truncated, correlation) = text(
                raw,
                application_name.as_deref(),
                settings,
                counters,
                keys,
                tas,
            );
            records.push(LockRecord {
                pid,
                locktype: col(row, Q, "locktype")?,
                mode: col(row, Q, "mode")?,
                database: col(row, Q, "database")?,
                datname: col(row, Q, "datname")?,
                relation: col(row, Q, "relation")?,
                relation_name: col(row, Q, "relation_name")?,
                page: col(row, Q, "page")?,
                tuple: col(row, Q, "tuple")?,
                virtualxid: col(row, Q, "virtualxid")?,
                transactionid: col(row, Q, "transactionid")?,
                classid: col(row, Q, "classid")?,
                objid: col(row, Q, "objid")?,
                objsubid: col(row, Q, "objsubid")?,
                waiting_ms: col::<Option<f64>>(row, Q, "waiting_ms")?.map(|v| round_ms(v.max(0.0))),
                state: col(row, Q, "state")?,
                usename: col(row, Q, "usename")?,
                application_name,
                backend_type: col(row, Q, "backend_type")?,
                query,
                query_truncated,
                xact_duration_ms: col::<Option<f64>>(row, Q, "xact_ms")?
                    .map(|v| round_ms(v.max(0.0))),
                query_start: col::<Option<time::OffsetDateTime>>(row, Q, "query_start")?
                    .map(crate::clock::format_rfc3339),
                correlation,
                blocked_by: Vec::new(),
                cycle: false,
                chain_truncated: false,
            });
        }

        let procs = if waits.is_empty() {
            HashMap::new()
        } else {
            let mut pids: Vec<i32> = waits
                .values()
                .flat_map(|w| w.blockers.iter().copied())
                .collect();
            pids.sort_unstable();
            pids.dedup();
            let mut tags: Vec<String> = waits.values().map(|w| w.tag.clone()).collect();
            tags.sort_unstable();
            tags.dedup();
            blocker_procs(session, &pids, &tags, text_chars, settings, counters, tas).await?
        };
        for r in &mut records {
            let c = chain::build(r.pid, &waits, &procs);
            if c.truncated {
                counters.incr(Event::LockChainsTruncated);
            }
            r.blocked_by = c.blockers;
            r.cycle = c.cycle;
            r.chain_truncated = c.truncated;
        }

        let summary = session.query("locks_summary", SUMMARY_SQL, &[]).await?;
        let mut held = BTreeMap::new();
        for row in &summary {
            let mode: String = col(row, "locks_summary", "mode")?;
            let n: i64 = col(row, "locks_summary", "n")?;
            held.insert(mode, Value::from(n));
        }
        let mut collected = Collected::new(records);
        collected.extra.insert(
            "held_by_mode".into(),
            Value::Object(held.into_iter().collect()),
        );
        collected.extra.insert("waiting".into(), Value::from(total));
        collected
            .extra
            .insert("omitted".into(), Value::from(omitted));
        Ok(Some(collected))
    }
}

/// The text fields of a query: correlation from the raw text first, then the emitted text.
fn text(
    raw: Option<String>,
    application_name: Option<&str>,
    settings: &CollectSettings,
    counters: &Counters,
    keys: &[String],
    track_activity_query_size: usize,
) -> (Option<String>, bool, Option<Correlation>) {
    match raw {
        Some(raw) => {
            let correlation = correlation::extract_from(Some(&raw), application_name, keys);
            let (t, cut) = query_text(&raw, settings, counters);
            (
                Some(t),
                cut || raw.len() + 1 >= track_activity_query_size,
                correlation,
            )
        }
        None => (
            None,
            false,
            correlation::extract_from(None, application_name, keys),
        ),
    }
}

async fn blocker_procs(
    session: &mut crate::db::Session,
    pids: &[i32],
    tags: &[String],
    text_chars: i32,
    settings: &CollectSettings,
    counters: &Counters,
    tas: usize,
) -> Result<HashMap<i32, Proc>, CollectError> {
    const Q: &str = "locks_blockers";
    let rows = session
        .query(
            Q,
            PROCS_SQL,
            &[
                (&pids, Type::INT4_ARRAY),
                (&text_chars, Type::INT4),
                (&tags, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    let mut procs = HashMap::with_capacity(rows.len());
    for row in &rows {
        let raw: Option<String> = col(row, Q, "query")?;
        let application_name: Option<String> = col(row, Q, "application_name")?;
        let (query, query_truncated, correlation) = text(
            raw,
            application_name.as_deref(),
            settings,
            counters,
            &settings.correlation.keys,
            tas,
        );
        let held = col::<Vec<String>>(row, Q, "held")?
            .into_iter()
            .filter_map(|h| {
                h.rsplit_once('=')
                    .map(|(t, m)| (t.to_string(), m.to_string()))
            })
            .collect();
        procs.insert(
            col(row, Q, "pid")?,
            Proc {
                state: col(row, Q, "state")?,
                query,
                query_truncated,
                xact_age_ms: col::<Option<f64>>(row, Q, "xact_ms")?.map(|v| round_ms(v.max(0.0))),
                correlation,
                held,
            },
        );
    }
    Ok(procs)
}

#[cfg(test)]
mod correlated_tests {
    use super::*;
    use crate::batch::{AgentInfo, Batch, Record};
    use crate::correlation::Correlation;

    fn waiter(pid: i32, id: Option<&str>) -> LockRecord {
        LockRecord {
            pid,
            locktype: Some("relation".into()),
            mode: Some("AccessExclusiveLock".into()),
            database: Some(5),
            datname: Some("shop".into()),
            relation: Some(16384),
            relation_name: Some("public.orders".into()),
            page: None,
            tuple: None,
            virtualxid: None,
            transactionid: None,
            classid: None,
            objid: None,
            objsubid: None,
            waiting_ms: Some(812.5),
            state: Some("active".into()),
            usename: Some("php".into()),
            application_name: None,
            backend_type: Some("client backend".into()),
            query: Some("ALTER TABLE orders ADD c int".into()),
            query_truncated: false,
            xact_duration_ms: Some(900.0),
            query_start: Some("2026-11-28T10:00:00.000Z".into()),
            correlation: id.map(|id| Correlation {
                id: Some(id.into()),
                ..Correlation::default()
            }),
            blocked_by: vec![Blocker {
                pid: 9,
                blocks_pid: pid,
                depth: 1,
                modes_held: vec!["AccessShareLock".into()],
                waiting: false,
                cycle: false,
                state: Some("idle in transaction".into()),
                query: None,
                query_truncated: false,
                xact_age_ms: Some(5000.0),
                correlation: None,
            }],
            cycle: false,
            chain_truncated: false,
        }
    }

    /// What the collector attaches while typed is what a batch read back from its JSON rebuilds.
    #[test]
    fn typed_lock_waiters_equal_those_rebuilt_from_the_stored_json() {
        let records = [waiter(1, Some("a")), waiter(2, None)];
        let data = records.iter().map(|r| Record::new(r).unwrap()).collect();
        let mut b = Batch::new(BatchKind::Locks, "p", AgentInfo::new("h"), None, 60, data);
        b.collected_at = "2026-11-28T10:00:02.500Z".into();
        let typed: Vec<Correlated> = records
            .iter()
            .filter_map(|r| r.correlated(&b.collected_at))
            .collect();
        assert_eq!(typed.len(), 1);
        assert_eq!(typed[0].duration_ms, Some(2500.0));
        assert_eq!(
            typed[0].detail["lock"]["blocked_by_pids"],
            serde_json::json!([9])
        );
        b.restore_correlated();
        assert_eq!(typed, b.correlated);
    }
}
