//! The pg_stat_statements baseline: a snapshot of every entry's counters, the per-interval deltas
//! between two snapshots, and its file under `agent.state_dir` so a restart (or two `once` runs)
//! yields the delta across it.
//!
//! Deltas are never negative or inflated. An entry whose counters went backwards, whose `stats_since`
//! changed (17+), or that was caught by a full reset (`pg_stat_statements_info.stats_reset` changed,
//! 14+) is reported with its counters since the reset, which all fall inside the interval, and flagged
//! `reset`. An entry absent from the previous snapshot is new (or was evicted and came back): all of
//! its counters fall inside the interval. Before 14 a full reset followed by more activity than before
//! cannot be told from ordinary growth; that limit is documented in docs/protocol.md.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::columns::{CALLS, COUNTERS, TOTAL_EXEC};

/// File name of the baseline inside `agent.state_dir`.
pub const FILE_NAME: &str = "statements-baseline.json";
const FORMAT: u32 = 1;

/// Identity of one pg_stat_statements entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub userid: u32,
    pub dbid: u32,
    pub queryid: i64,
    /// None before extension 1.9, which did not distinguish nested statements.
    pub toplevel: Option<bool>,
}

/// One entry's counters, in the snapshot's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `stats_since` as Unix microseconds (17+).
    pub stats_since: Option<i64>,
    pub values: Vec<f64>,
    /// Set while a [`Fold`] runs: the new snapshot has this entry.
    pub seen: bool,
    /// The server's fingerprint of the entry's key, calls and total time when it was last read
    /// (`statements::read::fold_entries`): a changed-only read sends the fingerprints it holds and gets
    /// back only the entries whose fingerprint is not among them. None until the entry is read
    /// with one.
    pub fp: Option<i64>,
    /// The execution-time spread at the last read (not saved).
    pub exec: Option<ExecStats>,
    /// Taken back for want of a text ([`Snapshot::take_back`]): its values are those last
    /// reported, not the server's. Saved as an entry without a fingerprint, so a read after a
    /// restart returns it.
    pub deferred: bool,
}

/// Every entry at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub system_identifier: String,
    pub extversion: String,
    /// Indexes into [`COUNTERS`] of the values each entry holds.
    pub layout: Vec<usize>,
    /// When it was taken (agent clock), RFC 3339 UTC.
    pub taken_at: String,
    /// `pg_stat_statements_info.stats_reset` (14+).
    pub stats_reset: Option<String>,
    /// `pg_stat_statements_info.dealloc` (14+): entries evicted so far.
    pub dealloc: Option<i64>,
    pub entries: HashMap<Key, Entry>,
}

/// One entry's activity during an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub key: Key,
    /// In the snapshot's layout; never negative.
    pub values: Vec<f64>,
    /// Counted from a reset or eviction inside the interval rather than from the previous snapshot.
    pub reset: bool,
    /// The entry was not in the previous snapshot.
    pub new: bool,
    /// The spread of the interval's execution times, where known.
    pub exec: Option<IntervalExec>,
    /// The entry's [`ExecStats`] before this fold, for [`Snapshot::take_back`].
    pub prev_exec: Option<ExecStats>,
}

/// An entry's execution times over its lifetime, as pg_stat_statements keeps them: the smallest and
/// largest (until a `minmax_only` reset, 17+) and the sum of squared deviations from the mean
/// (`stddev_exec_time`² × `calls`, the running sum the server keeps by Welford's method).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExecStats {
    pub min: f64,
    pub max: f64,
    pub m2: f64,
}

/// An entry's lifetime execution-time spread as the server reports it (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
}

/// What a delta says about the spread of its interval's execution times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntervalExec {
    /// Population standard deviation of the interval's execution times (ms): exact, from the
    /// lifetime sums before and after (Chan's combination of two sets' means and squared
    /// deviations). None when the sums before are unknown (the first interval after an agent
    /// restart, whose baseline was read from its file).
    pub stddev: Option<f64>,
    /// The lifetime smallest and largest execution time as of the end of the interval.
    pub lifetime_min: f64,
    pub lifetime_max: f64,
}

