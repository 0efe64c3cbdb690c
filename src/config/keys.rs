//! The table of every configuration key: section, name, default, kind and meaning.
//!
//! This table is the single definition of what the INI file may contain. Loading checks keys against
//! it (unknown keys are errors with a suggestion), the typed sections read their defaults from it, and
//! a test checks that README.md documents every row.

/// How a key's value is checked before the typed sections read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// A secret: never printed, in errors or logs.
    Secret,
    Bool,
    /// An unsigned integer within an inclusive range.
    Int(u64, u64),
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// A comma-separated list of words.
    List,
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub section: &'static str,
    pub key: &'static str,
    /// The built-in default as it would be written in the INI file ("" = unset).
    pub default: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

const fn k(
    section: &'static str,
    key: &'static str,
    default: &'static str,
    kind: Kind,
    doc: &'static str,
) -> KeySpec {
    KeySpec {
        section,
        key,
        default,
        kind,
        doc,
    }
}

pub const SECTIONS: &[&str] = &[
    "agent",
    "postgres",
    "safety",
    "listener",
    "buffer",
    "circuit_breaker",
    "logs",
    "correlation",
    "privacy",
    "telemetry",
    "logging",
    "activity",
    "spikes",
    "otlp",
    "health",
    "plans",
];

pub const SSLMODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];
pub const LOG_FORMATS: &[&str] = &["auto", "stderr", "csvlog", "jsonlog", "syslog"];
pub const REDACT_CLASSES: &[&str] = &[
    "credential",
    "parsing_error",
    "statement_text",
    "statement_parameter",
    "table_data",
    "all",
    "none",
];

use Kind::*;

