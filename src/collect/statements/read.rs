//! Reading pg_stat_statements' counters: every entry, or only the entries that changed since the
//! baseline, found by a server-side fingerprint of each (docs/cost.md), folded into the baseline
//! row by row.

use tokio_postgres::types::Type;

use super::super::{col, CollectError};
use super::baseline::{Fold, Key, Spread};
use super::columns::{self, CALLS, COUNTERS, INFO_SINCE, STATS_SINCE_SINCE, TOTAL_EXEC};
use super::{Extension, MAX_ENTRIES};
use crate::db::Session;
use crate::telemetry::registry::{Counters as Tally, Event};

/// How a cycle reads the entries (see [`fold_entries`]).
pub(super) enum Read<'a> {
    /// Every entry: the first read, after a full reset, and whenever there is no baseline.
    Full,
    /// The entries whose fingerprint is not among the baseline's (they ran, or are new), and the
    /// baseline's fingerprints the server no longer has (entries that ran, or are gone).
    Fingerprints(&'a Vec<i64>),
}

/// The server's fingerprint of an entry (key, calls, total execution time) as SQL: the extended
/// hash functions hash partitioning uses, chained, so an entry whose calls or total time moved gets
/// another one. A collision (2^-64 per pair) only delays an entry's report to its next change: its
/// baseline keeps the values last read, so no delta is lost. NULLs (another role's hidden queryid)
/// are folded in as 0 so the row still comes back and is counted.
fn fingerprint_sql(calls: &str, total: &str, toplevel: &str) -> String {
    // Five function calls a row, no casts or operators (each of those is a call too): a tenth of
    // the fingerprint's cost with the key packed into an int8 first (bench/statements_binary.sh).
    format!(
        "hashfloat8extended({total}, hashint8extended({calls}, hashint8extended(\
         coalesce(queryid, 0), hashoidextended(dbid, hashoidextended(userid, \
         CASE WHEN {toplevel} IS FALSE THEN 1 ELSE 0 END)))))"
    )
}

