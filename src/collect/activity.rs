//! `pg_activity`: one record per backend from pg_stat_activity, longest-running first, without the
//! agent's own sessions. One bounded query per cycle; `pg_blocking_pids` is only called for backends
//! waiting on a lock (it takes the lock manager's partition locks).

use serde::Serialize;
use tokio_postgres::types::Type;

use super::{col, query_text, round_ms, CollectError, Collected, Collector, Context};
use crate::batch::correlated::{Correlated, Detail, Session};
use crate::batch::BatchKind;
use crate::clock::format_rfc3339;
use crate::correlation::{self, Correlation};
use crate::identity::APPLICATION_NAME;
use crate::telemetry::registry::Event;

/// One backend.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityRecord {
    pub pid: i32,
    /// For parallel workers, the leader's pid.
    pub leader_pid: Option<i32>,
    pub datname: Option<String>,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub client_port: Option<i32>,
    pub backend_type: Option<String>,
    pub backend_start: Option<String>,
    pub xact_start: Option<String>,
    pub query_start: Option<String>,
    pub state_change: Option<String>,
    pub state: Option<String>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    /// Backends holding the lock this one waits for (empty unless waiting on a lock).
    pub blocking_pids: Vec<i32>,
    /// pg_stat_activity.query_id (PostgreSQL 14+ with compute_query_id), as a decimal string.
    pub query_id: Option<String>,
    pub query: Option<String>,
    pub query_truncated: bool,
    /// Stable hash of the normalised text (literals, comments and whitespace ignored): groups the
    /// same statement across values; null without a text.
    pub fingerprint: Option<String>,
    /// Active: how long the current query has run. Otherwise: how long the last query ran.
    pub query_duration_ms: Option<f64>,
    /// How long the current transaction has been open.
    pub xact_duration_ms: Option<f64>,
    pub correlation: Option<Correlation>,
}

impl ActivityRecord {
    /// The statement this session runs (or last ran) when it has a correlation ID, for a batch
    /// collected at `collected_at` (pg_activity, and a spike's sessions).
    pub fn correlated(&self, collected_at: &str) -> Option<Correlated> {
        let correlation = serde_json::to_value(self.correlation.as_ref()?).ok()?;
        let session = Session {
            correlation,
            pid: i64::from(self.pid),
            query_start: self.query_start.as_deref()?,
            query_duration_ms: self.query_duration_ms,
            query: self.query.as_deref(),
            running: self.state.as_deref() == Some("active"),
            detail: Detail::default()
                .put("pid", &self.pid)
                .put("database", &self.datname)
                .put("user", &self.usename)
                .put("application_name", &self.application_name)
                .put("state", &self.state)
                .put("wait_event_type", &self.wait_event_type)
                .put("wait_event", &self.wait_event)
                .put("blocking_pids", &self.blocking_pids)
                .put("query_id", &self.query_id)
                .put("fingerprint", &self.fingerprint)
                .put("query_truncated", &self.query_truncated)
                .put("query_start", &self.query_start),
            lock: None,
        };
        Correlated::session(session, collected_at)
    }
}

pub struct ActivityCollector;

const QUERY: &str = "activity";
/// The sessions' count, read only when `safety.max_activity_rows` cut the rows.
const TOTAL: &str = "activity_total";

fn sql(version_num: i32) -> String {
    let query_id = if version_num >= 140000 {
        "query_id"
    } else {
        "NULL::bigint"
    };
    format!(
        "SELECT /* postgres-agent */ pid, leader_pid, datname::text AS datname, usename::text AS usename, application_name, \
         host(client_addr) AS client_addr, client_port, backend_type, \
         backend_start, xact_start, query_start, state_change, state, wait_event_type, wait_event, \
         CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocking_pids, \
         {query_id} AS query_id, \
         CASE WHEN octet_length(query) > $2 THEN left(query, $2) ELSE query END AS query, \
         now() AS now \
         FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND application_name IS DISTINCT FROM $1 \
         ORDER BY coalesce(xact_start, CASE WHEN state = 'active' THEN query_start END) ASC NULLS LAST, \
                  backend_start ASC NULLS LAST, pid \
         LIMIT $3"
    )
}

impl Collector for ActivityCollector {
    const NAME: &'static str = "activity";
    const KIND: BatchKind = BatchKind::PgActivity;
    type Record = ActivityRecord;

