//! The recent baseline a spike is measured against: the samples of the last `spikes.baseline_s`
//! seconds (active sessions and 1-minute load), whose medians a trigger must exceed by
//! `spikes.baseline_factor` in `spikes.mode = baseline`. A steadily busy server is its own baseline,
//! so it does not fire every `spikes.min_gap_s`; a rise above it does. A level that lasts longer than
//! half the window becomes the new baseline.
//!
//! It does not decide anything: [`super::crossed`] reads the medians, the sampler feeds it.

use std::collections::VecDeque;
use std::time::Duration;

/// Most samples kept (one hour at 1 s); older ones are dropped first.
const MAX_SAMPLES: usize = 3600;

/// The trailing samples, oldest first.
#[derive(Debug, Default)]
pub struct Baseline {
    samples: VecDeque<(i64, u32, Option<f64>)>,
}

impl Baseline {
    /// Adds a sample taken at `at_ms` (Unix ms) and drops those older than `window` before it.
    pub fn push(&mut self, at_ms: i64, active: u32, load1: Option<f64>, window: Duration) {
        self.samples.push_back((at_ms, active, load1));
        let horizon = at_ms - window.as_millis() as i64;
        while self
            .samples
            .front()
            .is_some_and(|(at, _, _)| *at <= horizon)
            || self.samples.len() > MAX_SAMPLES
        {
            self.samples.pop_front();
        }
    }

    /// Median active sessions of the window; 0 when it holds no sample yet.
    pub fn median_active(&self) -> f64 {
        median(self.samples.iter().map(|(_, a, _)| f64::from(*a)))
    }

    /// Median 1-minute load of the window; 0 when no sample had one.
    pub fn median_load(&self) -> f64 {
        median(self.samples.iter().filter_map(|(_, _, l)| *l))
    }

    /// Samples in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the window holds no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// The median (the mean of the middle two for an even count); 0 for none.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_over_the_trailing_window_only() {
        let mut b = Baseline::default();
        let w = Duration::from_secs(10);
        assert_eq!((b.median_active(), b.median_load()), (0.0, 0.0));
        for (i, a) in [1, 100, 3, 2, 50].into_iter().enumerate() {
            b.push(i as i64 * 1000, a, Some(f64::from(a) / 10.0), w);
        }
        assert_eq!(b.median_active(), 3.0);
        assert_eq!(b.median_load(), 0.3);
        b.push(5000, 4, None, w);
        assert_eq!(b.median_active(), 3.5);
        // 11 s later, only the last sample is left.
        b.push(16_000, 7, None, w);
        assert_eq!((b.len(), b.median_active(), b.median_load()), (1, 7.0, 0.0));
    }
}
