//! The integration tests, one crate (`cargo test --test it`): one link step for the whole suite.
//!
//! Modules follow `src/`: the tests of `src/collect/spikes` are in `collect/spikes.rs`, those of the
//! log tailer in `logs/tail.rs`, injected faults under the module whose behaviour they test
//! (`ship/faults.rs`, `state/faults.rs`, `logs/faults.rs`), and each command's tests under `cli/`.
//! The whole tree is declared here, so this file is the map. Run one area with a filter:
//! `cargo test --test it collect::` or `cargo test --test it logs::tail::`.
//!
//! `support/` is the shared harness: a real PostgreSQL per test, the agent binary as a child,
//! in-process listeners, fault-injecting file systems. Tests run as parallel threads of this one
//! process, so nothing here may change process-wide state (environment, current directory, signal
//! dispositions); see `support/mod.rs`.

mod support;

mod cli {
    mod check;
    mod check_causes;
    // The `health` line: which health views the role reads, and the fix for the others.
    mod check_health;
    // The hints `check`, `once` and the daemon give, each produced for real.
    mod check_hints;
    // The command line itself (`src/cli/command.rs`): the Python agent's forms, exit statuses.
    mod command;
    // `postgres-agent demo`: a throwaway server, a workload and the daemon, headless.
    mod demo;
    mod once;
    mod parse_log;
    mod pretty;
    // Usage errors: "did you mean", CONFIG given twice.
    mod usage;
}

mod collect {
    mod activity;
    // A cycle of all collectors (`src/collect/mod.rs`, `Collectors::run_cycle`).
    mod cycle;
    // Server and table health (issue 24): deltas, settings changes, the table pass, versions.
    mod health;
    mod health_daemon;
    mod locks;
    // Plans from auto_explain tied to their statements, plan changes (`src/collect/plans`).
    mod plans;
    // EXPLAIN on demand (`src/collect/plans/explain.rs`): PostgreSQL 16+ in the matrix.
    mod plans_explain;
    mod sampling;
    mod spikes;
    // Baseline-relative triggers under a steady load of 100 sessions.
    mod spikes_baseline;
    mod statements;
    // Statement texts read at most once per interval, deltas exact across the wait.
    mod statements_texts;
    // Only the entries that changed are read; an entry gone and back counts as new.
    mod statements_changed;
    // The interval's execution-time spread and the lifetime extremes.
    mod statements_spread;
    mod system;
}

mod config {
    // The Python agent's names (`src/config/aliases.rs`).
    mod aliases;
    // Loading, precedence and error paths (`src/config/mod.rs`).
    mod load;
    // Bad input refused at load (`src/config/validate.rs`, `raw.rs`, `env.rs`).
    mod validate;
}

// Correlation IDs only in the PHP agent's shapes (`src/correlation.rs`).
mod correlation;

mod daemon {
    // The daemon as a whole (`src/daemon/mod.rs`): signals, `/health`, systemd notifications.
    mod lifecycle;
    // The shipped unit file (`systemd/`).
    mod systemd_unit;
}

mod db {
    // One connection held while idle.
    mod idle_connections;
    // A role with only `pg_read_all_stats`.
    mod monitoring_role;
    // The pool and its sessions (`src/db/mod.rs`).
    mod pool;
    mod tls;
}

// Every INI block of README.md and docs/ passes `check --config-only`; package assets.
mod docs_examples;

mod logs {
    mod faults;
    // Which file and server a log position belongs to (`src/logs/position.rs`, `source.rs`).
    mod position;
    mod tail;
    mod parse {
        mod fuzz;
        // stderr and csvlog parsed equal to jsonlog, from one live server.
        mod oracle;
    }
}

mod privacy;
// Privacy counts land in the counters the collectors were handed.
mod privacy_counts;

mod ship {
    // Delivery to a real HTTP(S) listener: wire format, retries, breaker, TLS.
    mod delivery;
    // Backlogs draining after outages, body limits, request limits.
    mod drain;
    // Hung listeners and disks, full and read-only state directories.
    mod faults;
    // HTTP faults of the listener connection: redirects, TLS mistakes.
    mod http;
    // The log cursor stored with its pg_logs requests, and the upgrade path.
    mod log_cursor;
    // `once` delivering through the outbox.
    mod once;
    // listener.protocol = otlp: the real daemon, decoded by the official OTLP definitions.
    mod otlp;
    mod outbox;
    mod python_buffer;
    mod encode {
        // Interoperability with the Bitville listener's contract.
        mod bitville;
    }
}

mod state {
    // A second agent, a removed outbox, a frozen file system.
    mod faults;
}

mod telemetry {
    mod registry;
}
