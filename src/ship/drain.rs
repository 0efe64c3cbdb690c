//! One drain pass of [`Shipper`]: send the oldest batches while the breaker, `Retry-After` and the
//! time budget allow, acknowledging, retrying or dead-lettering each by the listener's answer.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::breaker::{Permit, Transition};
use super::held::Settled;
use super::http::Outcome;
use super::pick::Next;
use super::shipper::{Inner, Shipper};
use crate::clock::now_ms;
use crate::telemetry::registry::Event;

/// How often a failure to save the breaker state is said while the disk keeps failing or flapping.
pub(super) const SAY_AGAIN_AFTER: Duration = Duration::from_secs(600);

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
    /// The listener asked to wait (Retry-After, or a 429) and the time has not come.
    RetryAfter,
    /// `listener.max_requests_per_minute` is reached and the next free slot is past the budget.
    RateLimited,
    /// A request failed; the rest waits for the next pass.
    Failed,
    /// No listener configured (stdout mode): nothing to drain.
    NoListener,
    /// The outbox could not be read or written (logged).
    OutboxError,
    /// The agent is stopping: no new request was started.
    Shutdown,
}

/// What one drain pass did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    /// Requests answered 429.
    pub throttled: u64,
    pub remaining: u64,
    pub stopped: DrainStop,
    pub elapsed_ms: u64,
}

impl Shipper {
    /// Sends queued batches oldest-first, with a quarter of the requests kept for the newest data
    /// while there is a backlog ([`super::pick`]), until the outbox is empty, the breaker opens, a
    /// request fails, or `budget` is spent. Where pacing applies, requests are paced to
    /// `listener.max_requests_per_minute` (refused connections not counted): a pass waits for a free
    /// slot when one comes within the budget. A request already started is allowed
    /// to finish, so a pass can overrun the budget by at most one `listener.timeout_s`.
    pub async fn drain(&self, budget: Duration) -> DrainReport {
        self.drain_until(budget, &CancellationToken::new()).await
    }

    /// [`Shipper::drain`] that starts no new request once `stop` is cancelled (a request in flight
    /// finishes; the caller bounds how long it waits for that).
    pub async fn drain_until(&self, budget: Duration, stop: &CancellationToken) -> DrainReport {
        self.drain_pass(budget, stop, false).await
    }

    /// The last pass before exit: requests held in memory go first (what is in the outbox is sent
    /// after the next start; what is in memory only has this attempt), then the rest as usual.
    pub async fn drain_final(&self, budget: Duration) -> DrainReport {
        self.drain_pass(budget, &CancellationToken::new(), true)
            .await
    }

