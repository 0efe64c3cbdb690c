//! Counters of everything the collectors skip, drop or cut, so nothing is lost silently. Process-wide
//! (the daemon runs one set of collectors); [`counters`] takes a snapshot for `/metrics` and `status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A monotonic counter.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub fn incr(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Collectors that failed (error) and were skipped for a cycle.
pub static COLLECTOR_FAILURES: Counter = Counter::new();
/// Collectors that ran past their deadline and were abandoned for a cycle.
pub static COLLECTOR_TIMEOUTS: Counter = Counter::new();
/// pg_stat_activity rows beyond `safety.max_activity_rows`.
pub static ACTIVITY_ROWS_OMITTED: Counter = Counter::new();
/// Statements that ran in an interval but were beyond `safety.max_statement_rows`.
pub static STATEMENTS_OMITTED: Counter = Counter::new();
/// The agent's own statements left out of pg_statements.
pub static STATEMENTS_AGENT_OWN: Counter = Counter::new();
/// Server execution + planning time of the agent's own statements, in microseconds (cumulative).
pub static AGENT_EXEC_TIME_US: Counter = Counter::new();
/// Calls of the agent's own statements (cumulative).
pub static AGENT_CALLS: Counter = Counter::new();
/// pg_stat_statements rows hidden by missing privileges (NULL queryid): grant pg_read_all_stats.
pub static STATEMENTS_NO_PRIVILEGE: Counter = Counter::new();
/// Entries re-baselined after a reset or an eviction (reported from zero, flagged).
pub static STATEMENTS_RESET_ENTRIES: Counter = Counter::new();
/// Reported statements whose text was no longer in pg_stat_statements (sent with `query: null`).
pub static STATEMENTS_TEXT_MISSING: Counter = Counter::new();
/// Saved baselines that could not be used (unreadable, other server or layout) and were replaced.
pub static STATEMENTS_BASELINE_DISCARDED: Counter = Counter::new();
/// Cycles without pg_statements because pg_stat_statements is not available.
pub static STATEMENTS_UNAVAILABLE: Counter = Counter::new();
/// Waiting locks beyond the row bound.
pub static LOCKS_OMITTED: Counter = Counter::new();
/// Blocker chains cut at the depth or size bound.
pub static LOCK_CHAINS_TRUNCATED: Counter = Counter::new();
/// Host metric sources (/proc files, statvfs) that could not be read; the field is sent as null.
pub static SYSTEM_READ_ERRORS: Counter = Counter::new();

/// A point-in-time copy of every collector counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub collector_failures: u64,
    pub collector_timeouts: u64,
    pub activity_rows_omitted: u64,
    pub statements_omitted: u64,
    pub statements_agent_own: u64,
    pub agent_exec_time_us: u64,
    pub agent_calls: u64,
    pub statements_no_privilege: u64,
    pub statements_reset_entries: u64,
    pub statements_text_missing: u64,
    pub statements_baseline_discarded: u64,
    pub statements_unavailable: u64,
    pub locks_omitted: u64,
    pub lock_chains_truncated: u64,
    pub system_read_errors: u64,
}

/// Reads every counter.
pub fn counters() -> CounterSnapshot {
    CounterSnapshot {
        collector_failures: COLLECTOR_FAILURES.get(),
        collector_timeouts: COLLECTOR_TIMEOUTS.get(),
        activity_rows_omitted: ACTIVITY_ROWS_OMITTED.get(),
        statements_omitted: STATEMENTS_OMITTED.get(),
        statements_agent_own: STATEMENTS_AGENT_OWN.get(),
        agent_exec_time_us: AGENT_EXEC_TIME_US.get(),
        agent_calls: AGENT_CALLS.get(),
        statements_no_privilege: STATEMENTS_NO_PRIVILEGE.get(),
        statements_reset_entries: STATEMENTS_RESET_ENTRIES.get(),
        statements_text_missing: STATEMENTS_TEXT_MISSING.get(),
        statements_baseline_discarded: STATEMENTS_BASELINE_DISCARDED.get(),
        statements_unavailable: STATEMENTS_UNAVAILABLE.get(),
        locks_omitted: LOCKS_OMITTED.get(),
        lock_chains_truncated: LOCK_CHAINS_TRUNCATED.get(),
        system_read_errors: SYSTEM_READ_ERRORS.get(),
    }
}
