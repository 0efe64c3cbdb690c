//! The telemetry registry is complete: every event the agent counts is exported on `/metrics` with
//! its help text, and every metric `/metrics` exports is documented in docs/operations.md.

use std::time::Duration;

use postgres_agent::telemetry::registry::Event;
use postgres_agent::telemetry::server::Telemetry;

const OPERATIONS: &str = include_str!("../../../docs/operations.md");

#[test]
fn every_event_is_exported_with_its_help() {
    let telemetry = Telemetry::new(Duration::from_secs(60));
    telemetry.counters.add(Event::HeldDropped, 3);
    let text = telemetry.render_metrics();
    for e in Event::ALL {
        let name = format!("postgres_agent_{}", e.name());
        assert!(
            text.contains(&format!("# HELP {name} {}", e.help())),
            "{name} has no help line:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}_total "))),
            "{name}_total is not exported:\n{text}"
        );
    }
    assert!(
        text.contains("postgres_agent_held_dropped_total 3"),
        "{text}"
    );
}

#[test]
fn every_exported_metric_is_documented() {
    let telemetry = Telemetry::new(Duration::from_secs(60));
    let text = telemetry.render_metrics();
    let mut missing = Vec::new();
    let mut seen = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        seen += 1;
        // Counters are documented with their `_total` suffix, as Prometheus shows them.
        let shown = if kind == "counter" {
            format!("`{name}_total")
        } else {
            format!("`{name}")
        };
        if !OPERATIONS.contains(&shown) {
            missing.push(shown);
        }
    }
    assert!(seen > Event::ALL.len(), "too few metrics found:\n{text}");
    assert!(
        missing.is_empty(),
        "not documented in docs/operations.md: {missing:?}"
    );
}
