//! The request rate limit: at most `listener.max_requests_per_minute` requests in any 60 seconds,
//! new data and backlog alike. A sliding window of send times; the Bitville listener counts in
//! fixed windows that start at a client's first request, and a sliding window of N never puts more
//! than N requests in one of those.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window the limit applies to.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    sent: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(limit: u32) -> RateLimiter {
        RateLimiter {
            limit: limit.max(1),
            sent: VecDeque::new(),
        }
    }

    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit.max(1);
    }

    /// None when a request may go now, else how long to wait for the next free slot.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.limit as usize {
            return None;
        }
        let oldest = *self.sent.front()?;
        Some((oldest + WINDOW).saturating_duration_since(now))
    }

    /// Records a request sent at `now`.
    pub fn record(&mut self, now: Instant) {
        self.sent.push_back(now);
        while self.sent.len() > self.limit as usize {
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
        let mut r = RateLimiter::new(3);
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
}
