//! `pg_server_health`: what the server does besides queries, one record per row of each section,
//! named by `section`, every cycle. Sections and the views behind them, by server version:
//!
//! | section | view | versions |
//! |---|---|---|
//! | `checkpointer` | `pg_stat_bgwriter` (checkpoint columns) before 17, `pg_stat_checkpointer` from 17 | 13+ |
//! | `bgwriter` | `pg_stat_bgwriter` (background-writer columns) | 13+ |
//! | `wal` | `pg_stat_wal` (18 moved its write/sync counts and times to `pg_stat_io`, object `wal`) | 14+ |
//! | `io` | `pg_stat_io`, rows with any activity | 16+ |
//! | `progress_vacuum`, `progress_analyze`, `progress_create_index`, `progress_cluster` | `pg_stat_progress_*` | 13+ |
//! | `replication` | `pg_stat_replication` with lags in seconds and bytes | 13+ |
//! | `replication_slot` | `pg_replication_slots` with the WAL each retains | 13+ |
//! | `recovery`, `wal_receiver` | on a standby: receive/replay positions and lag, `pg_stat_wal_receiver` | 13+ |
//!
//! The `checkpointer` record has one shape on every version: the columns of 17's
//! `pg_stat_checkpointer` (`num_timed`, `num_requested`, `write_time`, `sync_time`,
//! `buffers_written`, ...) and the names they had in `pg_stat_bgwriter` before 17
//! (`checkpoints_timed`, `checkpoints_req`, `checkpoint_write_time`, `checkpoint_sync_time`,
//! `buffers_checkpoint`), each filled from the other, plus `checkpoint_in_progress` from the
//! checkpointer's wait event. Cumulative sections are per-interval deltas; the others are gauges.

use std::path::Path;

use serde_json::Value;

use super::delta::Baseline;
use super::{baseline_writer, begin_baseline, fold, save_baseline, Reader, Row};
use crate::batch::BatchKind;
use crate::collect::state_write::StateWriter;
use crate::collect::{CollectError, Collected, Collector, Context};
use crate::db::Session;

/// One section: the query for a range of server versions.
pub struct Section {
    pub name: &'static str,
    /// Lowest `server_version_num` it runs on, and the first it no longer runs on.
    pub from: i32,
    pub until: i32,
    pub sql: &'static str,
    /// The fields naming a row, for cumulative sections; None: gauges only, no deltas.
    pub key: Option<&'static [&'static str]>,
    /// Numbers that are gauges in a cumulative section.
    pub gauges: &'static [&'static str],
}

const fn s(
    name: &'static str,
    from: i32,
    until: i32,
    sql: &'static str,
    key: Option<&'static [&'static str]>,
    gauges: &'static [&'static str],
) -> Section {
    Section {
        name,
        from,
        until,
        sql,
        key,
        gauges,
    }
}

const ANY: i32 = 0;
const NEVER: i32 = i32::MAX;

