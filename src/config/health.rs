//! The `[health]` section: server and table health collectors (issue 24). Values only; the
//! collectors under `collect::health` read them through `CollectSettings`.

use std::time::Duration;

use super::validate::Validator;
use super::ConfigError;

/// Aggregate requests per cycle the health collectors add in the bitville protocol when enabled:
/// pg_database and pg_server_health (settings changes and table passes are rare and paced).
pub const AGGREGATES_PER_CYCLE: u32 = 2;

/// Server and table health (`[health]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// `health.enabled`: the database, server-health and settings collectors run every cycle.
    pub enabled: bool,
    /// `health.table_interval_s`: how often the table pass visits every database; None = off.
    pub table_interval: Option<Duration>,
    /// `health.table_top_n`: tables (and indexes) kept per database and pass, per ranking.
    pub table_top_n: usize,
    /// `health.table_max_bytes`: bound on one database's table records, as JSON.
    pub table_max_bytes: usize,
}

/// Reads `[health]` from validated values.
pub(super) fn parse(v: &Validator<'_>) -> Result<HealthConfig, ConfigError> {
    let interval = v.int("health", "table_interval_s")?;
    Ok(HealthConfig {
        enabled: v.bool("health", "enabled")?,
        table_interval: (interval > 0).then(|| Duration::from_secs(interval)),
        table_top_n: v.int("health", "table_top_n")? as usize,
        table_max_bytes: v.int("health", "table_max_bytes")? as usize,
    })
}
