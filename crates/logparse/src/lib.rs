//! The PostgreSQL server-log parser as a crate of its own (`pga-logparse`; the `pga-` prefix marks
//! the postgres-agent's internal crates, which are not published).
//!
//! It turns bytes of a server log in any of its formats ([`log_format::LogFormat`]: stderr with any
//! `log_line_prefix`, csvlog, jsonlog, syslog) into [`entry::LogEntry`] values with jsonlog's key
//! names ([`parse`]), classifies them (`event`, `duration_ms`, `extracted`: [`classify`]) and writes
//! their JSON line byte for byte as serde would ([`json_out`]); [`time`] reads and writes the
//! server's timestamps. Pure: it works on buffers the caller
//! fills, with no file or network I/O, no configuration, no async runtime and no global state, so the
//! compiler keeps it below everything that uses it. Reading files (the tailer, the `parse-log`
//! command's reader), correlation tags and the privacy step stay in the agent, which re-exports these
//! modules as `postgres_agent::logs::{entry, parse, classify, json_out}` and
//! `postgres_agent::log_format`.

pub mod classify;
pub mod entry;
pub mod json_out;
pub mod log_format;
pub mod parse;
pub mod plan;
pub mod time;

pub use entry::LogEntry;