/// Reads the entries' counters (no texts) into `fold`, each with its fingerprint
/// ([`fingerprint_sql`]), as `read` says. The server still builds every entry, but sends (and the
/// agent decodes) a few hundred rows instead of every entry's ~50 columns: about 5,000 rows a cycle
/// where a few hundred statements ran (docs/cost.md). Rows are folded in one at a time as they
/// arrive: holding the result whole would cost several times the snapshot itself (every row keeps
/// its wire buffer and column offsets).
pub(super) async fn fold_entries(
    session: &mut Session,
    ext: &Extension,
    fold: &mut Fold<'_>,
    read: Read<'_>,
    tally: &Tally,
) -> Result<(), CollectError> {
    const QUERY: &str = "statements_snapshot";
    /// Columns before the counters: userid, dbid, toplevel, queryid, since, fp, and the
    /// execution-time spread (stddev, min, max).
    const FIRST_COUNTER: usize = 9;
    let layout = columns::layout(ext.version);
    let toplevel = if ext.version >= INFO_SINCE {
        "toplevel"
    } else {
        "NULL::bool"
    };
    // Read as a timestamp: extract() computes in numeric, for every entry.
    let since = if ext.version >= STATS_SINCE_SINCE {
        "stats_since"
    } else {
        "NULL::timestamptz"
    };
    let calls = columns::column_for(&COUNTERS[CALLS], ext.version).unwrap_or("calls");
    let total =
        columns::column_for(&COUNTERS[TOTAL_EXEC], ext.version).unwrap_or("total_exec_time");
    // `LIMIT` keeps the sub-select from being flattened: the fingerprint is computed once a row.
    let [sd, min, max] = columns::exec_spread_columns(ext.version);
    let fp = fingerprint_sql(calls, total, toplevel);
    let columns = format!(
        "userid, dbid, {toplevel} AS toplevel, queryid, {since} AS since, {fp} AS fp, \
         {sd} AS exec_stddev, {min} AS exec_min, {max} AS exec_max, {}",
        columns::select_list(ext.version, &layout),
    );
    let function = &ext.function;
    let (sql, params): (String, Vec<crate::db::Param<'_>>) = match read {
        Read::Full => (
            format!("SELECT /* postgres-agent */ {columns} FROM {function}(false) LIMIT $1"),
            vec![(&MAX_ENTRIES, Type::INT8)],
        ),
        Read::Fingerprints(fps) => {
            // A full join on one int8: rows with both sides are unchanged and filtered out, rows
            // without the baseline's side ran or are new, rows without the server's side name a
            // baseline fingerprint no entry has any more (the entry ran, or is gone: see
            // [`Fold::gone_fingerprint`]). The array sits behind a sub-select so the planner
            // does not see its length: it then hashes the baseline's side and streams the
            // entries past it. The entries are joined straight from the function, not through
            // a sub-select: the scan then hands its stored rows up as they are and only the
            // columns of the fingerprint are decoded for an unchanged entry (a sub-select
            // decoded all ~50 columns of every entry; 1-3 ms of server time at 5,000 entries,
            // bench/statements_binary.sh). The filter tests a column, not the fingerprint again.
            let sql = format!(
                "SELECT /* postgres-agent */ {columns}, b.fp AS gone_fp \
                 FROM {function}(false) s \
                 FULL JOIN unnest((SELECT $1::int8[])) AS b(fp) ON {fp} = b.fp \
                 WHERE s.userid IS NULL OR b.fp IS NULL"
            );
            let params: Vec<crate::db::Param<'_>> = vec![(fps, Type::INT8_ARRAY)];
            (sql, params)
        }
    };
    session
        .for_each_row(QUERY, &sql, &params, |row| {
            // The server's side is absent (its userid is never null): a baseline fingerprint
            // no entry has.
            if col::<Option<u32>>(row, QUERY, "userid")?.is_none() {
                if let Some(fp) = col::<Option<i64>>(row, QUERY, "gone_fp")? {
                    fold.gone_fingerprint(fp);
                }
                return Ok(());
            }
            let Some(queryid) = col::<Option<i64>>(row, QUERY, "queryid")? else {
                // Another role's entry, hidden without pg_read_all_stats.
                tally.incr(Event::StatementsNoPrivilege);
                return Ok::<(), CollectError>(());
            };
            let key = Key {
                userid: col(row, QUERY, "userid")?,
                dbid: col(row, QUERY, "dbid")?,
                queryid,
                toplevel: col(row, QUERY, "toplevel")?,
            };
            let stats_since = col::<Option<time::OffsetDateTime>>(row, QUERY, "since")?
                .map(|t| (t.unix_timestamp_nanos() / 1000) as i64);
            let fp = col::<Option<i64>>(row, QUERY, "fp")?;
            let spread = (
                col::<Option<f64>>(row, QUERY, "exec_stddev")?,
                col::<Option<f64>>(row, QUERY, "exec_min")?,
                col::<Option<f64>>(row, QUERY, "exec_max")?,
            );
            let values = fold.values();
            for (i, &counter) in layout.iter().enumerate() {
                let at = FIRST_COUNTER + i;
                let int8 = row.columns().get(at).map(|c| c.type_()) == Some(&Type::INT8);
                let v: Result<Option<f64>, _> = if int8 {
                    row.try_get::<_, Option<i64>>(at)
                        .map(|v| v.map(|n| n as f64))
                } else {
                    row.try_get(at)
                };
                let v = v.map_err(|e| CollectError::Column {
                    query: QUERY,
                    column: COUNTERS[counter].name,
                    message: e.to_string(),
                })?;
                values.push(v.unwrap_or(0.0));
            }
            let exec = match spread {
                (Some(stddev), Some(min), Some(max)) => Some(Spread { stddev, min, max }),
                _ => None,
            };
            fold.entry(key, stats_since, fp, exec);
            Ok(())
        })
        .await?;
    Ok(())
}
