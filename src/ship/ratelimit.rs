//! The request rate limit: at most `listener.max_requests_per_minute` requests in any 60 seconds,
//! new data and backlog alike, where pacing applies ([`crate::config::ListenerConfig::request_limit`]:
//! the bitville protocol, or the batch protocol with the key set). A sliding window of send times;
//! the Bitville listener counts in fixed windows that start at a client's first request, and a
//! sliding window of N never puts more than N requests in one of those. Only requests that reached
//! the listener are recorded: a refused connection is not one the listener counts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window the limit applies to.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct RateLimiter {
    /// None: not paced.
    limit: Option<u32>,
    sent: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(limit: Option<u32>) -> RateLimiter {
        RateLimiter {
            limit: limit.map(|l| l.max(1)),
            sent: VecDeque::new(),
        }
    }

    pub fn set_limit(&mut self, limit: Option<u32>) {
        self.limit = limit.map(|l| l.max(1));
        if self.limit.is_none() {
            self.sent.clear();
        }
    }

    /// None when a request may go now, else how long to wait for the next free slot.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        let limit = self.limit? as usize;
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < limit {
            return None;
        }
        let oldest = *self.sent.front()?;
        Some((oldest + WINDOW).saturating_duration_since(now))
    }

    /// Records a request sent at `now`.
    pub fn record(&mut self, now: Instant) {
        let Some(limit) = self.limit else {
            return;
        };
        self.sent.push_back(now);
        while self.sent.len() > limit as usize {
            self.sent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        let start = Instant::now();
        let mut r = RateLimiter::new(Some(3));
        let mut now = start;
        let mut sent = Vec::new();
        // Try a request every 5 s for 5 minutes, waiting when told.
        while now < start + Duration::from_secs(300) {
            match r.wait(now) {
                None => {
                    r.record(now);
                    sent.push(now);
                    now += Duration::from_secs(5);
                }
                Some(d) => now += d,
            }
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|u| **u - *t < WINDOW).count();
            assert!(in_window <= 3, "{in_window} requests within a minute");
        }
        assert!(sent.len() >= 15, "{} sent", sent.len());
    }

    #[test]
    fn no_limit_never_waits() {
        let mut r = RateLimiter::new(None);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(r.wait(now), None);
            r.record(now);
        }
    }
}
