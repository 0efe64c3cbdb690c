//! The circuit breaker in front of the listener: closed -> open after `failure_threshold`
//! consecutive failures -> half-open after `recovery_timeout` -> one probe, whose result closes or
//! re-opens the circuit.
//!
//! This file is pure state-machine logic driven by explicit wall-clock times (unix milliseconds, so
//! the state can be persisted and survive a restart). Persisting it in the outbox database and
//! logging each transition is the caller's job ([`crate::ship::Shipper`]); every method that changes
//! the state returns the [`Transition`] to log.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The three states of the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Sending normally.
    Closed,
    /// Nothing is sent until the recovery timeout has passed.
    Open,
    /// One probe request decides whether to close or re-open.
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    pub fn parse(s: &str) -> Option<CircuitState> {
        match s {
            "closed" => Some(CircuitState::Closed),
            "open" => Some(CircuitState::Open),
            "half_open" => Some(CircuitState::HalfOpen),
            _ => None,
        }
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of state, as logged and persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub reason: String,
}

/// The persisted state of the breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerState {
    pub state: CircuitState,
    pub consecutive_failures: u32,
    /// When the circuit last opened (unix milliseconds).
    pub opened_ms: Option<i64>,
    pub last_transition: Option<Transition>,
}

impl Default for BreakerState {
    fn default() -> Self {
        BreakerState {
            state: CircuitState::Closed,
            consecutive_failures: 0,
            opened_ms: None,
            last_transition: None,
        }
    }
}

/// What the breaker allows right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: send as much as the budget allows.
    Send,
    /// Half-open: send exactly one request, then report its result.
    Probe,
    /// Open: send nothing before this time (unix milliseconds).
    Wait { until_ms: i64 },
}

/// The breaker: its settings plus its state.
#[derive(Debug, Clone)]
pub struct Breaker {
    pub failure_threshold: u32,
    pub recovery_timeout: Duration,
    state: BreakerState,
}

impl Breaker {
    pub fn new(failure_threshold: u32, recovery_timeout: Duration, state: BreakerState) -> Breaker {
        Breaker {
            failure_threshold: failure_threshold.max(1),
            recovery_timeout,
            state,
        }
    }

    pub fn state(&self) -> &BreakerState {
        &self.state
    }

    /// Decides whether a request may go out at `now_ms`; an open circuit whose recovery timeout has
    /// passed becomes half-open here (the returned transition must be logged and persisted).
    pub fn permit(&mut self, now_ms: i64) -> (Permit, Option<Transition>) {
        match self.state.state {
            CircuitState::Closed => (Permit::Send, None),
            CircuitState::HalfOpen => (Permit::Probe, None),
            CircuitState::Open => {
                let opened = self.state.opened_ms.unwrap_or(now_ms);
                let until_ms = opened.saturating_add(self.recovery_timeout.as_millis() as i64);
                if now_ms >= until_ms {
                    let t = self.transition(
                        CircuitState::HalfOpen,
                        now_ms,
                        format!(
                            "recovery timeout of {}s elapsed; allowing one probe",
                            self.recovery_timeout.as_secs()
                        ),
                    );
                    (Permit::Probe, Some(t))
                } else {
                    (Permit::Wait { until_ms }, None)
                }
            }
        }
    }

    /// Records a request the listener answered (2xx, or a rejection that proves it is reachable).
    pub fn on_success(&mut self, now_ms: i64) -> Option<Transition> {
        self.state.consecutive_failures = 0;
        match self.state.state {
            CircuitState::Closed => None,
            CircuitState::HalfOpen | CircuitState::Open => {
                self.state.opened_ms = None;
                Some(self.transition(CircuitState::Closed, now_ms, "probe succeeded".to_string()))
            }
        }
    }

    /// Records a failed request (timeout, connection error, 408/429/5xx).
    pub fn on_failure(&mut self, now_ms: i64, reason: &str) -> Option<Transition> {
        self.state.consecutive_failures = self.state.consecutive_failures.saturating_add(1);
        match self.state.state {
            CircuitState::Closed if self.state.consecutive_failures >= self.failure_threshold => {
                self.state.opened_ms = Some(now_ms);
                Some(self.transition(
                    CircuitState::Open,
                    now_ms,
                    format!(
                        "{} consecutive failures, last: {reason}",
                        self.state.consecutive_failures
                    ),
                ))
            }
            CircuitState::Closed | CircuitState::Open => None,
            CircuitState::HalfOpen => {
                self.state.opened_ms = Some(now_ms);
                Some(self.transition(
                    CircuitState::Open,
                    now_ms,
                    format!("probe failed: {reason}"),
                ))
            }
        }
    }

    fn transition(&mut self, to: CircuitState, now_ms: i64, reason: String) -> Transition {
        let t = Transition {
            from: self.state.state,
            to,
            at_ms: now_ms,
            reason,
        };
        self.state.state = to;
        self.state.last_transition = Some(t.clone());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(3, Duration::from_secs(10), BreakerState::default())
    }

    #[test]
    fn opens_after_threshold_consecutive_failures_only() {
        let mut b = breaker();
        assert!(b.on_failure(1, "x").is_none());
        assert!(b.on_failure(2, "x").is_none());
        assert!(
            b.on_success(3).is_none(),
            "success in closed is no transition"
        );
        assert_eq!(b.state().consecutive_failures, 0);
        b.on_failure(4, "x");
        b.on_failure(5, "x");
        let t = b.on_failure(6, "boom").expect("third failure opens");
        assert_eq!(
            (t.from, t.to, t.at_ms),
            (CircuitState::Closed, CircuitState::Open, 6)
        );
        assert!(t.reason.contains("boom"));
        assert_eq!(b.permit(7).0, Permit::Wait { until_ms: 10_006 });
    }

    #[test]
    fn half_open_probe_closes_or_reopens() {
        let mut b = breaker();
        for i in 0..3 {
            b.on_failure(i, "x");
        }
        let (p, t) = b.permit(10_002);
        assert_eq!(p, Permit::Probe);
        assert_eq!(t.map(|t| t.to), Some(CircuitState::HalfOpen));
        // A failed probe re-opens with a fresh recovery window.
        let t = b.on_failure(10_003, "still down").expect("reopen");
        assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
        assert_eq!(b.permit(20_002).0, Permit::Wait { until_ms: 20_003 });
        assert_eq!(b.permit(20_003).0, Permit::Probe);
        let t = b.on_success(20_004).expect("close");
        assert_eq!(
            (t.from, t.to),
            (CircuitState::HalfOpen, CircuitState::Closed)
        );
        assert_eq!(b.permit(20_005).0, Permit::Send);
        assert_eq!(b.state().opened_ms, None);
    }

    #[test]
    fn restored_open_state_keeps_its_window() {
        let mut b = breaker();
        for i in 0..3 {
            b.on_failure(i, "x");
        }
        let saved = b.state().clone();
        let mut restored = Breaker::new(3, Duration::from_secs(10), saved);
        assert_eq!(restored.permit(5_000).0, Permit::Wait { until_ms: 10_002 });
        assert_eq!(restored.permit(10_002).0, Permit::Probe);
    }
}
