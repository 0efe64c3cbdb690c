//! The delivery task: drains the outbox to the listener on its own schedule, so a slow, hung or
//! rate-limiting listener never delays collection (a cycle only writes its batches to the outbox and
//! wakes this task).
//!
//! It runs a drain pass when woken (new data) or every collection interval (retries), and at once
//! again while a pass stops only at its time budget (a backlog). On shutdown it starts no new request;
//! one already in flight may finish within the shutdown budget. If it does not, the task is dropped
//! and the daemon makes no final send, so that request is never repeated by this process (it stays in
//! the outbox and is sent after the next start).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cycle;
use crate::ship::{DrainReport, DrainStop, Shipper};
use crate::telemetry::server::Telemetry;

/// The running delivery task.
pub struct Delivery {
    wake: Arc<Notify>,
    token: CancellationToken,
    interval: Arc<std::sync::Mutex<Duration>>,
    handle: JoinHandle<()>,
}

impl Delivery {
    /// Starts the task on `tracker`; it stops when `token` (a child of the daemon's) is cancelled.
    pub fn spawn(
        tracker: &TaskTracker,
        shipper: Arc<Shipper>,
        telemetry: Telemetry,
        interval: Duration,
        token: CancellationToken,
    ) -> Delivery {
        let wake = Arc::new(Notify::new());
        let interval = Arc::new(std::sync::Mutex::new(interval));
        let handle = tracker.spawn(run(
            shipper,
            telemetry,
            wake.clone(),
            interval.clone(),
            token.clone(),
        ));
        Delivery {
            wake,
            token,
            interval,
            handle,
        }
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

    /// Stops the task: no new request starts; one in flight may finish within `budget`. True when
    /// the task ended in time (nothing is in flight), false when it was dropped mid-request.
    pub async fn stop(self, budget: Duration) -> bool {
        self.token.cancel();
        let mut handle = self.handle;
        match tokio::time::timeout(budget, &mut handle).await {
            Ok(_) => true,
            Err(_) => {
                handle.abort();
                tracing::warn!(
                    event = "send_abandoned_at_shutdown",
                    budget_ms = budget.as_millis() as u64,
                    "a request was still in flight at shutdown; it stays in the outbox and is sent \
                     after the next start"
                );
                false
            }
        }
    }
}

async fn run(
    shipper: Arc<Shipper>,
    telemetry: Telemetry,
    wake: Arc<Notify>,
    interval: Arc<std::sync::Mutex<Duration>>,
    token: CancellationToken,
) {
    loop {
        let every = interval
            .lock()
            .map(|i| *i)
            .unwrap_or(Duration::from_secs(60));
        let report = shipper
            .drain_until(cycle::drain_budget(every), &token)
            .await;
        record(&telemetry, &shipper, &report);
        let again = match report.stopped {
            // A backlog: keep going at once.
            DrainStop::Budget => Some(Duration::ZERO),
            // The next free request slot is past this pass's budget: try again shortly.
            DrainStop::RateLimited => Some(Duration::from_secs(1)),
            DrainStop::Shutdown => return,
            _ => None,
        };
        let pause = again.unwrap_or(every);
        tokio::select! {
            _ = token.cancelled() => return,
            _ = wake.notified(), if again.is_none() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn record(telemetry: &Telemetry, shipper: &Shipper, report: &DrainReport) {
    cycle::record_drain(&telemetry.metrics, report);
    cycle::record_shipping(&telemetry.metrics, shipper);
    record_storage_health(telemetry, shipper);
}

/// `/health` is 503 while the outbox takes no writes: new data is then only in memory.
pub fn record_storage_health(telemetry: &Telemetry, shipper: &Shipper) {
    let Ok(stats) = shipper.stats() else {
        return;
    };
    let p = &stats.process;
    let reason = p.storage_error.as_ref().map(|e| {
        format!(
            "the outbox does not take writes ({e}): {} requests held in memory ({} bytes), \
             {} dropped from memory so far",
            p.held_now, p.held_bytes, p.held_dropped
        )
    });
    telemetry.set_condition("outbox_storage", reason);
}