/// The standard deviation of the `nb` executions of total `tb` added to `na = n - nb` executions
/// of total `ta`, from the squared-deviation sums before (`m2_before`, over `na`) and after
/// (`m2_now`, over `n`): `m2_now = m2_before + m2_b + (mean_b - mean_a)² · na · nb / n`.
pub fn interval_stddev(n: f64, total: f64, nb: f64, tb: f64, m2_now: f64, m2_before: f64) -> f64 {
    let na = n - nb;
    if nb <= 0.0 {
        return 0.0;
    }
    if na <= 0.0 {
        return (m2_now.max(0.0) / nb).sqrt();
    }
    let (mean_a, mean_b) = ((total - tb) / na, tb / nb);
    let d = mean_b - mean_a;
    let m2_b = m2_now - m2_before - d * d * na * nb / n;
    (m2_b.max(0.0) / nb).sqrt()
}

/// What a new snapshot says about itself before its entries are read.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub taken_at: String,
    pub stats_reset: Option<String>,
    pub dealloc: Option<i64>,
}

impl Snapshot {
    /// A snapshot with no entries yet, to fold the first one into.
    pub fn empty(system_identifier: &str, extversion: &str, layout: Vec<usize>) -> Snapshot {
        Snapshot {
            system_identifier: system_identifier.to_string(),
            extversion: extversion.to_string(),
            layout,
            taken_at: String::new(),
            stats_reset: None,
            dealloc: None,
            entries: HashMap::new(),
        }
    }
}

/// Folds a new snapshot, one entry at a time, into the previous one, collecting the deltas of the
/// entries that ran (calls > 0) on the way: the previous snapshot becomes the new one in place, so
/// only one copy of up to pg_stat_statements.max entries is ever held.
///
/// A fold abandoned halfway (the query failed) leaves a mix of old and new entries: the caller must
/// drop that snapshot, not keep it as a baseline.
pub struct Fold<'a> {
    snap: &'a mut Snapshot,
    full_reset: bool,
    calls_at: Option<usize>,
    /// Where the total execution time is in the layout.
    total_at: Option<usize>,
    /// The first snapshot has nothing to subtract from: it only becomes the baseline.
    keep_deltas: bool,
    deltas: Vec<Delta>,
    /// The entry being read (see [`Fold::values`]) and the difference to its previous values.
    values: Vec<f64>,
    diff: Vec<f64>,
    /// A read by fingerprint: entries not returned stay (see [`Fold::by_fingerprint`]).
    by_fingerprint: bool,
    reread_deferred: bool,
    /// Baseline fingerprints the server no longer has.
    gone: std::collections::HashSet<i64>,
}

