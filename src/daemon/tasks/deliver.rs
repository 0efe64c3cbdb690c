//! The delivery task: drains the outbox to the listener on its own thread and schedule, so neither a
//! slow, hung or rate-limiting listener nor a hung disk under the outbox can delay collection, the
//! signal handler or `/health` (a cycle only writes its batches to the outbox and wakes this task).
//!
//! It runs a drain pass when woken (new data) or every collection interval (retries), and at once
//! again while a pass stops only at its time budget (a backlog). The thread has a small runtime of
//! its own: the HTTP client's connections live there, and a SQLite call stuck on the storage blocks
//! this thread only. A pass that has not returned after its budget plus the listener's timeout is
//! reported on `/health` by the collection task ([`Delivery::stalled_for`]).
//!
//! On shutdown it starts no new request; one already in flight may finish, then one last pass sends
//! requests held in memory first (a full disk: they have no other chance), then what the log task
//! flushed, all within the shutdown budget. If the budget runs out the thread is left behind (the
//! process exits without it) and nothing is sent again by this process: what was in flight stays in
//! the outbox and is sent after the next start. Requests still held in memory then are lost: counted
//! (`held_lost`), logged with their number, and written to the `status` record when it can be.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::daemon::cycle;
use crate::ship::breaker::CircuitState;
use crate::ship::{DrainReport, DrainStop, ShipStats, Shipper};
use crate::telemetry::conditions::Condition;
use crate::telemetry::server::Telemetry;

/// The running delivery thread.
pub struct Delivery {
    shipper: Arc<Shipper>,
    telemetry: Telemetry,
    wake: Arc<Notify>,
    token: CancellationToken,
    interval: Arc<std::sync::Mutex<Duration>>,
    /// When the running pass started (ms since `epoch`), 0 between passes.
    pass_started: Arc<AtomicI64>,
    epoch: Instant,
    /// Fires when the thread has finished.
    done: oneshot::Receiver<()>,
    /// When the final pass must be over; set by [`Delivery::stop`] before it cancels `token`.
    final_deadline: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Delivery {
    /// Starts the thread; it stops when `token` (a child of the daemon's) is cancelled.
    pub fn spawn(
        shipper: Arc<Shipper>,
        telemetry: Telemetry,
        interval: Duration,
        token: CancellationToken,
    ) -> std::io::Result<Delivery> {
        let wake = Arc::new(Notify::new());
        let interval = Arc::new(std::sync::Mutex::new(interval));
        let pass_started = Arc::new(AtomicI64::new(0));
        let final_deadline = Arc::new(std::sync::Mutex::new(None));
        let epoch = Instant::now();
        let (tx, done) = oneshot::channel();
        let task = Task {
            shipper: shipper.clone(),
            telemetry: telemetry.clone(),
            wake: wake.clone(),
            interval: interval.clone(),
            token: token.clone(),
            pass_started: pass_started.clone(),
            epoch,
            final_deadline: final_deadline.clone(),
        };
        // Its own small runtime: one blocking thread for the resolver.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("delivery".into())
            .spawn(move || {
                runtime.block_on(task.run());
                // Nothing of this thread may hold up the process: whatever is still blocked
                // (a resolver call) is left to the exit.
                runtime.shutdown_background();
                let _ = tx.send(());
            })?;
        Ok(Delivery {
            shipper,
            telemetry,
            wake,
            token,
            interval,
            pass_started,
            epoch,
            done,
            final_deadline,
        })
    }

    /// What wakes the task, for the collection task to hold.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// New data is in the outbox.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn set_interval(&self, interval: Duration) {
        if let Ok(mut i) = self.interval.lock() {
            *i = interval;
        }
        self.wake();
    }

    /// A probe for how long the running pass has been going (None between passes).
    pub fn watch(&self) -> PassWatch {
        PassWatch {
            pass_started: self.pass_started.clone(),
            epoch: self.epoch,
        }
    }

    /// Stops the thread: no new request starts; one in flight may finish, then one last pass sends
    /// what is left, within `budget`. True when the thread ended in time, false when it was left
    /// behind (mid-request, or stuck on the storage).
    pub async fn stop(self, budget: Duration) -> bool {
        if let Ok(mut d) = self.final_deadline.lock() {
            *d = Some(Instant::now() + budget);
        }
        self.token.cancel();
        let ended = tokio::time::timeout(budget, self.done).await.is_ok();
        let lost = self.shipper.abandon_held();
        if lost > 0 {
            record_loss_for_status(&self.shipper, &self.telemetry, lost).await;
        }
        match ended {
            true => true,
            false => {
                tracing::warn!(
                    event = "send_abandoned_at_shutdown",
                    budget_ms = budget.as_millis() as u64,
                    "delivery did not finish within the shutdown budget (a request in flight, or \
                     the outbox stuck on the storage); what was not acknowledged stays in the \
                     outbox and is sent after the next start"
                );
                false
            }
        }
    }
}

/// How long the delivery pass in progress has been running.
#[derive(Clone)]
pub struct PassWatch {
    pass_started: Arc<AtomicI64>,
    epoch: Instant,
}

impl PassWatch {
    pub fn running_for(&self) -> Option<Duration> {
        let at = self.pass_started.load(Ordering::Relaxed);
        (at != 0).then(|| {
            let now = self.epoch.elapsed().as_millis() as i64;
            Duration::from_millis((now - at).max(0) as u64)
        })
    }
}

