//! Plans tied to their statements, and plan changes (issue 23): the `pg_plans` batch.
//!
//! Data flow: the log task parses auto_explain entries (plan tree and `plan_id` in `extracted`,
//! `fingerprint` and `query_id` on the entry: `pga-logparse` and `logs::finish_entry`). After it
//! has written a pg_logs batch to the outbox, it hands the plans in it to the [`PlanInbox`]
//! ([`PlanInbox::push`]); the entries themselves go out in pg_logs as before. Each cycle the
//! [`PlansCollector`] drains the inbox into its [`store::PlanStore`] (per statement: plans with
//! first/last seen, times seen, durations; the current plan), saves the store under the state
//! directory, and reports a `pg_plans` batch: one `plan` record per plan seen in the interval (the
//! tree only the first time since the agent started) and one `plan_change` record per change.
//!
//! The inbox is the hand-over between two tasks that share no other state; it is created once per
//! daemon (not per configuration), so a reload keeps it. It is bounded ([`MAX_PENDING`]); what it
//! drops is counted (`plans_dropped`) and still went out in pg_logs. Sightings in it when the
//! process dies are lost to pg_plans (not to pg_logs).

pub mod explain;
pub mod store;

pub use explain::{candidates, Candidate};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use super::state_write::StateWriter;
use super::{CollectError, Collected, Collector, Context};
use crate::batch::BatchKind;
use crate::telemetry::registry::{Counters, Event};
use store::{PlanStats, PlanStore, Seen, Source};

/// At most this many plan sightings wait for the next cycle.
pub const MAX_PENDING: usize = 10_000;

/// At most this many sent trees are remembered (the store's own bound: 20,000 x 8).
const MAX_SENT: usize = store::MAX_STATEMENTS * store::MAX_PLANS_PER_STATEMENT;

/// One plan logged once, as the log task read it from a finished entry.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub fingerprint: u64,
    pub queryid: Option<i64>,
    pub plan_id: u64,
    pub at_ms: i64,
    pub duration_ms: Option<f64>,
    pub dbname: Option<String>,
    /// The plan tree (literals already masked by the privacy step).
    pub tree: Value,
    pub source: Source,
}

impl Sighting {
    /// The plan of a finished auto_explain log entry (its JSON form, as the log task holds it).
    pub fn from_log_entry(e: &Value) -> Option<Sighting> {
        if e.get("event")?.as_str()? != "auto_explain" {
            return None;
        }
        let x = e.get("extracted")?;
        let hex = |v: &Value| u64::from_str_radix(v.as_str()?, 16).ok();
        let at = e.get("timestamp").and_then(Value::as_str);
        Some(Sighting {
            fingerprint: hex(e.get("fingerprint")?)?,
            queryid: e
                .get("query_id")
                .and_then(Value::as_i64)
                .filter(|&q| q != 0),
            plan_id: hex(x.get("plan_id")?)?,
            at_ms: at
                .and_then(crate::clock::unix_seconds)
                .map_or_else(crate::clock::now_ms, |s| (s * 1000.0) as i64),
            duration_ms: e.get("duration_ms").and_then(Value::as_f64),
            dbname: e.get("dbname").and_then(Value::as_str).map(str::to_string),
            tree: x.get("plan")?.clone(),
            source: Source::AutoExplain,
        })
    }
}

/// The hand-over of plan sightings from the log task to the collector (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct PlanInbox(Arc<Mutex<Vec<Sighting>>>);

impl PlanInbox {
    /// Takes the plans of written log entries ([`Sighting::from_log_entry`]); drops past
    /// [`MAX_PENDING`], counted.
    pub fn push(&self, seen: Vec<Sighting>, counters: &Counters) {
        if seen.is_empty() {
            return;
        }
        let Ok(mut pending) = self.0.lock() else {
            counters.add(Event::PlansDropped, seen.len() as u64);
            return;
        };
        let room = MAX_PENDING.saturating_sub(pending.len());
        if seen.len() > room {
            counters.add(Event::PlansDropped, (seen.len() - room) as u64);
        }
        pending.extend(seen.into_iter().take(room));
    }

