//! [`Shipper`]: the one object the daemon holds for shipping. It ties the outbox, the breaker and the
//! HTTP sender together, and switches to stdout JSON lines when no listener is configured.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::batch::Batch;
use super::breaker::{Breaker, BreakerState, Permit, Transition};
use super::http::{Outcome, Sender};
use super::outbox::{self, now_ms, EvictionReport, Outbox, OutboxError, OutboxStats};
use super::prepare::{prepare, MAX_BODY_BYTES};
use super::ShipError;
use crate::config::Config;

/// Why a drain pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainStop {
    /// Nothing left to send.
    Empty,
    /// The time budget ran out with batches left.
    Budget,
    /// The circuit is open.
    BreakerOpen,
    /// The listener asked to wait (Retry-After) and the time has not come.
    RetryAfter,
    /// A request failed; the rest waits for the next pass.
    Failed,
    /// No listener configured (stdout mode): nothing to drain.
    NoListener,
    /// The outbox could not be read or written (logged).
    OutboxError,
}

/// What one drain pass did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub remaining: u64,
    pub stopped: DrainStop,
    pub elapsed_ms: u64,
}

/// What [`Shipper::enqueue`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnqueueReport {
    /// Parts stored in the outbox (more than 1 when the batch was split).
    pub stored_parts: usize,
    /// Batches evicted to make room (possibly including this one's parts).
    pub evicted: usize,
    /// True when written to stdout instead (no listener configured).
    pub stdout: bool,
}

/// Counters of this process, beside the persistent ones in the outbox.
#[derive(Debug, Default)]
struct ProcessCounters {
    stdout_lines: AtomicU64,
    /// Batches lost because neither the outbox nor stdout would take them.
    enqueue_failures: AtomicU64,
    evicted: AtomicU64,
    dead_lettered: AtomicU64,
    delivered: AtomicU64,
    send_failures: AtomicU64,
    outbox_recreated: AtomicU64,
}

/// Figures for `/metrics` and `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShipStats {
    /// "outbox" or "stdout".
    pub mode: &'static str,
    pub listener_url: Option<String>,
    pub max_size_bytes: u64,
    /// Persistent figures of the outbox, when it is open.
    pub outbox: Option<OutboxStats>,
    pub breaker: Option<BreakerState>,
    /// Since this process started.
    pub process: ProcessStats,
}

/// Counters since this process started (the outbox keeps cumulative ones across restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStats {
    pub stdout_lines: u64,
    pub enqueue_failures: u64,
    pub evicted: u64,
    pub dead_lettered: u64,
    pub delivered: u64,
    pub send_failures: u64,
    pub outbox_recreated: u64,
}

struct Inner {
    path: PathBuf,
    max_size_bytes: u64,
    max_body_bytes: usize,
    outbox: Option<Outbox>,
    sender: Option<Arc<Sender>>,
    breaker: Breaker,
    /// Set from Retry-After: no request before this time (unix ms).
    not_before_ms: i64,
    /// What was last written to the database, so unchanged state is not rewritten per request.
    saved_breaker: Option<BreakerState>,
}

/// The shipping side of the agent. Cheap to share (`&Shipper` from any task): every method takes
/// `&self`; the outbox is behind a mutex held only for single SQLite statements, never across a
/// request.
pub struct Shipper {
    inner: Mutex<Inner>,
    /// One drain at a time, so FIFO and the half-open single probe hold.
    drain_lock: tokio::sync::Mutex<()>,
    counters: ProcessCounters,
}

impl Shipper {
    /// Opens the outbox at `<agent.state_dir>/outbox.db` (when a listener is configured) and builds
    /// the HTTP client.
    pub fn open(config: &Config) -> Result<Shipper, ShipError> {
        Shipper::open_with(config, MAX_BODY_BYTES)
    }

    /// [`Shipper::open`] with a different per-request body limit (tests use small ones).
    pub fn open_with(config: &Config, max_body_bytes: usize) -> Result<Shipper, ShipError> {
        let shipper = Shipper {
            inner: Mutex::new(Inner {
                path: config.agent.state_dir.join(outbox::FILE_NAME),
                max_size_bytes: config.buffer.max_size_bytes,
                max_body_bytes,
                outbox: None,
                sender: None,
                breaker: Breaker::new(
                    config.circuit_breaker.failure_threshold,
                    config.circuit_breaker.recovery_timeout,
                    BreakerState::default(),
                ),
                not_before_ms: 0,
                saved_breaker: None,
            }),
            drain_lock: tokio::sync::Mutex::new(()),
            counters: ProcessCounters::default(),
        };
        shipper.reconfigure(config)?;
        Ok(shipper)
    }

