//! The collection task: a cycle at every tick of the drift-free schedule. Each cycle collects,
//! hands its batches and its record to the state writer ([`super::writer`]) without waiting for the
//! disk, reports what the writer did since the last cycle, wakes the delivery task and publishes its
//! figures. It never sends and never writes: neither a slow listener nor a hung disk can delay it,
//! and it cannot delay the signal handler, `/health` or delivery.
//!
//! A reload hands it a new [`Setup`] (configuration and pool), applied at the next tick; the
//! schedule follows a changed interval at once. Stopping abandons a cycle in progress (what it
//! handed over is written by the state writer).

use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::deliver;
use super::writer::{self, Writer};
use crate::collect::Collectors;
use crate::daemon::schedule::Schedule;
use crate::daemon::setup::Setup;
use crate::daemon::tasks::SetupTask;
use crate::daemon::{cycle, notify, publish};
use crate::db::ServerInfo;
use crate::telemetry::registry::Event;
use crate::telemetry::server::Telemetry;

/// What the collection task shares with the rest of the daemon.
pub struct CycleShared {
    pub telemetry: Telemetry,
    /// The server's identity as the last cycle read it (the log task's batches carry it).
    pub server: Arc<Mutex<Option<ServerInfo>>>,
    /// Wakes the delivery task.
    pub deliver: Arc<Notify>,
    /// How long the delivery pass in progress has been running.
    pub delivery: deliver::PassWatch,
    /// Does the cycle's disk work.
    pub writer: Arc<Writer>,
    /// Plan sightings from the log task, for the plans collector.
    pub plans: crate::collect::plans::PlanInbox,
}

/// Starts the collection task on `tracker`: the first cycle runs at once. It stops when `stop` (a
/// child of the daemon's token) is cancelled.
pub fn spawn(
    tracker: &TaskTracker,
    setup: Arc<Setup>,
    shared: CycleShared,
    stop: CancellationToken,
) -> SetupTask {
    SetupTask::spawn(tracker, setup, stop, |rx, stop| run(rx, shared, stop))
}

async fn run(mut setup: watch::Receiver<Arc<Setup>>, shared: CycleShared, stop: CancellationToken) {
    let first = setup.borrow_and_update().clone();
    let mut collectors =
        Collectors::with_counters(&first.collect, shared.telemetry.counters.clone())
            .with_plan_inbox(shared.plans.clone());
    let mut interval = first.config.agent.collection_interval;
    let mut schedule = Schedule::new(Instant::now(), interval);
    let mut current = first;
    loop {
        let tick = schedule.next_after(Instant::now());
        if tick.skipped > 0 {
            shared
                .telemetry
                .counters
                .add(Event::CyclesSkipped, tick.skipped);
            tracing::warn!(
                skipped = tick.skipped,
                "the previous cycle overran its interval; skipping missed ticks"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(tick.at) => {}
            changed = setup.changed() => {
                if changed.is_err() {
                    return;
                }
                current = setup.borrow_and_update().clone();
                let wanted = current.config.agent.collection_interval;
                if wanted != interval {
                    interval = wanted;
                    schedule.set_interval(interval, Instant::now());
                }
                continue;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = cycle(&mut collectors, &current, &shared) => {}
        }
    }
}

/// One cycle: collect, hand the batches to the state writer, wake delivery, publish the figures.
async fn cycle(collectors: &mut Collectors, setup: &Setup, shared: &CycleShared) {
    let (config, db) = (&setup.config, &setup.db);
    let before = publish::DegradedCounts::read(&shared.telemetry);
    let mut report = collectors.run_cycle(db, &setup.collect).await;
    if report.server.is_some() {
        publish::degraded(&shared.telemetry, before);
    }
    if let Some(s) = &report.server {
        if let Ok(mut guard) = shared.server.lock() {
            *guard = Some(s.clone());
        }
    }
    let telemetry = &shared.telemetry;
    let mut summary = cycle::summary(&report, None);
    // Disk work is the state writer's: this cycle hands its batches over and goes on; what the
    // writer did with the previous ones is reported here.
    shared.writer.submit(std::mem::take(&mut report.batches));
    publish::writer(telemetry, &shared.writer, &mut summary);
    // Sending is the delivery task's: a slow listener never holds up the next cycle.
    shared.deliver.notify_one();
    publish::delivery_stall(
        telemetry,
        &shared.delivery,
        config.agent.collection_interval,
        config.listener.timeout,
    );
    publish::cycle(telemetry, &report, db);
    tracing::info!(summary = %summary, "cycle finished");
    notify::status(&summary);
    shared.writer.record(writer::Record {
        dir: config.agent.state_dir.clone(),
        ok: report.server.is_some(),
        summary,
    });
}