    async fn drain_pass(
        &self,
        budget: Duration,
        stop: &CancellationToken,
        held_first: bool,
    ) -> DrainReport {
        let _one_at_a_time = self.drain_lock.lock().await;
        let started = Instant::now();
        let mut report = DrainReport {
            delivered: 0,
            delivered_bytes: 0,
            failed: 0,
            dead_lettered: 0,
            throttled: 0,
            remaining: 0,
            stopped: DrainStop::Empty,
            elapsed_ms: 0,
        };
        report.stopped = self
            .drain_loop(started, budget, stop, held_first, &mut report)
            .await;
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
        stop: &CancellationToken,
        held_first: bool,
        report: &mut DrainReport,
    ) -> DrainStop {
        {
            let mut inner = self.lock();
            self.write_held(&mut inner);
            self.remove_settled(&mut inner);
            self.persist_transition(&mut inner, None);
        }
        let mut started_requests: u64 = 0;
        loop {
            if stop.is_cancelled() {
                return DrainStop::Shutdown;
            }
            if started.elapsed() >= budget {
                return DrainStop::Budget;
            }
            let slot = self.lock().rate.wait(Instant::now());
            if let Some(wait) = slot {
                if started.elapsed() + wait >= budget {
                    return DrainStop::RateLimited;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return DrainStop::Shutdown,
                }
                continue;
            }
            let (sender, next) = {
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
                match self.pick(&mut inner, started_requests, held_first) {
                    Ok(Some(next)) => (sender, next),
                    Ok(None) => return DrainStop::Empty,
                    Err(e) => {
                        tracing::error!(event = "outbox_error", error = %e, "cannot read the outbox");
                        return DrainStop::OutboxError;
                    }
                }
            };
            let (batch_id, kind, body, protocol) = next.request();
            started_requests += 1;
            let sent_at = Instant::now();
            let outcome = sender.send(batch_id, body, protocol).await;
            let mut inner = self.lock();
            if !refused(&outcome) {
                inner.rate.record(sent_at);
            }
            let now = now_ms();
            match outcome {
                Outcome::Delivered { status } => {
                    tracing::debug!(event = "batch_delivered", batch_id = %batch_id,
                        kind = %kind, status, bytes = body.len());
                    let t = inner.breaker.on_success(now);
                    self.persist_transition(&mut inner, t);
                    match &next {
                        Next::Stored(b) => {
                            if let Err(e) = self.with_outbox(&mut inner, |ob| ob.ack(b.seq, b.kind))
                            {
                                // Delivered but not removable (a full or read-only disk): never
                                // sent again; removed when the outbox takes writes.
                                tracing::warn!(event = "outbox_error", error = %e, batch_id = %batch_id,
                                    "delivered request could not be removed from the outbox yet");
                                inner.unremoved.insert(b.seq, Settled::Delivered(b.kind));
                            }
                        }
                        Next::Held(r) => {
                            self.held().remove(r.batch_id);
                        }
                    }
                    self.counters.add(Event::RequestsDelivered, 1);
                    report.delivered += 1;
                    report.delivered_bytes += body.len() as u64;
                }
                Outcome::Retry {
                    reason,
                    retry_after,
                } => {
                    tracing::warn!(event = "send_failed", batch_id = %batch_id,
                        kind = %kind, attempts = next.attempts() + 1, error = %reason,
                        retry_after_s = retry_after.map(|d| d.as_secs()),
                        "listener did not take the batch; it stays in the outbox");
                    self.counters.add(Event::SendFailures, 1);
                    report.failed += 1;
                    if let Some(delay) = retry_after {
                        inner.not_before_ms = now.saturating_add(delay.as_millis() as i64);
                    }
                    let t = inner.breaker.on_failure(now, &reason);
                    self.persist_transition(&mut inner, t);
                    if let Next::Stored(b) = &next {
                        // Only the attempt count and last error are lost if this fails.
                        if let Err(e) =
                            self.with_outbox(&mut inner, |ob| ob.record_failure(b.seq, &reason))
                        {
                            tracing::debug!(event = "outbox_error", error = %e,
                                "cannot record the failed attempt");
                        }
                    }
                    return DrainStop::Failed;
                }
                Outcome::Throttled { retry_after } => {
                    // The listener's rate limit, not a failure: the breaker is left alone.
                    tracing::warn!(event = "send_throttled", batch_id = %batch_id,
                        kind = %kind, retry_after_s = retry_after.as_secs(),
                        "listener answered 429 (rate limited); sending again after Retry-After");
                    self.counters.add(Event::RequestsThrottled, 1);
                    report.throttled += 1;
                    inner.not_before_ms = now.saturating_add(retry_after.as_millis() as i64);
                    if let Err(e) = self.with_outbox(&mut inner, |ob| ob.bump("throttled", 1)) {
                        tracing::debug!(event = "outbox_error", error = %e,
                            "cannot count the throttled request");
                    }
                    return DrainStop::RetryAfter;
                }
                Outcome::Reject { status, reason } => {
                    tracing::error!(event = "batch_dead_lettered", batch_id = %batch_id,
                        kind = %kind, status, error = %reason,
                        "listener rejected the batch for good; moved it to the dead letters");
                    // The listener answered, so it is reachable: that is a success for the breaker.
                    let t = inner.breaker.on_success(now);
                    self.persist_transition(&mut inner, t);
                    let status = (status != 0).then_some(status);
                    match &next {
                        Next::Stored(b) => match self
                            .with_outbox(&mut inner, |ob| ob.dead_letter(b.seq, status, &reason))
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
                                tracing::warn!(event = "outbox_error", error = %e,
                                    "cannot move the batch to the dead letters yet");
                                inner
                                    .unremoved
                                    .insert(b.seq, Settled::Rejected { status, reason });
                            }
                        },
                        // Held in memory: there is nowhere to keep it; the log line above is
                        // its record, and it is counted.
                        Next::Held(r) => {
                            self.held().remove(r.batch_id);
                        }
                    }
                    self.counters.add(Event::RequestsDeadLettered, 1);
                    report.dead_lettered += 1;
                }
            }
        }
    }

    /// Removes settled requests the outbox could not remove before (acks, dead letters).
    fn remove_settled(&self, inner: &mut Inner) {
        if inner.unremoved.is_empty() {
            return;
        }
        for (seq, how) in inner.unremoved.take() {
            let result = match &how {
                Settled::Delivered(kind) => {
                    self.with_outbox(inner, |ob| ob.ack(seq, *kind).map(|_| ()))
                }
                Settled::Rejected { status, reason } => {
                    self.with_outbox(inner, |ob| ob.dead_letter(seq, *status, reason).map(|_| ()))
                }
            };
            if result.is_err() {
                inner.unremoved.insert(seq, how);
            }
        }
    }

    /// Logs a breaker transition and saves the breaker state once per transition (not per request:
    /// the failure count in between is not saved). A save that fails (a full disk) is tried again at
    /// every later call until it succeeds; the failure is logged at most once per
    /// [`SAY_AGAIN_AFTER`] (a disk that flaps between full and not would otherwise say it at every
    /// flap), and the recovery once after each failure logged.
    pub(super) fn persist_transition(&self, inner: &mut Inner, transition: Option<Transition>) {
        if let Some(t) = &transition {
            tracing::warn!(event = "circuit_transition", from = %t.from, to = %t.to,
                reason = %t.reason, "circuit breaker changed state");
        }
        let state = inner.breaker.state().clone();
        let unsaved = match &inner.saved_breaker {
            None => true,
            Some(saved) => {
                saved.state != state.state || saved.last_transition != state.last_transition
            }
        };
        if !unsaved {
            return;
        }
        match self.with_outbox(inner, |ob| ob.save_breaker(&state)) {
            Ok(()) => {
                inner.saved_breaker = Some(state);
                // The recovery is said once for each failure that was said.
                if std::mem::take(&mut inner.breaker_save_recovery_due) {
                    tracing::info!(
                        event = "breaker_persisted",
                        "the circuit breaker state is saved again"
                    );
                }
            }
            Err(e) => {
                if inner
                    .breaker_save_said
                    .is_none_or(|t| t.elapsed() >= SAY_AGAIN_AFTER)
                {
                    inner.breaker_save_said = Some(Instant::now());
                    inner.breaker_save_recovery_due = true;
                    tracing::error!(event = "outbox_error", error = %e,
                        "cannot persist the circuit breaker state; trying again at every request \
                         until the outbox takes writes (said at most once every 10 minutes)");
                }
            }
        }
    }
}

/// A connection the listener's host refused or that never opened: the listener counted no request.
/// (The sender describes transport errors; a connect error is said as "connection failed: ...".)
fn refused(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Retry { reason, .. } if reason.starts_with("connection failed"))
}
