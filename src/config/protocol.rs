//! What goes on the wire as far as configuration is concerned: the protocol names of
//! `listener.protocol` and the Bitville listener's limits that validation checks (project length,
//! requests per cycle). Values only; the encoders in `ship::encode` own the wire formats.

use std::fmt;

use super::Config;

/// What goes on the wire (`listener.protocol`; docs/protocol.md describes both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The Bitville listener's `POST /ingest/postgres`: one `{correlation_id, project, timestamp,
    /// source, data}` object per request, never compressed.
    Bitville,
    /// This agent's batch envelope, gzip, one batch per request.
    Batch,
    /// OTLP/HTTP with protobuf bodies: logs to `/v1/logs`, metrics to `/v1/metrics` (docs/otlp.md).
    Otlp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Bitville => "bitville",
            Protocol::Batch => "batch",
            Protocol::Otlp => "otlp",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "bitville" => Some(Protocol::Bitville),
            "batch" => Some(Protocol::Batch),
            "otlp" => Some(Protocol::Otlp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest `project` the Bitville listener accepts.
pub const BITVILLE_MAX_PROJECT_LEN: usize = 50;

/// Aggregate requests per cycle in the bitville protocol: activity, statements, locks, system
/// metrics and (at least) one pg_log; the sampling aggregate adds one ([`bitville_aggregates_per_cycle`]).
pub const BITVILLE_AGGREGATES_PER_CYCLE: u32 = 5;

/// Aggregate requests per cycle with this configuration: [`BITVILLE_AGGREGATES_PER_CYCLE`], plus
/// the pg_activity_samples aggregate when sampling is on. Spike snapshots (at most one per
/// `spikes.min_gap_s`) are not counted: the request pacing absorbs them.
pub fn bitville_aggregates_per_cycle(config: &Config) -> u32 {
    BITVILLE_AGGREGATES_PER_CYCLE
        + u32::from(config.activity.sample_interval.is_some())
        + super::health::AGGREGATES_PER_CYCLE * u32::from(config.health.enabled)
}