impl<'a> Fold<'a> {
    /// Starts folding the snapshot described by `meta` into `snap`. With `keep_deltas` false (no
    /// usable previous snapshot) every entry is taken as it is and no deltas are produced.
    pub fn new(snap: &'a mut Snapshot, meta: &Meta, keep_deltas: bool) -> Fold<'a> {
        let full_reset =
            matches!((&snap.stats_reset, &meta.stats_reset), (Some(a), Some(b)) if a != b);
        let calls_at = snap.layout.iter().position(|&i| i == CALLS);
        let total_at = snap.layout.iter().position(|&i| i == TOTAL_EXEC);
        for e in snap.entries.values_mut() {
            e.seen = false;
        }
        snap.taken_at.clone_from(&meta.taken_at);
        snap.stats_reset.clone_from(&meta.stats_reset);
        snap.dealloc = meta.dealloc;
        let width = snap.layout.len();
        Fold {
            snap,
            full_reset,
            calls_at,
            total_at,
            keep_deltas,
            deltas: Vec::new(),
            values: Vec::with_capacity(width),
            diff: Vec::with_capacity(width),
            by_fingerprint: false,
            reread_deferred: false,
            gone: Default::default(),
        }
    }

    /// Starts folding a read by fingerprint (`statements::read::fold_entries`): the entries it returns
    /// ran or are new; an entry it does not return is unchanged and stays, unless
    /// [`Fold::gone_fingerprint`] names its fingerprint (it is gone from the server) or it has no
    /// fingerprint (every entry without one is returned while the server has it).
    ///
    /// `reread_deferred`: the read was sent [`Snapshot::fingerprints`] without the deferred
    /// entries, so one it does not return is gone.
    pub fn by_fingerprint(snap: &'a mut Snapshot, meta: &Meta, reread_deferred: bool) -> Fold<'a> {
        let mut fold = Fold::new(snap, meta, true);
        fold.by_fingerprint = true;
        fold.reread_deferred = reread_deferred;
        fold
    }

    /// A baseline fingerprint no entry on the server has: its entry ran (and is returned with a
    /// new fingerprint) or is gone. Gone entries leave the snapshot in [`Fold::finish`], so one
    /// that comes back counts as new.
    pub fn gone_fingerprint(&mut self, fp: i64) {
        self.gone.insert(fp);
    }

    /// The buffer to fill with the next entry's values, in the snapshot's layout, before
    /// [`Fold::entry`].
    pub fn values(&mut self) -> &mut Vec<f64> {
        self.values.clear();
        &mut self.values
    }

    /// Folds in the entry whose values were just written to [`Fold::values`], with the server's
    /// fingerprint of it (see [`Entry::fp`]) and its execution-time spread as the server reports
    /// it (kept as [`ExecStats`]).
    pub fn entry(
        &mut self,
        key: Key,
        stats_since: Option<i64>,
        fp: Option<i64>,
        spread: Option<Spread>,
    ) {
        let now = &self.values;
        let exec = spread.and_then(|x| {
            let n = self.calls_at.and_then(|i| now.get(i).copied())?;
            Some(ExecStats {
                min: x.min,
                max: x.max,
                m2: x.stddev * x.stddev * n,
            })
        });
        let new = !self.snap.entries.contains_key(&key);
        let mut prev_exec = None;
        let (delta, reset) = match self.snap.entries.get_mut(&key) {
            None => {
                self.snap.entries.insert(
                    key,
                    Entry {
                        stats_since,
                        values: now.clone(),
                        seen: true,
                        fp,
                        exec,
                        deferred: false,
                    },
                );
                (now, self.full_reset)
            }
            Some(old) => {
                let evicted =
                    matches!((old.stats_since, stats_since), (Some(a), Some(b)) if a != b);
                self.diff.clear();
                self.diff
                    .extend(now.iter().zip(&old.values).map(|(now, then)| now - then));
                // Float sums can wobble by rounding; only a clear step back means a reset.
                let went_back = self.diff.iter().any(|d| *d < -1e-6);
                let whole =
                    self.full_reset || evicted || went_back || old.values.len() != now.len();
                old.values.clone_from(now);
                old.stats_since = stats_since;
                old.seen = true;
                old.fp = fp;
                old.deferred = false;
                prev_exec = std::mem::replace(&mut old.exec, exec);
                if whole {
                    (now, true)
                } else {
                    for d in &mut self.diff {
                        *d = d.max(0.0);
                    }
                    (&self.diff, false)
                }
            }
        };
        let calls = self
            .calls_at
            .map_or(0.0, |i| delta.get(i).copied().unwrap_or(0.0));
        if self.keep_deltas && calls > 0.0 {
            let at = |i: Option<usize>, v: &[f64]| i.and_then(|i| v.get(i).copied());
            let interval = exec.map(|x| {
                let whole = new || reset;
                let stddev = match (
                    at(self.calls_at, now),
                    at(self.total_at, now),
                    at(self.total_at, delta),
                ) {
                    (Some(n), Some(total), Some(tb)) => match (whole, prev_exec) {
                        (true, _) => Some(interval_stddev(n, total, n, total, x.m2, 0.0)),
                        (false, Some(p)) => Some(interval_stddev(n, total, calls, tb, x.m2, p.m2)),
                        (false, None) => None,
                    },
                    _ => None,
                };
                IntervalExec {
                    stddev,
                    lifetime_min: x.min,
                    lifetime_max: x.max,
                }
            });
            self.deltas.push(Delta {
                key,
                values: delta.clone(),
                reset,
                new,
                exec: interval,
                prev_exec,
            });
        }
    }

    /// Ends the fold: entries the new snapshot no longer has are dropped (for a read by
    /// fingerprint, see [`Fold::by_fingerprint`]). Returns the deltas and
    /// whether a full reset happened in between.
    pub fn finish(self) -> (Vec<Delta>, bool) {
        let (by_fingerprint, reread, gone) =
            (self.by_fingerprint, self.reread_deferred, &self.gone);
        self.snap.entries.retain(|_, e| {
            e.seen
                || (by_fingerprint
                    && !(reread && e.deferred)
                    && e.fp.is_some_and(|fp| !gone.contains(&fp)))
        });
        (self.deltas, self.full_reset)
    }
}

impl Snapshot {
    /// The fingerprints of the entries that have one, for a read by fingerprint. With
    /// `reread_deferred`, entries taken back ([`Snapshot::take_back`]) are left out, so the read
    /// returns them (the cycle will read texts).
    pub fn fingerprints(&self, reread_deferred: bool) -> Vec<i64> {
        self.entries
            .values()
            .filter(|e| !(reread_deferred && e.deferred))
            .filter_map(|e| e.fp)
            .collect()
    }

    /// Takes `d` back out of this snapshot (the one it was folded into), so a later fold reports
    /// it again, added to what runs until then: the entry gets its previous values back (zeros for
    /// a new one) and is marked deferred. It keeps its fingerprint (of the server's values), so
    /// reads by fingerprint skip it until it runs again or a cycle that reads texts asks for it
    /// ([`Snapshot::fingerprints`]). A reset delta cannot be taken back (its previous values are
    /// gone): false, and nothing changes.
    pub fn take_back(&mut self, d: &Delta) -> bool {
        if d.reset {
            return false;
        }
        match self.entries.get_mut(&d.key) {
            Some(e) if e.values.len() == d.values.len() => {
                for (v, dv) in e.values.iter_mut().zip(&d.values) {
                    *v -= dv;
                }
                // The spread as of the values put back: the next fold combines from there.
                e.exec = d.prev_exec.filter(|_| !d.new);
                e.deferred = true;
                true
            }
            _ => false,
        }
    }
}

/// The deltas between two snapshots of the same server and layout: [`Fold`] over `cur`'s entries.
#[cfg(test)]
pub fn deltas(prev: &Snapshot, cur: &Snapshot) -> (Vec<Delta>, bool) {
    let mut snap = prev.clone();
    let meta = Meta {
        taken_at: cur.taken_at.clone(),
        stats_reset: cur.stats_reset.clone(),
        dealloc: cur.dealloc,
    };
    let mut fold = Fold::new(&mut snap, &meta, true);
    for (key, entry) in &cur.entries {
        fold.values().extend_from_slice(&entry.values);
        // The spread is not compared here (the_interval_spread_... covers it).
        fold.entry(*key, entry.stats_since, entry.fp, None);
    }
    let out = fold.finish();
    assert_eq!(
        snap.entries
            .keys()
            .collect::<std::collections::BTreeSet<_>>(),
        cur.entries.keys().collect(),
        "the folded snapshot holds exactly the new entries"
    );
    for (key, entry) in &snap.entries {
        assert_eq!(entry.values, cur.entries[key].values);
    }
    out
}

/// Why a saved baseline was not used.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid baseline: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The on-disk form: compact rows instead of objects (a snapshot holds up to
/// pg_stat_statements.max entries and is rewritten every cycle).
#[derive(Deserialize)]
struct File {
    format: u32,
    system_identifier: String,
    extversion: String,
    /// Counter names, so a layout change (extension upgrade, agent upgrade) is detected.
    columns: Vec<String>,
    taken_at: String,
    stats_reset: Option<String>,
    dealloc: Option<i64>,
    /// [userid, dbid, queryid, toplevel, stats_since, values...]
    entries: EntriesIn,
}

/// One saved entry: `[userid, dbid, queryid, toplevel, stats_since, values, fp]`. `fp` (the
/// entry's fingerprint, [`Entry::fp`]) was added after the format's first release: a row without
/// it reads as an entry without one.
struct Row {
    key: Key,
    entry: Entry,
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Row;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[userid, dbid, queryid, toplevel, stats_since, values(, fp)]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Row, A::Error> {
                use serde::de::Error;
                let missing = |i| A::Error::invalid_length(i, &self);
                let key = Key {
                    userid: seq.next_element()?.ok_or_else(|| missing(0))?,
                    dbid: seq.next_element()?.ok_or_else(|| missing(1))?,
                    queryid: seq.next_element()?.ok_or_else(|| missing(2))?,
                    toplevel: seq.next_element()?.ok_or_else(|| missing(3))?,
                };
                let stats_since = seq.next_element()?.ok_or_else(|| missing(4))?;
                let values = seq.next_element()?.ok_or_else(|| missing(5))?;
                let fp = seq.next_element::<Option<i64>>()?.flatten();
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(8, &self));
                }
                let entry = Entry {
                    stats_since,
                    values,
                    seen: true,
                    fp,
                    exec: None,
                    deferred: false,
                };
                Ok(Row { key, entry })
            }
        }
        d.deserialize_seq(V)
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Loads the saved baseline. `Ok(None)`: there is none yet. A baseline with an unknown counter name
/// or format is treated as unusable (`Ok(None)` after the caller counts it) through [`usable`].
pub fn load(state_dir: &Path) -> Result<Option<Snapshot>, BaselineError> {
    let path = path(state_dir);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(BaselineError::Read { path, source }),
    };
    // Read through a small buffer straight into the entry map: no copy of the file in memory.
    let file: File = serde_json::from_reader(BufReader::with_capacity(64 * 1024, f))
        .map_err(|source| BaselineError::Parse { path, source })?;
    if file.format != FORMAT {
        return Ok(None);
    }
    let mut layout = Vec::with_capacity(file.columns.len());
    for name in &file.columns {
        match COUNTERS.iter().position(|c| c.name == name) {
            Some(i) => layout.push(i),
            None => return Ok(None),
        }
    }
    let mut entries = file.entries.0;
    entries.retain(|_, e| e.values.len() == layout.len());
    Ok(Some(Snapshot {
        system_identifier: file.system_identifier,
        extversion: file.extversion,
        layout,
        taken_at: file.taken_at,
        stats_reset: file.stats_reset,
        dealloc: file.dealloc,
        entries,
    }))
}

