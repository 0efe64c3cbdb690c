//! The sampling query: the non-idle sessions of pg_stat_activity (the agent's own excluded), one
//! row each, with only what a sample needs. What is derived from a query's text (its fingerprint,
//! its correlation ID, the text as emitted) is computed once per running statement (pid and
//! `query_start`) and reused while the statement keeps running.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::{col, query_text, CollectError, CollectSettings};
use crate::correlation;
use crate::db::Session;
use crate::identity::APPLICATION_NAME;
use crate::telemetry::registry::Counters;

pub const QUERY: &str = "activity_sample";
/// The totals read when the row bound cut a sample ([`totals_sql`]).
const TOTALS: &str = "activity_sample_totals";

/// The SQL for a server version, with the agent's `application_name`, the text length and the row
/// bound written in (constants for a configuration), so it has no parameters and is prepared once
/// per connection. The totals (sessions, active, waiting) are counted by the agent from the rows;
/// only when the row bound cut the result does [`totals_sql`] count them on the server.
///
/// Cost, per sample with 110 non-idle sessions (PostgreSQL 15, docs/cost.md): the window counts
/// this query had before issue 22 were a quarter of its server time, and `left()` on every text
/// another quarter; a text is now cut only when its bytes exceed the limit (`octet_length` reads
/// the length word, `left` walks the characters). It reads `pg_stat_get_activity(NULL)`, the
/// function behind the `pg_stat_activity` view, without the view's joins with `pg_database` and
/// `pg_authid` (15 % of the rest): database and role names come from [`Names`].
pub fn sql(version_num: i32, text_chars: i32, limit: i64) -> String {
    let query_id = if version_num >= 140000 {
        "query_id"
    } else {
        "NULL::bigint"
    };
    format!(
        "SELECT /* postgres-agent */ pid, state, wait_event_type, wait_event, backend_type, \
         datid, usesysid, application_name, \
         {query_id} AS query_id, \
         CASE WHEN octet_length(query) > {text_chars} THEN left(query, {text_chars}) ELSE query END \
         AS query, query_start \
         FROM pg_stat_get_activity(NULL) {} LIMIT {limit}",
        sessions()
    )
}

/// Which sessions a sample covers: not idle, not the agent's own.
fn sessions() -> String {
    format!(
        "WHERE state <> 'idle' AND pid <> pg_backend_pid() \
         AND application_name IS DISTINCT FROM '{APPLICATION_NAME}'"
    )
}

/// The totals of [`sql`]'s sessions, read only when the row bound cut its result.
pub fn totals_sql() -> String {
    format!(
        "SELECT /* postgres-agent */ count(*) AS total, \
         count(*) FILTER (WHERE state = 'active') AS total_active, \
         count(*) FILTER (WHERE state = 'active' AND wait_event_type IS NOT NULL) AS total_waiting, \
         count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock') AS total_lock \
         FROM pg_stat_get_activity(NULL) {}",
        sessions()
    )
}

/// What is known of one running statement's text.
#[derive(Debug)]
pub struct Statement {
    /// pg_stat_activity.query_id (decimal) when the server computes it.
    pub query_id: Option<String>,
    /// The text's fingerprint (literals, comments and whitespace ignored).
    pub fingerprint: Option<String>,
    /// The text as emitted (cut, privacy policy applied).
    pub text: Option<String>,
    pub truncated: bool,
    pub correlation_id: Option<String>,
}

/// One non-idle session in one sample.
#[derive(Debug, Clone)]
pub struct Seen {
    pub pid: i32,
    pub state: String,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    pub backend_type: Option<String>,
    pub datname: Option<String>,
    pub usename: Option<String>,
    /// Unix microseconds of query_start (0 when null).
    pub query_start_us: i64,
    pub statement: Arc<Statement>,
}

impl Seen {
    pub fn active(&self) -> bool {
        self.state == "active"
    }

    pub fn lock_wait(&self) -> bool {
        self.active() && self.wait_event_type.as_deref() == Some("Lock")
    }
}

/// The result of one sampling query.
#[derive(Debug, Default)]
pub struct Read {
    pub rows: Vec<Seen>,
    pub total: u64,
    pub active: u64,
    /// Active sessions waiting on any wait event (not on CPU).
    pub waiting: u64,
    /// Active sessions waiting on a heavyweight lock.
    pub lock_waits: u64,
}

/// Statements already analysed, by (pid, query_start): only the last sample's are kept, so its
/// size follows the session count. And the database and role names of the sessions seen.
#[derive(Default)]
pub struct StatementCache {
    known: HashMap<(i32, i64), Arc<Statement>>,
    names: Names,
}

/// Database and role names by OID, read when a sample meets an OID not seen yet (one query for
/// all of them) and forgotten every [`NAMES_MAX_AGE`] so a rename shows.
#[derive(Default)]
struct Names {
    databases: HashMap<u32, Option<String>>,
    roles: HashMap<u32, Option<String>>,
    read_at: Option<std::time::Instant>,
}

const NAMES_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

