//! `system_metrics`: one record per cycle about the host PostgreSQL runs on: CPU shares, load,
//! memory, the root filesystem and those holding the data and log directories, disk and network
//! rates, and the PostgreSQL processes. Read from /proc (procfs crate) and statvfs (rustix); the
//! database is asked only for its directories (with the server identity, once per connection) and
//! one backend pid, which leads to the postmaster. Rates cover the time since the previous cycle; the first cycle measures
//! from the start of the cycle.

pub(crate) mod sample;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{col, CollectError, Collected, Collector, Context};
use crate::batch::BatchKind;
use crate::telemetry::registry::{Counters, Event};
use sample::Sample;
pub use sample::{Cpu, Disk, Load, Memory, Net};

/// Shortest interval rates are computed over, so a first cycle that ran fast is not all noise.
const MIN_WINDOW: Duration = Duration::from_millis(250);

/// The host record.
#[derive(Debug, Clone, Serialize)]
pub struct SystemRecord {
    /// Seconds the rates below cover.
    pub interval_s: f64,
    pub cpu: Option<Cpu>,
    pub load: Option<Load>,
    pub memory: Option<Memory>,
    pub filesystems: Vec<Filesystem>,
    pub disks: Option<Vec<Disk>>,
    pub network: Option<Vec<Net>>,
    pub postgres_processes: Option<Processes>,
}

/// The root filesystem, or one holding one of the server's directories.
#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    /// `data_directory` or `log_directory`.
    pub role: &'static str,
    pub path: String,
    pub mount_point: Option<String>,
    pub fs_type: Option<String>,
    pub device: Option<String>,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Free to unprivileged users (excludes the root reserve).
    pub available_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// The postmaster and its children.
#[derive(Debug, Clone, Serialize)]
pub struct Processes {
    pub postmaster_pid: i32,
    pub count: u64,
    /// Sum of resident set sizes. Shared memory each process touched is counted in every one of
    /// them, so this overstates the real footprint.
    pub rss_bytes: u64,
}

#[derive(Default)]
pub struct SystemCollector {
    prev: Option<Sample>,
    /// Unreadable sources of a reading not yet counted (the window's first).
    unreadable: u64,
    /// The data directory was hidden (and this was warned about once); cleared when it shows.
    warned_hidden: bool,
}

impl SystemCollector {
    /// Takes the first reading if there is none, so the first cycle's rates span the cycle.
    pub fn begin_window(&mut self) {
        if self.prev.is_none() {
            let first = Sample::read();
            self.unreadable += first.unreadable;
            self.prev = Some(first);
        }
    }

    /// Says once, not every cycle, that the filesystems go unmeasured and which grant would fix it.
    fn note_hidden_directories(&mut self, hidden: bool, user: &str) {
        if hidden && !self.warned_hidden {
            tracing::warn!(
                role = user,
                "filesystem metrics of the data and log directories are off: data_directory is shown only \
                 to superusers and members of pg_read_all_settings; GRANT pg_read_all_settings (or pg_monitor) \
                 to the agent's role; the other host metrics are still collected"
            );
        } else if !hidden && self.warned_hidden {
            tracing::info!("data_directory is visible again: filesystem metrics resume");
        }
        self.warned_hidden = hidden;
    }
}

impl Collector for SystemCollector {
    const NAME: &'static str = "system";
    const KIND: BatchKind = BatchKind::SystemMetrics;
    const NEEDS_DB: bool = false;
    type Record = SystemRecord;

    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<SystemRecord>>, CollectError> {
        self.begin_window();
        let prev = match self.prev.take() {
            Some(p) => p,
            None => Sample::read(),
        };
        let waited = prev.at.elapsed();
        if waited < MIN_WINDOW {
            tokio::time::sleep(MIN_WINDOW - waited).await;
        }
        let cur = Sample::read();
        let counters = ctx.counters;
        counters.add(
            Event::SystemReadErrors,
            std::mem::take(&mut self.unreadable) + cur.unreadable,
        );
        // The root filesystem always (what the Python agent reported as disk usage), then those
        // of the server's directories when they are known.
        let mut filesystems: Vec<_> = filesystem("root", Path::new("/"), counters)
            .into_iter()
            .collect();
        if let Some(server) = ctx.server {
            self.note_hidden_directories(server.data_directory.is_none(), &ctx.settings.user);
            for (role, dir) in [
                ("data_directory", &server.data_directory),
                ("log_directory", &server.log_directory),
            ] {
                if let Some(dir) = dir {
                    if let Some(fs) = filesystem(role, Path::new(dir), counters) {
                        filesystems.push(fs);
                    }
                }
            }
        }
        let postgres_processes = match ctx.session.as_deref_mut() {
            Some(session) => {
                let row = session
                    .query_opt(
                        "system_backend_pid",
                        "SELECT /* postgres-agent */ pg_backend_pid() AS pid",
                        &[],
                    )
                    .await?;
                match row {
                    Some(r) => processes(col(&r, "system_backend_pid", "pid")?, counters),
                    None => None,
                }
            }
            None => None,
        };
        let record = SystemRecord {
            interval_s: (cur.at.duration_since(prev.at).as_secs_f64() * 1000.0).round() / 1000.0,
            cpu: sample::cpu(&prev, &cur),
            load: counted(counters, sample::load()),
            memory: counted(counters, sample::memory()),
            filesystems,
            disks: sample::disks(&prev, &cur),
            network: sample::nets(&prev, &cur),
            postgres_processes,
        };
        self.prev = Some(cur);
        Ok(Some(Collected::new(vec![record])))
    }
}

