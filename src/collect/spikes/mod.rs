//! Spike snapshots: when a sample crosses a trigger (active sessions, load, an old lock wait), a
//! full picture taken at once on the sampling session: every session with its query text
//! ([`super::activity`]), the lock chains ([`super::locks`]), host metrics with the busiest
//! processes ([`procs`]) and the samples of the last `spikes.lookback_s` seconds. Shipped as a
//! `spike` batch, at most one per `spikes.min_gap_s`.
//!
//! When a trigger fires (`spikes.mode`): in `baseline` mode (the default) the active-sessions and
//! load triggers need a sample at or above both the absolute floor (`spikes.active_sessions`,
//! `spikes.load`) and `spikes.baseline_factor` times the median of the last `spikes.baseline_s`
//! seconds of samples ([`baseline`]); in `absolute` mode the floor alone. The lock-wait trigger is
//! absolute in both.
//!
//! It does not decide when to sample; [`super::sampling::Sampler`] calls [`crossed`] on every
//! sample, and [`snapshot`] when a trigger fired and the [`Gate`] lets it.

pub mod baseline;
pub mod procs;

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use super::activity::ActivityCollector;
use super::locks::LocksCollector;
use super::sampling::{host::HostPoint, point::Point};
use super::{CollectError, CollectSettings, Collector, Context, ServerContext};
use crate::batch::{Batch, BatchKind, Record};
use crate::clock::format_rfc3339;
use crate::config::SpikesConfig;
use crate::db::Session;
pub use baseline::Baseline;

/// Processes listed in a snapshot's `host.top_processes`.
pub const TOP_PROCESSES: usize = 10;
/// The window over which the busiest processes are measured.
const PROCESS_WINDOW: Duration = Duration::from_millis(250);
/// Reading /proc for the busiest processes may take this long (it runs on a blocking thread,
/// which a hung disk elsewhere may hold).
const PROCESS_DEADLINE: Duration = Duration::from_secs(2);

/// The trigger values in effect (defaults resolved against the host's cores).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub active_sessions: u32,
    pub load: f64,
    pub lock_wait: Option<Duration>,
    /// `spikes.mode = baseline`: the multiple of the trailing median a sample must also reach;
    /// None in `absolute` mode.
    pub baseline_factor: Option<f64>,
}

impl Thresholds {
    pub fn new(config: &SpikesConfig, cores: usize) -> Thresholds {
        let twice = (cores.max(1) * 2) as u32;
        Thresholds {
            active_sessions: config.active_sessions.unwrap_or(twice),
            load: config.load.unwrap_or(f64::from(twice)),
            lock_wait: config.lock_wait,
            baseline_factor: config.baseline_factor,
        }
    }

    /// What a value must reach: the floor, and in baseline mode the factor times the median.
    fn bar(&self, floor: f64, median: impl FnOnce() -> f64) -> f64 {
        match self.baseline_factor {
            Some(f) => floor.max(f * median()),
            None => floor,
        }
    }
}

/// A trigger that fired: its name, the value seen and the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    /// `active_sessions`, `load` or `lock_wait_ms`.
    pub name: &'static str,
    pub value: f64,
    pub threshold: f64,
}

/// The triggers a sample crosses, in the order active_sessions, load, lock_wait_ms. `baseline`
/// holds the samples before this one; a trigger's `threshold` is the bar it crossed (the floor, or
/// the factor times the median when that is higher).
pub fn crossed(
    th: &Thresholds,
    point: &Point,
    oldest_lock_wait: Option<Duration>,
    baseline: &Baseline,
) -> Vec<Trigger> {
    let mut out = Vec::new();
    // The medians are only computed once a floor is reached.
    if point.active >= th.active_sessions {
        let bar = th.bar(f64::from(th.active_sessions), || baseline.median_active());
        if f64::from(point.active) >= bar {
            out.push(Trigger {
                name: "active_sessions",
                value: f64::from(point.active),
                threshold: bar,
            });
        }
    }
    if let Some(load) = point.host.load1.filter(|l| *l >= th.load) {
        let bar = th.bar(th.load, || baseline.median_load());
        if load >= bar {
            out.push(Trigger {
                name: "load",
                value: load,
                threshold: bar,
            });
        }
    }
    if let (Some(limit), Some(waited)) = (th.lock_wait, oldest_lock_wait) {
        if waited >= limit {
            out.push(Trigger {
                name: "lock_wait_ms",
                value: waited.as_millis() as f64,
                threshold: limit.as_millis() as f64,
            });
        }
    }
    out
}