    fn is_empty(&self) -> bool {
        self.0.lock().map_or(true, |p| p.is_empty())
    }

    fn take(&self) -> Vec<Sighting> {
        self.0
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// The current plan of each statement (fingerprint -> plan_id), as the plans collector last
/// published it: what a spike snapshot reads. Part of [`super::CollectSettings`], so the sampler
/// reads it without knowing the collector; a reload starts an empty one, filled at the next cycle.
#[derive(Debug, Clone, Default)]
pub struct CurrentPlans(Arc<std::sync::RwLock<std::collections::HashMap<u64, u64>>>);

impl CurrentPlans {
    /// The current plan_id of the statement with this fingerprint (both 16 hex digits).
    pub fn get_hex(&self, fingerprint: &str) -> Option<String> {
        let fp = u64::from_str_radix(fingerprint, 16).ok()?;
        let id = *self.0.read().ok()?.get(&fp)?;
        Some(hex(id))
    }

    fn is_empty(&self) -> bool {
        self.0.read().map_or(true, |m| m.is_empty())
    }

    fn replace(&self, map: std::collections::HashMap<u64, u64>) {
        if let Ok(mut m) = self.0.write() {
            *m = map;
        }
    }
}

/// A record of the `pg_plans` batch (`record_type` says which).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "record_type", rename_all = "snake_case")]
pub enum PlanRecord {
    Plan(PlanSeen),
    PlanChange(PlanChange),
}

/// A plan seen in the interval.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSeen {
    pub fingerprint: String,
    /// Decimal string, as in pg_statements; null where the server computes none (13, or no
    /// `compute_query_id`).
    pub queryid: Option<String>,
    pub plan_id: String,
    /// `auto_explain` (from the server log) or `explain` (EXPLAIN on demand).
    pub source: String,
    pub dbname: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    /// Since the plan was first seen (across restarts), and in this interval.
    pub times_seen: u64,
    pub seen_in_interval: u64,
    pub duration_ms_min: Option<f64>,
    pub duration_ms_mean: Option<f64>,
    pub duration_ms_max: Option<f64>,
    /// Whether this is the statement's current plan (the last one seen).
    pub current: bool,
    /// The tree (EXPLAIN's JSON keys, literals masked) the first time it is sent since the agent
    /// started; null after.
    pub plan: Option<Value>,
}

/// A statement's plan changed.
#[derive(Debug, Clone, Serialize)]
pub struct PlanChange {
    pub fingerprint: String,
    pub queryid: Option<String>,
    pub previous_plan_id: String,
    pub plan_id: String,
    pub changed_at: String,
    pub previous_duration_ms_min: Option<f64>,
    pub previous_duration_ms_mean: Option<f64>,
    pub previous_duration_ms_max: Option<f64>,
    pub duration_ms_min: Option<f64>,
    pub duration_ms_mean: Option<f64>,
    pub duration_ms_max: Option<f64>,
}

/// Makes the `pg_plans` batch from the inbox and keeps the store.
pub struct PlansCollector {
    inbox: PlanInbox,
    store: PlanStore,
    path: PathBuf,
    loaded: bool,
    /// (fingerprint, plan_id) of the trees sent since the agent started; forgotten past
    /// [`MAX_SENT`] (those trees are then sent once more).
    sent: HashSet<(u64, u64)>,
    /// The store changed since its last save started.
    dirty: bool,
    /// Writes `plans.json` off the collection task: the cycle never waits for the disk, and no new
    /// save starts before the last has returned (`state_writes_skipped`).
    writer: StateWriter,
    /// This cycle's top statements, for EXPLAIN on demand.
    candidates: Vec<explain::Candidate>,
    /// When each statement (fingerprint) was last explained or tried: at most once an hour,
    /// failures included.
    explained: std::collections::HashMap<u64, std::time::Instant>,
    /// Said once: EXPLAIN on demand needs PostgreSQL 16.
    said_needs_16: bool,
}

impl PlansCollector {
    pub fn new(state_dir: &std::path::Path) -> PlansCollector {
        PlansCollector {
            inbox: PlanInbox::default(),
            store: PlanStore::default(),
            path: PlanStore::path(state_dir),
            loaded: false,
            sent: HashSet::new(),
            dirty: false,
            writer: StateWriter::new("the plan store", PlanStore::path(state_dir), false),
            candidates: Vec::new(),
            explained: Default::default(),
            said_needs_16: false,
        }
    }