/// Every section, in record order.
pub const SECTIONS: &[Section] = &[
    s(
        "checkpointer",
        ANY,
        170000,
        "SELECT row_to_json(x)::text AS json FROM (SELECT checkpoints_timed, checkpoints_req, \
         checkpoint_write_time, checkpoint_sync_time, buffers_checkpoint, \
         checkpoints_timed AS num_timed, checkpoints_req AS num_requested, \
         checkpoint_write_time AS write_time, checkpoint_sync_time AS sync_time, \
         buffers_checkpoint AS buffers_written, stats_reset, \
         (SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'checkpointer') \
         AS checkpointer_wait_event, (SELECT CASE WHEN query = '<insufficient privilege>' THEN NULL \
         ELSE wait_event IS DISTINCT FROM 'CheckpointerMain' END \
         FROM pg_stat_activity WHERE backend_type = 'checkpointer') AS checkpoint_in_progress \
         FROM pg_stat_bgwriter) x",
        Some(&[]),
        &[],
    ),
    s(
        "checkpointer",
        170000,
        NEVER,
        "SELECT row_to_json(x)::text AS json FROM (SELECT c.*, num_timed AS checkpoints_timed, \
         num_requested AS checkpoints_req, write_time AS checkpoint_write_time, \
         sync_time AS checkpoint_sync_time, buffers_written AS buffers_checkpoint, \
         (SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'checkpointer') \
         AS checkpointer_wait_event, (SELECT CASE WHEN query = '<insufficient privilege>' THEN NULL \
         ELSE wait_event IS DISTINCT FROM 'CheckpointerMain' END \
         FROM pg_stat_activity WHERE backend_type = 'checkpointer') AS checkpoint_in_progress \
         FROM pg_stat_checkpointer c) x",
        Some(&[]),
        &[],
    ),
    s(
        "bgwriter",
        ANY,
        170000,
        "SELECT row_to_json(x)::text AS json FROM (SELECT buffers_clean, maxwritten_clean, \
         buffers_alloc, buffers_backend, buffers_backend_fsync, stats_reset \
         FROM pg_stat_bgwriter) x",
        Some(&[]),
        &[],
    ),
    s(
        "bgwriter",
        170000,
        NEVER,
        "SELECT row_to_json(b)::text AS json FROM pg_stat_bgwriter b",
        Some(&[]),
        &[],
    ),
    s(
        "wal",
        140000,
        NEVER,
        "SELECT row_to_json(w)::text AS json FROM pg_stat_wal w",
        Some(&[]),
        &[],
    ),
    s(
        "io",
        160000,
        NEVER,
        "SELECT row_to_json(i)::text AS json FROM pg_stat_io i WHERE coalesce(reads, 0) \
         + coalesce(writes, 0) + coalesce(extends, 0) + coalesce(hits, 0) \
         + coalesce(evictions, 0) + coalesce(fsyncs, 0) > 0",
        Some(&["backend_type", "object", "context"]),
        &["op_bytes"],
    ),
    s(
        "progress_vacuum",
        ANY,
        NEVER,
        "SELECT row_to_json(p)::text AS json FROM pg_stat_progress_vacuum p",
        None,
        &[],
    ),
    s(
        "progress_analyze",
        ANY,
        NEVER,
        "SELECT row_to_json(p)::text AS json FROM pg_stat_progress_analyze p",
        None,
        &[],
    ),
    s(
        "progress_create_index",
        ANY,
        NEVER,
        "SELECT row_to_json(p)::text AS json FROM pg_stat_progress_create_index p",
        None,
        &[],
    ),
    s(
        "progress_cluster",
        ANY,
        NEVER,
        "SELECT row_to_json(p)::text AS json FROM pg_stat_progress_cluster p",
        None,
        &[],
    ),
    s(
        "replication",
        ANY,
        NEVER,
        "SELECT row_to_json(x)::text AS json FROM (SELECT r.*, \
         extract(epoch FROM r.write_lag)::float8 AS write_lag_s, \
         extract(epoch FROM r.flush_lag)::float8 AS flush_lag_s, \
         extract(epoch FROM r.replay_lag)::float8 AS replay_lag_s, \
         pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
         ELSE pg_current_wal_lsn() END, r.replay_lsn)::float8 AS replay_lag_bytes \
         FROM pg_stat_replication r) x",
        None,
        &[],
    ),
    s(
        "replication_slot",
        ANY,
        NEVER,
        "SELECT row_to_json(x)::text AS json FROM (SELECT s.*, \
         pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
         ELSE pg_current_wal_lsn() END, s.restart_lsn)::float8 AS retained_bytes \
         FROM pg_replication_slots s) x",
        None,
        &[],
    ),
    s(
        "recovery",
        ANY,
        NEVER,
        "SELECT row_to_json(x)::text AS json FROM (SELECT true AS in_recovery, \
         pg_last_wal_receive_lsn()::text AS receive_lsn, \
         pg_last_wal_replay_lsn()::text AS replay_lsn, \
         pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8 \
         AS replay_lag_bytes, \
         extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_lag_s, \
         pg_last_xact_replay_timestamp() AS last_xact_replay_timestamp) x \
         WHERE pg_is_in_recovery()",
        None,
        &[],
    ),
    s(
        "wal_receiver",
        ANY,
        NEVER,
        "SELECT row_to_json(w)::text AS json FROM pg_stat_wal_receiver w",
        None,
        &[],
    ),
];

