//! The state writer: a thread of its own that does the collection task's disk work, so that a
//! slow or frozen file system under `agent.state_dir` never delays a cycle (a tick costs no wait on
//! state-file I/O). Each cycle hands it its finished batches and its cycle record and goes on; the
//! writer checks the state directory (its lock, the outbox file: [`crate::ship::recreate`]), writes
//! the batches to the outbox, wakes delivery, and writes the record. What happened is reported by
//! the next cycle ([`Writer::take_report`]): failures, requests held in memory, the outbox depth.
//!
//! The queue is bounded in bytes ([`MAX_QUEUED_BYTES`]): past it (the writer stuck on a hung disk),
//! a cycle's batches are held in memory like any write the outbox cannot take
//! ([`Shipper::hold_batch`], counted in `state_writer_overflows`), sent from there and written once
//! the outbox answers. Cycle records are not queued behind each other: a newer one replaces one not
//! yet written.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::batch::Batch;
use crate::daemon::cycle;
use crate::ship::recreate::OutboxFile;
use crate::ship::Shipper;
use crate::state::lock::{Ensured, StateLock};
use crate::telemetry::conditions::Condition;
use crate::telemetry::registry::Event;
use crate::telemetry::server::Telemetry;

/// Batches waiting for the writer, in bytes of their records: 8 cycles of a busy server's
/// batches. Beyond it they go to memory (bounded there too) instead of waiting on the disk.
pub const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// How long `/health` keeps saying that the outbox file was recreated, so that a monitor polling
/// every 15-60 s sees it.
const RECREATED_REPORT_FOR: Duration = Duration::from_secs(60);

/// What the writer did since the last [`Writer::take_report`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Batches neither stored nor held nor printed.
    pub failed: usize,
    /// Requests held in memory because the outbox took no writes.
    pub held: usize,
    /// Requests waiting after the last write: outbox depth plus those held in memory.
    pub waiting: Option<cycle::Waiting>,
    /// The outbox file was removed or replaced: what was done.
    pub outbox_file: Option<String>,
}

/// The cycle record for `status`.
pub struct Record {
    pub dir: std::path::PathBuf,
    pub ok: bool,
    pub summary: String,
}