/// The saved entries, read row by row (see [`Row`]) into the map.
struct EntriesIn(HashMap<Key, Entry>);

impl<'de> Deserialize<'de> for EntriesIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EntriesIn, D::Error> {
        struct Rows;
        impl<'de> serde::de::Visitor<'de> for Rows {
            type Value = EntriesIn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of [userid, dbid, queryid, toplevel, stats_since, values, fp]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EntriesIn, A::Error> {
                let mut entries = HashMap::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(Row { key, entry }) = seq.next_element::<Row>()? {
                    entries.insert(key, entry);
                }
                Ok(EntriesIn(entries))
            }
        }
        d.deserialize_seq(Rows)
    }
}

/// Whether `saved` can serve as the baseline of a snapshot of this server in this counter layout.
pub fn usable(saved: &Snapshot, system_identifier: &str, layout: &[usize]) -> bool {
    saved.system_identifier == system_identifier && saved.layout == layout
}

/// Writes the snapshot atomically ([`crate::state::file::write_atomic`]: temporary file, fsync,
/// rename, fsync of the directory), so a crash leaves the old or the new baseline, never half of
/// one. The snapshot is serialized straight from memory through a small buffer: no copy of its
/// entries and no whole-file buffer.
pub fn save(state_dir: &Path, snap: &Snapshot) -> Result<(), BaselineError> {
    let path = path(state_dir);
    let file = FileRef {
        format: FORMAT,
        system_identifier: &snap.system_identifier,
        extversion: &snap.extversion,
        columns: snap.layout.iter().map(|&i| COUNTERS[i].name).collect(),
        taken_at: &snap.taken_at,
        stats_reset: snap.stats_reset.as_deref(),
        dealloc: snap.dealloc,
        entries: EntriesRef(&snap.entries),
    };
    crate::state::file::write_atomic(&path, |out| {
        serde_json::to_writer(out, &file).map_err(std::io::Error::from)
    })
    .map_err(|source| BaselineError::Write { path, source })
}

