//! The collection task: a cycle at every tick of the drift-free schedule. Each cycle collects,
//! writes its batches to the outbox (off the scheduler, under [`PERSIST_DEADLINE`]), wakes the
//! delivery task and publishes its figures. It never sends: a slow listener cannot delay it, and it
//! cannot delay the signal handler, `/health` or delivery.
//!
//! A reload hands it a new [`Setup`] (configuration and pool), applied at the next tick; the
//! schedule follows a changed interval at once. Stopping abandons a cycle in progress (everything
//! it wrote is already durable).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::schedule::Schedule;
use super::{cycle, deliver, notify};
use crate::collect::Collectors;
use crate::config::Config;
use crate::db::{Db, ServerInfo};
use crate::ship::Shipper;
use crate::telemetry::registry::Event;
use crate::telemetry::server::Telemetry;

/// Writing a cycle's batches to the outbox may take this long before it is reported as stalled.
pub const PERSIST_DEADLINE: Duration = Duration::from_secs(10);

/// What a cycle runs with; replaced as a whole on reload.
pub struct Setup {
    pub config: Arc<Config>,
    pub db: Db,
}

/// What the collection task shares with the rest of the daemon.
pub struct CycleShared {
    pub shipper: Arc<Shipper>,
    pub telemetry: Telemetry,
    /// The server's identity as the last cycle read it (the log task's batches carry it).
    pub server: Arc<Mutex<Option<ServerInfo>>>,
    /// Wakes the delivery task.
    pub deliver: Arc<Notify>,
    /// How long the delivery pass in progress has been running.
    pub delivery: deliver::PassWatch,
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
        setup: Setup,
        shared: CycleShared,
        stop: CancellationToken,
    ) -> CollectTask {
        let (tx, rx) = watch::channel(Arc::new(setup));
        let handle = tracker.spawn(run(rx, shared, stop.clone()));
        CollectTask {
            setup: tx,
            stop,
            handle,
        }
    }

    /// A reloaded configuration (and pool) for the next cycles.
    pub fn update(&self, setup: Setup) {
        self.setup.send_replace(Arc::new(setup));
    }

    /// Stops the task, abandoning a cycle in progress, and waits at most `deadline` for it.
    pub async fn stop(self, deadline: Duration) {
        self.stop.cancel();
        let _ = tokio::time::timeout(deadline, self.handle).await;
    }
}

async fn run(mut setup: watch::Receiver<Arc<Setup>>, shared: CycleShared, stop: CancellationToken) {
    let mut record = Recorder::default();
    let first = setup.borrow_and_update().clone();
    let mut collectors =
        Collectors::with_counters(&first.config, shared.telemetry.counters.clone());
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
            _ = cycle(&mut collectors, &current, &shared, &mut record) => {}
        }
    }
}

/// One cycle: collect, write the batches to the outbox, wake delivery, publish the figures.
async fn cycle(
    collectors: &mut Collectors,
    setup: &Setup,
    shared: &CycleShared,
    record: &mut Recorder,
) {
    let (config, db) = (&setup.config, &setup.db);
    let counted = |e| shared.telemetry.counters.get(e);
    let before = [
        counted(Event::StatementsUnavailable),
        counted(Event::StatementsNoPrivilege),
    ];
    let mut report = collectors.run_cycle(db, config).await;
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
    // Writing to the outbox is blocking I/O (SQLite, fsync): off the scheduler and under a
    // deadline, so a hung disk cannot stall the next cycle.
    let batches = std::mem::take(&mut report.batches);
    let (shipper, t) = (shared.shipper.clone(), telemetry.clone());
    let job = tokio::task::spawn_blocking(move || {
        let failed = cycle::enqueue_all(&batches, &shipper, &t);
        let stats = shipper.stats().ok();
        if let Some(stats) = &stats {
            deliver::record_storage_health(&t, stats);
        }
        let waiting = stats.as_ref().and_then(cycle::waiting);
        (failed, waiting)
    });
    match tokio::time::timeout(PERSIST_DEADLINE, job).await {
        Ok(done) => {
            telemetry.set_condition("outbox_stalled", None);
            let (failed, waiting) = done.unwrap_or((0, None));
            telemetry.set_condition(
                "enqueue_failed",
                (failed > 0).then(|| {
                    format!(
                        "{failed} batches of the last cycle could not be stored or printed \
                         (lost; see the agent's log)"
                    )
                }),
            );
            if let Some(w) = waiting {
                summary.push_str(&w);
            }
        }
        Err(_) => {
            telemetry.counters.incr(Event::OutboxWriteStalls);
            let why = format!(
                "writing the cycle's batches to the outbox did not finish within {} s \
                 (a hung disk or file system?)",
                PERSIST_DEADLINE.as_secs()
            );
            tracing::error!(event = "outbox_write_stalled", "{why}");
            telemetry.set_condition("outbox_stalled", Some(why));
        }
    }
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
    record
        .save(
            &config.agent.state_dir,
            report.server.is_some(),
            summary,
            telemetry,
        )
        .await;
}

/// `/health` stays 200 but says `degraded` while the agent works without something it could use,
/// judged by what this cycle counted.
fn report_degraded(telemetry: &Telemetry, before: [u64; 2]) {
    let counted = |e| telemetry.counters.get(e);
    telemetry.set_warning(
        "pg_stat_statements",
        (counted(Event::StatementsUnavailable) > before[0]).then(|| {
            "pg_stat_statements is not available: no pg_statements batches (add it to \
             shared_preload_libraries, restart PostgreSQL, then CREATE EXTENSION pg_stat_statements)"
                .to_string()
        }),
    );
    telemetry.set_warning(
        "statements_hidden",
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
    telemetry.set_condition("delivery_stalled", reason);
}

/// Writes the cycle record for `status`: a small file, but disk I/O, so off the scheduler and
/// waited for only so long. While the last write has not returned (a hung disk), no new one is
/// started, so stuck writes cannot pile up.
#[derive(Default)]
struct Recorder {
    in_flight: Option<JoinHandle<()>>,
}

impl Recorder {
    async fn save(
        &mut self,
        dir: &std::path::Path,
        ok: bool,
        summary: String,
        telemetry: &Telemetry,
    ) {
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            telemetry.counters.incr(Event::StateWritesSkipped);
            tracing::debug!("the previous cycle record is still being written; skipped");
            return;
        }
        let dir = dir.to_path_buf();
        let counters = telemetry
            .counters
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut save = tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::ship::status::LastCycle::save(&dir, ok, &summary, counters) {
                tracing::debug!(error = %e, "cannot record the cycle for `status`");
            }
        });
        if tokio::time::timeout(Duration::from_secs(2), &mut save)
            .await
            .is_err()
        {
            self.in_flight = Some(save);
        } else {
            self.in_flight = None;
        }
    }
}