/// At most one snapshot per `min_gap`.
#[derive(Debug, Default)]
pub struct Gate {
    last: Option<Instant>,
}

impl Gate {
    /// Whether a snapshot may be taken now; if so, the gap starts now.
    pub fn admit(&mut self, now: Instant, min_gap: Duration) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < min_gap => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// The host part of a snapshot.
#[derive(Debug, Serialize)]
struct Host {
    cores: usize,
    load: Option<super::system::Load>,
    cpu_percent: Option<f64>,
    memory: Option<super::system::Memory>,
    /// Null when /proc could not be read in time.
    top_processes: Option<Vec<procs::TopProcess>>,
}

/// What a snapshot is taken from.
pub struct Moment<'a> {
    pub triggers: Vec<Trigger>,
    /// When the sample that fired was taken.
    pub at: time::OffsetDateTime,
    /// The samples of the lookback period, oldest first (the firing one last).
    pub series: Vec<Point>,
    pub host: HostPoint,
    pub cores: usize,
    pub server: &'a ServerContext,
    /// Where the snapshot counts what it skips or cannot read.
    pub counters: &'a crate::telemetry::registry::Counters,
}

/// Takes a spike snapshot on `session` and returns its batch. The activity and locks parts fail
/// together (the session is then unusable); the host part never fails.
pub async fn snapshot(
    session: &mut Session,
    config: &CollectSettings,
    moment: Moment<'_>,
) -> Result<Batch, CollectError> {
    let started = Instant::now();
    // The first /proc reading runs while the queries do.
    let first = tokio::task::spawn_blocking(procs::read);
    let (activity, locks) = {
        let mut ctx = Context {
            settings: config,
            counters: moment.counters,
            server: Some(moment.server),
            session: Some(session),
        };
        let activity = ActivityCollector.collect(&mut ctx).await?;
        let locks = LocksCollector.collect(&mut ctx).await?;
        (activity, locks)
    };
    let top_processes = match tokio::time::timeout(PROCESS_DEADLINE, first).await {
        Ok(Ok(before)) => {
            let waited = started.elapsed();
            if waited < PROCESS_WINDOW {
                tokio::time::sleep(PROCESS_WINDOW - waited).await;
            }
            let job = tokio::task::spawn_blocking(move || procs::top(&before, TOP_PROCESSES));
            tokio::time::timeout(PROCESS_DEADLINE, job)
                .await
                .ok()
                .and_then(Result::ok)
        }
        _ => None,
    };
    let counters = moment.counters;
    let unreadable = |missing: bool| {
        if missing {
            counters.incr(crate::telemetry::registry::Event::SystemReadErrors);
        }
    };
    unreadable(top_processes.is_none());
    let (load, memory) = (
        super::system::sample::load(),
        super::system::sample::memory(),
    );
    unreadable(load.is_none());
    unreadable(memory.is_none());
    let host = Host {
        cores: moment.cores,
        load,
        cpu_percent: moment.host.cpu_percent,
        memory,
        top_processes,
    };

    let (sessions, mut extra) = match activity {
        Some(a) => (a.records, a.extra),
        None => (Vec::new(), Map::new()),
    };
    // The current plan of each active statement with a known plan (docs/plans.md).
    let plans: Map<String, Value> = sessions
        .iter()
        .filter_map(|s| {
            let fp = s.fingerprint.as_deref()?;
            Some((
                fp.to_string(),
                Value::from(config.current_plans.get_hex(fp)?),
            ))
        })
        .collect();
    extra.insert("plans".into(), Value::Object(plans));
    let data = sessions
        .iter()
        .map(Record::new)
        .collect::<Result<Vec<Record>, _>>()
        .map_err(json_error)?;
    let first_trigger = moment.triggers.first().cloned();
    if let Some(t) = &first_trigger {
        extra.insert("trigger".into(), Value::from(t.name));
        extra.insert("trigger_value".into(), Value::from(t.value));
        extra.insert("trigger_threshold".into(), Value::from(t.threshold));
    }
    extra.insert("triggers".into(), to_value(&moment.triggers)?);
    extra.insert(
        "triggered_at".into(),
        Value::from(format_rfc3339(moment.at)),
    );
    let mut lock_part = Map::new();
    if let Some(l) = locks {
        lock_part.insert("waiting_locks".into(), to_value(&l.records)?);
        lock_part.extend(l.extra);
    }
    extra.insert("locks".into(), Value::Object(lock_part));
    // What the server did in the background (issue 24): checkpoint, vacuum/analyze, replication.
    let background =
        super::health::server::background(session, moment.server.info.version_num).await;
    extra.insert(
        "background".into(),
        Value::Array(background.into_iter().map(Value::Object).collect()),
    );
    extra.insert("host".into(), to_value(&host)?);
    extra.insert(
        "lookback_s".into(),
        Value::from(config.spikes.lookback.as_secs()),
    );
    extra.insert("series".into(), to_value(&moment.series)?);
    extra.insert(
        "snapshot_ms".into(),
        Value::from(super::round_ms(started.elapsed().as_secs_f64() * 1000.0)),
    );
    // A spike covers its lookback, not a collection interval.
    let mut batch = config
        .stamp
        .with_interval(config.spikes.lookback.as_secs())
        .batch(BatchKind::Spike, Some(moment.server.info.clone()), data);
    batch.extra = extra;
    batch.correlated = sessions
        .iter()
        .filter_map(|s| s.correlated(&batch.collected_at))
        .collect();
    Ok(batch)
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value, CollectError> {
    serde_json::to_value(v).map_err(json_error)
}

fn json_error(e: serde_json::Error) -> CollectError {
    CollectError::Column {
        query: "spike",
        column: "record",
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(active: u32, load1: Option<f64>) -> Point {
        Point {
            at_ms: 0,
            sessions: active,
            active,
            waiting: 0,
            lock_waits: 0,
            host: HostPoint {
                load1,
                cpu_percent: None,
            },
        }
    }

    #[test]
    fn defaults_are_twice_the_cores_and_each_trigger_fires_at_its_threshold() {
        let config = SpikesConfig {
            enabled: true,
            active_sessions: None,
            load: None,
            lock_wait: Some(Duration::from_millis(5000)),
            lookback: Duration::from_secs(60),
            min_gap: Duration::from_secs(60),
            baseline: Duration::from_secs(300),
            baseline_factor: Some(2.0),
        };
        let th = Thresholds::new(&config, 4);
        let none = Baseline::default();
        assert_eq!((th.active_sessions, th.load), (8, 8.0));
        assert!(crossed(
            &th,
            &point(7, Some(7.99)),
            Some(Duration::from_millis(4999)),
            &none
        )
        .is_empty());
        let all = crossed(
            &th,
            &point(8, Some(8.0)),
            Some(Duration::from_secs(5)),
            &none,
        );
        let names: Vec<&str> = all.iter().map(|t| t.name).collect();
        assert_eq!(names, ["active_sessions", "load", "lock_wait_ms"]);
        assert_eq!(all[2].value, 5000.0);
        let off = Thresholds {
            lock_wait: None,
            ..th
        };
        assert!(crossed(&off, &point(0, None), Some(Duration::from_secs(99)), &none).is_empty());
    }

    #[test]
    fn baseline_mode_needs_a_rise_above_the_trailing_median_and_the_floor() {
        let config = SpikesConfig {
            enabled: true,
            active_sessions: Some(10),
            load: Some(4.0),
            lock_wait: None,
            lookback: Duration::from_secs(60),
            min_gap: Duration::from_secs(60),
            baseline: Duration::from_secs(300),
            baseline_factor: Some(2.0),
        };
        let th = Thresholds::new(&config, 2);
        let mut steady = Baseline::default();
        for i in 0..60 {
            steady.push(i * 1000, 100, Some(50.0), config.baseline);
        }
        // A steady 100 sessions (load 50) is no spike; 200 (load 100) is.
        assert!(crossed(&th, &point(110, Some(60.0)), None, &steady).is_empty());
        let t = crossed(&th, &point(200, Some(100.0)), None, &steady);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!((t[0].value, t[0].threshold), (200.0, 200.0));
        assert_eq!((t[1].value, t[1].threshold), (100.0, 100.0));
        // A quiet baseline: the floor decides.
        let mut quiet = Baseline::default();
        quiet.push(0, 1, Some(0.1), config.baseline);
        assert!(crossed(&th, &point(9, None), None, &quiet).is_empty());
        let t = crossed(&th, &point(10, None), None, &quiet);
        assert_eq!(t[0].threshold, 10.0);
        // Absolute mode ignores the baseline.
        let abs = Thresholds {
            baseline_factor: None,
            ..th
        };
        assert_eq!(crossed(&abs, &point(110, None), None, &steady).len(), 1);
    }

    #[test]
    fn at_most_one_snapshot_per_gap() {
        let mut g = Gate::default();
        let t = Instant::now();
        let gap = Duration::from_secs(60);
        assert!(g.admit(t, gap));
        assert!(!g.admit(t + Duration::from_secs(59), gap));
        assert!(g.admit(t + Duration::from_secs(60), gap));
    }
}