    /// Reads the saved store but never writes it (`once --dry-run`).
    pub fn read_only(mut self) -> PlansCollector {
        self.writer.set_read_only();
        self
    }

    /// Whether a run would report anything: sightings wait, or EXPLAIN on demand has a statement
    /// to plan. Without, the cycle calls [`PlansCollector::idle`] instead, so a collector with
    /// nothing to do is not listed as skipped in every cycle's summary.
    pub fn has_work(&self, settings: &super::CollectSettings) -> bool {
        !self.inbox.is_empty()
            || (settings.plans.explain
                && self.candidates.iter().any(|c| self.eligible(c, settings)))
    }

    /// What a cycle without work still does: read the saved store once, publish the current
    /// plans for spike snapshots, save a store a skipped save left unsaved.
    pub fn idle(&mut self, settings: &super::CollectSettings, counters: &Counters) {
        self.load_once(counters);
        self.candidates.clear();
        if settings.current_plans.is_empty() && !self.store.is_empty() {
            settings.current_plans.replace(self.store.currents());
        }
        self.save(counters);
    }

    /// This cycle's top statements (see [`explain::candidates`]).
    pub fn set_candidates(&mut self, candidates: Vec<explain::Candidate>) {
        self.candidates = candidates;
    }

    /// The inbox the log task fills (one per daemon).
    pub fn with_inbox(mut self, inbox: PlanInbox) -> PlansCollector {
        self.inbox = inbox;
        self
    }

    fn load_once(&mut self, counters: &Counters) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        match PlanStore::load(&self.path) {
            Ok(Some(s)) => self.store = s,
            Ok(None) => {}
            Err(why) => {
                counters.incr(Event::StateFilesSetAside);
                let moved = crate::state::file::set_aside(&self.path);
                tracing::error!(path = %self.path.display(), error = %why, moved = ?moved.map(|p| p.display().to_string()).map_err(|e| e.to_string()),
                    "the plan store file is damaged; set aside, starting with an empty store");
            }
        }
    }
}

impl PlansCollector {
    /// Saves the store if it changed, unless the previous save has not returned.
    fn save(&mut self, counters: &Counters) {
        if !self.dirty {
            return;
        }
        let store = self.store.clone();
        if self.writer.write(counters, move |path| store.save(path)) {
            self.dirty = false;
        }
    }
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(crate::clock::format_rfc3339)
        .unwrap_or_default()
}

fn round(v: Option<f64>) -> Option<f64> {
    v.map(super::round_ms)
}

