//! The plan store: per statement (its fingerprint), the plans seen for it with first and last seen,
//! times seen and the duration min/mean/max of the executions that logged them, and which plan is
//! current. It decides what a cycle reports (plans seen in the interval, plan changes) and is saved
//! under the state directory as `plans.json`.
//!
//! Bounded: at most [`MAX_STATEMENTS`] statements and [`MAX_PLANS_PER_STATEMENT`] plans each; the
//! least recently seen one goes first, and every eviction is counted by the caller. Plan trees are
//! not kept here (only their ids): a tree waits in the cycle's sightings until it is sent.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// At most this many statements are remembered; pg_stat_statements keeps 5,000 by default.
/// Memory: 10,000 statements x 3 plans measured by `benches/plan_store.rs` (docs/plans.md).
pub const MAX_STATEMENTS: usize = 20_000;
/// At most this many plans per statement.
pub const MAX_PLANS_PER_STATEMENT: usize = 8;

/// The state file's name under `agent.state_dir`.
pub const FILE_NAME: &str = "plans.json";

/// Duration figures of the executions that logged one plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    pub count: u64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub sum_ms: f64,
}

impl Durations {
    fn add(&mut self, ms: Option<f64>) {
        let Some(ms) = ms else { return };
        if self.count == 0 || ms < self.min_ms {
            self.min_ms = ms;
        }
        if self.count == 0 || ms > self.max_ms {
            self.max_ms = ms;
        }
        self.count += 1;
        self.sum_ms += ms;
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms / self.count as f64)
    }
}

/// One plan of a statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStats {
    pub plan_id: u64,
    /// Unix milliseconds.
    pub first_seen: i64,
    pub last_seen: i64,
    pub times_seen: u64,
    pub durations: Durations,
    /// Where it came from.
    pub source: Source,
}

/// Where a plan came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The server log (auto_explain).
    AutoExplain,
    /// EXPLAIN run by the agent.
    Explain,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::AutoExplain => "auto_explain",
            Source::Explain => "explain",
        }
    }
}

/// What the store knows of one statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementPlans {
    pub queryid: Option<i64>,
    pub current: Option<u64>,
    pub plans: Vec<PlanStats>,
}

impl StatementPlans {
    fn last_seen(&self) -> i64 {
        self.plans.iter().map(|p| p.last_seen).max().unwrap_or(0)
    }

    pub fn plan(&self, id: u64) -> Option<&PlanStats> {
        self.plans.iter().find(|p| p.plan_id == id)
    }
}

/// A plan change found while adding a sighting.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub fingerprint: u64,
    pub queryid: Option<i64>,
    pub previous: PlanStats,
    pub current: PlanStats,
    /// Unix milliseconds of the first sighting of the new plan after the old one.
    pub changed_at: i64,
}

/// What adding a sighting did.
#[derive(Debug, Default, PartialEq)]
pub struct Added {
    pub change: Option<Change>,
    /// Plans or statements evicted to stay within the bounds.
    pub evicted: u64,
}

/// The plans of every statement seen, bounded.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStore {
    statements: HashMap<u64, StatementPlans>,
}

/// One plan seen once.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub fingerprint: u64,
    pub queryid: Option<i64>,
    pub plan_id: u64,
    pub at_ms: i64,
    pub duration_ms: Option<f64>,
    pub source: Source,
}

impl PlanStore {
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    pub fn statement(&self, fingerprint: u64) -> Option<&StatementPlans> {
        self.statements.get(&fingerprint)
    }

    /// The current plan of a statement.
    pub fn current(&self, fingerprint: u64) -> Option<u64> {
        self.statements.get(&fingerprint)?.current
    }

    /// The current plan of every statement, for spike snapshots.
    pub fn currents(&self) -> HashMap<u64, u64> {
        self.statements
            .iter()
            .filter_map(|(fp, st)| Some((*fp, st.current?)))
            .collect()
    }

