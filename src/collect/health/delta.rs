//! Per-interval deltas of cumulative counters, for every health view: a baseline of each row's
//! counters, kept in memory and in a state file (`health-<name>.json` under `agent.state_dir`) so a
//! restart of the agent reports the delta across it.
//!
//! The same rules as the statement baseline (`collect::statements::baseline`), for rows of JSON
//! numbers instead of a fixed layout: a row whose `stats_reset` changed, or any of whose counters
//! went backwards (a reset, a crash, a restored server), is reported with its counters as they are,
//! which all fall inside the interval, and flagged `reset`; a row not in the previous snapshot of a
//! view that had one is new (`new`): all its counters fall inside the interval. The first snapshot of
//! a view has nothing to subtract from: its rows are reported without counters and flagged `first`.
//! A snapshot of another server (system identifier) starts over.
//!
//! Which fields are counters is the caller's: every JSON number of the row except the gauges it
//! names. It does not query, log or decide what to report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const FORMAT: u32 = 2;

/// A counter a row did not have (counters are never negative).
const ABSENT: f64 = -1.0;

/// One row's counters at the last snapshot, in its view's column order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Entry {
    stats_reset: Option<String>,
    values: Vec<f64>,
}

/// The rows of one view. Column names are held once per view, not per row: a table pass keeps
/// thousands of rows of some 25 counters each.
#[derive(Debug, Default, Serialize, Deserialize)]
struct View {
    columns: Vec<String>,
    entries: HashMap<String, Entry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    format: u32,
    system_identifier: String,
    views: BTreeMap<String, View>,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a health baseline: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The baselines of one collector's views.
#[derive(Debug)]
pub struct Baseline {
    path: PathBuf,
    file: File,
    loaded: bool,
    /// Views being folded, with the keys seen.
    seen: HashMap<String, HashSet<String>>,
    /// Views being folded that had no previous snapshot.
    fresh: HashSet<String>,
}

/// How a row's counters were reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Deltas since the previous snapshot.
    Delta,
    /// Counted from a reset inside the interval.
    Reset,
    /// Not in the previous snapshot: all its counters fall inside the interval.
    New,
    /// The view's first snapshot: counters withheld.
    First,
}

