//! One aggregation window (normally one collection cycle) of samples: session-samples per group
//! (query, wait event, state, database, user), the per-sample series, and the samples in which each
//! correlation ID was active. Every map and list has a bound, so memory does not follow the session
//! count or the window length; what a bound turned away is counted.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::query::{Seen, Statement};
use super::Point;

/// Most distinct groups held in a window; sessions of further groups are counted, not held. Each
/// group keeps its query text (up to `safety.max_query_length`), so this bounds the window's memory
/// at about 2 MiB with the default 4 KiB texts.
pub const MAX_GROUPS: usize = 500;
/// Most distinct correlation IDs held in a window.
pub const MAX_CORRELATIONS: usize = 10_000;
/// Most correlation IDs reported per window (the most active first).
pub const MAX_CORRELATIONS_REPORTED: usize = 500;
/// Most series points held per window (one hour at 1 s); later points are counted, not kept.
pub const MAX_SERIES: usize = 3600;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    /// query_id when the server computes it, else the fingerprint.
    query: Option<String>,
    wait_event_type: Option<String>,
    wait_event: Option<String>,
    state: String,
    datname: Option<String>,
    usename: Option<String>,
}

#[derive(Debug)]
struct GroupStats {
    /// Sessions of this group summed over the samples.
    session_samples: u64,
    /// Most sessions of this group in one sample.
    peak: u32,
    /// The statement that first represented the group (text, ids).
    statement: Arc<Statement>,
}

/// One group in the aggregate: a record of `pg_activity_samples`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRecord {
    pub query_id: Option<String>,
    pub fingerprint: Option<String>,
    pub query: Option<String>,
    pub query_truncated: bool,
    pub state: String,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    pub datname: Option<String>,
    pub usename: Option<String>,
    /// Sessions of this group summed over the samples, divided by the samples.
    pub avg_active_sessions: f64,
    /// Most sessions of this group in one sample.
    pub peak_sessions: u32,
    /// Sessions of this group summed over the samples.
    pub session_samples: u64,
}

/// How long one correlation ID was seen active.
#[derive(Debug, Clone, Serialize)]
pub struct CorrelationActivity {
    pub id: String,
    /// Samples in which at least one session with this ID was active, times the sample interval.
    pub seconds: f64,
    pub samples: u64,
    /// Most sessions with this ID active in one sample.
    pub peak_sessions: u32,
}

#[derive(Debug, Default)]
pub struct Window {
    pub started: Option<time::OffsetDateTime>,
    pub samples: u64,
    pub skipped_busy: u64,
    pub skipped_unreachable: u64,
    pub failed: u64,
    groups: HashMap<GroupKey, GroupStats>,
    /// Session-samples of groups beyond [`MAX_GROUPS`].
    groups_overflow: u64,
    correlations: HashMap<String, (u64, u32)>,
    correlations_overflow: u64,
    pub series: Vec<Point>,
    pub series_omitted: u64,
    active_sum: u64,
    active_max: u64,
}

impl Window {
    /// Adds one sample's sessions and its point.
    pub fn add(&mut self, rows: &[Seen], point: Point) {
        self.samples += 1;
        self.active_sum += u64::from(point.active);
        self.active_max = self.active_max.max(u64::from(point.active));
        if self.series.len() < MAX_SERIES {
            self.series.push(point);
        } else {
            self.series_omitted += 1;
        }
        let mut this_sample: HashMap<GroupKey, u32> = HashMap::new();
        let mut ids: HashMap<&str, u32> = HashMap::new();
        for s in rows {
            let st = &s.statement;
            let key = GroupKey {
                query: st.query_id.clone().or_else(|| st.fingerprint.clone()),
                wait_event_type: s.wait_event_type.clone(),
                wait_event: s.wait_event.clone(),
                state: s.state.clone(),
                datname: s.datname.clone(),
                usename: s.usename.clone(),
            };
            if !self.groups.contains_key(&key) {
                if self.groups.len() >= MAX_GROUPS {
                    self.groups_overflow += 1;
                    continue;
                }
                self.groups.insert(
                    key.clone(),
                    GroupStats {
                        session_samples: 0,
                        peak: 0,
                        statement: st.clone(),
                    },
                );
            }
            *this_sample.entry(key).or_default() += 1;
            if s.active() {
                if let Some(id) = st.correlation_id.as_deref() {
                    *ids.entry(id).or_default() += 1;
                }
            }
        }
        for (key, n) in this_sample {
            if let Some(g) = self.groups.get_mut(&key) {
                g.session_samples += u64::from(n);
                g.peak = g.peak.max(n);
            }
        }
        for (id, n) in ids {
            let held = self.correlations.len();
            match self.correlations.get_mut(id) {
                Some((samples, peak)) => {
                    *samples += 1;
                    *peak = (*peak).max(n);
                }
                None if held < MAX_CORRELATIONS => {
                    self.correlations.insert(id.to_string(), (1, n));
                }
                None => self.correlations_overflow += 1,
            }
        }
    }

    /// Whether anything was recorded (a sample or a skipped tick).
    pub fn is_empty(&self) -> bool {
        self.samples == 0
            && self.skipped_busy == 0
            && self.skipped_unreachable == 0
            && self.failed == 0
    }

