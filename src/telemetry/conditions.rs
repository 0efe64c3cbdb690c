//! Every code `/health` can report, defined once ([`Condition`]: code, effect, meaning), the way
//! [`super::registry`] defines every counter. A condition makes `/health` answer 503 `unhealthy`
//! while it holds; a warning leaves it 200 and says `degraded`. The daemon sets and clears them
//! through [`super::server::Telemetry::set_condition`]; the endpoint judges `starting`,
//! `cycles_failing`, `last_error`, `delivery_failing` and `breaker_open` itself. docs/operations.md
//! documents every code (a test below reads it).

/// What a code does to `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// 503 `unhealthy` (`starting` before the first good cycle) while it holds: listed under
    /// `conditions` and in `reasons`.
    Unhealthy,
    /// 200 `degraded` while it holds: listed under `warnings`.
    Degraded,
}

macro_rules! conditions {
    ($($variant:ident = $code:literal, $effect:ident, $meaning:literal;)*) => {
        /// Something `/health` reports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Condition {
            $(#[doc = $meaning] $variant,)*
        }

        impl Condition {
            /// Every code, in the order of the table.
            pub const ALL: &'static [Condition] = &[$(Condition::$variant,)*];

            /// The code in the `/health` body.
            pub const fn code(self) -> &'static str {
                match self {
                    $(Condition::$variant => $code,)*
                }
            }

            /// 503 or `degraded`.
            pub const fn effect(self) -> Effect {
                match self {
                    $(Condition::$variant => Effect::$effect,)*
                }
            }

            /// What it means, as docs/operations.md says it.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Condition::$variant => $meaning,)*
                }
            }
        }
    };
}

conditions! {
    // Judged by the endpoint from the cycles.
    Starting = "starting", Unhealthy,
        "no cycle has succeeded since start, within three intervals";
    CyclesFailing = "cycles_failing", Unhealthy,
        "the last successful cycle is older than three intervals (or none since start)";
    LastError = "last_error", Unhealthy,
        "added beside the above: the last cycle's error";
    // Storage.
    EnqueueFailed = "enqueue_failed", Unhealthy,
        "batches of the last cycle could not be stored in the outbox nor held in memory, or not printed in stdout mode: lost";
    OutboxStorage = "outbox_storage", Unhealthy,
        "the outbox takes no writes (full disk, file-size limit, read-only or failing state directory) or a write is stuck on the storage (hung disk): requests are held in memory";
    OutboxStalled = "outbox_stalled", Unhealthy,
        "the state writer has been stuck on one write for over 10 s (hung disk); cycles go on and their batches wait in its queue, in memory";
    OutboxVanished = "outbox_vanished", Unhealthy,
        "the outbox file was removed or replaced under the running agent: it is recreated from the open database at once";
    StateLockLost = "state_lock_lost", Unhealthy,
        "the state directory's lock file was removed and another agent locked the new one: two agents share the directory";
    // Delivery.
    DeliveryStalled = "delivery_stalled", Unhealthy,
        "a delivery pass has run longer than its budget plus listener.timeout_s plus 5 s (stuck on the storage)";
    DeliveryFailing = "delivery_failing", Unhealthy,
        "sending to the listener has failed, with no request accepted since, for longer than telemetry.unhealthy_after_s";
    DeadLetters = "dead_letters", Unhealthy,
        "the listener rejected requests for good (moved to the dead letters)";
    // The server log.
    LogsNotFollowed = "logs_not_followed", Unhealthy,
        "the log reader cannot open or read the server log: the pg_logs stream is stopped";
    LogsEnqueueFailed = "logs_enqueue_failed", Unhealthy,
        "a pg_logs batch could not be stored; its entries are read again after a back-off";
    LogsStalled = "logs_stalled", Unhealthy,
        "writing a pg_logs batch has not returned for 10 s (hung disk); the log is not read meanwhile";
    // Warnings.
    BreakerOpen = "breaker_open", Degraded,
        "the circuit breaker is open or half-open: sending paused after circuit_breaker.failure_threshold failures";
    PgStatStatements = "pg_stat_statements", Degraded,
        "pg_stat_statements is not available: no pg_statements batches";
    StatementsHidden = "statements_hidden", Degraded,
        "other roles' statements are hidden from the agent's role (grant pg_read_all_stats or pg_monitor)";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `/health` part of docs/operations.md: from its heading to the next one of its level.
    fn health_docs() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md");
        let text = std::fs::read_to_string(path).expect("docs/operations.md");
        let start = text.find("`GET /health`").expect("a /health section");
        let rest = &text[start..];
        let end = rest.find("\n### ").unwrap_or(rest.len());
        rest[..end].to_string()
    }

    #[test]
    fn every_code_is_documented_in_operations_md() {
        let docs = health_docs();
        let missing: Vec<&str> = Condition::ALL
            .iter()
            .map(|c| c.code())
            .filter(|code| !docs.contains(&format!("`{code}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "codes not documented in the /health part of docs/operations.md: {missing:?}"
        );
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Condition::ALL {
            assert!(seen.insert(c.code()), "{} twice", c.code());
            assert!(c
                .code()
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch == '_'));
            assert!(!c.meaning().is_empty());
        }
    }
}