struct Queue {
    batches: VecDeque<(Vec<Batch>, usize)>,
    bytes: usize,
    record: Option<Record>,
    /// Since when the writer has been working on the current job.
    busy_since: Option<Instant>,
    report: Report,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    shipper: Arc<Shipper>,
    telemetry: Telemetry,
    deliver: Arc<Notify>,
    lock: Arc<Mutex<StateLock>>,
    /// The outbox file is gone and not recreated yet (its `/health` condition is set).
    missing: AtomicBool,
    /// Another process holds the lock file now at the path (said once).
    lock_lost: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Memory only: nothing a panic could leave half-done.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running writer thread.
pub struct Writer {
    shared: Arc<Shared>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    /// A stall was reported (so it is logged once per stall).
    stalled: AtomicBool,
}

impl Writer {
    pub fn spawn(
        shipper: Arc<Shipper>,
        telemetry: Telemetry,
        deliver: Arc<Notify>,
        lock: Arc<Mutex<StateLock>>,
    ) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                batches: VecDeque::new(),
                bytes: 0,
                record: None,
                busy_since: None,
                report: Report::default(),
                closed: false,
            }),
            ready: Condvar::new(),
            shipper,
            telemetry,
            deliver,
            lock,
            missing: AtomicBool::new(false),
            lock_lost: AtomicBool::new(false),
        });
        let (tx, done) = tokio::sync::oneshot::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || {
                run(&s);
                let _ = tx.send(());
            })?;
        Ok(Writer {
            shared,
            done: Some(done),
            stalled: AtomicBool::new(false),
        })
    }

    /// Hands over a cycle's batches without waiting. Past [`MAX_QUEUED_BYTES`] they are held in
    /// memory instead (encoding only, no disk I/O).
    pub fn submit(&self, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        let bytes: usize = batches
            .iter()
            .flat_map(|b| b.data.iter())
            .map(|r| r.json().len())
            .sum();
        let mut q = self.shared.queue();
        if q.bytes + bytes <= MAX_QUEUED_BYTES || q.batches.is_empty() {
            q.bytes += bytes;
            q.batches.push_back((batches, bytes));
            drop(q);
            self.shared.ready.notify_one();
            return;
        }
        drop(q);
        let (shipper, telemetry) = (&self.shared.shipper, &self.shared.telemetry);
        telemetry
            .counters
            .add(Event::StateWriterOverflows, batches.len() as u64);
        tracing::warn!(
            event = "state_writer_overflow",
            batches = batches.len(),
            "the state writer is behind (a hung disk?); holding this cycle's batches in memory"
        );
        let mut held = 0;
        let mut failed = 0;
        for batch in &batches {
            match shipper.hold_batch(batch) {
                Ok(n) => {
                    held += n;
                    telemetry
                        .metrics
                        .count_batch(batch.kind, batch.count, "held");
                }
                Err(e) => {
                    failed += 1;
                    telemetry
                        .metrics
                        .count_batch(batch.kind, batch.count, "failed");
                    tracing::error!(r#type = %batch.kind, batch_id = %batch.batch_id, error = %e,
                        "cannot hold the batch in memory");
                }
            }
        }
        let mut q = self.shared.queue();
        q.report.held += held;
        q.report.failed += failed;
    }

    /// Hands over the cycle record; replaces one not yet written.
    pub fn record(&self, record: Record) {
        let mut q = self.shared.queue();
        if q.record.replace(record).is_some() {
            self.shared
                .telemetry
                .counters
                .incr(Event::StateWritesSkipped);
        }
        drop(q);
        self.shared.ready.notify_one();
    }

    /// What the writer did since the last call.
    pub fn take_report(&self) -> Report {
        let mut q = self.shared.queue();
        let waiting = q.report.waiting;
        let mut report = std::mem::take(&mut q.report);
        q.report.waiting = waiting;
        report.waiting = waiting;
        report
    }

    /// How long the job in progress has been running, if one is.
    pub fn busy_for(&self) -> Option<Duration> {
        self.shared.queue().busy_since.map(|t| t.elapsed())
    }

    /// Records whether the writer is stuck now; true when that changed.
    pub fn note_stall(&self, stuck: bool) -> bool {
        self.stalled.swap(stuck, Ordering::Relaxed) != stuck
    }

    /// Lets the writer finish what is queued, waiting at most `deadline`. What is still queued
    /// after it (a hung disk) is counted and logged as lost; the thread is left to the exit.
    pub async fn stop(mut self, deadline: Duration) {
        self.shared.queue().closed = true;
        self.shared.ready.notify_all();
        let Some(done) = self.done.take() else {
            return;
        };
        if let Ok(Ok(())) = tokio::time::timeout(deadline, done).await {
            return;
        }
        let q = self.shared.queue();
        let lost: usize = q.batches.iter().map(|(b, _)| b.len()).sum();
        if lost > 0 {
            self.shared
                .telemetry
                .counters
                .add(Event::EnqueueFailures, lost as u64);
            tracing::error!(
                event = "state_writer_unfinished",
                batches = lost,
                "the state writer did not finish before the exit (a hung disk?): batches not \
                 written are lost"
            );
        }
    }
}

