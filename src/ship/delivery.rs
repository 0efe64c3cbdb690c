//! [`Delivery`]: the delivery half of the shipper. It owns the HTTP sender, the circuit breaker,
//! `Retry-After`, the rate limit ([`super::ratelimit`]) and the drain loop with its
//! one-at-a-time lock: send the next request ([`Storage::pick`]) while the breaker, `Retry-After`
//! and the time budget allow, and settle each by the listener's answer ([`Storage::delivered`],
//! `failed`, `rejected`). It calls [`Storage`] and nothing calls back into it.
//!
//! Lock order (the whole shipper): the pass lock (`Delivery::pass`), then the delivery state
//! (`Delivery::state`, memory only), then the storage state. The delivery state is released before
//! every call into storage, so a storage stuck on a hung disk never holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::breaker::{Breaker, BreakerState, Permit, Transition};
use super::http::{Outcome, Sender};
use super::ratelimit::RateLimiter;
use super::storage::Storage;
use crate::clock::now_ms;
use crate::config::Config;
use crate::telemetry::registry::{Counters, Event};

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

/// Behind `Delivery::state`: memory only, never held across a request or a storage call.
struct State {
    sender: Option<Arc<Sender>>,
    breaker: Breaker,
    /// Set from Retry-After: no request before this time (unix ms).
    not_before_ms: i64,
    /// `listener.max_requests_per_minute` where it applies, over new data and the backlog.
    rate: RateLimiter,
}

/// The delivery half of the shipper (see the module doc for what it owns and the lock order).
pub struct Delivery {
    state: parking_lot::Mutex<State>,
    /// One drain at a time, so FIFO and the half-open single probe hold.
    pass: tokio::sync::Mutex<()>,
    counters: Counters,
}

/// What delivery tells `stats()`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryFigures {
    pub listener_url: Option<String>,
    /// The breaker, while a listener is configured.
    pub breaker: Option<BreakerState>,
}

