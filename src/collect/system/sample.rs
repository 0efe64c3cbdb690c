//! Raw host counters read from /proc (through the procfs crate), and the rates between two readings.
//! Each source is read on its own: one that fails (a container without /proc/diskstats, say) leaves
//! its field null and counts a read error instead of failing the whole record.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use procfs::{Current, CurrentSI, KernelStats};
use serde::Serialize;

/// CPU jiffies by category, summed over all cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    user: u64,
    system: u64,
    iowait: u64,
    steal: u64,
    idle: u64,
    total: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct DiskTicks {
    reads: u64,
    writes: u64,
    sectors_read: u64,
    sectors_written: u64,
    /// Milliseconds spent doing I/O.
    io_ms: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct NetTicks {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    rx_errors: u64,
    tx_errors: u64,
    rx_dropped: u64,
    tx_dropped: u64,
}

/// One reading of the host's cumulative counters.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub cores: Option<usize>,
    cpu: Option<CpuTicks>,
    disks: Option<BTreeMap<String, DiskTicks>>,
    nets: Option<BTreeMap<String, NetTicks>>,
    /// Sources that could not be read (the caller counts them).
    pub unreadable: u64,
}

fn note<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::debug!(source = what, error = %e, "host metric source unreadable");
            None
        }
    }
}

impl Sample {
    pub fn read() -> Sample {
        let stats = note("/proc/stat", KernelStats::current());
        let cpu = stats.as_ref().map(|s| {
            let t = &s.total;
            let (irq, softirq) = (t.irq.unwrap_or(0), t.softirq.unwrap_or(0));
            let (iowait, steal) = (t.iowait.unwrap_or(0), t.steal.unwrap_or(0));
            let user = t.user + t.nice;
            let system = t.system + irq + softirq;
            CpuTicks {
                user,
                system,
                iowait,
                steal,
                idle: t.idle,
                total: user + system + iowait + steal + t.idle,
            }
        });
        let disks = note("/proc/diskstats", procfs::diskstats()).map(|all| {
            all.into_iter()
                .filter(|d| is_whole_disk(&d.name))
                .map(|d| {
                    (
                        d.name,
                        DiskTicks {
                            reads: d.reads,
                            writes: d.writes,
                            sectors_read: d.sectors_read,
                            sectors_written: d.sectors_written,
                            io_ms: d.time_in_progress,
                        },
                    )
                })
                .collect()
        });
        let nets = note("/proc/net/dev", procfs::net::dev_status()).map(|all| {
            all.into_values()
                .map(|n| {
                    (
                        n.name,
                        NetTicks {
                            rx_bytes: n.recv_bytes,
                            tx_bytes: n.sent_bytes,
                            rx_packets: n.recv_packets,
                            tx_packets: n.sent_packets,
                            rx_errors: n.recv_errs,
                            tx_errors: n.sent_errs,
                            rx_dropped: n.recv_drop,
                            tx_dropped: n.sent_drop,
                        },
                    )
                })
                .collect()
        });
        let unreadable = [stats.is_none(), disks.is_none(), nets.is_none()]
            .iter()
            .filter(|missing| **missing)
            .count() as u64;
        Sample {
            at: Instant::now(),
            cores: stats.map(|s| s.cpu_time.len()),
            cpu,
            disks,
            nets,
            unreadable,
        }
    }
}

