//! `<state_dir>/last_cycle.json`: what the daemon records after every cycle (when, whether it was
//! good, the counters), read back by `status` and `check`.
//!
//! It owns the record and its read and write; it does not decide what a good cycle is (the daemon)
//! and does not render it (`cli::status`).

use serde::Serialize;

use crate::clock::now_ms;

/// What the daemon records after every cycle, for `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LastCycle {
    /// When the cycle finished (unix milliseconds).
    pub at_ms: i64,
    /// The database was reachable and the cycle produced its batches.
    pub ok: bool,
    /// When the last cycle with `ok` finished.
    pub last_ok_ms: Option<i64>,
    pub summary: String,
    /// The daemon's counters since it started ([`crate::telemetry::registry`]), as on /metrics.
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// File name of [`LastCycle`] under `agent.state_dir`.
pub const LAST_CYCLE_FILE: &str = "last_cycle.json";

impl LastCycle {
    /// Records a finished cycle atomically and durably ([`super::file::write_atomic`]: readers never
    /// see half, a crash leaves the previous record).
    pub fn save(
        state_dir: &std::path::Path,
        ok: bool,
        summary: &str,
        counters: std::collections::BTreeMap<String, u64>,
    ) -> std::io::Result<()> {
        let at_ms = now_ms();
        let previous = LastCycle::load(state_dir);
        let record = LastCycle {
            at_ms,
            ok,
            last_ok_ms: if ok {
                Some(at_ms)
            } else {
                previous.and_then(|p| p.last_ok_ms)
            },
            summary: summary.to_string(),
            counters,
        };
        let body = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        super::file::write_bytes(&state_dir.join(LAST_CYCLE_FILE), &body)
    }

    pub fn load(state_dir: &std::path::Path) -> Option<LastCycle> {
        let bytes = std::fs::read(state_dir.join(LAST_CYCLE_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
