//! Active-session sampling: every `activity.sample_interval_ms`, one cheap query for the non-idle
//! sessions ([`query`]) and the host's load and CPU ([`host`]), added to the window that becomes
//! the cycle's `pg_activity_samples` batch ([`window`]), and checked against the spike triggers
//! ([`super::spikes`]).
//!
//! Do no harm: a sample runs only on the pool's idle connection. It never opens one: with no
//! connection open (the database unreachable, or not yet connected by the collection cycle) the
//! sample is skipped as `unreachable`; with the connection in use by a collector it is skipped as
//! `busy`. When a collector's request for a session came while the sampler held the connection, the
//! pool opened a second one; the sampler then closes its own after the sample, so the pool is back to
//! one connection within a tick. Its query runs under the client deadline like every other. The caller ticks it on a
//! schedule that skips missed ticks rather than queueing them.
//!
//! This module does not ship anything and keeps no timer: the daemon's sample task does both.

pub mod host;
pub mod point;
pub mod query;
pub mod window;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::spikes::{self, Baseline, Gate, Moment, Thresholds, Trigger};
use super::{server_context, CollectError, CollectSettings, ServerContext};
use crate::batch::{Batch, BatchKind, Record};
use crate::clock::format_rfc3339;
use crate::db::Db;
use crate::telemetry::registry::{Counters, Event};
use host::HostReader;
pub use point::Point;
use query::StatementCache;
use window::Window;

/// The server facts (version, track_activity_query_size) are read again after this long.
const SERVER_REFRESH: Duration = Duration::from_secs(600);

/// What became of one tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sampled(Point),
    /// The connection was in use (by a collector); no connection was opened.
    Busy,
    /// No connection is open, or the server could not be reached.
    Unreachable(String),
    /// The query failed or missed its deadline.
    Failed(String),
}

/// The result of one tick: the sample, and a spike snapshot when a trigger fired.
#[derive(Debug)]
pub struct Tick {
    pub outcome: Outcome,
    /// The triggers crossed by this sample (also when the gap kept a snapshot from being taken).
    pub triggers: Vec<Trigger>,
    pub spike: Option<Batch>,
    /// Why a snapshot that was due could not be taken.
    pub spike_error: Option<String>,
}

/// The sampler's state between ticks. The daemon holds one for its lifetime.
pub struct Sampler {
    host: HostReader,
    cache: StatementCache,
    window: Window,
    lookback: VecDeque<Point>,
    /// Sessions seen waiting on a lock, by (pid, query_start): since when.
    lock_waits: HashMap<(i32, i64), Instant>,
    server: Option<(ServerContext, Instant)>,
    gate: Gate,
    /// The samples of the last `spikes.baseline_s` seconds, for baseline-relative triggers.
    baseline: Baseline,
    cores: usize,
    counters: Counters,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    /// A sampler counting into counters of its own (see [`Sampler::with_counters`]).
    pub fn new() -> Sampler {
        Sampler::with_counters(Counters::default())
    }

    /// A sampler counting into `counters` (the daemon's, exported on /metrics).
    pub fn with_counters(counters: Counters) -> Sampler {
        Sampler {
            counters,
            host: HostReader::default(),
            cache: StatementCache::default(),
            window: Window::default(),
            lookback: VecDeque::new(),
            lock_waits: HashMap::new(),
            server: None,
            gate: Gate::default(),
            baseline: Baseline::default(),
            cores: host::cores(),
        }
    }

    /// The host's cores, as the spike defaults use them.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The trigger values in effect for `config`.
    pub fn thresholds(&self, config: &CollectSettings) -> Thresholds {
        Thresholds::new(&config.spikes, self.cores)
    }