impl Delivery {
    /// Delivery with no listener yet (set by [`Delivery::reconfigure`]) and a closed breaker.
    pub fn new(config: &Config, counters: Counters) -> Delivery {
        Delivery {
            state: parking_lot::Mutex::new(State {
                sender: None,
                breaker: Breaker::new(
                    config.circuit_breaker.failure_threshold,
                    config.circuit_breaker.recovery_timeout,
                    BreakerState::default(),
                ),
                not_before_ms: 0,
                rate: RateLimiter::new(config.listener.request_limit()),
            }),
            pass: tokio::sync::Mutex::new(()),
            counters,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Applies the breaker settings and the rate limit of a reloaded configuration.
    pub fn configure(&self, config: &Config) {
        let mut st = self.lock();
        st.breaker.failure_threshold = config.circuit_breaker.failure_threshold.max(1);
        st.breaker.recovery_timeout = config.circuit_breaker.recovery_timeout;
        st.rate.set_limit(config.listener.request_limit());
    }

    /// Restores the breaker state saved in the outbox (storage just opened it).
    pub fn restore_breaker(&self, saved: BreakerState) {
        let mut st = self.lock();
        let (t, r) = (st.breaker.failure_threshold, st.breaker.recovery_timeout);
        st.breaker = Breaker::new(t, r, saved);
    }

    /// Installs the sender of a reloaded configuration (None: stdout mode).
    pub fn set_sender(&self, sender: Option<Arc<Sender>>) {
        self.lock().sender = sender;
    }

    pub fn figures(&self) -> DeliveryFigures {
        let st = self.lock();
        DeliveryFigures {
            listener_url: st.sender.as_ref().map(|s| s.url().to_string()),
            breaker: st.sender.as_ref().map(|_| st.breaker.state().clone()),
        }
    }

    /// Sends queued batches oldest-first, with a quarter of the requests kept for the newest data
    /// while there is a backlog ([`super::storage::queue`]), until the outbox is empty, the breaker
    /// opens, a request fails, or `budget` is spent. Where pacing applies, requests are paced to
    /// `listener.max_requests_per_minute` (refused connections not counted): a pass waits for a
    /// free slot when one comes within the budget. A request already started is allowed to finish,
    /// so a pass can overrun the budget by at most one `listener.timeout_s`. It starts no new
    /// request once `stop` is cancelled. With `held_first` (the last pass before exit), requests
    /// held in memory go first (what is in the outbox is sent after the next start; what is in
    /// memory only has this attempt).
    pub async fn drain(
        &self,
        storage: &Storage,
        budget: Duration,
        stop: &CancellationToken,
        held_first: bool,
    ) -> DrainReport {
        let _one_at_a_time = self.pass.lock().await;
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
            .drain_loop(storage, started, budget, stop, held_first, &mut report)
            .await;
        report.remaining = storage
            .figures()
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
        storage: &Storage,
        started: Instant,
        budget: Duration,
        stop: &CancellationToken,
        held_first: bool,
        report: &mut DrainReport,
    ) -> DrainStop {
        storage.prepare_pass();
        self.persist_transition(storage, None);
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
            let (sender, permit, transition) = {
                let mut st = self.lock();
                let Some(sender) = st.sender.clone() else {
                    return DrainStop::NoListener;
                };
                let now = now_ms();
                if now < st.not_before_ms {
                    return DrainStop::RetryAfter;
                }
                let (permit, transition) = st.breaker.permit(now);
                (sender, permit, transition)
            };
            self.persist_transition(storage, transition);
            if let Permit::Wait { .. } = permit {
                return DrainStop::BreakerOpen;
            }
            let next = match storage.pick(started_requests, held_first) {
                Ok(Some(next)) => next,
                Ok(None) => return DrainStop::Empty,
                Err(e) => {
                    tracing::error!(event = "outbox_error", error = %e, "cannot read the outbox");
                    return DrainStop::OutboxError;
                }
            };
            let (batch_id, kind, body, protocol) = next.request();
            started_requests += 1;
            let sent_at = Instant::now();
            let outcome = sender
                .send_request(batch_id, Some(kind), body, protocol)
                .await;
            if !refused(&outcome) {
                self.lock().rate.record(sent_at);
            }
            let now = now_ms();
            match outcome {
                Outcome::Delivered { status } => {
                    tracing::debug!(event = "batch_delivered", batch_id = %batch_id,
                        kind = %kind, status, bytes = body.len());
                    let t = self.lock().breaker.on_success(now);
                    self.persist_transition(storage, t);
                    storage.delivered(&next);
                    self.counters.add(Event::RequestsDelivered, 1);
                    report.delivered += 1;
                    report.delivered_bytes += body.len() as u64;
                }
                Outcome::Partial {
                    status,
                    rejected,
                    message,
                } => {
                    // OTLP partial success: delivered, never sent again (the specification),
                    // the rejected part said and counted.
                    tracing::warn!(event = "otlp_partial_success", batch_id = %batch_id,
                        kind = %kind, status, rejected, error = %message,
                        "the OTLP receiver accepted the request but rejected part of it");
                    let t = self.lock().breaker.on_success(now);
                    self.persist_transition(storage, t);
                    storage.delivered(&next);
                    self.counters.add(Event::RequestsDelivered, 1);
                    self.counters.add(Event::OtlpPartialSuccesses, 1);
                    self.counters
                        .add(Event::OtlpRejectedItems, rejected.max(0) as u64);
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
                    let t = {
                        let mut st = self.lock();
                        if let Some(delay) = retry_after {
                            st.not_before_ms = now.saturating_add(delay.as_millis() as i64);
                        }
                        st.breaker.on_failure(now, &reason)
                    };
                    self.persist_transition(storage, t);
                    storage.failed(&next, &reason);
                    return DrainStop::Failed;
                }
                Outcome::Throttled { retry_after } => {
                    // The listener's rate limit, not a failure: the breaker is left alone.
                    tracing::warn!(event = "send_throttled", batch_id = %batch_id,
                        kind = %kind, retry_after_s = retry_after.as_secs(),
                        "listener answered 429 (rate limited); sending again after Retry-After");
                    self.counters.add(Event::RequestsThrottled, 1);
                    report.throttled += 1;
                    self.lock().not_before_ms = now.saturating_add(retry_after.as_millis() as i64);
                    storage.throttled();
                    return DrainStop::RetryAfter;
                }
                Outcome::Reject { status, reason } => {
                    tracing::error!(event = "batch_dead_lettered", batch_id = %batch_id,
                        kind = %kind, status, error = %reason,
                        "listener rejected the batch for good; moved it to the dead letters");
                    // The listener answered, so it is reachable: that is a success for the breaker.
                    let t = self.lock().breaker.on_success(now);
                    self.persist_transition(storage, t);
                    let status = (status != 0).then_some(status);
                    storage.rejected(&next, status, &reason);
                    self.counters.add(Event::RequestsDeadLettered, 1);
                    report.dead_lettered += 1;
                }
            }
        }
    }

    /// Logs a breaker transition and hands the breaker state to storage, which saves it once per
    /// transition ([`Storage::save_breaker`]).
    fn persist_transition(&self, storage: &Storage, transition: Option<Transition>) {
        if let Some(t) = &transition {
            tracing::warn!(event = "circuit_transition", from = %t.from, to = %t.to,
                reason = %t.reason, "circuit breaker changed state");
        }
        let state = self.lock().breaker.state().clone();
        storage.save_breaker(&state);
    }
}

/// A connection the listener's host refused or that never opened: the listener counted no request.
/// (The sender describes transport errors; a connect error is said as "connection failed: ...".)
fn refused(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Retry { reason, .. } if reason.starts_with("connection failed"))
}
