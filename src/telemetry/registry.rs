//! Every event the agent counts, defined once ([`Event`]: name and help text), with one counter per
//! process in [`Counters`]: created by whoever runs the agent (the daemon, a command) and handed down
//! to the parts that count, never a static. The counters are exported on `/metrics` as
//! `postgres_agent_<name>_total` with their help text, written with each cycle record so that
//! `status` (another process) shows the same figures, and documented in docs/operations.md (a test
//! walks [`Event::ALL`] and checks both).
//!
//! Figures that describe a state rather than count events (outbox depth, breaker state, memory) and
//! counts broken down by a label (cycles by outcome, batches by type) stay in
//! [`super::metrics::Metrics`].

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

macro_rules! events {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $help:literal;)*) => {
        /// Something the agent counts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Event {
            $($(#[$doc])* $variant,)*
        }

        impl Event {
            /// Every event, in the order of [`Counters`].
            pub const ALL: &'static [Event] = &[$(Event::$variant,)*];

            /// The metric name without the `postgres_agent_` prefix and the `_total` suffix.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Event::$variant => $name,)*
                }
            }

            /// The help text on `/metrics`.
            pub const fn help(self) -> &'static str {
                match self {
                    $(Event::$variant => $help,)*
                }
            }
        }
    };
}

events! {
    // Collection.
    CollectorFailures = "collector_failures",
        "Collector runs that failed; the collector is skipped for that cycle";
    CollectorTimeouts = "collector_timeouts",
        "Collector runs abandoned at their time budget";
    CyclesSkipped = "cycles_skipped",
        "Cycle ticks skipped because the previous cycle overran";
    ActivityRowsOmitted = "activity_rows_omitted",
        "pg_stat_activity rows beyond safety.max_activity_rows, left out";
    StatementsOmitted = "statements_omitted",
        "Statements that ran in an interval but were beyond safety.max_statement_rows, left out";
    StatementsAgentOwn = "statements_agent_own",
        "The agent's own statements left out of pg_statements";
    StatementsNoPrivilege = "statements_no_privilege",
        "pg_stat_statements rows hidden by missing privileges (grant pg_read_all_stats)";
    StatementsResetEntries = "statements_reset_entries",
        "Statements re-baselined after a reset or an eviction (reported from zero, flagged)";
    StatementsTextMissing = "statements_text_missing",
        "Reported statements whose text was no longer in pg_stat_statements (sent with query null)";
    StatementsBaselineDiscarded = "statements_baseline_discarded",
        "Saved statement baselines that could not be used (damaged, other server or layout) and were replaced";
    StatementsUnavailable = "statements_unavailable",
        "Cycles without pg_statements because pg_stat_statements is not available";
    LocksOmitted = "locks_omitted",
        "Waiting locks beyond the row bound, left out";
    LockChainsTruncated = "lock_chains_truncated",
        "Blocker chains cut at their depth or size bound";
    SystemReadErrors = "system_read_errors",
        "Host metric sources (/proc files, statvfs) that could not be read; the field is sent as null";
    AgentServerMicroseconds = "agent_server_microseconds",
        "Server execution and planning time of the agent's own statements, in microseconds (from pg_stat_statements)";
    AgentServerCalls = "agent_server_calls",
        "Calls of the agent's own statements (from pg_stat_statements)";
    // Logs.
    LogEntriesParsed = "log_entries_parsed",
        "Server log entries parsed";
    LogLinesUnparsed = "log_lines_unparsed",
        "Log lines that fit no format (kept as entries with error_severity null)";
    LogEntriesTruncated = "log_entries_truncated",
        "Log entries cut at the 1 MiB cap";
    LogBytesSkipped = "log_bytes_skipped",
        "Bytes of cut log entries that were dropped";
    LogNoTimestamp = "log_entries_no_timestamp",
        "Parsed log entries whose timestamp could not be read (unknown zone abbreviation)";
    LogFilesTruncated = "log_files_truncated",
        "Times a followed log file shrank below the saved position (truncated or replaced in place)";
    LogAgentOwnEntries = "log_entries_agent_own",
        "Log entries written by the agent's own sessions, left out of pg_logs";
    LogPositionSetAside = "log_position_set_aside",
        "Damaged log position files moved aside (reading resumed after the newest pg_logs batch in the outbox, else logs.start_at)";
    StateFilesSetAside = "state_files_set_aside",
        "Damaged state files (statement baseline, log position) moved aside to <name>.corrupt-<ms> and replaced by a fresh one";
    LogBatchRetries = "log_batch_retries",
        "pg_logs batches that could not be written and were read again after a back-off";
    PrivacyLiteralsMasked = "privacy_unterminated_literals_masked",
        "Query texts whose unterminated trailing literal (cut by track_activity_query_size) was masked whole";
    PrivacyLogSpansRedacted = "privacy_log_spans_redacted",
        "Spans of log text replaced by secret redaction (privacy.redact_log_secrets)";
    // Storage.
    OutboxWriteStalls = "outbox_write_stalls",
        "Cycles whose outbox writes did not finish within 10 s (reported, not waited for)";
    OutboxStorageFailures = "outbox_storage_failures",
        "Outbox writes refused by the storage (full disk, file-size limit, read-only or failing state directory)";
    OutboxStorageStalls = "outbox_storage_stalls",
        "Writes that found the outbox stuck on the storage for 2 s (a hung disk) and held their requests in memory";
    OutboxRecreated = "outbox_recreated",
        "Outbox databases replaced: a damaged one moved aside for a fresh one, or a removed one recreated from the open database";
    OutboxVanished = "outbox_vanished",
        "Times the outbox file was found removed or replaced under the running agent (recreated from the open database)";
    StateLockRetaken = "state_lock_retaken",
        "Times the state directory's lock file was found removed and was created and locked again";
    StateWriterOverflows = "state_writer_overflows",
        "Batches held in memory because the state writer's queue (32 MiB) was full (a hung disk)";
    StateWritesSkipped = "state_writes_skipped",
        "Writes of the cycle record, statement baseline or log position skipped because the previous one had not returned (a hung disk)";
    RequestsHeld = "requests_held",
        "Requests held in memory because the outbox took no writes";
    HeldDropped = "held_dropped",
        "Requests dropped from memory at its 16 MiB bound while the outbox took no writes (lost)";
    HeldLost = "held_lost",
        "Requests still held in memory at exit after one last send attempt, the outbox taking no writes (lost)";
    RequestsEvicted = "requests_evicted",
        "Requests evicted from the outbox by this process (buffer.max_size_mb or a full disk); per type across restarts: outbox_evictions";
    EnqueueFailures = "enqueue_failures",
        "Batches neither stored nor held nor printed (lost)";
    StdoutLines = "stdout_lines",
        "Batches printed on stdout (no listener configured)";
    // Delivery.
    RequestsDelivered = "requests_delivered",
        "Requests the listener accepted";
    SendFailures = "send_failures",
        "Requests that failed and stay queued for a retry";
    RequestsDeadLettered = "requests_dead_lettered",
        "Requests the listener rejected for good (moved to the dead letters)";
    RequestsThrottled = "requests_throttled",
        "Requests answered 429 by the listener (sent again after Retry-After)";
    DeliveryStalls = "delivery_stalls",
        "Cycles that found a delivery pass running far past its budget and the listener timeout (delivery stuck)";
    CorrelatedPayloads = "correlated_payloads",
        "Bitville correlated payloads made (one per correlation ID and statement)";
    CorrelatedMerged = "correlated_merged",
        "Statements merged into another correlated payload of the same ID (the per-minute budget)";
    CorrelatedRepeated = "correlated_repeated",
        "Sessions not sent again because the same statement was already sent";
    OtlpPartialSuccesses = "otlp_partial_successes",
        "OTLP requests accepted with a partial_success (part rejected by the receiver, not sent again)";
    OtlpRejectedItems = "otlp_rejected_items",
        "Log records and data points an OTLP receiver reported rejected in a partial_success";
    // Plans (issue 23).
    PlansDropped = "plans_dropped",
        "auto_explain plan sightings dropped because 10,000 were waiting for the next cycle (the entries still went out in pg_logs)";
    PlansEvicted = "plans_evicted",
        "Plans or statements evicted from the plan store at its bounds (20,000 statements, 8 plans each)";
}

