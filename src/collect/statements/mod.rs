//! `pg_statements`: per-interval deltas of pg_stat_statements, one record per (userid, dbid, queryid,
//! toplevel) that ran in the interval, the top `safety.max_statement_rows` by total time.
//!
//! Each cycle reads every entry's counters with `pg_stat_statements(false)` (no texts), subtracts the
//! baseline ([`baseline`]), keeps the top entries, and only then fetches the texts it lacks
//! ([`texts`]). That read costs the server more than the snapshot itself (it reads the whole
//! query-text file), so it happens at most once per `safety.statement_texts_interval_s` (unless a
//! statement without a text took a large share of the interval's time, [`URGENT_TEXT_SHARE`]): an entry
//! whose text is unknown in between is taken back out of the new baseline ([`Snapshot::take_back`])
//! and reported at the next read, its delta then covering every interval since it was last
//! reported (its record's `interval_start` says from when; the batch's `deferred` counts them).
//! The agent's own statements are left out. Without the extension (or its library) the
//! collector warns once with the fix and reports nothing until it appears; the others are unaffected.

pub mod baseline;
pub mod columns;
mod read;
pub mod texts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{col, query_text, round_ms, CollectError, Collected, Collector, Context};
use crate::batch::BatchKind;
use crate::clock::now_rfc3339;
use crate::db::Session;
use crate::telemetry::registry::{Counters as Tally, Event};
use baseline::{Delta, Fold, Key, Meta, Snapshot};
use columns::{ExtVersion, Unit, CALLS, COUNTERS, INFO_SINCE, TOTAL_EXEC, TOTAL_PLAN};
use read::{fold_entries, Read};
use texts::{Lookup, TextCache};

/// Upper bound on rows read from pg_stat_statements per cycle (pg_stat_statements.max is usually
/// 5,000; this only guards against a server configured far beyond that).
const MAX_ENTRIES: i64 = 100_000;

/// A statement without a known text that took at least this share of the interval's statement
/// time (execution and planning, the agent's own statements left out) has its text read in this
/// cycle, whatever `safety.statement_texts_interval_s` says.
const URGENT_TEXT_SHARE: f64 = 0.1;

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
    /// Population standard deviation of the interval's execution times, exact (from the
    /// server's running sums before and after the interval); null for the first interval after
    /// an agent restart.
    pub stddev_exec_time_ms: Option<f64>,
    /// The smallest and largest execution time over the entry's lifetime as of `interval_end`
    /// (since it was created, reset, or on 17+ its min/max were reset): not per interval, which
    /// the server does not keep. The interval's own largest is known only when this rose.
    pub lifetime_min_exec_time_ms: Option<f64>,
    pub lifetime_max_exec_time_ms: Option<f64>,
    /// The pga-privacy fingerprint of the normalised text (literals and `$n` are left out of it),
    /// equal to that of log entries and auto_explain plans of the statement: the join key where
    /// query IDs are missing (PostgreSQL 13 logs). Null without a text.
    pub fingerprint: Option<String>,
    /// Every counter of [`columns::COUNTERS`]; null when this server's extension does not track it.
    #[serde(flatten)]
    pub counters: Counters,
}

/// The delta of every counter of [`COUNTERS`], in that order; `None` where this server's extension
/// does not track it. Serialized as one field per counter (counts as integers, times in
/// milliseconds rounded to microseconds), without a map of names per record.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters(Vec<Option<f64>>);

impl Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(COUNTERS.len()))?;
        for (c, v) in COUNTERS.iter().zip(&self.0) {
            match (v, c.unit) {
                (None, _) => map.serialize_entry(c.name, &())?,
                (Some(v), Unit::Count) => map.serialize_entry(c.name, &(v.round() as i64))?,
                (Some(v), Unit::Ms) => map.serialize_entry(c.name, &round_ms(*v))?,
            }
        }
        map.end()
    }
}

/// Where a baseline save leaves the generation it saved and its outcome.
type SaveSlot = std::sync::Arc<std::sync::Mutex<Option<(u64, Result<(), String>)>>>;