impl Collector for PlansCollector {
    const NAME: &'static str = "plans";
    const KIND: BatchKind = BatchKind::PgPlans;
    const NEEDS_DB: bool = false;
    type Record = PlanRecord;

    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<PlanRecord>>, CollectError> {
        self.load_once(ctx.counters);
        let mut sightings = self.inbox.take();
        let explained = self.explain_top(ctx).await;
        let explain_ms = explained.1;
        sightings.extend(explained.0);
        if sightings.is_empty() {
            if ctx.settings.current_plans.is_empty() && !self.store.is_empty() {
                ctx.settings.current_plans.replace(self.store.currents());
            }
            self.save(ctx.counters);
            return Ok(None);
        }
        self.dirty = true;
        let mut records = Vec::new();
        let mut interval: Vec<InInterval> = Vec::new();
        let mut evicted = 0;
        for s in sightings {
            let added = self.store.add(Seen {
                fingerprint: s.fingerprint,
                queryid: s.queryid,
                plan_id: s.plan_id,
                at_ms: s.at_ms,
                duration_ms: s.duration_ms,
                source: s.source,
            });
            evicted += added.evicted;
            if let Some(c) = added.change {
                records.push(PlanRecord::PlanChange(change_record(&c)));
            }
            match interval
                .iter_mut()
                .find(|i| i.fingerprint == s.fingerprint && i.plan_id == s.plan_id)
            {
                Some(i) => i.count += 1,
                None => interval.push(InInterval {
                    fingerprint: s.fingerprint,
                    plan_id: s.plan_id,
                    count: 1,
                    tree: s.tree,
                    dbname: s.dbname,
                }),
            }
        }
        if evicted > 0 {
            ctx.counters.add(Event::PlansEvicted, evicted);
        }
        for i in interval {
            let Some(st) = self.store.statement(i.fingerprint) else {
                continue;
            };
            let Some(p) = st.plan(i.plan_id) else {
                continue;
            };
            if self.sent.len() >= MAX_SENT {
                self.sent.clear();
            }
            let plan = self
                .sent
                .insert((i.fingerprint, i.plan_id))
                .then(|| i.tree.clone());
            let current = st.current == Some(i.plan_id);
            records.push(PlanRecord::Plan(seen_record(
                &i, st.queryid, p, current, plan,
            )));
        }
        ctx.settings.current_plans.replace(self.store.currents());
        self.save(ctx.counters);
        let mut collected = Collected::new(records);
        if let Some(ms) = explain_ms {
            collected
                .extra
                .insert("explain_ms".into(), Value::from(super::round_ms(ms)));
        }
        Ok(Some(collected))
    }
}

/// A plan seen in this cycle's sightings: how often, its tree and database.
struct InInterval {
    fingerprint: u64,
    plan_id: u64,
    count: u64,
    tree: Value,
    dbname: Option<String>,
}

fn seen_record(
    i: &InInterval,
    queryid: Option<i64>,
    p: &PlanStats,
    current: bool,
    plan: Option<Value>,
) -> PlanSeen {
    PlanSeen {
        fingerprint: hex(i.fingerprint),
        queryid: queryid.map(|q| q.to_string()),
        plan_id: hex(p.plan_id),
        source: p.source.as_str().to_string(),
        dbname: i.dbname.clone(),
        first_seen: rfc3339(p.first_seen),
        last_seen: rfc3339(p.last_seen),
        times_seen: p.times_seen,
        seen_in_interval: i.count,
        duration_ms_min: round((p.durations.count > 0).then_some(p.durations.min_ms)),
        duration_ms_mean: round(p.durations.mean_ms()),
        duration_ms_max: round((p.durations.count > 0).then_some(p.durations.max_ms)),
        current,
        plan,
    }
}

fn change_record(c: &store::Change) -> PlanChange {
    let d = |p: &PlanStats| {
        let has = p.durations.count > 0;
        (
            round(has.then_some(p.durations.min_ms)),
            round(p.durations.mean_ms()),
            round(has.then_some(p.durations.max_ms)),
        )
    };
    let (pmin, pmean, pmax) = d(&c.previous);
    let (min, mean, max) = d(&c.current);
    PlanChange {
        fingerprint: hex(c.fingerprint),
        queryid: c.queryid.map(|q| q.to_string()),
        previous_plan_id: hex(c.previous.plan_id),
        plan_id: hex(c.current.plan_id),
        changed_at: rfc3339(c.changed_at),
        previous_duration_ms_min: pmin,
        previous_duration_ms_mean: pmean,
        previous_duration_ms_max: pmax,
        duration_ms_min: min,
        duration_ms_mean: mean,
        duration_ms_max: max,
    }
}