/// One counter per [`Event`], shared by every part of one process that counts. Cheap to clone.
#[derive(Clone)]
pub struct Counters(Arc<[Counter]>);

impl Default for Counters {
    fn default() -> Counters {
        Counters(Event::ALL.iter().map(|_| Counter::default()).collect())
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

impl Counters {
    pub fn incr(&self, e: Event) {
        self.add(e, 1);
    }

    pub fn add(&self, e: Event, n: u64) {
        if n > 0 {
            self.0[e as usize].inc_by(n);
        }
    }

    /// Brings `e` up to `total`, a running total kept elsewhere (the privacy functions count in
    /// their own module).
    pub fn raise_to(&self, e: Event, total: u64) {
        self.add(e, total.saturating_sub(self.get(e)));
    }

    pub fn get(&self, e: Event) -> u64 {
        self.0[e as usize].get()
    }

    /// Every counter by name, for the cycle record and `status`.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        Event::ALL
            .iter()
            .map(|e| (e.name(), self.get(*e)))
            .collect()
    }

    /// Registers every counter under the `postgres_agent_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("postgres_agent");
        for e in Event::ALL {
            r.register(e.name(), e.help(), self.0[*e as usize].clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_independent() {
        let mut names: Vec<_> = Event::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate event names");
        let c = Counters::default();
        c.add(Event::HeldDropped, 3);
        c.incr(Event::CollectorFailures);
        assert_eq!(c.get(Event::HeldDropped), 3);
        assert_eq!(c.get(Event::CollectorFailures), 1);
        assert_eq!(c.get(Event::LocksOmitted), 0);
        let clone = c.clone();
        clone.incr(Event::HeldDropped);
        assert_eq!(c.get(Event::HeldDropped), 4, "clones share the counters");
    }
}