    /// The top `n` groups by average active sessions, and how many groups were left out.
    pub fn top(&self, n: usize) -> (Vec<GroupRecord>, u64) {
        let samples = self.samples.max(1) as f64;
        let mut all: Vec<(&GroupKey, &GroupStats)> = self.groups.iter().collect();
        all.sort_by(|a, b| {
            b.1.session_samples
                .cmp(&a.1.session_samples)
                .then_with(|| a.0.query.cmp(&b.0.query))
        });
        let omitted = all.len().saturating_sub(n) as u64;
        let records = all
            .into_iter()
            .take(n)
            .map(|(k, g)| GroupRecord {
                query_id: g.statement.query_id.clone(),
                fingerprint: g.statement.fingerprint.clone(),
                query: g.statement.text.clone(),
                query_truncated: g.statement.truncated,
                state: k.state.clone(),
                wait_event_type: k.wait_event_type.clone(),
                wait_event: k.wait_event.clone(),
                datname: k.datname.clone(),
                usename: k.usename.clone(),
                avg_active_sessions: round3(g.session_samples as f64 / samples),
                peak_sessions: g.peak,
                session_samples: g.session_samples,
            })
            .collect();
        (records, omitted)
    }

    /// Session-samples of groups the [`MAX_GROUPS`] bound turned away.
    pub fn groups_overflow(&self) -> u64 {
        self.groups_overflow
    }

    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Correlation IDs by seconds active (most first), at most [`MAX_CORRELATIONS_REPORTED`], and
    /// how many were left out.
    pub fn correlations(&self, interval_s: f64) -> (Vec<CorrelationActivity>, u64) {
        let mut all: Vec<(&String, &(u64, u32))> = self.correlations.iter().collect();
        all.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(b.0)));
        let omitted =
            all.len().saturating_sub(MAX_CORRELATIONS_REPORTED) as u64 + self.correlations_overflow;
        let list = all
            .into_iter()
            .take(MAX_CORRELATIONS_REPORTED)
            .map(|(id, (samples, peak))| CorrelationActivity {
                id: id.clone(),
                seconds: round3(*samples as f64 * interval_s),
                samples: *samples,
                peak_sessions: *peak,
            })
            .collect();
        (list, omitted)
    }

    /// Active sessions averaged over the window's samples.
    pub fn avg_active(&self) -> f64 {
        round3(self.active_sum as f64 / self.samples.max(1) as f64)
    }

    pub fn max_active(&self) -> u64 {
        self.active_max
    }
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::sampling::host::HostPoint;

    fn statement(q: &str, id: Option<&str>) -> Arc<Statement> {
        Arc::new(Statement {
            query_id: None,
            fingerprint: Some(q.to_string()),
            text: Some(q.to_string()),
            truncated: false,
            correlation_id: id.map(str::to_string),
        })
    }

    fn seen(pid: i32, state: &str, st: &Arc<Statement>) -> Seen {
        Seen {
            pid,
            state: state.to_string(),
            wait_event_type: None,
            wait_event: None,
            backend_type: Some("client backend".into()),
            datname: Some("db".into()),
            usename: Some("u".into()),
            query_start_us: 1,
            statement: st.clone(),
        }
    }

    fn point(active: u32) -> Point {
        Point {
            at_ms: 0,
            sessions: active,
            active,
            waiting: 0,
            lock_waits: 0,
            host: HostPoint::default(),
        }
    }

    #[test]
    fn averages_are_session_samples_over_samples_and_ids_count_once_per_sample() {
        let (a, b) = (statement("a", Some("r1")), statement("b", None));
        let mut w = Window::default();
        // Sample 1: three sessions of a (one ID), one of b; sample 2: one of a.
        w.add(
            &[
                seen(1, "active", &a),
                seen(2, "active", &a),
                seen(3, "active", &a),
                seen(4, "active", &b),
            ],
            point(4),
        );
        w.add(&[seen(1, "active", &a)], point(1));
        let (top, omitted) = w.top(1);
        assert_eq!(omitted, 1);
        assert_eq!(top[0].query.as_deref(), Some("a"));
        assert_eq!(top[0].avg_active_sessions, 2.0);
        assert_eq!(top[0].peak_sessions, 3);
        assert_eq!(w.avg_active(), 2.5);
        let (ids, left) = w.correlations(0.5);
        assert_eq!(left, 0);
        assert_eq!(
            (ids[0].samples, ids[0].seconds, ids[0].peak_sessions),
            (2, 1.0, 3)
        );
    }

    #[test]
    fn groups_beyond_the_bound_are_counted_not_held() {
        let mut w = Window::default();
        let statements: Vec<Arc<Statement>> = (0..MAX_GROUPS + 5)
            .map(|i| statement(&i.to_string(), None))
            .collect();
        let rows: Vec<Seen> = statements.iter().map(|s| seen(1, "active", s)).collect();
        w.add(&rows, point(rows.len() as u32));
        assert_eq!(w.groups(), MAX_GROUPS);
        assert_eq!(w.groups_overflow(), 5);
        for _ in 0..MAX_SERIES + 2 {
            w.add(&[], point(0));
        }
        assert_eq!(w.series.len(), MAX_SERIES);
        assert_eq!(w.series_omitted, 3);
    }
}