impl Names {
    /// Reads the names of the OIDs not known yet; a dropped database or role stays None.
    async fn learn(
        &mut self,
        session: &mut Session,
        datids: &[u32],
        userids: &[u32],
    ) -> Result<(), CollectError> {
        if self.read_at.is_some_and(|t| t.elapsed() > NAMES_MAX_AGE) {
            *self = Names::default();
        }
        let mut dbs: Vec<u32> = datids
            .iter()
            .copied()
            .filter(|o| *o != 0 && !self.databases.contains_key(o))
            .collect();
        let mut roles: Vec<u32> = userids
            .iter()
            .copied()
            .filter(|o| *o != 0 && !self.roles.contains_key(o))
            .collect();
        if dbs.is_empty() && roles.is_empty() {
            return Ok(());
        }
        dbs.sort_unstable();
        dbs.dedup();
        roles.sort_unstable();
        roles.dedup();
        let (found_dbs, found_roles) =
            super::super::statements::texts::names(session, &dbs, &roles).await?;
        for o in dbs {
            self.databases.insert(o, found_dbs.get(&o).cloned());
        }
        for o in roles {
            self.roles.insert(o, found_roles.get(&o).cloned());
        }
        self.read_at.get_or_insert_with(std::time::Instant::now);
        Ok(())
    }

    fn database(&self, oid: Option<u32>) -> Option<String> {
        self.databases.get(&oid?).cloned().flatten()
    }

    fn role(&self, oid: Option<u32>) -> Option<String> {
        self.roles.get(&oid?).cloned().flatten()
    }
}

/// Runs the sampling query on `session`.
pub async fn read(
    session: &mut Session,
    config: &CollectSettings,
    version_num: i32,
    track_activity_query_size: usize,
    cache: &mut StatementCache,
    counters: &Counters,
) -> Result<Read, CollectError> {
    let text_chars = (config.safety.max_query_length + 1).min(i32::MAX as usize) as i32;
    let limit = config.safety.max_activity_rows as i64;
    let rows = session
        .query_cached(QUERY, &sql(version_num, text_chars, limit))
        .await?;
    let mut out = Read::default();
    let mut known = HashMap::with_capacity(rows.len());
    out.rows.reserve(rows.len());
    let mut oids: Vec<(Option<u32>, Option<u32>)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let pid: i32 = at(row, 0, "pid")?;
        let query_start_us = at::<Option<time::OffsetDateTime>>(row, 10, "query_start")?
            .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
            .unwrap_or(0);
        let key = (pid, query_start_us);
        let statement = match cache.known.remove(&key) {
            Some(s) => s,
            None => Arc::new(analyse(row, config, counters, track_activity_query_size)?),
        };
        known.insert(key, statement.clone());
        out.rows.push(Seen {
            pid,
            state: at::<Option<String>>(row, 1, "state")?.unwrap_or_default(),
            wait_event_type: at(row, 2, "wait_event_type")?,
            wait_event: at(row, 3, "wait_event")?,
            backend_type: at(row, 4, "backend_type")?,
            datname: None,
            usename: None,
            query_start_us,
            statement,
        });
        oids.push((at(row, 5, "datid")?, at(row, 6, "usesysid")?));
    }
    cache.known = known;
    let (datids, userids): (Vec<u32>, Vec<u32>) = oids
        .iter()
        .map(|(d, u)| (d.unwrap_or(0), u.unwrap_or(0)))
        .unzip();
    cache.names.learn(session, &datids, &userids).await?;
    for (seen, (datid, userid)) in out.rows.iter_mut().zip(oids) {
        seen.datname = cache.names.database(datid);
        seen.usename = cache.names.role(userid);
    }
    if (rows.len() as i64) < limit {
        out.total = out.rows.len() as u64;
        out.active = out.rows.iter().filter(|r| r.active()).count() as u64;
        out.waiting = out
            .rows
            .iter()
            .filter(|r| r.active() && r.wait_event_type.is_some())
            .count() as u64;
        out.lock_waits = out.rows.iter().filter(|r| r.lock_wait()).count() as u64;
    } else if let Some(r) = session.query_cached(TOTALS, &totals_sql()).await?.first() {
        let n = |c: &'static str| -> Result<u64, CollectError> {
            Ok(col::<i64>(r, TOTALS, c)?.max(0) as u64)
        };
        out.total = n("total")?;
        out.active = n("total_active")?;
        out.waiting = n("total_waiting")?;
        out.lock_waits = n("total_lock")?;
    }
    Ok(out)
}

/// Column `i` of a sampling row, checked to be `name`. By position (the order of [`sql`]): a
/// lookup by name compares the name with every column, for every column of every row, every second.
fn at<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
    name: &'static str,
) -> Result<T, CollectError> {
    let err = |message: String| CollectError::Column {
        query: QUERY,
        column: name,
        message,
    };
    match row.columns().get(i) {
        Some(c) if c.name() == name => row.try_get(i).map_err(|e| err(e.to_string())),
        _ => Err(err(format!("expected at position {i}"))),
    }
}

/// Fingerprint and correlation from the raw text first, then the emitted text.
fn analyse(
    row: &tokio_postgres::Row,
    config: &CollectSettings,
    counters: &Counters,
    track_activity_query_size: usize,
) -> Result<Statement, CollectError> {
    let raw: Option<String> = col(row, QUERY, "query")?;
    let application_name: Option<String> = col(row, QUERY, "application_name")?;
    let keys = &config.correlation.keys;
    let correlation = correlation::extract_from(raw.as_deref(), application_name.as_deref(), keys);
    let query_id = col::<Option<i64>>(row, QUERY, "query_id")?
        .filter(|q| *q != 0)
        .map(|q| q.to_string());
    let (text, truncated, fingerprint) = match raw.as_deref().filter(|r| !r.is_empty()) {
        Some(raw) => {
            let (text, cut) = query_text(raw, config, counters);
            let server_cut = raw.len() + 1 >= track_activity_query_size;
            (
                Some(text),
                cut || server_cut,
                Some(crate::privacy::fingerprint(raw)),
            )
        }
        None => (None, false, None),
    };
    Ok(Statement {
        query_id,
        fingerprint,
        text,
        truncated,
        correlation_id: correlation.and_then(|c| c.id),
    })
}
