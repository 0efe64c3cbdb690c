//! Server and table health (issue 24): what the server was doing besides running queries.
//!
//! Four collectors, each a [`super::Collector`] of its own batch kind, all off unless
//! `[health] enabled`:
//! - [`database::DatabaseCollector`] (`pg_database`): `pg_stat_database` per database with
//!   `datfrozenxid_age` and `mxid_age`, every cycle;
//! - [`server::ServerHealthCollector`] (`pg_server_health`): checkpointer and background writer,
//!   WAL, I/O, progress and replication, one record per row, named by `section`, every cycle;
//! - [`settings::SettingsCollector`] (`pg_settings`): a snapshot at start and change records;
//! - [`tables::TablesCollector`] (`pg_tables`): table and index statistics of every database the
//!   role may connect to, every `table_interval_s`.
//!
//! Rows are read as JSON built by the server (`row_to_json`), so each record keeps PostgreSQL's own
//! column names on every version and a column a version adds or drops needs no code. Counters go
//! through [`delta::Baseline`]. A query the server refuses for a missing view, column, function or
//! privilege gives one warning per section (not per cycle) and the rest is still collected
//! ([`Reader`]). This module owns the reading helpers; docs/health.md says what is collected.

pub mod database;
pub mod delta;
pub mod server;
pub mod settings;
pub mod tables;

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::state_write::StateWriter;
use super::CollectError;
use crate::db::{DbError, Session};
use crate::telemetry::registry::{Counters, Event};

/// One health record: a row as the server wrote it, with fields added by the agent.
pub type Row = Map<String, Value>;

/// Reads JSON rows and remembers which sections the server refused, so each is warned about once.
#[derive(Debug, Default)]
pub struct Reader {
    warned: HashSet<String>,
}

/// What a refused query means for the user, by SQLSTATE: the cases a managed service or an older
/// server gives (missing view, column or function, privilege, a function refused in recovery).
fn refused(e: &DbError) -> Option<&'static str> {
    let code = e.sqlstate()?;
    Some(match code {
        "42501" => "the role may not read it: GRANT pg_monitor TO <agent role>",
        "42P01" | "42703" | "42883" => "this server does not have it",
        "0A000" | "55000" => "the server refuses it in its current state",
        _ if code.starts_with("42") => "the server rejected the query",
        _ => return None,
    })
}

impl Reader {
    /// As [`Reader::rows`], handing each row to `each` parsed one at a time instead of holding
    /// every parsed row (a table pass reads thousands). The result is read whole first, so the
    /// server's statement never waits on the agent's processing. `Ok(None)`: refused, as there.
    pub async fn each(
        &mut self,
        session: &mut Session,
        section: &str,
        name: &'static str,
        sql: &str,
        mut each: impl FnMut(Row) -> Result<(), CollectError>,
    ) -> Result<Option<usize>, CollectError> {
        let rows = match session.query(name, sql, &[]).await {
            Ok(rows) => rows,
            Err(e) => match refused(&e) {
                Some(why) => {
                    self.warn_once(section, name, &e, why);
                    return Ok(None);
                }
                None => return Err(e.into()),
            },
        };
        self.warned.remove(section);
        let n = rows.len();
        for row in rows {
            each(parse(&row, name)?)?;
        }
        Ok(Some(n))
    }

    fn warn_once(&mut self, section: &str, name: &'static str, e: &DbError, why: &str) {
        if self.warned.insert(section.to_string()) {
            tracing::warn!(section, query = name, error = %e, why,
                "health: cannot read this section; the others are still collected (said once)");
        }
    }

    /// Runs `sql`, whose rows are one `json` text column each. `Ok(None)`: the server refused it
    /// for a reason in [`refused`] (warned once per `section`); other failures (a lost
    /// connection, the client deadline) end the collector's cycle.
    pub async fn rows(
        &mut self,
        session: &mut Session,
        section: &str,
        name: &'static str,
        sql: &str,
    ) -> Result<Option<Vec<Row>>, CollectError> {
        let rows = match session.query(name, sql, &[]).await {
            Ok(rows) => rows,
            Err(e) => match refused(&e) {
                Some(why) => {
                    self.warn_once(section, name, &e, why);
                    return Ok(None);
                }
                None => return Err(e.into()),
            },
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(parse(row, name)?);
        }
        self.warned.remove(section);
        Ok(Some(out))
    }
}

/// One row's `json` column as a record.
fn parse(row: &tokio_postgres::Row, name: &'static str) -> Result<Row, CollectError> {
    let text: String = super::col(row, name, "json")?;
    let mut r = serde_json::from_str::<Row>(&text).map_err(|e| CollectError::Column {
        query: name,
        column: "json",
        message: e.to_string(),
    })?;
    oids_as_numbers(&mut r);
    Ok(r)
}

/// `row_to_json` writes `oid` columns as strings; the records carry them as numbers.
fn oids_as_numbers(row: &mut Row) {
    for f in OIDS {
        if let Some(Value::String(s)) = row.get(*f) {
            if let Ok(n) = s.parse::<u32>() {
                row.insert((*f).to_string(), Value::from(n));
            }
        }
    }
}

/// The `oid` columns of the views read.
const OIDS: &[&str] = &[
    "datid",
    "relid",
    "indexrelid",
    "usesysid",
    "datoid",
    "leader_pid",
];

/// Reads the baseline for this server; a damaged file is moved aside (logged, counted) and the
/// baseline starts empty.
pub(crate) fn begin_baseline(
    baseline: &mut delta::Baseline,
    system_identifier: &str,
    counters: &Counters,
) {
    if let Err(e) = baseline.begin(system_identifier) {
        let path = baseline.path().to_path_buf();
        let moved = crate::state::file::set_aside(&path);
        if moved.is_ok() {
            counters.incr(Event::StateFilesSetAside);
        }
        tracing::error!(error = %e, file = %path.display(), moved_to = ?moved.as_ref().ok(),
            "the saved health baseline is damaged; moved it aside and starting a new one");
    }
}

/// The writer of a baseline's file (`health-<name>.json`, [`delta::Baseline::new`]).
pub(crate) fn baseline_writer(state_dir: &Path, name: &str, read_only: bool) -> StateWriter {
    let path = delta::Baseline::new(state_dir, name).path().to_path_buf();
    StateWriter::new("the health baseline", path, read_only)
}

/// Saves the baseline off the collection task ([`StateWriter`]: never when read-only; a failed
/// write is logged, the next cycle's deltas still come from memory).
pub(crate) fn save_baseline(
    baseline: &delta::Baseline,
    writer: &mut StateWriter,
    counters: &Counters,
) {
    match baseline.to_json() {
        Ok(bytes) => {
            writer.write_bytes(counters, bytes);
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode the health baseline"),
    }
}

/// Folds `row` into the baseline and says how its counters were counted in `counters`.
pub(crate) fn fold(
    baseline: &mut delta::Baseline,
    view: &str,
    key: String,
    mut row: Row,
    gauges: &[&str],
) -> Row {
    let mark = baseline.fold(view, key, &mut row, gauges);
    row.insert(
        "counters".into(),
        Value::from(match mark {
            delta::Mark::Delta => "delta",
            delta::Mark::Reset => "reset",
            delta::Mark::New => "new",
            delta::Mark::First => "first",
        }),
    );
    row
}

/// A field of `row` as text, for keys.
pub(crate) fn text(row: &Row, field: &str) -> String {
    match row.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}
