//! `postgres-agent status`: reads the outbox database read-only (safe while the daemon writes to
//! it) and renders depth, bytes and age per type, dead letters, evictions, the circuit breaker and
//! the last successful send, as text or JSON.
//!
//! Only the command: the daemon's last-cycle record it shows is [`crate::state::last_cycle`].

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::pretty::plural;
use crate::clock::{format_rfc3339, now_ms};
use crate::config::Config;
use crate::ship::outbox::{self, schema, OutboxStats};
use crate::ship::ShipError;
use crate::state::last_cycle::LastCycle;
use crate::telemetry::registry::Event;

/// Everything `status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The state directory read (`agent.state_dir`), as the daemon finds it from the same config.
    pub state_dir: PathBuf,
    /// Where `agent.state_dir` was set: the config file, an environment variable, or the default.
    pub state_dir_from: String,
    /// None: batches go to stdout and the outbox is unused.
    pub listener_url: Option<String>,
    /// `listener.protocol`.
    pub protocol: &'static str,
    /// Progress of the import of the Bitville Python agent's buffer, if one was imported.
    pub python_buffer: Option<crate::ship::python_buffer::ImportMarker>,
    pub outbox_path: PathBuf,
    pub max_size_bytes: u64,
    /// None when the outbox database does not exist yet.
    pub outbox: Option<OutboxStats>,
    /// When this report was made (unix milliseconds).
    pub now_ms: i64,
    /// The daemon's last collection cycle (`<state_dir>/last_cycle.json`), if it has run.
    pub last_cycle: Option<LastCycle>,
}

/// Reads the status of the outbox configured in `config`.
pub fn read(config: &Config) -> Result<StatusReport, ShipError> {
    let path = config.agent.state_dir.join(outbox::FILE_NAME);
    let stats = if path.exists() {
        let conn = schema::open_ro(&path)?;
        Some(
            outbox::stats::read(&conn, &path).map_err(|source| outbox::OutboxError::Sqlite {
                path: path.clone(),
                source,
            })?,
        )
    } else {
        None
    };
    Ok(StatusReport {
        state_dir: config.agent.state_dir.clone(),
        state_dir_from: config.agent.state_dir_origin.to_string(),
        listener_url: config.listener.url.clone(),
        protocol: config.listener.protocol.as_str(),
        python_buffer: crate::ship::python_buffer::marker(&config.agent.state_dir)
            .ok()
            .flatten(),
        outbox_path: path,
        max_size_bytes: config.buffer.max_size_bytes,
        outbox: stats,
        now_ms: now_ms(),
        last_cycle: LastCycle::load(&config.agent.state_dir),
    })
}