fn run(s: &Shared) {
    loop {
        let (batches, record) = {
            let mut q = s.queue();
            loop {
                if !q.batches.is_empty() || q.record.is_some() {
                    break;
                }
                if q.closed {
                    return;
                }
                q = s.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            let batches = q.batches.pop_front().map(|(b, bytes)| {
                q.bytes -= bytes;
                b
            });
            // The record follows the batches of its cycle.
            let record = if q.batches.is_empty() {
                q.record.take()
            } else {
                None
            };
            q.busy_since = Some(Instant::now());
            (batches, record)
        };
        check_state_dir(s);
        if let Some(batches) = batches {
            write_batches(s, &batches);
        }
        if let Some(r) = record {
            save_record(s, r);
        }
        s.queue().busy_since = None;
    }
}

/// Writes a cycle's batches durably (or prints them with no listener). Returns how many batches
/// failed and how many requests went to memory instead of the outbox.
fn enqueue_all(batches: &[Batch], shipper: &Shipper, telemetry: &Telemetry) -> (usize, usize) {
    let (mut failed, mut held) = (0, 0);
    for batch in batches {
        match shipper.enqueue(batch) {
            Ok(r) => {
                held += r.held;
                let outcome = if r.stdout { "printed" } else { "enqueued" };
                telemetry
                    .metrics
                    .count_batch(batch.kind, batch.count, outcome);
            }
            Err(e) => {
                failed += 1;
                telemetry
                    .metrics
                    .count_batch(batch.kind, batch.count, "failed");
                tracing::error!(r#type = %batch.kind, batch_id = %batch.batch_id, error = %e, "cannot write the batch to the outbox");
            }
        }
    }
    (failed, held)
}

fn write_batches(s: &Shared, batches: &[Batch]) {
    let (failed, held) = enqueue_all(batches, &s.shipper, &s.telemetry);
    s.deliver.notify_one();
    let stats = s.shipper.stats().ok();
    if let Some(stats) = &stats {
        super::deliver::record_storage_health(&s.telemetry, stats);
    }
    s.telemetry.set_condition(
        Condition::EnqueueFailed,
        (failed > 0).then(|| {
            format!(
                "{failed} batches of the last cycle could not be stored or printed (lost; see the \
                 agent's log)"
            )
        }),
    );
    let mut q = s.queue();
    q.report.failed += failed;
    q.report.held += held;
    if let Some(w) = stats.as_ref().and_then(cycle::waiting) {
        q.report.waiting = Some(w);
    }
}

/// The lock file and the outbox file are still the ones this process holds; if the state
/// directory (or the outbox) was removed, both are recreated before anything is written.
fn check_state_dir(s: &Shared) {
    if let Ok(mut lock) = s.lock.lock() {
        let ensured = lock.ensure();
        if let Ensured::Retaken = ensured {
            s.telemetry.counters.incr(Event::StateLockRetaken);
            tracing::warn!(event = "state_lock_retaken", dir = %lock.dir().display(),
                "the state directory's lock file was gone; created and locked it again");
        }
        let lost = match ensured {
            Ensured::Lost { pid } => Some(format!(
                "another agent (PID {}) locked this state directory after its lock file was                  removed: two agents now share it; stop one",
                pid.map_or_else(|| "unknown".to_string(), |p| p.to_string())
            )),
            _ => None,
        };
        if s.lock_lost.swap(lost.is_some(), Ordering::Relaxed) != lost.is_some() {
            if let Some(why) = &lost {
                tracing::error!(event = "state_lock_lost", dir = %lock.dir().display(), "{why}");
            }
            s.telemetry.set_condition(Condition::StateLockLost, lost);
        }
    }
    let file = s.shipper.check_outbox_file();
    let reason = file.reason();
    match (&file, &reason) {
        (OutboxFile::Missing { .. }, Some(r)) => {
            s.missing.store(true, Ordering::Relaxed);
            s.telemetry
                .set_condition(Condition::OutboxVanished, Some(r.clone()));
        }
        (OutboxFile::Recreated { .. }, Some(r)) => {
            s.missing.store(false, Ordering::Relaxed);
            // Said for a while after the fact (a condition set for a time expires by itself).
            s.telemetry.set_condition_for(
                Condition::OutboxVanished,
                r.clone(),
                RECREATED_REPORT_FOR,
            );
        }
        _ => {
            if s.missing.swap(false, Ordering::Relaxed) {
                s.telemetry.set_condition(Condition::OutboxVanished, None);
            }
        }
    }
    if reason.is_some() {
        s.queue().report.outbox_file = reason;
    }
}

fn save_record(s: &Shared, r: Record) {
    let counters = s
        .telemetry
        .counters
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if let Err(e) = crate::state::last_cycle::LastCycle::save(&r.dir, r.ok, &r.summary, counters) {
        tracing::debug!(error = %e, "cannot record the cycle for `status`");
    }
}
