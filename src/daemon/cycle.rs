//! One collection cycle as the daemon runs it: the drain budget, the cycle summary, and publishing
//! the figures to /metrics, /health and systemd. (Writing the batches is the state writer's,
//! `writer.rs`.)

use std::time::{Duration, SystemTime};

use crate::collect::{CycleReport, Outcome};
use crate::ship::breaker::CircuitState;
use crate::ship::{DrainReport, ShipStats};
use crate::telemetry::metrics::{
    set_counter, CollectorLabel, CollectorOutcomeLabel, Metrics, OutcomeLabel, TypeLabel,
};
use crate::telemetry::registry::Counters;

/// How long one drain pass may take: half the interval, at most 30 s; the delivery task starts the
/// next pass at once while a backlog remains.
pub fn drain_budget(interval: Duration) -> Duration {
    (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(30))
}

/// A one-line summary for logs and systemd's STATUS=; `waiting` is the outbox depth.
pub fn summary(report: &CycleReport, waiting: Option<u64>) -> String {
    let ok = report
        .runs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ok { .. }))
        .count();
    let records: usize = report.batches.iter().map(|b| b.count).sum();
    let mut s = format!(
        "cycle {:.0} ms: {ok}/{} collectors ok, {records} records",
        report.duration.as_secs_f64() * 1000.0,
        report.runs.len()
    );
    match (&report.server, &report.server_error) {
        (Some(_), _) => {}
        (None, Some(e)) => s.push_str(&format!(", no database: {e}")),
        (None, None) => s.push_str(", no database"),
    }
    if let Some(w) = waiting {
        s.push_str(&format!(", {w} requests waiting to be sent"));
    }
    s
}

/// Requests waiting to be sent: the outbox depth plus the requests held in memory (a full disk),
/// which are waiting too. None when there is nothing to say (stdout mode).
pub fn waiting(stats: &crate::ship::ShipStats) -> Option<Waiting> {
    let held = stats.process.held_now as u64;
    let depth = stats.outbox.as_ref().map(|o| o.depth);
    (depth.is_some() || held > 0).then(|| Waiting {
        total: depth.unwrap_or(0) + held,
        held,
    })
}

/// What [`waiting`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub total: u64,
    /// Of them, held in memory.
    pub held: u64,
}

/// The summary's ", N requests waiting to be sent (M of them held in memory)".
pub fn waiting_text(w: Waiting) -> String {
    if w.held == 0 {
        format!(", {} requests waiting to be sent", w.total)
    } else {
        format!(
            ", {} requests waiting to be sent ({} of them held in memory)",
            w.total, w.held
        )
    }
}

/// Publishes a cycle's collector figures.
pub fn record_cycle(metrics: &Metrics, report: &CycleReport) {
    let outcome = match (report.server.is_some(), report.all_ok()) {
        (true, true) => "ok",
        (true, false) => "partial",
        (false, _) => "failed",
    };
    metrics
        .cycles
        .get_or_create(&OutcomeLabel {
            outcome: outcome.into(),
        })
        .inc();
    metrics
        .cycle_duration_seconds
        .set(report.duration.as_secs_f64());
    if report.server.is_some() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics.last_success_timestamp_seconds.set(now);
    }
    for run in &report.runs {
        metrics
            .collector_duration_seconds
            .get_or_create(&CollectorLabel {
                collector: run.name.into(),
            })
            .set(run.duration.as_secs_f64());
        let outcome = match &run.outcome {
            Outcome::Ok { .. } => "ok",
            Outcome::Skipped => "skipped",
            Outcome::TimedOut(_) => "timeout",
            Outcome::Failed(_) => "failed",
        };
        metrics
            .collector_runs
            .get_or_create(&CollectorOutcomeLabel {
                collector: run.name.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// Publishes the outbox and breaker figures (`stats`, read once by the caller). The privacy counts
/// reach `counters` where privacy is applied (`collect::query_text`, the log tail).
pub fn record_shipping(metrics: &Metrics, _counters: &Counters, stats: Option<&ShipStats>) {
    if let Some(stats) = stats {
        if let Some(o) = &stats.outbox {
            metrics.outbox_bytes.set(o.file_bytes as i64);
            metrics.dead_letters.set(o.dead_letters as i64);
            let now_ms = crate::clock::now_ms();
            metrics.outbox_oldest_age_seconds.set(
                o.oldest_enqueued_ms
                    .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0),
            );
            for k in &o.kinds {
                let label = TypeLabel {
                    r#type: k.kind.clone(),
                };
                metrics
                    .outbox_batches
                    .get_or_create(&label)
                    .set(k.depth as i64);
                set_counter(&metrics.outbox_evictions.get_or_create(&label), k.evicted);
            }
        }
        let p = &stats.process;
        metrics.held_requests.set(p.held_now as i64);
        if let Some(b) = &stats.breaker {
            metrics.breaker_state.set(match b.state {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            });
        }
    }
}

/// Counts a drain pass's outcomes per batch (types are not broken down by the drain report).
pub fn record_drain(metrics: &Metrics, drain: &DrainReport) {
    for (outcome, n) in [
        ("sent", drain.delivered),
        ("send_failed", drain.failed),
        ("dead_lettered", drain.dead_lettered),
    ] {
        if n > 0 {
            metrics
                .batches
                .get_or_create(&crate::telemetry::metrics::TypeOutcomeLabel {
                    r#type: "all".into(),
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
    }
}