impl StatusReport {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = self.write_text(&mut s);
        s
    }

    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        writeln!(
            s,
            "state dir:     {} (from {})",
            self.state_dir.display(),
            self.state_dir_from
        )?;
        match &self.last_cycle {
            Some(c) => {
                writeln!(s, "last cycle:    {} ({})", self.when(c.at_ms), c.summary)?;
                match c.last_ok_ms {
                    Some(ms) => writeln!(s, "last success:  {}", self.when(ms))?,
                    None => writeln!(s, "last success:  never")?,
                }
                let counted: Vec<(&String, &u64)> =
                    c.counters.iter().filter(|(_, n)| **n > 0).collect();
                if !counted.is_empty() {
                    // The same figures as /metrics (postgres_agent_<name>_total), as of that cycle,
                    // each with what it counts (docs/operations.md, "Counters").
                    writeln!(
                        s,
                        "counted:       since the daemon started (docs/operations.md, \"Counters\"):"
                    )?;
                    let width = counted.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
                    for (name, n) in counted {
                        let help = Event::ALL
                            .iter()
                            .find(|e| e.name() == name.as_str())
                            .map(|e| e.help())
                            .unwrap_or("");
                        writeln!(s, "  {name:<width$} {n:>6}  {help}")?;
                    }
                }
            }
            None => writeln!(
                s,
                "last cycle:    none recorded: no daemon has run with this state dir (a daemon \
                 started with another config file or BITVILLE_PG_AGENT_STATE_DIR writes elsewhere)"
            )?,
        }
        match &self.listener_url {
            Some(url) => writeln!(s, "listener:      {url} (protocol {})", self.protocol)?,
            None => writeln!(
                s,
                "listener:      none (listener.url is empty): the daemon prints each batch on its \
                 stdout (a table on a terminal, JSON lines on a pipe or under systemd) and sends \
                 nothing; the outbox is unused"
            )?,
        }
        if let Some(m) = &self.python_buffer {
            writeln!(
                s,
                "python buffer: {} payloads queued from {}, {} skipped, {}",
                m.pushed,
                m.db_path.display(),
                m.skipped,
                if m.complete {
                    "complete: the directory can be deleted"
                } else {
                    "not finished: continues at the next start"
                }
            )?;
        }
        let Some(o) = &self.outbox else {
            return writeln!(
                s,
                "outbox:        {} does not exist yet (nothing has been queued)",
                self.outbox_path.display()
            );
        };
        writeln!(
            s,
            "outbox:        {} ({} on disk, cap {})",
            o.path.display(),
            bytes(o.file_bytes),
            bytes(self.max_size_bytes)
        )?;
        match &o.breaker {
            Some(b) => {
                write!(
                    s,
                    "circuit:       {} ({} consecutive failures)",
                    b.state, b.consecutive_failures
                )?;
                if let Some(t) = &b.last_transition {
                    write!(
                        s,
                        "; last transition {} -> {} {}: {}",
                        t.from,
                        t.to,
                        self.when(t.at_ms),
                        t.reason
                    )?;
                }
                writeln!(s)?;
            }
            None => writeln!(s, "circuit:       closed (no failure recorded)")?,
        }
        match o.last_success_ms {
            Some(ms) => writeln!(s, "last send:     {}", self.when(ms))?,
            None => writeln!(s, "last send:     never")?,
        }
        write!(
            s,
            "queued:        {}, {}",
            plural(o.depth, "batch", "batches"),
            bytes(o.bytes)
        )?;
        match o.oldest_enqueued_ms {
            Some(ms) => writeln!(s, ", oldest enqueued {}", self.when(ms))?,
            None => writeln!(s)?,
        }
        writeln!(
            s,
            "  {:<15} {:>7} {:>10} {:>10} {:>10} {:>8} {:>6}",
            "type", "queued", "bytes", "oldest", "delivered", "evicted", "dead"
        )?;
        for k in &o.kinds {
            let age = k
                .oldest_enqueued_ms
                .map(|ms| age(self.now_ms - ms))
                .unwrap_or_else(|| "-".into());
            writeln!(
                s,
                "  {:<15} {:>7} {:>10} {:>10} {:>10} {:>8} {:>6}",
                k.kind,
                k.depth,
                bytes(k.bytes),
                age,
                k.delivered,
                k.evicted,
                k.dead_lettered
            )?;
        }
        writeln!(
            s,
            "evicted:       {} at the size cap (since the database was created)",
            plural(o.evicted, "batch", "batches")
        )?;
        writeln!(
            s,
            "dead letters:  {} kept, {} dropped",
            o.dead_letters, o.dead_letters_dropped
        )?;
        for d in &o.recent_dead_letters {
            let status = d
                .http_status
                .map(|h| format!("HTTP {h}"))
                .unwrap_or_default();
            writeln!(
                s,
                "  {} {} {} {}: {}",
                d.batch_id,
                d.kind,
                status,
                self.when(d.dead_ms),
                d.reason
            )?;
        }
        if o.correlated_merged > 0 || o.throttled > 0 {
            writeln!(
                s,
                "rate limit:    {} correlated statements merged into their ID's payload, {} requests \
                 answered 429 and sent again",
                o.correlated_merged, o.throttled
            )?;
        }
        if o.recreated > 0 {
            writeln!(
                s,
                "recovered:     a corrupt outbox was moved aside and replaced {} time(s); see the \
                 {}.corrupt-* files",
                o.recreated,
                o.path.display()
            )?;
        }
        Ok(())
    }

    fn when(&self, ms: i64) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .map(format_rfc3339)
            .unwrap_or_else(|_| ms.to_string());
        format!("{t} ({} ago)", age(self.now_ms - ms))
    }
}

fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