    /// Applies a reloaded configuration: listener, breaker and buffer settings. Queued batches are
    /// kept; a smaller cap evicts (counted) at once. `agent.state_dir` is not changed by a reload
    /// (a warning says so); restart to move the outbox.
    pub fn reconfigure(&self, config: &Config) -> Result<(), ShipError> {
        let sender = match &config.listener.url {
            Some(url) => Some(Arc::new(Sender::new(&config.listener, url)?)),
            None => None,
        };
        let mut inner = self.lock();
        let wanted = config.agent.state_dir.join(outbox::FILE_NAME);
        if inner.outbox.is_some() && wanted != inner.path {
            tracing::warn!(
                event = "reload_state_dir_ignored",
                current = %inner.path.display(),
                requested = %wanted.display(),
                "agent.state_dir cannot change on reload; restart the agent to move the outbox"
            );
        } else {
            inner.path = wanted;
        }
        inner.breaker.failure_threshold = config.circuit_breaker.failure_threshold.max(1);
        inner.breaker.recovery_timeout = config.circuit_breaker.recovery_timeout;
        inner.max_size_bytes = config.buffer.max_size_bytes;
        if sender.is_some() && inner.outbox.is_none() {
            let opened = Outbox::open(&inner.path, inner.max_size_bytes)?;
            if let Some(saved) = opened.load_breaker()? {
                let (t, r) = (
                    inner.breaker.failure_threshold,
                    inner.breaker.recovery_timeout,
                );
                inner.breaker = Breaker::new(t, r, saved.clone());
                inner.saved_breaker = Some(saved);
            }
            inner.outbox = Some(opened);
        }
        let max = inner.max_size_bytes;
        if let Some(ob) = inner.outbox.as_mut() {
            if ob.max_size_bytes() != max {
                let report = ob.set_max_size(max)?;
                self.log_evictions(&report, "buffer.max_size_mb lowered");
            }
        }
        inner.sender = sender;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back), so the
        // state behind a poisoned mutex is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a batch: with a listener, stores it durably in the outbox (split if too large) and
    /// returns once it is committed; without one, prints it as one JSON line on stdout.
    pub fn enqueue(&self, batch: &Batch) -> Result<EnqueueReport, ShipError> {
        let (stdout_mode, max_body) = {
            let inner = self.lock();
            (inner.sender.is_none(), inner.max_body_bytes)
        };
        if stdout_mode {
            return self.print(batch);
        }
        let parts = prepare(batch, max_body).inspect_err(|_| {
            self.counters
                .enqueue_failures
                .fetch_add(1, Ordering::Relaxed);
        })?;
        let mut report = EnqueueReport {
            stored_parts: 0,
            evicted: 0,
            stdout: false,
        };
        let mut inner = self.lock();
        for part in &parts {
            let result = self.with_outbox(&mut inner, |ob| ob.push(part));
            let eviction = result.inspect_err(|_| {
                self.counters
                    .enqueue_failures
                    .fetch_add(1, Ordering::Relaxed);
            })?;
            report.evicted += eviction.evicted.len();
            report.stored_parts += usize::from(eviction.stored);
            self.log_evictions(&eviction, "buffer.max_size_mb reached");
        }
        Ok(report)
    }