    /// Records one sighting; a different plan than the statement's current one is a change.
    pub fn add(&mut self, s: Seen) -> Added {
        let mut added = Added::default();
        if !self.statements.contains_key(&s.fingerprint) && self.statements.len() >= MAX_STATEMENTS
        {
            added.evicted += self.evict_statement();
        }
        let st = self
            .statements
            .entry(s.fingerprint)
            .or_insert(StatementPlans {
                queryid: None,
                current: None,
                plans: Vec::new(),
            });
        if s.queryid.is_some() {
            st.queryid = s.queryid;
        }
        if st.plan(s.plan_id).is_none() {
            if st.plans.len() >= MAX_PLANS_PER_STATEMENT {
                // The least recently seen plan that is not the current one.
                let current = st.current;
                if let Some(i) = st
                    .plans
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| Some(p.plan_id) != current)
                    .min_by_key(|(_, p)| p.last_seen)
                    .map(|(i, _)| i)
                {
                    st.plans.swap_remove(i);
                    added.evicted += 1;
                }
            }
            st.plans.push(PlanStats {
                plan_id: s.plan_id,
                first_seen: s.at_ms,
                last_seen: s.at_ms,
                times_seen: 0,
                durations: Durations::default(),
                source: s.source,
            });
        }
        let previous = st.current.filter(|&c| c != s.plan_id);
        if let Some(p) = st.plans.iter_mut().find(|p| p.plan_id == s.plan_id) {
            p.times_seen += 1;
            p.first_seen = p.first_seen.min(s.at_ms);
            p.last_seen = p.last_seen.max(s.at_ms);
            p.durations.add(s.duration_ms);
        }
        st.current = Some(s.plan_id);
        if let Some(prev) = previous {
            if let (Some(old), Some(new)) = (st.plan(prev), st.plan(s.plan_id)) {
                added.change = Some(Change {
                    fingerprint: s.fingerprint,
                    queryid: st.queryid,
                    previous: old.clone(),
                    current: new.clone(),
                    changed_at: s.at_ms,
                });
            }
        }
        added
    }

    fn evict_statement(&mut self) -> u64 {
        let oldest = self
            .statements
            .iter()
            .min_by_key(|(_, st)| st.last_seen())
            .map(|(k, _)| *k);
        match oldest {
            Some(k) => {
                self.statements.remove(&k);
                1
            }
            None => 0,
        }
    }

    /// The file under `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Reads the saved store: `Ok(None)` when there is none, `Err` when the file is damaged (the
    /// caller sets it aside and starts empty).
    pub fn load(path: &Path) -> Result<Option<PlanStore>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if saved.version != 1 {
            return Err(format!("unknown version {}", saved.version));
        }
        let mut store = PlanStore::default();
        for (fp, st) in saved.statements {
            let fp =
                u64::from_str_radix(&fp, 16).map_err(|e| format!("fingerprint {fp:?}: {e}"))?;
            store.statements.insert(fp, st);
        }
        Ok(Some(store))
    }

    /// Saves the store atomically ([`crate::state::file::write_atomic`]).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let saved = SavedRef {
            version: 1,
            statements: self
                .statements
                .iter()
                .map(|(k, v)| (format!("{k:016x}"), v))
                .collect(),
        };
        crate::state::file::write_atomic(path, |out| {
            serde_json::to_writer(&mut *out, &saved)?;
            out.write_all(b"\n")
        })
    }
}

#[derive(Deserialize)]
struct Saved {
    version: u32,
    statements: HashMap<String, StatementPlans>,
}

#[derive(Serialize)]
struct SavedRef<'a> {
    version: u32,
    statements: HashMap<String, &'a StatementPlans>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(fp: u64, plan: u64, at: i64, ms: f64) -> Seen {
        Seen {
            fingerprint: fp,
            queryid: Some(7),
            plan_id: plan,
            at_ms: at,
            duration_ms: Some(ms),
            source: Source::AutoExplain,
        }
    }

    #[test]
    fn a_new_plan_is_a_change_with_both_plans_durations() {
        let mut s = PlanStore::default();
        assert_eq!(s.add(seen(1, 10, 1000, 5.0)).change, None);
        assert_eq!(s.add(seen(1, 10, 2000, 7.0)).change, None);
        let c = s.add(seen(1, 20, 3000, 1.0)).change.expect("a change");
        assert_eq!(
            (c.previous.plan_id, c.current.plan_id, c.changed_at),
            (10, 20, 3000)
        );
        assert_eq!(c.previous.durations.mean_ms(), Some(6.0));
        assert_eq!(c.previous.times_seen, 2);
        assert_eq!(s.current(1), Some(20));
        assert_eq!(s.add(seen(1, 20, 4000, 1.0)).change, None);
    }

    #[test]
    fn bounds_hold_and_evictions_are_counted() {
        let mut s = PlanStore::default();
        let mut evicted = 0;
        for p in 0..(MAX_PLANS_PER_STATEMENT as u64 + 3) {
            evicted += s.add(seen(1, p, p as i64, 1.0)).evicted;
        }
        assert_eq!(
            s.statement(1).map(|st| st.plans.len()),
            Some(MAX_PLANS_PER_STATEMENT)
        );
        assert_eq!(evicted, 3);
        assert_eq!(s.current(1), Some(MAX_PLANS_PER_STATEMENT as u64 + 2));
    }

    #[test]
    fn saved_and_loaded_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = PlanStore::path(dir.path());
        assert_eq!(PlanStore::load(&path), Ok(None));
        let mut s = PlanStore::default();
        s.add(seen(u64::MAX, 10, 1000, 5.0));
        s.add(seen(3, 11, 1000, 5.0));
        s.save(&path).unwrap();
        assert_eq!(PlanStore::load(&path), Ok(Some(s)));
        std::fs::write(&path, b"{\"version\": 1, \"statem").unwrap();
        assert!(PlanStore::load(&path).is_err());
    }
}