/// Whole disks only (partitions would count the same I/O twice); loop and RAM devices are noise.
fn is_whole_disk(name: &str) -> bool {
    !(name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram"))
        && Path::new("/sys/block").join(name).exists()
}

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub cores: Option<usize>,
    pub user_percent: f64,
    pub system_percent: f64,
    pub iowait_percent: f64,
    pub steal_percent: f64,
    pub idle_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub device: String,
    pub reads_per_s: f64,
    pub writes_per_s: f64,
    pub read_bytes_per_s: f64,
    pub write_bytes_per_s: f64,
    /// Share of the interval the device was busy.
    pub busy_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Net {
    pub interface: String,
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
    pub rx_packets_per_s: f64,
    pub tx_packets_per_s: f64,
    /// Errors and drops during the interval (counts, not rates).
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// CPU shares over the interval between two samples.
pub fn cpu(prev: &Sample, cur: &Sample) -> Option<Cpu> {
    let (a, b) = (prev.cpu?, cur.cpu?);
    let total = b.total.saturating_sub(a.total).max(1) as f64;
    let pct = |x: u64, y: u64| round2(y.saturating_sub(x) as f64 * 100.0 / total);
    Some(Cpu {
        cores: cur.cores,
        user_percent: pct(a.user, b.user),
        system_percent: pct(a.system, b.system),
        iowait_percent: pct(a.iowait, b.iowait),
        steal_percent: pct(a.steal, b.steal),
        idle_percent: pct(a.idle, b.idle),
    })
}

/// Per-device rates; devices absent from either sample are left out until they have two readings.
pub fn disks(prev: &Sample, cur: &Sample) -> Option<Vec<Disk>> {
    let (a, b) = (prev.disks.as_ref()?, cur.disks.as_ref()?);
    let secs = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    Some(
        b.iter()
            .filter_map(|(name, now)| {
                let then = a.get(name)?;
                let rate = |x: u64, y: u64| round2(y.saturating_sub(x) as f64 / secs);
                Some(Disk {
                    device: name.clone(),
                    reads_per_s: rate(then.reads, now.reads),
                    writes_per_s: rate(then.writes, now.writes),
                    read_bytes_per_s: round2(
                        now.sectors_read.saturating_sub(then.sectors_read) as f64 * 512.0 / secs,
                    ),
                    write_bytes_per_s: round2(
                        now.sectors_written.saturating_sub(then.sectors_written) as f64 * 512.0
                            / secs,
                    ),
                    busy_percent: round2(
                        (now.io_ms.saturating_sub(then.io_ms) as f64 / (secs * 10.0)).min(100.0),
                    ),
                })
            })
            .collect(),
    )
}

/// Per-interface rates.
pub fn nets(prev: &Sample, cur: &Sample) -> Option<Vec<Net>> {
    let (a, b) = (prev.nets.as_ref()?, cur.nets.as_ref()?);
    let secs = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    Some(
        b.iter()
            .filter_map(|(name, now)| {
                let then = a.get(name)?;
                let rate = |x: u64, y: u64| round2(y.saturating_sub(x) as f64 / secs);
                Some(Net {
                    interface: name.clone(),
                    rx_bytes_per_s: rate(then.rx_bytes, now.rx_bytes),
                    tx_bytes_per_s: rate(then.tx_bytes, now.tx_bytes),
                    rx_packets_per_s: rate(then.rx_packets, now.rx_packets),
                    tx_packets_per_s: rate(then.tx_packets, now.tx_packets),
                    rx_errors: now.rx_errors.saturating_sub(then.rx_errors),
                    tx_errors: now.tx_errors.saturating_sub(then.tx_errors),
                    rx_dropped: now.rx_dropped.saturating_sub(then.rx_dropped),
                    tx_dropped: now.tx_dropped.saturating_sub(then.tx_dropped),
                })
            })
            .collect(),
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
}

pub fn load() -> Option<Load> {
    note("/proc/loadavg", procfs::LoadAverage::current()).map(|l| Load {
        load1: round2(l.one as f64),
        load5: round2(l.five as f64),
        load15: round2(l.fifteen as f64),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    /// Kernel buffers and page cache (`Buffers`, `Cached` of /proc/meminfo): reclaimable, and
    /// where PostgreSQL's reads beyond shared_buffers are served from.
    pub buffers_bytes: u64,
    pub cached_bytes: u64,
}

pub fn memory() -> Option<Memory> {
    note("/proc/meminfo", procfs::Meminfo::current()).map(|m| {
        let available = m.mem_available.unwrap_or(m.mem_free + m.buffers + m.cached);
        Memory {
            total_bytes: m.mem_total,
            available_bytes: available,
            used_bytes: m.mem_total.saturating_sub(available),
            swap_total_bytes: m.swap_total,
            swap_used_bytes: m.swap_total.saturating_sub(m.swap_free),
            buffers_bytes: m.buffers,
            cached_bytes: m.cached,
        }
    })
}