pub const KEYS: &[KeySpec] = &[
    k("agent", "project_id", "", Str, "Project identifier sent in every batch envelope."),
    k("agent", "collection_interval_s", "60", Int(1, 86_400), "Seconds between collection cycles (cycles start at fixed multiples of it)."),
    k("agent", "state_dir", "/var/lib/bitville-postgres-agent", Str, "Directory for the outbox, statement baselines and log positions."),
    k("agent", "hostname", "", Str, "Host name reported in batches; empty = the system host name."),
    k("postgres", "host", "/var/run/postgresql", Str, "Server host name, IP address, or Unix socket directory (starts with `/`). Falls back to PGHOST."),
    k("postgres", "port", "5432", Int(1, 65_535), "Server port (also selects the socket file). Falls back to PGPORT."),
    k("postgres", "user", "postgres", Str, "Role to connect as; grant it `pg_monitor`. Falls back to PGUSER."),
    k("postgres", "password", "", Secret, "Password for the role. Falls back to PGPASSWORD. Prefer `password_file`."),
    k("postgres", "password_file", "", Str, "File whose first line is the password (mode 0600)."),
    k("postgres", "database", "postgres", Str, "Database to connect to. Falls back to PGDATABASE."),
    k("postgres", "sslmode", "prefer", Choice(SSLMODES), "libpq sslmode: disable, allow, prefer, require, verify-ca or verify-full. Falls back to PGSSLMODE."),
    k("postgres", "sslrootcert", "", Str, "PEM file of CA certificates for verify-ca/verify-full; empty = the system store."),
    k("postgres", "connect_timeout_s", "5", Int(1, 300), "Seconds to wait for a connection to be established."),
    k("safety", "max_connections", "5", Int(1, 5), "Most connections the agent ever holds open to the server (1 to 5: never more than 5)."),
    k("safety", "statement_timeout_ms", "5000", Int(100, 600_000), "Server-side statement_timeout of every agent session."),
    k("safety", "lock_timeout_ms", "1000", Int(10, 600_000), "Server-side lock_timeout of every agent session."),
    k("safety", "idle_in_transaction_timeout_ms", "10000", Int(100, 3_600_000), "idle_in_transaction_session_timeout of every agent session."),
    k("safety", "client_timeout_ms", "7000", Int(100, 600_000), "Client-side deadline of every query; when it fires the connection is discarded."),
    k("safety", "session_max_age_s", "600", Int(10, 86_400), "Agent sessions older than this are closed and replaced."),
    k("safety", "max_activity_rows", "1000", Int(1, 100_000), "Most pg_stat_activity rows reported per cycle (longest-running first)."),
    k("safety", "max_statement_rows", "500", Int(1, 100_000), "Most pg_stat_statements entries reported per cycle (top by total time)."),
    k("safety", "statement_texts_interval_s", "300", Int(0, 3600), "Texts of newly seen statements are read (pg_stat_statements(true) reads the server's whole query-text file) at most once per this many seconds, except when one of them took at least 10% of the interval's statement time (read at once); statements first seen in between are reported at that read, with their exact deltas since they were last reported; 0 = every cycle."),
    k("safety", "max_query_length", "4096", Int(64, 1_048_576), "Query texts longer than this many bytes are truncated and flagged."),
    k("listener", "url", "", Str, "HTTPS endpoint batches are POSTed to; empty = print batches to stdout."),
    k("listener", "api_key", "", Secret, "Bearer token sent with every request. Prefer `api_key_file`."),
    k("listener", "api_key_file", "", Str, "File whose first line is the API key."),
    k("listener", "timeout_s", "10", Int(1, 300), "Per-request timeout in seconds."),
    k("listener", "protocol", "bitville", Choice(&["bitville", "batch", "otlp"]), "Wire protocol: `bitville` (the Bitville listener's `/ingest/postgres` payloads), `batch` (this agent's batch envelope) or `otlp` (OTLP/HTTP protobuf; `url` is the base endpoint, see docs/otlp.md)."),
    k("listener", "max_requests_per_minute", "90", Int(1, 100_000), "Most requests sent per minute (the Bitville listener allows 100 per client IP). Paces the `bitville` protocol; the `batch` protocol only when set explicitly."),
    k("listener", "max_body_bytes", "1048576", Int(1024, 8_388_608), "Largest request body sent, in bytes on the wire (bitville: the JSON; batch: the gzip body, or the JSON with `compress = false`); larger aggregates are split into parts, a larger single record has its longest texts trimmed."),
    k("listener", "compress", "true", Bool, "gzip request bodies (Content-Encoding: gzip); batch protocol only, bitville bodies are never compressed."),
    k("listener", "ca_file", "", Str, "Extra PEM CA certificate(s) trusted for the listener, besides the system store."),
    k("buffer", "max_size_mb", "100", Int(1, 100_000), "Cap on the on-disk outbox (database + WAL); oldest batches are evicted beyond it."),
    k("buffer", "python_buffer_path", "/var/lib/bitville-postgres-agent/buffer", Str, "Directory of the Python agent's persist-queue buffer; unsent payloads found there are sent once, before new data, and the file is left as it is."),
    k("circuit_breaker", "failure_threshold", "5", Int(1, 1000), "Consecutive send failures that open the circuit."),
    k("circuit_breaker", "recovery_timeout_s", "60", Int(1, 86_400), "Seconds the circuit stays open before one probe is allowed."),
    k("logs", "enabled", "true", Bool, "Tail the PostgreSQL server log."),
    k("logs", "path", "", Str, "Log file or directory; empty = ask the server (data_directory, log_directory)."),
    k("logs", "format", "auto", Choice(LOG_FORMATS), "auto, stderr, csvlog, jsonlog or syslog (a file rsyslog writes)."),
    k("logs", "line_prefix", "", Str, "log_line_prefix of stderr logs; empty = ask the server."),
    k("logs", "poll_interval_ms", "100", Int(10, 60_000), "How often the log is checked for new data; while it stays quiet the check backs off, doubling up to ten times this and at most 1 s, and returns to this at the first new data."),
    k("logs", "max_buffered_entries", "500", Int(1, 1_000_000), "Entries held in memory before a pg_logs batch is written early."),
    k("logs", "max_batch_bytes", "8388608", Int(65_536, 268_435_456), "Most bytes of entries (serialized JSON) in one pg_logs batch; a batch is written early when the next entry would exceed it."),
    k("logs", "start_at", "end", Choice(&["end", "beginning"]), "Where to start reading on first start (no saved position)."),
    k("correlation", "keys", "correlation_id,correlation,request_id,x_request_id,traceparent,application_name", List, "Comment keys whose value is the correlation ID, in order of preference; `application_name` takes it from an `application_name` of the form `bitville-<id>` (see `id_shape`)."),
    k("correlation", "id_shape", "php", Choice(super::correlation_shape::ID_SHAPES), "Which IDs count: `php` = only the Bitville PHP agent's shapes (a UUID after `bitville-` in `application_name`; a `correlation` comment value matching `[a-f0-9-]+`), so `bitville-monitor` or the agent's own sessions never become an ID; `any` = any `bitville-<id>` and any `correlation` value."),
    k("privacy", "obfuscate_queries", "true", Bool, "Replace literals in query texts with placeholders before they leave the host."),
    k("privacy", "redact_log_secrets", "credential,parsing_error", List, "Log secret classes to redact: credential, parsing_error, statement_text, statement_parameter, table_data, all, none."),
    k("telemetry", "listen", "127.0.0.1:9188", Str, "Address of the /health and /metrics endpoint; empty = disabled."),
    k("telemetry", "unhealthy_after_s", "300", Int(1, 604_800), "`/health` answers 503 (`delivery_failing`) once delivery to the listener has failed, with nothing accepted, for longer than this; 200 `degraded` (`breaker_open`) while the circuit breaker is open before that."),
    k("logging", "level", "info", Choice(&["error", "warn", "info", "debug", "trace"]), "Agent log level (RUST_LOG overrides it)."),
    k("logging", "format", "auto", Choice(&["auto", "json", "text"]), "auto: human text when stderr is a terminal, else json lines (journald); or json, or text."),
    k("activity", "sample_interval_ms", "1000", Int(0, 60_000), "Active-session sampling period (100 to 60000 ms); 0 = no sampling (and no spike detection)."),
    k("activity", "sample_top_n", "50", Int(1, 1000), "Groups (query, wait event, state, database, user) listed per pg_activity_samples batch, by average active sessions; the rest are counted in `omitted`."),
    k("spikes", "enabled", "true", Bool, "Take a spike snapshot when a trigger fires (needs sampling on)."),
    k("spikes", "active_sessions", "", Str, "Trigger (floor): active sessions at least this many; empty = twice the host's cores."),
    k("spikes", "load", "", Str, "Trigger (floor): 1-minute load average at least this (a decimal number); empty = twice the host's cores."),
    k("spikes", "lock_wait_ms", "5000", Int(0, 86_400_000), "Trigger: a session waiting on a lock for at least this long; 0 = off."),
    k("spikes", "lookback_s", "60", Int(1, 3600), "Seconds of per-sample series carried in a spike snapshot."),
    k("spikes", "min_gap_s", "60", Int(1, 86_400), "At most one spike snapshot per this many seconds."),
    k("spikes", "mode", "baseline", Choice(&["baseline", "absolute"]), "`baseline`: the active-sessions and load triggers also need `baseline_factor` times the median of the last `baseline_s` seconds, so a steady load is no spike; `absolute`: the floors alone."),
    k("spikes", "baseline_s", "300", Int(10, 3600), "Seconds of samples whose median is the baseline (`mode = baseline`)."),
    k("spikes", "baseline_factor", "2", Str, "How many times the baseline median a sample must reach (a decimal number above 0, `mode = baseline`)."),
    k("otlp", "logs_url", "", Str, "Full URL of the OTLP logs signal; empty = `<listener.url>/v1/logs`. Falls back to OTEL_EXPORTER_OTLP_LOGS_ENDPOINT."),
    k("otlp", "metrics_url", "", Str, "Full URL of the OTLP metrics signal; empty = `<listener.url>/v1/metrics`. Falls back to OTEL_EXPORTER_OTLP_METRICS_ENDPOINT."),
    k("otlp", "headers", "", Secret, "Extra request headers, `key=value,key2=value2` (values percent-decoded). Falls back to OTEL_EXPORTER_OTLP_HEADERS."),
    k("otlp", "compression", "gzip", Choice(&["gzip", "none"]), "Request body compression: gzip or none. Falls back to OTEL_EXPORTER_OTLP_COMPRESSION."),
    k("otlp", "service_name", "postgres-agent", Str, "The resource attribute `service.name`. Falls back to OTEL_SERVICE_NAME."),
    k("otlp", "top_statements", "100", Int(1, 100_000), "Most statements sent as OTLP metrics per interval (top by total time)."),
    k("health", "enabled", "false", Bool, "Collect server health every cycle: pg_stat_database, checkpoints, WAL, I/O, progress, replication, settings changes (docs/health.md)."),
    k("health", "table_interval_s", "600", Int(0, 86_400), "Seconds between table passes (table and index statistics in every database the role may connect to); 0 = off. Needs `enabled`."),
    k("health", "table_top_n", "20", Int(1, 1000), "Tables and indexes kept per database and pass for each ranking (activity, dead tuples, size); the rest are counted in `omitted`."),
    k("health", "table_max_bytes", "262144", Int(4096, 16_777_216), "Most bytes of table records (as JSON) per database and pass; records past it are counted in `omitted`."),
    k("plans", "explain", "false", Bool, "EXPLAIN on demand (PostgreSQL 16+): `EXPLAIN (GENERIC_PLAN, FORMAT JSON)` of the top statements by time that have no plan seen in the last hour; never ANALYZE (docs/plans.md)."),
    k("plans", "explain_per_cycle", "3", Int(1, 20), "At most this many EXPLAINs per cycle (each statement at most once an hour)."),
    k("plans", "explain_timeout_ms", "500", Int(10, 5000), "statement_timeout of each EXPLAIN; lock_timeout is a fifth of it."),
];

/// The spec of `section.key`, if it exists.
pub fn spec(section: &str, key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.section == section && s.key == key)
}

/// The nearest known name to `given` among `candidates`, if any is close enough to be a likely typo.
pub fn nearest<'a>(given: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(given, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
