//! The sampling task: an active-session sample every `activity.sample_interval_ms`
//! ([`crate::collect::sampling`]), a `pg_activity_samples` batch every collection interval, and a
//! `spike` batch when a trigger fires. Batches are handed to the state writer
//! ([`super::writer`]), which writes them to the outbox and wakes the delivery task; no tick waits
//! on the disk.
//!
//! Ticks follow a drift-free schedule that skips ticks missed while a sample (or a spike snapshot)
//! ran, never queueing them. A reload hands it a new [`Setup`] ([`SampleTask::update`]);
//! `sample_interval_ms = 0` parks it until a reload turns sampling on. Stopping abandons a tick in
//! progress and writes the window so far as a last `pg_activity_samples` batch (within
//! [`STOP_FLUSH`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::Batch;
use crate::collect::sampling::{Outcome, Sampler};
use crate::collect::CollectSettings;
use crate::daemon::publish;
use crate::daemon::schedule::Schedule;
use crate::daemon::setup::Setup;
use crate::daemon::tasks::SetupTask;
use crate::telemetry::server::Telemetry;

/// On stop, the window so far is written to the outbox if that takes at most this long.
pub const STOP_FLUSH: Duration = Duration::from_millis(150);

/// What the sampling task shares with the rest of the daemon.
pub struct SampleShared {
    /// Writes the batches to the outbox.
    pub writer: Arc<super::writer::Writer>,
    pub telemetry: Telemetry,
    /// Wakes the delivery task.
    pub deliver: Arc<Notify>,
}

/// Starts the sampling task on `tracker`; it stops when `stop` (a child of the daemon's token) is
/// cancelled.
pub fn spawn(
    tracker: &TaskTracker,
    setup: Arc<Setup>,
    shared: SampleShared,
    stop: CancellationToken,
) -> SetupTask {
    SetupTask::spawn(tracker, setup, stop, |rx, stop| run(rx, shared, stop))
}

async fn run(
    mut setup: watch::Receiver<Arc<Setup>>,
    shared: SampleShared,
    stop: CancellationToken,
) {
    let mut sampler = Sampler::with_counters(shared.telemetry.counters.clone());
    let mut current = setup.borrow_and_update().clone();
    'setup: loop {
        let (config, db) = (&current.collect, &current.db);
        let Some(every) = config.activity.sample_interval else {
            tracing::info!("active-session sampling is off (activity.sample_interval_ms = 0)");
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = setup.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    current = setup.borrow_and_update().clone();
                    continue 'setup;
                }
            }
        };
        let th = sampler.thresholds(config);
        tracing::info!(
            interval_ms = every.as_millis() as u64,
            spikes = config.spikes.enabled,
            active_sessions = th.active_sessions,
            load = th.load,
            lock_wait_ms = th.lock_wait.map(|d| d.as_millis() as u64),
            "active-session sampling on"
        );
        let start = Instant::now();
        let mut ticks = Schedule::new(start, every);
        let mut windows = Schedule::new(start, current.config.agent.collection_interval);
        // The first window closes one interval from now.
        let _ = windows.next_after(start);
        let mut window_due = windows.next_after(start).at;
        loop {
            let tick = ticks.next_after(Instant::now());
            tokio::select! {
                _ = stop.cancelled() => return flush(&mut sampler, config, &shared).await,
                _ = tokio::time::sleep_until(tick.at) => {}
                changed = setup.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    current = setup.borrow_and_update().clone();
                    continue 'setup;
                }
            }
            let t = tokio::select! {
                _ = stop.cancelled() => return flush(&mut sampler, config, &shared).await,
                t = sampler.tick(db, config) => t,
            };
            let outcome = match &t.outcome {
                Outcome::Sampled(_) => "ok",
                Outcome::Busy => "busy",
                Outcome::Unreachable(_) => "unreachable",
                Outcome::Failed(e) => {
                    tracing::debug!(error = %e, "active-session sample failed");
                    "failed"
                }
            };
            publish::sample(&shared.telemetry, "sampling", outcome);
            if let Some(e) = &t.spike_error {
                publish::sample(&shared.telemetry, "spikes", "failed");
                tracing::warn!(event = "spike_snapshot_failed", error = %e,
                    "a spike trigger fired but the snapshot failed");
            }
            if let Some(spike) = t.spike {
                publish::sample(&shared.telemetry, "spikes", "ok");
                tracing::info!(
                    event = "spike",
                    trigger = spike
                        .extra
                        .get("trigger")
                        .and_then(|v| v.as_str())
                        .unwrap_or(""),
                    value = spike.extra.get("trigger_value").and_then(|v| v.as_f64()),
                    sessions = spike.count,
                    "spike snapshot taken"
                );
                persist(spike, &shared);
                shared.deliver.notify_one();
            }
            if Instant::now() >= window_due {
                window_due = windows.next_after(Instant::now()).at;
                if let Some(batch) = sampler.take_window(config) {
                    persist(batch, &shared);
                }
            }
        }
    }
}

/// The window so far, written to the outbox on stop if that is quick.
async fn flush(sampler: &mut Sampler, config: &CollectSettings, shared: &SampleShared) {
    if let Some(batch) = sampler.take_window(config) {
        persist(batch, shared);
    }
}

/// Hands one batch to the state writer ([`super::writer`]): never waits on the disk.
fn persist(batch: Batch, shared: &SampleShared) {
    shared.writer.submit(vec![batch]);
}