    /// Takes one sample; when it crosses a trigger and the gap allows, a spike snapshot on the same
    /// session.
    pub async fn tick(&mut self, db: &Db, config: &CollectSettings) -> Tick {
        let mut tick = Tick {
            outcome: Outcome::Busy,
            triggers: Vec::new(),
            spike: None,
            spike_error: None,
        };
        let now = Instant::now();
        let at = time::OffsetDateTime::now_utc();
        if self.window.started.is_none() {
            self.window.started = Some(at);
        }
        let host = self.host.read();
        if db.idle_connections() == 0 {
            tick.outcome = if db.open_connections() == 0 {
                self.window.skipped_unreachable += 1;
                Outcome::Unreachable("no connection open".into())
            } else {
                self.window.skipped_busy += 1;
                Outcome::Busy
            };
            return tick;
        }
        let stale = self
            .server
            .as_ref()
            .is_none_or(|(_, read)| now.saturating_duration_since(*read) >= SERVER_REFRESH);
        if stale {
            match server_context(db, config).await {
                Ok(s) => self.server = Some((s, now)),
                Err(e) => {
                    self.window.skipped_unreachable += 1;
                    tick.outcome = Outcome::Unreachable(e.to_string());
                    return tick;
                }
            }
        }
        let Some(server) = self.server.as_ref().map(|(s, _)| s.clone()) else {
            return tick;
        };
        if db.idle_connections() == 0 {
            // A collector took the connection while the server facts were read.
            self.window.skipped_busy += 1;
            return tick;
        }
        let mut session = match db.session().await {
            Ok(s) => s,
            Err(e) => {
                self.window.skipped_unreachable += 1;
                tick.outcome = Outcome::Unreachable(e.to_string());
                return tick;
            }
        };
        let read = match query::read(
            &mut session,
            config,
            server.info.version_num,
            server.track_activity_query_size,
            &mut self.cache,
            &self.counters,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.window.failed += 1;
                self.counters.incr(Event::CollectorFailures);
                tick.outcome = Outcome::Failed(e.to_string());
                return tick;
            }
        };
        let point = Point {
            at_ms: (at.unix_timestamp_nanos() / 1_000_000) as i64,
            sessions: clamp(read.total),
            active: clamp(read.active),
            waiting: clamp(read.waiting),
            lock_waits: clamp(read.lock_waits),
            host,
        };
        self.window.add(&read.rows, point);
        self.remember(point, config);
        let oldest_lock_wait = self.track_lock_waits(&read.rows, now);
        tick.outcome = Outcome::Sampled(point);
        if config.spikes.enabled {
            tick.triggers = spikes::crossed(
                &self.thresholds(config),
                &point,
                oldest_lock_wait,
                &self.baseline,
            );
            if !tick.triggers.is_empty() && self.gate.admit(now, config.spikes.min_gap) {
                let moment = Moment {
                    triggers: tick.triggers.clone(),
                    at,
                    series: self.lookback.iter().copied().collect(),
                    host,
                    cores: self.cores,
                    server: &server,
                    counters: &self.counters,
                };
                let budget = config.safety.client_timeout * 2;
                match tokio::time::timeout(budget, spikes::snapshot(&mut session, config, moment))
                    .await
                {
                    Ok(Ok(batch)) => tick.spike = Some(batch),
                    Ok(Err(e)) => tick.spike_error = Some(e.to_string()),
                    Err(_) => {
                        // A query may still be in flight: never hand the connection back.
                        session.discard();
                        self.counters.incr(Event::CollectorTimeouts);
                        tick.spike_error = Some(CollectError::Timeout(budget).to_string());
                    }
                }
            }
        }
        self.baseline.push(
            point.at_ms,
            point.active,
            host.load1,
            config.spikes.baseline,
        );
        if db.open_connections() > 1 {
            // A collector asked for a session while this one was in use, so the pool opened a
            // second connection: close this one, and the pool is back to one.
            session.discard();
        }
        tick
    }

    /// Keeps the last `spikes.lookback_s` seconds of samples.
    fn remember(&mut self, point: Point, config: &CollectSettings) {
        self.lookback.push_back(point);
        let horizon = point.at_ms - config.spikes.lookback.as_millis() as i64;
        while self.lookback.front().is_some_and(|p| p.at_ms <= horizon) {
            self.lookback.pop_front();
        }
    }

    /// Updates when each lock wait was first seen; returns the oldest wait's age. A wait is timed
    /// from the first sample that saw it, so the age is exact to one sample interval.
    fn track_lock_waits(&mut self, rows: &[query::Seen], now: Instant) -> Option<Duration> {
        let mut seen = HashMap::new();
        for r in rows.iter().filter(|r| r.lock_wait()) {
            let key = (r.pid, r.query_start_us);
            let since = self.lock_waits.get(&key).copied().unwrap_or(now);
            seen.insert(key, since);
        }
        self.lock_waits = seen;
        self.lock_waits
            .values()
            .map(|since| now.saturating_duration_since(*since))
            .max()
    }

    /// Closes the current window: its `pg_activity_samples` batch (None when no tick ran), and a
    /// new window starts.
    pub fn take_window(&mut self, config: &CollectSettings) -> Option<Batch> {
        let w = std::mem::take(&mut self.window);
        if w.is_empty() {
            return None;
        }
        let interval = config
            .activity
            .sample_interval
            .unwrap_or(Duration::from_secs(1));
        let (top, omitted) = w.top(config.activity.sample_top_n);
        let data = top
            .iter()
            .map(Record::new)
            .collect::<Result<Vec<Record>, _>>()
            .ok()?;
        let (correlations, correlations_omitted) = w.correlations(interval.as_secs_f64());
        let mut extra = Map::new();
        let mut put = |k: &str, v: Value| {
            extra.insert(k.to_string(), v);
        };
        put(
            "window_start",
            Value::from(w.started.map(format_rfc3339).unwrap_or_default()),
        );
        put(
            "sample_interval_ms",
            Value::from(interval.as_millis() as u64),
        );
        put("samples", Value::from(w.samples));
        put(
            "skipped",
            serde_json::json!({
                "busy": w.skipped_busy,
                "unreachable": w.skipped_unreachable,
                "failed": w.failed,
            }),
        );
        put("avg_active_sessions", Value::from(w.avg_active()));
        put("max_active_sessions", Value::from(w.max_active()));
        put("groups", Value::from(w.groups()));
        put("omitted", Value::from(omitted));
        put(
            "untracked_session_samples",
            Value::from(w.groups_overflow()),
        );
        put(
            "series",
            serde_json::to_value(&w.series).unwrap_or(Value::Null),
        );
        put("series_omitted", Value::from(w.series_omitted));
        put(
            "correlations",
            serde_json::to_value(&correlations).unwrap_or(Value::Null),
        );
        put("correlations_omitted", Value::from(correlations_omitted));
        let mut batch = config.stamp.batch(
            BatchKind::PgActivitySamples,
            self.server.as_ref().map(|(s, _)| s.info.clone()),
            data,
        );
        batch.extra = extra;
        Some(batch)
    }
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