    fn correlated(record: &ActivityRecord, collected_at: &str) -> Option<Correlated> {
        record.correlated(collected_at)
    }

    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<ActivityRecord>>, CollectError> {
        let settings = ctx.settings;
        let counters = ctx.counters;
        let (session, server) = ctx.db()?;
        // One character more than the limit, so query_text can tell a cut text from a full one.
        let text_chars = (settings.safety.max_query_length + 1).min(i32::MAX as usize) as i32;
        let limit = settings.safety.max_activity_rows as i64;
        let rows = session
            .query(
                QUERY,
                &sql(server.info.version_num),
                &[
                    (&APPLICATION_NAME, Type::TEXT),
                    (&text_chars, Type::INT4),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        // The rows are all the sessions unless the bound cut them: only then count on the server.
        let total: i64 = if (rows.len() as i64) < limit {
            rows.len() as i64
        } else {
            match session
                .query_opt(
                    TOTAL,
                    "SELECT /* postgres-agent */ count(*) AS total FROM pg_stat_get_activity(NULL) \
                     WHERE pid <> pg_backend_pid() AND application_name IS DISTINCT FROM $1",
                    &[(&APPLICATION_NAME, Type::TEXT)],
                )
                .await?
            {
                Some(r) => col(&r, TOTAL, "total")?,
                None => rows.len() as i64,
            }
        };
        let omitted = (total - rows.len() as i64).max(0) as u64;
        counters.add(Event::ActivityRowsOmitted, omitted);
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let raw: Option<String> = col(row, QUERY, "query")?;
            let application_name: Option<String> = col(row, QUERY, "application_name")?;
            let app = application_name.as_deref();
            let keys = &settings.correlation.keys;
            let (query, query_truncated, correlation, fingerprint) = match raw {
                Some(raw) => {
                    let correlation = correlation::extract_from(Some(&raw), app, keys);
                    let fingerprint = (!raw.is_empty()).then(|| crate::privacy::fingerprint(&raw));
                    let (text, cut) = query_text(&raw, settings, counters);
                    let server_cut = raw.len() + 1 >= server.track_activity_query_size;
                    (Some(text), cut || server_cut, correlation, fingerprint)
                }
                None => (
                    None,
                    false,
                    correlation::extract_from(None, app, keys),
                    None,
                ),
            };
            let at = |name: &'static str| col::<Option<time::OffsetDateTime>>(row, QUERY, name);
            let ts = |name: &'static str| -> Result<Option<String>, CollectError> {
                Ok(at(name)?.map(format_rfc3339))
            };
            // Durations from the timestamps read (extract(epoch ...) computes in numeric, twice
            // a row): a running statement's up to the statement's now(), a finished one's up to
            // its state change.
            let now = at("now")?;
            let state: Option<String> = col(row, QUERY, "state")?;
            let until = if state.as_deref() == Some("active") {
                now
            } else {
                at("state_change")?
            };
            let ms = |from: Option<time::OffsetDateTime>, to: Option<time::OffsetDateTime>| {
                from.zip(to)
                    .map(|(f, t)| round_ms(((t - f).as_seconds_f64() * 1000.0).max(0.0)))
            };
            records.push(ActivityRecord {
                pid: col(row, QUERY, "pid")?,
                leader_pid: col(row, QUERY, "leader_pid")?,
                datname: col(row, QUERY, "datname")?,
                usename: col(row, QUERY, "usename")?,
                application_name,
                client_addr: col(row, QUERY, "client_addr")?,
                client_port: col(row, QUERY, "client_port")?,
                backend_type: col(row, QUERY, "backend_type")?,
                backend_start: ts("backend_start")?,
                xact_start: ts("xact_start")?,
                query_start: ts("query_start")?,
                state_change: ts("state_change")?,
                state,
                wait_event_type: col(row, QUERY, "wait_event_type")?,
                wait_event: col(row, QUERY, "wait_event")?,
                blocking_pids: col::<Option<Vec<i32>>>(row, QUERY, "blocking_pids")?
                    .unwrap_or_default(),
                query_id: col::<Option<i64>>(row, QUERY, "query_id")?.map(|q| q.to_string()),
                query,
                query_truncated,
                fingerprint,
                query_duration_ms: ms(at("query_start")?, until),
                xact_duration_ms: ms(at("xact_start")?, now),
                correlation,
            });
        }
        let mut collected = Collected::new(records);
        collected.extra.insert("omitted".into(), omitted.into());
        Ok(Some(collected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{AgentInfo, Batch, Record};

    fn record(pid: i32, id: Option<&str>, state: &str) -> ActivityRecord {
        ActivityRecord {
            pid,
            leader_pid: None,
            datname: Some("shop".into()),
            usename: Some("php".into()),
            application_name: Some("web".into()),
            client_addr: None,
            client_port: None,
            backend_type: Some("client backend".into()),
            backend_start: None,
            xact_start: None,
            query_start: Some("2026-11-28T10:00:00.123Z".into()),
            state_change: None,
            state: Some(state.into()),
            wait_event_type: Some("Lock".into()),
            wait_event: Some("relation".into()),
            blocking_pids: vec![7, 8],
            query_id: Some("-42".into()),
            query: Some("SELECT ? /* correlation_id=a */".into()),
            query_truncated: false,
            fingerprint: Some("0123456789abcdef".into()),
            query_duration_ms: Some(1234.567),
            xact_duration_ms: Some(2000.0),
            correlation: id.map(|id| Correlation {
                id: Some(id.into()),
                ..Correlation::default()
            }),
        }
    }

    /// What the collector attaches while typed is what a batch read back from its JSON rebuilds,
    /// for pg_activity and for a spike's sessions.
    #[test]
    fn typed_correlated_statements_equal_those_rebuilt_from_the_stored_json() {
        let records = [
            record(1, Some("a"), "active"),
            record(2, None, "active"),
            record(3, Some("b"), "idle"),
            record(4, Some(""), "active"),
        ];
        for kind in [BatchKind::PgActivity, BatchKind::Spike] {
            let data = records.iter().map(|r| Record::new(r).unwrap()).collect();
            let mut b = Batch::new(kind, "p", AgentInfo::new("h"), None, 60, data);
            let typed: Vec<Correlated> = records
                .iter()
                .filter_map(|r| r.correlated(&b.collected_at))
                .collect();
            assert_eq!(typed.len(), 2, "{kind}");
            assert_eq!(typed[0].detail["running"], true);
            assert_eq!(typed[1].detail["running"], false);
            b.restore_correlated();
            assert_eq!(typed, b.correlated, "{kind}");
        }
    }
}