    fn print(&self, batch: &Batch) -> Result<EnqueueReport, ShipError> {
        let line = serde_json::to_string(batch).map_err(|source| {
            self.counters
                .enqueue_failures
                .fetch_add(1, Ordering::Relaxed);
            ShipError::Json {
                batch_id: batch.batch_id,
                source,
            }
        })?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|source| {
                self.counters
                    .enqueue_failures
                    .fetch_add(1, Ordering::Relaxed);
                ShipError::Stdout { source }
            })?;
        self.counters.stdout_lines.fetch_add(1, Ordering::Relaxed);
        Ok(EnqueueReport {
            stored_parts: 0,
            evicted: 0,
            stdout: true,
        })
    }

    /// Runs `f` on the open outbox; a corrupt database is moved aside, replaced, and `f` retried
    /// once on the fresh one.
    fn with_outbox<T>(
        &self,
        inner: &mut Inner,
        f: impl Fn(&mut Outbox) -> Result<T, OutboxError>,
    ) -> Result<T, ShipError> {
        if inner.outbox.is_none() {
            inner.outbox = Some(Outbox::open(&inner.path, inner.max_size_bytes)?);
        }
        let Some(ob) = inner.outbox.as_mut() else {
            return Err(ShipError::NoOutbox);
        };
        match f(ob) {
            Err(e) if e.is_corruption() => {
                inner.outbox = None;
                let mut fresh = Outbox::recover(&inner.path, inner.max_size_bytes, &e)?;
                self.counters
                    .outbox_recreated
                    .fetch_add(1, Ordering::Relaxed);
                let _ = fresh.save_breaker(inner.breaker.state());
                let result = f(&mut fresh);
                inner.outbox = Some(fresh);
                Ok(result?)
            }
            other => Ok(other?),
        }
    }

    fn log_evictions(&self, report: &EvictionReport, why: &str) {
        self.counters
            .evicted
            .fetch_add(report.evicted.len() as u64, Ordering::Relaxed);
        for (kind, id) in &report.evicted {
            tracing::warn!(event = "outbox_evicted", kind = %kind, batch_id = %id, reason = why,
                "outbox full: evicted the oldest batch");
        }
        if report.dead_letters_dropped > 0 {
            tracing::warn!(
                event = "dead_letters_dropped",
                count = report.dead_letters_dropped,
                reason = why,
                "outbox full: dropped the oldest dead letters to make room"
            );
        }
    }

    /// Sends queued batches oldest-first until the outbox is empty, the breaker opens, a request
    /// fails, or `budget` is spent. A request already started is allowed to finish, so a pass can
    /// overrun the budget by at most one `listener.timeout_s`.
    pub async fn drain(&self, budget: Duration) -> DrainReport {
        let _one_at_a_time = self.drain_lock.lock().await;
        let started = Instant::now();
        let mut report = DrainReport {
            delivered: 0,
            delivered_bytes: 0,
            failed: 0,
            dead_lettered: 0,
            remaining: 0,
            stopped: DrainStop::Empty,
            elapsed_ms: 0,
        };
        report.stopped = self.drain_loop(started, budget, &mut report).await;
        report.remaining = self
            .stats()
            .ok()
            .and_then(|s| s.outbox.map(|o| o.depth))
            .unwrap_or(0);
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        if report.delivered + report.failed + report.dead_lettered > 0 {
            tracing::info!(event = "drain", delivered = report.delivered, failed = report.failed,
                dead_lettered = report.dead_lettered, remaining = report.remaining,
                stopped = ?report.stopped, elapsed_ms = report.elapsed_ms, "outbox drain pass");
        }
        report
    }

    async fn drain_loop(
        &self,
        started: Instant,
        budget: Duration,
        report: &mut DrainReport,
    ) -> DrainStop {
        loop {
            if started.elapsed() >= budget {
                return DrainStop::Budget;
            }
            let (sender, batch) = {
                let mut inner = self.lock();
                let Some(sender) = inner.sender.clone() else {
                    return DrainStop::NoListener;
                };
                let now = now_ms();
                if now < inner.not_before_ms {
                    return DrainStop::RetryAfter;
                }
                let (permit, transition) = inner.breaker.permit(now);
                self.persist_transition(&mut inner, transition);
                if let Permit::Wait { .. } = permit {
                    return DrainStop::BreakerOpen;
                }
                match self.with_outbox(&mut inner, |ob| ob.oldest()) {
                    Ok(Some(b)) => (sender, b),
                    Ok(None) => return DrainStop::Empty,
                    Err(e) => {
                        tracing::error!(event = "outbox_error", error = %e, "cannot read the outbox");
                        return DrainStop::OutboxError;
                    }
                }
            };
            let outcome = sender.send(batch.batch_id, &batch.body).await;
            let mut inner = self.lock();
            let now = now_ms();
            match outcome {
                Outcome::Delivered { status } => {
                    tracing::debug!(event = "batch_delivered", batch_id = %batch.batch_id,
                        kind = %batch.kind, status, bytes = batch.body.len());
                    let t = inner.breaker.on_success(now);
                    self.persist_transition(&mut inner, t);
                    if let Err(e) = self.with_outbox(&mut inner, |ob| ob.ack(batch.seq, batch.kind))
                    {
                        // Delivered but still queued: it will be sent again with the same
                        // Idempotency-Key, which the listener deduplicates.
                        tracing::error!(event = "outbox_error", error = %e, batch_id = %batch.batch_id,
                            "delivered batch could not be removed from the outbox");
                        return DrainStop::OutboxError;
                    }
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    report.delivered += 1;
                    report.delivered_bytes += batch.body.len() as u64;
                }
                Outcome::Retry {
                    reason,
                    retry_after,
                } => {
                    tracing::warn!(event = "send_failed", batch_id = %batch.batch_id,
                        kind = %batch.kind, attempts = batch.attempts + 1, error = %reason,
                        retry_after_s = retry_after.map(|d| d.as_secs()),
                        "listener did not take the batch; it stays in the outbox");
                    self.counters.send_failures.fetch_add(1, Ordering::Relaxed);
                    report.failed += 1;
                    if let Some(delay) = retry_after {
                        inner.not_before_ms = now.saturating_add(delay.as_millis() as i64);
                    }
                    let t = inner.breaker.on_failure(now, &reason);
                    self.persist_transition(&mut inner, t);
                    let _ =
                        self.with_outbox(&mut inner, |ob| ob.record_failure(batch.seq, &reason));
                    return DrainStop::Failed;
                }
                Outcome::Reject { status, reason } => {
                    tracing::error!(event = "batch_dead_lettered", batch_id = %batch.batch_id,
                        kind = %batch.kind, status, error = %reason,
                        "listener rejected the batch for good; moved it to the dead letters");
                    // The listener answered, so it is reachable: that is a success for the breaker.
                    let t = inner.breaker.on_success(now);
                    self.persist_transition(&mut inner, t);
                    let status = (status != 0).then_some(status);
                    match self
                        .with_outbox(&mut inner, |ob| ob.dead_letter(batch.seq, status, &reason))
                    {
                        Ok(dropped) => {
                            if dropped > 0 {
                                tracing::warn!(
                                    event = "dead_letters_dropped",
                                    count = dropped,
                                    "dead letter limit reached; dropped the oldest"
                                );
                            }
                        }
                        Err(e) => {
                            tracing::error!(event = "outbox_error", error = %e,
                                "cannot move the batch to the dead letters");
                            return DrainStop::OutboxError;
                        }
                    }
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    report.dead_lettered += 1;
                }
            }
        }
    }

    /// Logs a breaker transition and saves the breaker state (failure counts included).
    fn persist_transition(&self, inner: &mut Inner, transition: Option<Transition>) {
        if let Some(t) = &transition {
            tracing::warn!(event = "circuit_transition", from = %t.from, to = %t.to,
                reason = %t.reason, "circuit breaker changed state");
        }
        let state = inner.breaker.state().clone();
        if inner.saved_breaker.as_ref() == Some(&state) {
            return;
        }
        match self.with_outbox(inner, |ob| ob.save_breaker(&state)) {
            Ok(()) => inner.saved_breaker = Some(state),
            Err(e) => {
                tracing::error!(event = "outbox_error", error = %e, "cannot persist the breaker state")
            }
        }
    }

    /// Current figures (reads the outbox; cheap).
    pub fn stats(&self) -> Result<ShipStats, ShipError> {
        let mut inner = self.lock();
        let outbox = match inner.outbox.is_some() {
            true => Some(self.with_outbox(&mut inner, |ob| ob.stats())?),
            false => None,
        };
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Ok(ShipStats {
            mode: if inner.sender.is_some() {
                "outbox"
            } else {
                "stdout"
            },
            listener_url: inner.sender.as_ref().map(|s| s.url().to_string()),
            max_size_bytes: inner.max_size_bytes,
            outbox,
            breaker: inner.sender.as_ref().map(|_| inner.breaker.state().clone()),
            process: ProcessStats {
                stdout_lines: load(&c.stdout_lines),
                enqueue_failures: load(&c.enqueue_failures),
                evicted: load(&c.evicted),
                dead_lettered: load(&c.dead_lettered),
                delivered: load(&c.delivered),
                send_failures: load(&c.send_failures),
                outbox_recreated: load(&c.outbox_recreated),
            },
        })
    }
}