/// Space and inodes of the filesystem holding `path`, with its mount from /proc/self/mountinfo.
/// `value`, counting a source that could not be read.
fn counted<T>(counters: &Counters, value: Option<T>) -> Option<T> {
    if value.is_none() {
        counters.incr(Event::SystemReadErrors);
    }
    value
}

fn filesystem(role: &'static str, path: &Path, counters: &Counters) -> Option<Filesystem> {
    let st = match rustix::fs::statvfs(path) {
        Ok(st) => st,
        Err(e) => {
            counters.incr(Event::SystemReadErrors);
            tracing::debug!(path = %path.display(), error = %e, "statvfs failed");
            return None;
        }
    };
    let frsize = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mount = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .ok()
        .and_then(|infos| {
            infos
                .into_iter()
                .filter(|m| resolved.starts_with(&m.mount_point))
                .max_by_key(|m| m.mount_point.as_os_str().len())
        });
    Some(Filesystem {
        role,
        path: path.display().to_string(),
        mount_point: mount.as_ref().map(|m| m.mount_point.display().to_string()),
        fs_type: mount.as_ref().map(|m| m.fs_type.clone()),
        device: mount.and_then(|m| m.mount_source),
        total_bytes: st.f_blocks * frsize,
        free_bytes: st.f_bfree * frsize,
        available_bytes: st.f_bavail * frsize,
        inodes_total: st.f_files,
        inodes_free: st.f_ffree,
    })
}

/// The children of `pid`, from `/proc/PID/task/*/children`; None where the kernel does not
/// provide that file (CONFIG_PROC_CHILDREN) or it cannot be read: the caller then scans /proc.
fn children(pid: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let list = std::fs::read_to_string(task.ok()?.path().join("children")).ok()?;
        out.extend(
            list.split_ascii_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// Resident pages of `pid` (the second field of `/proc/PID/statm`: the `rss` of its stat); None
/// once it has exited.
fn resident_pages(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The postmaster (parent of `backend_pid`) and its children: count and summed RSS. None when the
/// backend is not visible here (the server runs on another host or in another PID namespace).
fn processes(backend_pid: i32, counters: &Counters) -> Option<Processes> {
    let backend = procfs::process::Process::new(backend_pid)
        .ok()?
        .stat()
        .ok()?;
    if backend.comm != "postgres" && backend.comm != "postmaster" {
        return None;
    }
    let postmaster = backend.ppid;
    let page = procfs::page_size();
    let (mut count, mut rss) = (0u64, 0u64);
    // The postmaster's children from its own task entries: a few hundred small reads instead of
    // parsing every process's stat on the host (the largest share of the agent's CPU per cycle in
    // the side-by-side profile, docs/cost.md).
    if let Some(children) = children(postmaster) {
        for pid in std::iter::once(postmaster).chain(children) {
            if let Some(pages) = resident_pages(pid) {
                count += 1;
                rss += pages * page;
            }
        }
        return Some(Processes {
            postmaster_pid: postmaster,
            count,
            rss_bytes: rss,
        });
    }
    let all = match procfs::process::all_processes() {
        Ok(all) => all,
        Err(e) => {
            counters.incr(Event::SystemReadErrors);
            tracing::debug!(error = %e, "cannot list /proc");
            return None;
        }
    };
    // Processes that exit while being read are simply not counted.
    for stat in all.filter_map(|p| p.ok()?.stat().ok()) {
        if stat.pid == postmaster || stat.ppid == postmaster {
            count += 1;
            rss += stat.rss * page;
        }
    }
    Some(Processes {
        postmaster_pid: postmaster,
        count,
        rss_bytes: rss,
    })
}
