//! The host's busiest processes over a short window: two readings of every `/proc/<pid>/stat`, the
//! CPU each process used in between. Blocking file reads (thousands of small files on a busy host),
//! so the caller runs them off the runtime thread.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

/// One reading: per pid, (comm, utime + stime in ticks).
pub struct Reading {
    at: Instant,
    procs: HashMap<i32, (String, u64)>,
}

/// A process in the top list.
#[derive(Debug, Clone, Serialize)]
pub struct TopProcess {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    /// For PostgreSQL processes, the process title (`postgres: user db host SELECT`); not read for
    /// other processes, whose command lines may carry secrets.
    pub title: Option<String>,
    /// Share of one core used over the window.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// Reads every process's CPU time. Processes that exit while being read are left out.
pub fn read() -> Reading {
    let mut procs = HashMap::new();
    if let Ok(all) = procfs::process::all_processes() {
        for stat in all.filter_map(|p| p.ok()?.stat().ok()) {
            procs.insert(stat.pid, (stat.comm, stat.utime + stat.stime));
        }
    }
    Reading {
        at: Instant::now(),
        procs,
    }
}

/// The `n` processes that used the most CPU between `before` and now.
pub fn top(before: &Reading, n: usize) -> Vec<TopProcess> {
    let ticks_per_s = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    let mut out = Vec::new();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let seconds = before.at.elapsed().as_secs_f64().max(0.001);
    for (process, stat) in all.filter_map(|p| {
        let p = p.ok()?;
        let s = p.stat().ok()?;
        Some((p, s))
    }) {
        let used = stat.utime + stat.stime;
        let prev = before
            .procs
            .get(&stat.pid)
            .filter(|(comm, _)| *comm == stat.comm)
            .map_or(0, |(_, t)| *t);
        let cpu = used.saturating_sub(prev) as f64 / ticks_per_s / seconds * 100.0;
        if cpu <= 0.0 {
            continue;
        }
        out.push((process, stat, cpu));
    }
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out.truncate(n);
    out.into_iter()
        .map(|(process, stat, cpu)| {
            let postgres = stat.comm == "postgres" || stat.comm == "postmaster";
            let title = postgres
                .then(|| process.cmdline().ok())
                .flatten()
                .map(|parts| {
                    let mut t = parts.join(" ");
                    if t.len() > 200 {
                        let mut end = 200;
                        while !t.is_char_boundary(end) {
                            end -= 1;
                        }
                        t.truncate(end);
                    }
                    t
                });
            TopProcess {
                pid: stat.pid,
                ppid: stat.ppid,
                comm: stat.comm,
                title,
                cpu_percent: super::super::sampling::host::round2(cpu),
                rss_bytes: stat.rss * page,
            }
        })
        .collect()
}