impl Baseline {
    /// The baseline of collector `name` under `state_dir` (read on first use).
    pub fn new(state_dir: &Path, name: &str) -> Baseline {
        Baseline {
            path: state_dir.join(format!("health-{name}.json")),
            file: File::default(),
            loaded: false,
            seen: HashMap::new(),
            fresh: HashSet::new(),
        }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the saved baseline once (a missing file is an empty one) and starts over when it
    /// belongs to another server. A damaged file is an error the caller reports (and sets aside);
    /// the baseline then starts empty.
    pub fn begin(&mut self, system_identifier: &str) -> Result<(), BaselineError> {
        let mut result = Ok(());
        if !self.loaded {
            self.loaded = true;
            match std::fs::read(&self.path) {
                Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                    Ok(f) if f.format == FORMAT => self.file = f,
                    Ok(_) => {}
                    Err(source) => {
                        result = Err(BaselineError::Parse {
                            path: self.path.clone(),
                            source,
                        })
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    result = Err(BaselineError::Read {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        if self.file.system_identifier != system_identifier {
            self.file = File {
                format: FORMAT,
                system_identifier: system_identifier.to_string(),
                views: BTreeMap::new(),
            };
        }
        result
    }

    /// Replaces the counters of `row` (every number not in `gauges`) by their deltas against the
    /// previous snapshot of `view` under `key`, and records the new values.
    pub fn fold(
        &mut self,
        view: &str,
        key: String,
        row: &mut Map<String, Value>,
        gauges: &[&str],
    ) -> Mark {
        if !self.file.views.contains_key(view) {
            self.fresh.insert(view.to_string());
        }
        let first = self.fresh.contains(view);
        self.seen
            .entry(view.to_string())
            .or_default()
            .insert(key.clone());
        let v = self.file.views.entry(view.to_string()).or_default();
        let stats_reset = row
            .get("stats_reset")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut values = vec![ABSENT; v.columns.len()];
        for (name, value) in row.iter() {
            let Some(n) = value.as_f64() else { continue };
            if gauges.contains(&name.as_str()) {
                continue;
            }
            let i = match v.columns.iter().position(|c| c == name) {
                Some(i) => i,
                None => {
                    v.columns.push(name.clone());
                    values.push(ABSENT);
                    v.columns.len() - 1
                }
            };
            values[i] = n.max(0.0);
        }
        let columns = &v.columns;
        let now = |i: usize| values.get(i).copied().filter(|x| *x != ABSENT);
        let mark = match v.entries.get(&key) {
            None if first => {
                for (i, name) in columns.iter().enumerate() {
                    if now(i).is_some() {
                        row.remove(name);
                    }
                }
                Mark::First
            }
            None => Mark::New,
            Some(old) => {
                let then = |i: usize| old.values.get(i).copied().filter(|x| *x != ABSENT);
                let went_back = (0..columns.len())
                    .any(|i| matches!((now(i), then(i)), (Some(n), Some(t)) if n - t < -1e-6));
                let reset =
                    went_back || (old.stats_reset.is_some() && old.stats_reset != stats_reset);
                if reset {
                    Mark::Reset
                } else {
                    for (i, name) in columns.iter().enumerate() {
                        if let Some(n) = now(i) {
                            let d = n - then(i).unwrap_or(0.0);
                            row.insert(name.clone(), number(d.max(0.0)));
                        }
                    }
                    Mark::Delta
                }
            }
        };
        v.entries.insert(
            key,
            Entry {
                stats_reset,
                values,
            },
        );
        mark
    }

    /// Ends a complete read of `view`: rows it no longer has are dropped from the baseline. A view
    /// read only in part (a failed query) must not be finished. A view read with no rows still
    /// becomes known, so its rows that appear later are new.
    pub fn finish(&mut self, view: &str) {
        let seen = self.seen.remove(view).unwrap_or_default();
        self.fresh.remove(view);
        let v = self.file.views.entry(view.to_string()).or_default();
        v.entries.retain(|k, _| seen.contains(k));
    }

    /// The baseline as the JSON its file holds (written off the cycle by `collect::state_write`).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.file)
    }

    /// Writes the baseline atomically (tests; the collectors write through `collect::state_write`).
    #[cfg(test)]
    pub fn save(&self) -> Result<(), BaselineError> {
        crate::state::file::write_atomic(&self.path, |out| {
            serde_json::to_writer(out, &self.file).map_err(std::io::Error::from)
        })
        .map_err(|source| BaselineError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// A delta as JSON: whole numbers stay integers.
fn number(d: f64) -> Value {
    if d.fract() == 0.0 && d.abs() < 9.0e15 {
        Value::from(d as i64)
    } else {
        serde_json::Number::from_f64((d * 1000.0).round() / 1000.0)
            .map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn first_new_delta_reset_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Baseline::new(dir.path(), "t");
        b.begin("sys").unwrap();
        let mut r = row(json!({"datname": "a", "numbackends": 3, "xact_commit": 10}));
        assert_eq!(
            b.fold("db", "1".into(), &mut r, &["numbackends"]),
            Mark::First
        );
        assert_eq!(r, row(json!({"datname": "a", "numbackends": 3})));
        let mut r = row(json!({"datname": "b", "xact_commit": 1}));
        assert_eq!(b.fold("db", "3".into(), &mut r, &[]), Mark::First);
        b.finish("db");
        b.save().unwrap();

        // A restart of the agent: the saved baseline gives the delta across it.
        let mut b = Baseline::new(dir.path(), "t");
        b.begin("sys").unwrap();
        let mut r = row(json!({"numbackends": 1, "xact_commit": 17, "t": 1.5}));
        assert_eq!(
            b.fold("db", "1".into(), &mut r, &["numbackends"]),
            Mark::Delta
        );
        assert_eq!(r["xact_commit"], json!(7));
        assert_eq!(r["numbackends"], json!(1));
        let mut r = row(json!({"xact_commit": 4}));
        assert_eq!(b.fold("db", "2".into(), &mut r, &[]), Mark::New);
        assert_eq!(r["xact_commit"], json!(4));
        let mut r = row(json!({"xact_commit": 3}));
        assert_eq!(b.fold("db", "3".into(), &mut r, &[]), Mark::Delta);
        assert_eq!(r["xact_commit"], json!(2));
        b.finish("db");
        // Went back: a reset; counted from it.
        let mut r = row(json!({"xact_commit": 2, "t": 1.5}));
        assert_eq!(b.fold("db", "1".into(), &mut r, &[]), Mark::Reset);
        assert_eq!(r["xact_commit"], json!(2));
        // stats_reset changed with counters above the old ones: still a reset.
        let mut r = row(json!({"xact_commit": 50, "stats_reset": "x"}));
        assert_eq!(b.fold("db", "2".into(), &mut r, &[]), Mark::Delta);
        let mut r = row(json!({"xact_commit": 60, "stats_reset": "y"}));
        assert_eq!(b.fold("db", "2".into(), &mut r, &[]), Mark::Reset);
        assert_eq!(r["xact_commit"], json!(60));
        // Another server: start over.
        b.begin("other").unwrap();
        let mut r = row(json!({"xact_commit": 60}));
        assert_eq!(b.fold("db", "2".into(), &mut r, &[]), Mark::First);
    }

    #[test]
    fn a_damaged_file_is_an_error_and_an_empty_baseline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("health-t.json"), b"{oops").unwrap();
        let mut b = Baseline::new(dir.path(), "t");
        assert!(matches!(b.begin("s"), Err(BaselineError::Parse { .. })));
        let mut r = row(json!({"n": 1}));
        assert_eq!(b.fold("v", "k".into(), &mut r, &[]), Mark::First);
    }
}
