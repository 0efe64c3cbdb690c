//! `[plans]`: EXPLAIN on demand (docs/plans.md), off by default. Values only; the plans collector
//! reads them through `CollectSettings`.

use std::time::Duration;

use super::validate::Validator;
use super::ConfigError;

/// The `[plans]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlansConfig {
    /// `plans.explain`: run `EXPLAIN (GENERIC_PLAN, FORMAT JSON)` for top statements without a
    /// plan (PostgreSQL 16+).
    pub explain: bool,
    /// `plans.explain_per_cycle`: at most this many EXPLAINs per cycle.
    pub explain_per_cycle: usize,
    /// `plans.explain_timeout_ms`: `statement_timeout` of each EXPLAIN (`lock_timeout` is a fifth).
    pub explain_timeout: Duration,
}

impl Default for PlansConfig {
    fn default() -> Self {
        PlansConfig {
            explain: false,
            explain_per_cycle: 3,
            explain_timeout: Duration::from_millis(500),
        }
    }
}

impl PlansConfig {
    pub(super) fn read(v: &Validator<'_>) -> Result<PlansConfig, ConfigError> {
        Ok(PlansConfig {
            explain: v.bool("plans", "explain")?,
            explain_per_cycle: v.int("plans", "explain_per_cycle")? as usize,
            explain_timeout: v.millis("plans", "explain_timeout_ms")?,
        })
    }
}
