//! `pg_database`: one record per row of `pg_stat_database` (the shared-objects row has no
//! `datname`), with `datfrozenxid_age` = `age(datfrozenxid)` and `mxid_age` = `mxid_age(datminmxid)`
//! from `pg_database`. Counters are per-interval deltas; `numbackends` and the ages are gauges.
//! Session times (`session_time`, `active_time`, `sessions`, ...) come with the view on 14+.

use std::path::Path;

use super::delta::Baseline;
use super::{baseline_writer, begin_baseline, fold, save_baseline, Reader, Row};
use crate::batch::BatchKind;
use crate::collect::state_write::StateWriter;
use crate::collect::{CollectError, Collected, Collector, Context};

/// The gauges of pg_stat_database (every other number is a counter).
pub const GAUGES: &[&str] = &["datid", "numbackends", "datfrozenxid_age", "mxid_age"];

const SQL: &str = "SELECT row_to_json(x)::text AS json FROM (\
     SELECT s.*, age(d.datfrozenxid) AS datfrozenxid_age, mxid_age(d.datminmxid) AS mxid_age \
     FROM pg_stat_database s LEFT JOIN pg_database d ON d.oid = s.datid) x";

pub struct DatabaseCollector {
    baseline: Baseline,
    reader: Reader,
    saver: StateWriter,
}

impl DatabaseCollector {
    pub fn new(state_dir: &Path, read_only: bool) -> DatabaseCollector {
        DatabaseCollector {
            saver: baseline_writer(state_dir, "database", read_only),
            baseline: Baseline::new(state_dir, "database"),
            reader: Reader::default(),
        }
    }
}

impl Collector for DatabaseCollector {
    const NAME: &'static str = "health_database";
    const KIND: BatchKind = BatchKind::PgDatabase;
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
        let Some(rows) = self
            .reader
            .rows(session, "pg_stat_database", "health_database", SQL)
            .await?
        else {
            return Ok(None);
        };
        let records = rows
            .into_iter()
            .map(|r| {
                let key = super::text(&r, "datid");
                fold(&mut self.baseline, "pg_stat_database", key, r, GAUGES)
            })
            .collect();
        self.baseline.finish("pg_stat_database");
        save_baseline(&self.baseline, &mut self.saver, counters);
        Ok(Some(Collected::new(records)))
    }
}