pub struct StatementsCollector {
    state_dir: PathBuf,
    /// Shared with a save in progress (see `keep`).
    baseline: Option<std::sync::Arc<Snapshot>>,
    tried_disk: bool,
    /// The save in progress: the cycle never waits for it (a hung disk costs no tick); no new
    /// save starts until it has returned, and its outcome is read by a later cycle.
    saving: Option<tokio::task::JoinHandle<()>>,
    /// Where the save in progress leaves (generation saved, outcome).
    save_result: SaveSlot,
    /// Generation of the baseline kept last, and of the one the file is known to hold.
    kept_gen: u64,
    file_gen: u64,
    texts: TextCache,
    warned_unavailable: bool,
    /// The last save of the baseline failed (and was warned about once). While false, the file
    /// holds the baseline kept last and can stand in for it.
    save_failed: bool,
    /// Read the saved baseline but never write, move or replace it (`once --dry-run`).
    read_only: bool,
    /// When texts were last read from the server.
    texts_read_at: Option<Instant>,
    /// Entries taken back for want of a text: the `interval_start` their next record covers from.
    deferred_since: HashMap<Key, String>,
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
            saving: None,
            save_result: Default::default(),
            kept_gen: 0,
            file_gen: 0,
            texts: TextCache::default(),
            warned_unavailable: false,
            save_failed: false,
            read_only: false,
            texts_read_at: None,
            deferred_since: HashMap::new(),
        }
    }

    /// Reads the saved baseline and never changes the file (`once --dry-run`): the deltas are
    /// still reported against it, and the daemon's next cycle finds it as it left it.
    pub fn read_only(mut self) -> StatementsCollector {
        self.read_only = true;
        self
    }

    fn unavailable(
        &mut self,
        tally: &Tally,
        dbname: &str,
        reason: &str,
        loaded: bool,
    ) -> Option<Collected<StatementRecord>> {
        tally.incr(Event::StatementsUnavailable);
        if !self.warned_unavailable {
            self.warned_unavailable = true;
            // A restart only when the library is not loaded: a needless one costs production.
            let fix = if loaded {
                format!(
                    "the library is loaded: run CREATE EXTENSION pg_stat_statements; as a superuser \
                     in database \"{dbname}\" (no restart needed)"
                )
            } else {
                format!(
                    "add pg_stat_statements to shared_preload_libraries in postgresql.conf (keeping \
                     the libraries already there), restart PostgreSQL, then run CREATE EXTENSION \
                     pg_stat_statements; in database \"{dbname}\""
                )
            };
            tracing::warn!(
                collector = "statements",
                database = dbname,
                reason,
                fix = %fix,
                "pg_stat_statements is not available: no pg_statements batches until it is (other \
                 collectors are unaffected)"
            );
        }
        None
    }

    /// The baseline to subtract from: in memory, else the saved one (see `collect`), if it is of
    /// this server and counter layout.
    fn previous(
        &mut self,
        tally: &Tally,
        system_identifier: &str,
        layout: &[usize],
    ) -> Option<Snapshot> {
        if self.baseline.is_none() && !self.tried_disk {
            self.tried_disk = true;
            match baseline::load(&self.state_dir) {
                Ok(saved) => self.baseline = saved.map(std::sync::Arc::new),
                Err(e) if self.read_only => {
                    tracing::warn!(error = %e, file = %baseline::path(&self.state_dir).display(),
                        "the saved statement baseline is damaged; left as it is (read-only run)");
                }
                Err(e) => {
                    tally.incr(Event::StatementsBaselineDiscarded);
                    // Kept for inspection, out of the way of the next save (at most two copies).
                    let path = baseline::path(&self.state_dir);
                    let moved = crate::state::file::set_aside(&path);
                    if moved.is_ok() {
                        tally.incr(Event::StateFilesSetAside);
                    }
                    tracing::error!(error = %e, file = %path.display(),
                        moved_to = ?moved.as_ref().ok(),
                        "the saved statement baseline is damaged; moved it aside and starting a \
                         new one: the calls since its last save are not reported");
                }
            }
        }
        // A save still holding it (stuck on the disk) leaves a copy to fold into.
        let prev = std::sync::Arc::unwrap_or_clone(self.baseline.take()?);
        if baseline::usable(&prev, system_identifier, layout) {
            Some(prev)
        } else {
            tally.incr(Event::StatementsBaselineDiscarded);
            tracing::info!(
                "statement baseline belongs to another server or extension version; starting a new one"
            );
            None
        }
    }

    /// Keeps `snap` as the next baseline and saves it, off the scheduler and without waiting for
    /// it: a save that has not returned by the next cycle (a hung disk) is left to finish, and no
    /// new save starts until it has, so stuck writes cannot pile up.
    async fn keep(&mut self, tally: &Tally, snap: Snapshot) {
        let snap = std::sync::Arc::new(snap);
        self.baseline = Some(snap.clone());
        self.kept_gen += 1;
        if self.read_only {
            // `once --dry-run`: the saved baseline is read, never written.
            return;
        }
        self.settle_save();
        if self.saving.is_some() {
            // The file holds an older baseline meanwhile: it must not stand in for this one
            // (`file_gen` stays behind `kept_gen`).
            tally.incr(Event::StateWritesSkipped);
            tracing::debug!("the previous baseline save has not returned; skipped this one");
            return;
        }
        let (dir, slot, generation) = (
            self.state_dir.clone(),
            self.save_result.clone(),
            self.kept_gen,
        );
        self.saving = Some(tokio::task::spawn_blocking(move || {
            let result = baseline::save(&dir, &snap).map_err(|e| e.to_string());
            if let Ok(mut slot) = slot.lock() {
                *slot = Some((generation, result));
            }
        }));
    }

    /// Reads the outcome of a save that has returned (warning once while saves fail).
    fn settle_save(&mut self) {
        if self.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.saving = None;
        let outcome = self.save_result.lock().ok().and_then(|mut r| r.take());
        match outcome {
            Some((generation, Ok(()))) => {
                self.file_gen = generation;
                self.save_failed = false;
            }
            Some((_, Err(e))) if !self.save_failed => {
                self.save_failed = true;
                tracing::warn!(error = %e, "cannot save the statement baseline; deltas will not survive a restart");
            }
            _ => {}
        }
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
        let out = self.report(ctx).await;
        if self.baseline.is_none() {
            // The cycle took the baseline and failed before keeping the new one (a half-folded
            // snapshot is never kept). The saved baseline is the last one kept if that save
            // succeeded: the next cycle subtracts it and reports the failed interval too.
            self.settle_save();
            self.tried_disk = self.file_gen != self.kept_gen;
        }
        out
    }
}