/// The sections a spike snapshot carries: what ran in the background at that moment.
pub const SPIKE_SECTIONS: &[&str] = &[
    "checkpointer",
    "progress_vacuum",
    "progress_analyze",
    "replication",
    "recovery",
];

/// Fields never reported: `conninfo` of the WAL receiver names hosts and users (the server already
/// hides its password).
const DROPPED: &[&str] = &["conninfo"];

/// Reads every section of `version` whose name `only` accepts, as records with `section`; the
/// cumulative ones through `baseline` when given (else their counters are totals). A refused
/// section is warned about once and left out.
pub async fn read_sections(
    session: &mut Session,
    reader: &mut Reader,
    version: i32,
    mut baseline: Option<&mut Baseline>,
    only: impl Fn(&str) -> bool,
) -> Result<Vec<Row>, CollectError> {
    let mut out = Vec::new();
    for sec in SECTIONS
        .iter()
        .filter(|s| s.from <= version && version < s.until && only(s.name))
    {
        let Some(rows) = reader
            .rows(session, sec.name, "health_server", sec.sql)
            .await?
        else {
            continue;
        };
        for mut row in rows {
            for f in DROPPED {
                row.remove(*f);
            }
            let mut row = match (sec.key, baseline.as_deref_mut()) {
                (Some(key), Some(b)) => {
                    let k = key
                        .iter()
                        .map(|f| super::text(&row, f))
                        .collect::<Vec<_>>()
                        .join("/");
                    fold(b, sec.name, k, row, sec.gauges)
                }
                _ => row,
            };
            row.insert("section".into(), Value::from(sec.name));
            out.push(row);
        }
        if let (Some(_), Some(b)) = (sec.key, baseline.as_deref_mut()) {
            b.finish(sec.name);
        }
    }
    Ok(out)
}

/// What ran in the background at a spike (the [`SPIKE_SECTIONS`]: checkpoint in progress,
/// vacuum and analyze progress, replication lag), for the spike snapshot. Counters are totals
/// there (no baseline). Never fails: a section the server refuses is left out, and a failed read
/// gives an empty list, with a warning.
pub async fn background(session: &mut Session, version: i32) -> Vec<Row> {
    let mut reader = Reader::default();
    let only = |s: &str| SPIKE_SECTIONS.contains(&s);
    match read_sections(session, &mut reader, version, None, only).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "spike: cannot read the background sections; left out");
            Vec::new()
        }
    }
}

pub struct ServerHealthCollector {
    baseline: Baseline,
    reader: Reader,
    saver: StateWriter,
}

impl ServerHealthCollector {
    pub fn new(state_dir: &Path, read_only: bool) -> ServerHealthCollector {
        ServerHealthCollector {
            saver: baseline_writer(state_dir, "server", read_only),
            baseline: Baseline::new(state_dir, "server"),
            reader: Reader::default(),
        }
    }
}

impl Collector for ServerHealthCollector {
    const NAME: &'static str = "health_server";
    const KIND: BatchKind = BatchKind::PgServerHealth;
    type Record = Row;

    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<Row>>, CollectError> {
        if !ctx.settings.health.enabled {
            return Ok(None);
        }
        let counters = ctx.counters;
        let (session, server) = ctx.db()?;
        begin_baseline(&mut self.baseline, &server.info.system_identifier, counters);
        let version = server.info.version_num;
        let records = read_sections(
            session,
            &mut self.reader,
            version,
            Some(&mut self.baseline),
            |_| true,
        )
        .await?;
        save_baseline(&self.baseline, &mut self.saver, counters);
        Ok(Some(Collected::new(records)))
    }
}
