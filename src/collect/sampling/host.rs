//! The host side of a sample: the 1-minute load average and the CPU busy share since the previous
//! sample, from /proc/loadavg and /proc/stat. Both are small files the kernel generates on read
//! (no storage behind them), so they are read on the runtime thread: about 20 µs per sample.

use procfs::{Current, CurrentSI, KernelStats, LoadAverage};

/// Cumulative CPU jiffies: busy and total, summed over all cores.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    busy: u64,
    total: u64,
}

/// Reads host figures at each sample and keeps the previous CPU reading.
#[derive(Debug, Default)]
pub struct HostReader {
    prev: Option<Ticks>,
}

/// Host figures of one sample; a source that cannot be read leaves its field None.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostPoint {
    pub load1: Option<f64>,
    /// Share of all cores busy (not idle, not iowait) since the previous sample, 0 to 100.
    pub cpu_percent: Option<f64>,
}

impl HostReader {
    pub fn read(&mut self) -> HostPoint {
        let load1 = LoadAverage::current()
            .ok()
            .map(|l| round2(f64::from(l.one)));
        let ticks = KernelStats::current().ok().map(|s| {
            let t = &s.total;
            let idle = t.idle + t.iowait.unwrap_or(0);
            let busy = t.user
                + t.nice
                + t.system
                + t.irq.unwrap_or(0)
                + t.softirq.unwrap_or(0)
                + t.steal.unwrap_or(0);
            Ticks {
                busy,
                total: busy + idle,
            }
        });
        let cpu_percent = match (self.prev, ticks) {
            (Some(a), Some(b)) if b.total > a.total => Some(round2(
                b.busy.saturating_sub(a.busy) as f64 * 100.0 / (b.total - a.total) as f64,
            )),
            _ => None,
        };
        if ticks.is_some() {
            self.prev = ticks;
        }
        HostPoint { load1, cpu_percent }
    }
}

/// The host's cores (CPU lines of /proc/stat), else what the process may use, else 1.
pub fn cores() -> usize {
    KernelStats::current()
        .ok()
        .map(|s| s.cpu_time.len())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
