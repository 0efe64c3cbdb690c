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
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::schedule::Schedule;
use super::setup::Setup;
use super::writer::{self, Writer};
use super::{cycle, deliver, notify};
use crate::collect::Collectors;
use crate::config::Config;
use crate::db::ServerInfo;
use crate::telemetry::conditions::Condition;
use crate::telemetry::registry::Event;
use crate::telemetry::server::Telemetry;

/// A state writer job may take this long before `/health` says it is stuck.
pub const PERSIST_DEADLINE: Duration = Duration::from_secs(10);

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
}

/// The running collection task.
pub struct CollectTask {
    setup: watch::Sender<Arc<Setup>>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl CollectTask {
    /// Starts the task on `tracker`: the first cycle runs at once. It stops when `stop` (a child of
    /// the daemon's token) is cancelled.
    pub fn spawn(
        tracker: &TaskTracker,
        setup: Arc<Setup>,
        shared: CycleShared,
        stop: CancellationToken,
    ) -> CollectTask {
        let (tx, rx) = watch::channel(setup);
        let handle = tracker.spawn(run(rx, shared, stop.clone()));
        CollectTask {
            setup: tx,
            stop,
            handle,
        }
    }

    /// A reloaded configuration (and pool) for the next cycles.
    pub fn update(&self, setup: Arc<Setup>) {
        self.setup.send_replace(setup);
    }

    /// Stops the task, abandoning a cycle in progress, and waits at most `deadline` for it.
    pub async fn stop(self, deadline: Duration) {
        self.stop.cancel();
        let _ = tokio::time::timeout(deadline, self.handle).await;
    }
}

async fn run(mut setup: watch::Receiver<Arc<Setup>>, shared: CycleShared, stop: CancellationToken) {
    let first = setup.borrow_and_update().clone();
    let mut collectors =
        Collectors::with_counters(&first.collect, shared.telemetry.counters.clone());
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
    let counted = |e| shared.telemetry.counters.get(e);
    let before = [
        counted(Event::StatementsUnavailable),
        counted(Event::StatementsNoPrivilege),
    ];
    let mut report = collectors.run_cycle(db, &setup.collect).await;
    if report.server.is_some() {
        report_degraded(&shared.telemetry, before);
    }
    if let Some(s) = &report.server {
        if let Ok(mut guard) = shared.server.lock() {
            *guard = Some(s.clone());
        }
    }
    let telemetry = &shared.telemetry;
    cycle::record_cycle(&telemetry.metrics, &report);
    let mut summary = cycle::summary(&report, None);
    // Disk work is the state writer's: this cycle hands its batches over and goes on; what the
    // writer did with the previous ones is reported here.
    shared.writer.submit(std::mem::take(&mut report.batches));
    report_writer(telemetry, &shared.writer, &mut summary);
    // Sending is the delivery task's: a slow listener never holds up the next cycle.
    shared.deliver.notify_one();
    report_delivery_stall(telemetry, &shared.delivery, config);
    telemetry
        .metrics
        .db_connections_open
        .set(db.open_connections() as i64);
    telemetry.record_cycle(if report.server.is_some() {
        None
    } else {
        Some(
            report
                .server_error
                .clone()
                .unwrap_or_else(|| "the database could not be read".to_string()),
        )
    });
    tracing::info!(summary = %summary, "cycle finished");
    notify::status(&summary);
    shared.writer.record(writer::Record {
        dir: config.agent.state_dir.clone(),
        ok: report.server.is_some(),
        summary,
    });
}

/// Adds what the state writer did since the last cycle to the summary, and says on `/health` when
/// it has been stuck on the storage longer than [`PERSIST_DEADLINE`] (new batches then wait in
/// its queue, or in memory past its bound).
fn report_writer(telemetry: &Telemetry, writer: &Writer, summary: &mut String) {
    let r = writer.take_report();
    if let Some(w) = r.waiting {
        summary.push_str(&cycle::waiting_text(w));
    }
    if r.held > 0 {
        summary.push_str(&format!(", {} requests newly held in memory", r.held));
    }
    if r.failed > 0 {
        summary.push_str(&format!(", {} batches lost", r.failed));
    }
    if let Some(f) = r.outbox_file {
        summary.push_str(&format!(", {f}"));
    }
    let stuck = writer.busy_for().filter(|d| *d > PERSIST_DEADLINE);
    let reason = stuck.map(|d| {
        format!(
            "writing to the state directory has been stuck for {} s (a hung disk or file \
             system?): new batches wait in the state writer's queue, in memory",
            d.as_secs()
        )
    });
    if reason.is_some() {
        telemetry.counters.incr(Event::OutboxWriteStalls);
    }
    if writer.note_stall(reason.is_some()) {
        if let Some(why) = &reason {
            tracing::error!(event = "outbox_write_stalled", "{why}");
        }
    }
    telemetry.set_condition(Condition::OutboxStalled, reason);
}

/// `/health` stays 200 but says `degraded` while the agent works without something it could use,
/// judged by what this cycle counted.
fn report_degraded(telemetry: &Telemetry, before: [u64; 2]) {
    let counted = |e| telemetry.counters.get(e);
    telemetry.set_condition(
        Condition::PgStatStatements,
        (counted(Event::StatementsUnavailable) > before[0]).then(|| {
            "pg_stat_statements is not available: no pg_statements batches (add it to \
             shared_preload_libraries, restart PostgreSQL, then CREATE EXTENSION pg_stat_statements)"
                .to_string()
        }),
    );
    telemetry.set_condition(
        Condition::StatementsHidden,
        (counted(Event::StatementsNoPrivilege) > before[1]).then(|| {
            "other roles' statements are hidden from the agent's role: GRANT pg_read_all_stats \
             (or pg_monitor) to it"
                .to_string()
        }),
    );
}

/// `/health` is 503 while a delivery pass has been running far past its budget and the listener's
/// timeout: the delivery thread is stuck (on the storage under the outbox), so nothing is sent.
fn report_delivery_stall(telemetry: &Telemetry, watch: &deliver::PassWatch, config: &Config) {
    let limit = cycle::drain_budget(config.agent.collection_interval)
        + config.listener.timeout
        + Duration::from_secs(5);
    let reason = watch.running_for().filter(|d| *d > limit).map(|d| {
        format!(
            "a delivery pass has been running for {} s (limit {} s): delivery is stuck, most \
             likely on the storage under the outbox (a hung disk?)",
            d.as_secs(),
            limit.as_secs()
        )
    });
    if reason.is_some() {
        telemetry.counters.incr(Event::DeliveryStalls);
    }
    telemetry.set_condition(Condition::DeliveryStalled, reason);
}
