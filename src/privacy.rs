//! The agent's side of privacy: the text functions are the `pga-privacy` crate (crates/privacy),
//! re-exported here whole so that `crate::privacy::...` paths name them; this module owns only what
//! needs the agent: building the policy from the `[privacy]` settings, and adding the crate's
//! [`PrivacyCounts`] to the metrics registry.

pub use pga_privacy::*;

use crate::config::PrivacyConfig;
use crate::telemetry::registry::{Counters, Event};

/// The policy of a `[privacy]` section; an error names the bad value.
pub fn from_config(config: &PrivacyConfig) -> Result<Privacy, PrivacyError> {
    Privacy::new(config.obfuscate_queries, &config.redact_log_secrets)
}

/// The policy of a `[privacy]` section that passed config validation, which rejects every value
/// [`from_config`] refuses (unknown classes, `none` with others); were one to slip through, the
/// default policy applies. Built by whoever holds the loaded config (the collectors'
/// [`crate::collect::query_text`], the log tail's settings), so `Config` holds values only.
pub fn from_validated(config: &PrivacyConfig) -> Privacy {
    from_config(config).unwrap_or_default()
}

/// Adds what the privacy functions did to the `/metrics` counters
/// (`privacy_unterminated_literals_masked`, `privacy_log_spans_redacted`).
pub fn count(counters: &Counters, counts: PrivacyCounts) {
    counters.add(
        Event::PrivacyLiteralsMasked,
        counts.unterminated_literals_masked,
    );
    counters.add(Event::PrivacyLogSpansRedacted, counts.log_spans_redacted);
}