/// [`File`] borrowing from a snapshot, for [`save`].
#[derive(Serialize)]
struct FileRef<'a> {
    format: u32,
    system_identifier: &'a str,
    extversion: &'a str,
    columns: Vec<&'static str>,
    taken_at: &'a str,
    stats_reset: Option<&'a str>,
    dealloc: Option<i64>,
    entries: EntriesRef<'a>,
}

/// Serializes each entry as a [`Row`] without building one.
struct EntriesRef<'a>(&'a HashMap<Key, Entry>);

impl Serialize for EntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(k, e)| {
            (
                k.userid,
                k.dbid,
                k.queryid,
                k.toplevel,
                e.stats_since,
                Values(&e.values),
                e.fp.filter(|_| !e.deferred),
            )
        }))
    }
}

/// An entry's values as saved: whole numbers (the counts, most of the columns) as JSON integers,
/// which print several times faster than floats and read back as the same `f64`; the rest (times)
/// as floats. Saving the baseline every cycle was
/// 6% of the agent's CPU in the side-by-side profile (docs/cost.md).
struct Values<'a>(&'a [f64]);

impl Serialize for Values<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// Below 2^53 every whole f64 is exactly an i64 and back.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for &v in self.0 {
            if v.fract() == 0.0 && v.abs() < EXACT {
                seq.serialize_element(&(v as i64))?;
            } else {
                seq.serialize_element(&v)?;
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(reset: Option<&str>, entries: &[(i64, Option<i64>, [f64; 3])]) -> Snapshot {
        Snapshot {
            system_identifier: "1".into(),
            extversion: "1.11".into(),
            layout: vec![0, 1, 4],
            taken_at: "t".into(),
            stats_reset: reset.map(String::from),
            dealloc: Some(0),
            entries: entries
                .iter()
                .map(|(q, since, v)| {
                    (
                        Key {
                            userid: 10,
                            dbid: 5,
                            queryid: *q,
                            toplevel: Some(true),
                        },
                        Entry {
                            stats_since: *since,
                            values: v.to_vec(),
                            seen: true,
                            fp: None,
                            exec: None,
                            deferred: false,
                        },
                    )
                })
                .collect(),
        }
    }

    fn by_query(d: Vec<Delta>) -> Vec<(i64, Vec<f64>, bool)> {
        let mut v: Vec<_> = d
            .into_iter()
            .map(|d| (d.key.queryid, d.values, d.reset))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    #[test]
    fn deltas_subtract_skip_idle_and_keep_new_entries_whole() {
        let prev = snap(
            Some("r"),
            &[(1, None, [5.0, 10.0, 5.0]), (2, None, [3.0, 1.0, 3.0])],
        );
        let cur = snap(
            Some("r"),
            &[
                (1, None, [8.0, 16.5, 9.0]),
                (2, None, [3.0, 1.0, 3.0]),
                (3, None, [2.0, 1.0, 0.0]),
            ],
        );
        let (d, full) = deltas(&prev, &cur);
        assert!(!full);
        assert_eq!(
            by_query(d),
            vec![
                (1, vec![3.0, 6.5, 4.0], false),
                (3, vec![2.0, 1.0, 0.0], false)
            ]
        );
    }

    #[test]
    fn counters_going_back_or_a_new_stats_since_rebaseline_the_entry() {
        let prev = snap(
            None,
            &[(1, None, [50.0, 10.0, 5.0]), (2, Some(1), [9.0, 9.0, 9.0])],
        );
        let cur = snap(
            None,
            &[(1, None, [4.0, 2.0, 1.0]), (2, Some(2), [12.0, 1.0, 1.0])],
        );
        let (d, full) = deltas(&prev, &cur);
        assert!(!full);
        assert_eq!(
            by_query(d),
            vec![
                (1, vec![4.0, 2.0, 1.0], true),
                (2, vec![12.0, 1.0, 1.0], true)
            ]
        );
    }

    #[test]
    fn a_full_reset_reports_counts_since_the_reset_flagged() {
        let prev = snap(Some("a"), &[(1, None, [1.0, 1.0, 1.0])]);
        let cur = snap(
            Some("b"),
            &[(1, None, [7.0, 2.0, 1.0]), (2, None, [0.0, 0.0, 0.0])],
        );
        let (d, full) = deltas(&prev, &cur);
        assert!(full);
        assert_eq!(by_query(d), vec![(1, vec![7.0, 2.0, 1.0], true)]);
    }

    /// Population standard deviation and squared-deviation sum of a set, as the server keeps them.
    fn spread(xs: &[f64]) -> (f64, f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let m2: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
        (n, xs.iter().sum(), m2)
    }

    #[test]
    fn the_interval_spread_comes_from_the_lifetime_sums_before_and_after() {
        let before = [1.0, 2.0, 3.0, 2.5];
        let during = [10.0, 20.0, 12.0];
        let all: Vec<f64> = before.iter().chain(&during).copied().collect();
        let (_, _, m2_before) = spread(&before);
        let (n, total, m2_now) = spread(&all);
        let (nb, tb, m2_b) = spread(&during);
        let got = interval_stddev(n, total, nb, tb, m2_now, m2_before);
        assert!((got - (m2_b / nb).sqrt()).abs() < 1e-9, "{got}");
        // Nothing before: the lifetime spread.
        let got = interval_stddev(nb, tb, nb, tb, m2_b, 0.0);
        assert!((got - (m2_b / nb).sqrt()).abs() < 1e-9);

        // Through a fold: the previous read's sums are kept with the entry.
        let mut prev = snap(None, &[(1, None, [4.0, 8.5, 0.0])]);
        for e in prev.entries.values_mut() {
            e.exec = Some(ExecStats {
                min: 1.0,
                max: 3.0,
                m2: m2_before,
            });
        }
        let meta = Meta {
            taken_at: "t2".into(),
            stats_reset: None,
            dealloc: Some(0),
        };
        let mut fold = Fold::new(&mut prev, &meta, true);
        fold.values().extend_from_slice(&[n, total, 0.0]);
        let key = Key {
            userid: 10,
            dbid: 5,
            queryid: 1,
            toplevel: Some(true),
        };
        let spread = Spread {
            stddev: (m2_now / n).sqrt(),
            min: 1.0,
            max: 20.0,
        };
        fold.entry(key, None, None, Some(spread));
        let (d, _) = fold.finish();
        let x = d[0].exec.unwrap();
        assert!(
            (x.stddev.unwrap() - (m2_b / nb).sqrt()).abs() < 1e-9,
            "{x:?}"
        );
        assert_eq!((x.lifetime_min, x.lifetime_max), (1.0, 20.0));
    }

    #[test]
    fn save_and_load_round_trip_and_reject_other_layouts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let s = snap(
            Some("r"),
            &[(1, Some(3), [1.5, 2.25, 3.0]), (-7, None, [0.0, 0.0, 0.0])],
        );
        save(dir.path(), &s).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(
            text.contains("[1.5,2.25,3]"),
            "whole values as integers: {text}"
        );
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back, s);
        assert!(usable(&back, "1", &s.layout));
        assert!(!usable(&back, "1", &[0, 1]));
        assert!(!usable(&back, "2", &s.layout));
        // A row of the first release (no fingerprint) reads as an entry without one; a saved
        // fingerprint comes back.
        let mut with_fp = s.clone();
        for (i, e) in with_fp.entries.values_mut().enumerate() {
            e.fp = Some(i as i64 - 9);
        }
        save(dir.path(), &with_fp).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap(), with_fp);
        let old = text.replace(",null]", "]").replace(",null]]", "]]");
        assert!(!old.contains(",null]"), "{old}");
        std::fs::write(path(dir.path()), &old).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap(), s);
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        assert!(matches!(load(dir.path()), Err(BaselineError::Parse { .. })));
    }
}