struct Task {
    shipper: Arc<Shipper>,
    telemetry: Telemetry,
    wake: Arc<Notify>,
    interval: Arc<std::sync::Mutex<Duration>>,
    token: CancellationToken,
    pass_started: Arc<AtomicI64>,
    epoch: Instant,
    final_deadline: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Task {
    /// One drain pass; `stop: None` is the last one before exit.
    async fn pass(&self, budget: Duration, stop: Option<&CancellationToken>) -> DrainReport {
        // 1 at the least, so that 0 keeps meaning "no pass".
        let now = (self.epoch.elapsed().as_millis() as i64).max(1);
        self.pass_started.store(now, Ordering::Relaxed);
        let report = match stop {
            Some(stop) => self.shipper.drain_until(budget, stop).await,
            None => self.shipper.drain_final(budget).await,
        };
        self.pass_started.store(0, Ordering::Relaxed);
        record(&self.telemetry, &self.shipper, &report);
        if report.dead_lettered > 0 {
            // Lost for the listener: reported for one interval (at least a minute).
            let every = self
                .interval
                .lock()
                .map(|i| *i)
                .unwrap_or(Duration::from_secs(60));
            self.telemetry.set_condition_for(
                Condition::DeadLetters,
                format!(
                    "the listener rejected {} requests for good (moved to the dead letters; see \
                     the agent's log and `status`)",
                    report.dead_lettered
                ),
                every.max(Duration::from_secs(60)),
            );
        }
        report
    }

    async fn run(self) {
        loop {
            let every = self
                .interval
                .lock()
                .map(|i| *i)
                .unwrap_or(Duration::from_secs(60));
            let report = self
                .pass(cycle::drain_budget(every), Some(&self.token))
                .await;
            let again = match report.stopped {
                // A backlog: keep going at once.
                DrainStop::Budget => Some(Duration::ZERO),
                // The next free request slot is past this pass's budget: try again shortly.
                DrainStop::RateLimited => Some(Duration::from_secs(1)),
                DrainStop::Shutdown => break,
                _ => None,
            };
            let pause = again.unwrap_or(every);
            tokio::select! {
                _ = self.token.cancelled() => break,
                _ = self.wake.notified(), if again.is_none() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // One last pass for what the log task flushed at shutdown, within what is left of the
        // budget (the caller stops waiting then, and the process exits).
        let budget = self
            .final_deadline
            .lock()
            .ok()
            .and_then(|d| *d)
            .map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
                    .saturating_sub(Duration::from_millis(50))
            });
        if !budget.is_zero() {
            let report = self.pass(budget, None).await;
            tracing::info!(
                sent = report.delivered,
                waiting = report.remaining,
                "final send before exit"
            );
        }
    }
}

/// Puts the counters with `lost` into the `status` record at exit (best effort, bounded: the disk
/// may be full or stuck, and then the log line is the record).
async fn record_loss_for_status(shipper: &Shipper, telemetry: &Telemetry, lost: usize) {
    let Some(dir) = shipper.state_dir() else {
        return;
    };
    let counters = telemetry
        .counters
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let save = tokio::task::spawn_blocking(move || {
        use crate::state::last_cycle::LastCycle;
        let previous = LastCycle::load(&dir);
        let (ok, summary) = previous.map_or((false, String::new()), |p| (p.ok, p.summary));
        let summary = format!("{summary}; at exit {lost} requests held in memory were lost");
        LastCycle::save(&dir, ok, &summary, counters)
    });
    match tokio::time::timeout(Duration::from_millis(200), save).await {
        Ok(Ok(Ok(()))) => {}
        _ => tracing::debug!("cannot record the requests lost at exit for `status`"),
    }
}

fn record(telemetry: &Telemetry, shipper: &Shipper, report: &DrainReport) {
    cycle::record_drain(&telemetry.metrics, report);
    let stats = shipper.stats().ok();
    cycle::record_shipping(&telemetry.metrics, &telemetry.counters, stats.as_ref());
    if let Some(stats) = &stats {
        record_storage_health(telemetry, stats);
        record_delivery_health(telemetry, stats);
    }
}

/// `/health` says `degraded` while the breaker is open and `unhealthy` once sending has failed for
/// longer than `telemetry.unhealthy_after_s` ([`crate::telemetry::delivery_health`]).
fn record_delivery_health(telemetry: &Telemetry, stats: &ShipStats) {
    let Some(b) = &stats.breaker else {
        telemetry.record_delivery(None, None);
        return;
    };
    let last = b.last_transition.as_ref().map(|t| t.reason.as_str());
    let open = (b.state != CircuitState::Closed).then(|| {
        format!(
            "state {}: {}",
            b.state,
            last.unwrap_or("opened before this start")
        )
    });
    let failing = (b.consecutive_failures > 0 || open.is_some()).then(|| match &open {
        Some(why) => why.clone(),
        None => format!("{} consecutive failed requests", b.consecutive_failures),
    });
    telemetry.record_delivery(failing, open);
}

/// `/health` is 503 while the outbox takes no writes: new data is then only in memory.
pub fn record_storage_health(telemetry: &Telemetry, stats: &ShipStats) {
    let p = &stats.process;
    let reason = p.storage_error.as_ref().map(|e| {
        format!(
            "the outbox does not take writes ({e}): {} requests held in memory ({} bytes), \
             {} dropped from memory so far",
            p.held_now, p.held_bytes, p.held_dropped
        )
    });
    telemetry.set_condition(Condition::OutboxStorage, reason);
}