impl StatementsCollector {
    async fn report(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<StatementRecord>>, CollectError> {
        let settings = ctx.settings;
        let tally = ctx.counters;
        let dbname = settings.database.clone();
        let (session, server) = ctx.db()?;
        let ext = match extension(session).await? {
            Ok(ext) => ext,
            Err(reason) => {
                let loaded = library_loaded(session).await;
                return Ok(self.unavailable(tally, &dbname, &reason, loaded));
            }
        };
        let sysid = &server.info.system_identifier;
        // 55000: the extension exists but its library is not in shared_preload_libraries.
        let not_loaded = |e: &CollectError| match e {
            CollectError::Db(e) if e.sqlstate() == Some("55000") => Some(e.to_string()),
            _ => None,
        };
        let meta = match meta(session, &ext).await {
            Ok(m) => m,
            Err(e) => match not_loaded(&e) {
                Some(reason) => return Ok(self.unavailable(tally, &dbname, &reason, false)),
                None => return Err(e),
            },
        };
        let layout = columns::layout(ext.version);
        let prev = self.previous(tally, sysid, &layout);
        let first = prev.is_none();
        let mut cur = prev.unwrap_or_else(|| Snapshot::empty(sysid, &ext.version_text, layout));
        cur.extversion.clone_from(&ext.version_text);
        let interval_start = std::mem::take(&mut cur.taken_at);
        let prev_dealloc = cur.dealloc;
        // With a baseline, only the entries that changed are read (a full reset empties every
        // entry: read them all, as without a baseline).
        let reset_seen =
            matches!((&cur.stats_reset, &meta.stats_reset), (Some(a), Some(b)) if a != b);
        // Entries waiting for a text are read again when this cycle may read texts.
        let texts_due_now = texts_due(
            self.texts_read_at,
            settings.safety.statement_texts_interval,
            Instant::now(),
        );
        let fps = (!first && !reset_seen).then(|| cur.fingerprints(texts_due_now));
        let (read, mut fold) = match &fps {
            Some(fps) => (
                Read::Fingerprints(fps),
                Fold::by_fingerprint(&mut cur, &meta, texts_due_now),
            ),
            None => (Read::Full, Fold::new(&mut cur, &meta, !first)),
        };
        if let Err(e) = fold_entries(session, &ext, &mut fold, read, tally).await {
            return match not_loaded(&e) {
                Some(reason) => Ok(self.unavailable(tally, &dbname, &reason, false)),
                None => Err(e),
            };
        }
        let (mut deltas, full_reset) = fold.finish();
        self.warned_unavailable = false;
        // Entries gone from the server (or a new baseline) leave nothing to report later.
        self.deferred_since
            .retain(|k, _| !first && cur.entries.contains_key(k));
        if first {
            let mut collected = Collected::new(Vec::new());
            batch_fields(&mut collected.extra, None, &cur, 0, false, "new");
            self.keep(tally, cur).await;
            return Ok(Some(collected));
        }
        let resets = deltas.iter().filter(|d| d.reset).count() as u64;
        tally.add(Event::StatementsResetEntries, resets);
        let total = |d: &Delta| value(&cur, d, TOTAL_EXEC) + value(&cur, d, TOTAL_PLAN);
        // The agent's own cost to the server, for /metrics: its statements' time and calls.
        let agent_cost = |d: &Delta| {
            tally.add(Event::AgentServerMicroseconds, (total(d) * 1000.0) as u64);
            tally.add(Event::AgentServerCalls, value(&cur, d, CALLS) as u64);
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

        let max = settings.safety.max_statement_rows;
        let max_chars = (settings.safety.max_query_length + 1).min(i32::MAX as usize) as i32;
        let mut chosen: Vec<Delta> = Vec::new();
        let mut deferred: Vec<Delta> = Vec::new();
        let mut due = texts_due_now;
        let interval_total: f64 = deltas.iter().map(total).sum();
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
            // A reset entry cannot wait: its previous values are gone. Nor can a statement
            // taking a large share of the interval's time ([`URGENT_TEXT_SHARE`]): that is the
            // one a DBA looks for now.
            let must = || {
                deltas[window.clone()].iter().any(|d| {
                    (d.reset || total(d) >= URGENT_TEXT_SHARE * interval_total)
                        && matches!(self.texts.lookup(d.key.queryid), Lookup::Unknown)
                })
            };
            let fetched = !unknown.is_empty() && (due || must());
            if fetched {
                self.texts
                    .fetch(session, &ext.function, &unknown, max_chars)
                    .await?;
                self.texts_read_at = Some(Instant::now());
                due = true;
            }
            for d in &deltas[window] {
                if self.texts.is_agent(d.key.queryid) {
                    agent_own += 1;
                    agent_cost(d);
                } else if !fetched && matches!(self.texts.lookup(d.key.queryid), Lookup::Unknown) {
                    deferred.push(d.clone());
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
        tally.add(Event::StatementsAgentOwn, agent_own);
        tally.add(Event::StatementsOmitted, omitted);
        let mut deferred_count = 0u64;
        for d in &deferred {
            if cur.take_back(d) {
                deferred_count += 1;
                self.deferred_since
                    .entry(d.key)
                    .or_insert_with(|| interval_start.clone());
            } else {
                chosen.push(d.clone());
            }
        }

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
            let mut fingerprint = None;
            let (query, query_truncated) = match self.texts.lookup(d.key.queryid) {
                Lookup::Text(raw) => {
                    fingerprint = Some(crate::privacy::fingerprint(raw));
                    let (t, cut) = query_text(raw, settings, tally);
                    (Some(t), cut)
                }
                _ => {
                    tally.incr(Event::StatementsTextMissing);
                    (None, false)
                }
            };
            let since = self.deferred_since.remove(&d.key);
            let mut r = record(
                d,
                since.as_deref().unwrap_or(&interval_start),
                &cur,
                query,
                query_truncated,
                &dbs,
                &roles,
            );
            r.fingerprint = fingerprint;
            records.push(r);
        }
        let mut collected = Collected::new(records);
        let evicted = match (prev_dealloc, cur.dealloc) {
            (Some(a), Some(b)) if b >= a && !full_reset => Some(b - a),
            (_, Some(b)) if full_reset => Some(b),
            _ => None,
        };
        batch_fields(
            &mut collected.extra,
            Some(&interval_start),
            &cur,
            omitted,
            full_reset,
            "continued",
        );
        collected
            .extra
            .insert("deferred".into(), deferred_count.into());
        collected
            .extra
            .insert("evicted".into(), evicted.map_or(Value::Null, Value::from));
        self.keep(tally, cur).await;
        Ok(Some(collected))
    }
}

fn batch_fields(
    extra: &mut Map<String, Value>,
    interval_start: Option<&str>,
    cur: &Snapshot,
    omitted: u64,
    stats_reset: bool,
    baseline: &str,
) {
    extra.insert(
        "interval_start".into(),
        interval_start.map_or(Value::Null, Value::from),
    );
    extra.insert("interval_end".into(), cur.taken_at.clone().into());
    extra.insert("omitted".into(), omitted.into());
    extra.insert("deferred".into(), 0.into());
    extra.insert("stats_reset".into(), stats_reset.into());
    extra.insert("baseline".into(), baseline.into());
    extra.insert("extension_version".into(), cur.extversion.clone().into());
    extra.entry("evicted").or_insert(Value::Null);
}

/// Whether texts may be read now: never read yet, or read at least `interval` ago (zero: always).
fn texts_due(read_at: Option<Instant>, interval: Duration, now: Instant) -> bool {
    read_at.is_none_or(|t| now.saturating_duration_since(t) >= interval)
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
    interval_start: &str,
    cur: &Snapshot,
    query: Option<String>,
    query_truncated: bool,
    dbs: &HashMap<u32, String>,
    roles: &HashMap<u32, String>,
) -> StatementRecord {
    let counters = Counters(
        (0..COUNTERS.len())
            .map(|i| {
                let p = cur.layout.iter().position(|&l| l == i)?;
                d.values.get(p).copied()
            })
            .collect(),
    );
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
        interval_start: interval_start.to_string(),
        interval_end: cur.taken_at.clone(),
        reset: d.reset,
        mean_exec_time_ms: if calls > 0.0 {
            round_ms(value(cur, d, TOTAL_EXEC) / calls)
        } else {
            0.0
        },
        stddev_exec_time_ms: d.exec.and_then(|x| x.stddev).map(round_ms),
        lifetime_min_exec_time_ms: d.exec.map(|x| round_ms(x.lifetime_min)),
        lifetime_max_exec_time_ms: d.exec.map(|x| round_ms(x.lifetime_max)),
        fingerprint: None,
        counters,
    }
}

/// Finds the extension in the connected database. The inner `Err` is why it is not usable.
/// Whether the pg_stat_statements library is loaded: its settings are in `pg_settings` only then
/// (a `pg_stat_statements.*` line in postgresql.conf alone makes a hidden placeholder).
async fn library_loaded(session: &mut Session) -> bool {
    session
        .query_opt(
            "statements_loaded",
            "SELECT /* postgres-agent */ EXISTS (SELECT 1 FROM pg_settings \
             WHERE name = 'pg_stat_statements.max')",
            &[],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<_, bool>(0).ok())
        .unwrap_or(false)
}

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

/// What the new snapshot says about itself: when it is taken and, on 1.9+, the reset time and the
/// eviction count.
async fn meta(session: &mut Session, ext: &Extension) -> Result<Meta, CollectError> {
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
    Ok(Meta {
        taken_at: now_rfc3339(),
        stats_reset,
        dealloc,
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
