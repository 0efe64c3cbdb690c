//! Whether delivery to the listener works, as `/health` judges it: 200 `degraded` with the warning
//! `breaker_open` while the circuit breaker is open (or half-open, probing), and 503 `unhealthy`
//! with the condition `delivery_failing` once sending has failed, with no request accepted since,
//! for longer than `telemetry.unhealthy_after_s`.
//!
//! The delivery task reports the breaker after every pass ([`DeliveryHealth::update`]); the verdict
//! is made when `/health` is asked ([`DeliveryHealth::judge`]), so the threshold holds to the
//! second whatever the collection interval. The failing time counts from the first failure this
//! process saw. It knows nothing of the breaker's type: the caller passes plain facts.

use std::time::{Duration, Instant};

/// The default of `telemetry.unhealthy_after_s`.
pub const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(300);

/// What the last delivery pass said, and since when sending fails.
#[derive(Debug, Clone)]
pub struct DeliveryHealth {
    unhealthy_after: Duration,
    failing_since: Option<Instant>,
    /// Why sending fails, while it does.
    failing: Option<String>,
    /// Why the breaker is open, while it is.
    breaker_open: Option<String>,
}

impl Default for DeliveryHealth {
    fn default() -> DeliveryHealth {
        DeliveryHealth {
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
            failing_since: None,
            failing: None,
            breaker_open: None,
        }
    }
}

impl DeliveryHealth {
    pub fn set_unhealthy_after(&mut self, after: Duration) {
        self.unhealthy_after = after;
    }

    /// After a delivery pass: `failing` says why the last request failed (None once one was
    /// accepted), `breaker_open` why the breaker is open (None while it is closed).
    pub fn update(&mut self, failing: Option<String>, breaker_open: Option<String>, now: Instant) {
        match &failing {
            Some(_) => {
                self.failing_since.get_or_insert(now);
            }
            None => self.failing_since = None,
        }
        self.failing = failing;
        self.breaker_open = breaker_open;
    }

    /// (the `delivery_failing` condition, the `breaker_open` warning) at `now`.
    pub fn judge(&self, now: Instant) -> (Option<String>, Option<String>) {
        let condition = match (self.failing_since, &self.failing) {
            (Some(since), Some(why)) if now.duration_since(since) > self.unhealthy_after => {
                Some(format!(
                    "delivery to the listener has failed for {} s, nothing accepted \
                     (telemetry.unhealthy_after_s = {}); batches wait in the outbox: {why}",
                    now.duration_since(since).as_secs(),
                    self.unhealthy_after.as_secs()
                ))
            }
            _ => None,
        };
        let warning = self.breaker_open.as_ref().map(|why| {
            format!(
                "the circuit breaker is open, sending paused; batches wait in the outbox ({why})"
            )
        });
        (condition, warning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_while_open_unhealthy_after_the_threshold_ok_after_a_success() {
        let t0 = Instant::now();
        let mut d = DeliveryHealth::default();
        d.set_unhealthy_after(Duration::from_secs(10));
        assert_eq!(d.judge(t0), (None, None));
        d.update(Some("HTTP 503".into()), None, t0);
        assert_eq!(d.judge(t0 + Duration::from_secs(5)), (None, None));
        d.update(
            Some("HTTP 503".into()),
            Some("5 failures".into()),
            t0 + Duration::from_secs(6),
        );
        let (c, w) = d.judge(t0 + Duration::from_secs(9));
        assert!(c.is_none() && w.is_some_and(|w| w.contains("5 failures")));
        let (c, _) = d.judge(t0 + Duration::from_secs(11));
        assert!(c.is_some_and(|c| c.contains("failed for 11 s") && c.contains("HTTP 503")));
        d.update(None, None, t0 + Duration::from_secs(12));
        assert_eq!(d.judge(t0 + Duration::from_secs(30)), (None, None));
    }
}
