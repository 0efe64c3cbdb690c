//! Drift-free cycle schedule: cycle k starts at `start + k * interval`, however long cycles take. A
//! cycle that overruns its slot makes the schedule skip the missed ticks (never a burst of catch-up
//! cycles) and say how many it skipped.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    /// Index of the last tick handed out.
    last: Option<u64>,
}

/// The next cycle to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub index: u64,
    pub at: Instant,
    /// Ticks passed over since the previous one because a cycle overran.
    pub skipped: u64,
}

impl Schedule {
    pub fn new(start: Instant, interval: Duration) -> Schedule {
        Schedule {
            start,
            interval: interval.max(Duration::from_millis(1)),
            last: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The next tick to run at or after `now`. A tick late by at most [`Schedule::grace`] (timer
    /// jitter, a cycle that finished just after its successor's time) still runs, at once; ticks
    /// later than that are skipped and counted.
    pub fn next_after(&mut self, now: Instant) -> Tick {
        let wanted = self.last.map_or(0, |l| l + 1);
        let elapsed = now
            .saturating_duration_since(self.start)
            .saturating_sub(self.grace());
        // The first tick index whose time is >= now - grace.
        let due = elapsed.as_nanos().div_ceil(self.interval.as_nanos()) as u64;
        let index = wanted.max(due);
        self.last = Some(index);
        Tick {
            index,
            at: self.start
                + self
                    .interval
                    .saturating_mul(u32::try_from(index).unwrap_or(u32::MAX)),
            skipped: index - wanted,
        }
    }

    /// How late a tick may be and still run: a twentieth of the interval, at most one second.
    pub fn grace(&self) -> Duration {
        (self.interval / 20).min(Duration::from_secs(1))
    }

    /// Changes the interval (config reload): the new grid starts one new interval from `now`.
    pub fn set_interval(&mut self, interval: Duration, now: Instant) {
        if interval == self.interval {
            return;
        }
        self.interval = interval.max(Duration::from_millis(1));
        self.start = now + self.interval;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_fixed_multiples_of_the_interval() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::from_secs(60));
        let t0 = s.next_after(start);
        assert_eq!((t0.index, t0.at, t0.skipped), (0, start, 0));
        // A cycle that took 1.5 s: the next tick is still at 60 s, not 61.5 s.
        let t1 = s.next_after(start + Duration::from_millis(1500));
        assert_eq!(
            (t1.index, t1.at, t1.skipped),
            (1, start + Duration::from_secs(60), 0)
        );
    }

    #[test]
    fn overrun_skips_missed_ticks_and_counts_them() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::from_secs(10));
        s.next_after(start);
        // The cycle ran 35 s: ticks 1, 2 and 3 are past; the next is 4 at 40 s.
        let t = s.next_after(start + Duration::from_secs(35));
        assert_eq!((t.index, t.skipped), (4, 3));
        assert_eq!(t.at, start + Duration::from_secs(40));
    }

    #[test]
    fn slightly_late_tick_still_runs() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::from_secs(60));
        let t = s.next_after(start + Duration::from_millis(3));
        assert_eq!((t.index, t.skipped), (0, 0));
        let t = s.next_after(start + Duration::from_millis(60_500));
        assert_eq!((t.index, t.skipped), (1, 0));
    }

    #[test]
    fn exactly_on_a_tick_runs_that_tick() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::from_secs(10));
        s.next_after(start);
        let t = s.next_after(start + Duration::from_secs(10));
        assert_eq!((t.index, t.skipped), (1, 0));
    }

    #[test]
    fn interval_change_starts_a_new_grid() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::from_secs(60));
        s.next_after(start);
        let now = start + Duration::from_secs(1);
        s.set_interval(Duration::from_secs(5), now);
        let t = s.next_after(now);
        assert_eq!((t.at, t.skipped), (now + Duration::from_secs(5), 0));
        let t = s.next_after(now + Duration::from_secs(6));
        assert_eq!(t.at, now + Duration::from_secs(10));
    }
}
