//! Every figure the daemon publishes about its own work, in one place: after each cycle the
//! cycle metrics, the pool's open connections and the cycle's verdict for `/health`; what the
//! state writer did (and whether it is stuck); whether delivery is stuck; what the agent runs
//! without (`degraded`); and the sampler's runs. The tasks call these functions; none of them
//! does any work of its own beyond setting gauges, counters and `/health` conditions.

use std::time::Duration;

use super::cycle;
use super::tasks::deliver;
use super::tasks::writer::Writer;
use crate::collect::CycleReport;
use crate::db::Db;
use crate::telemetry::conditions::Condition;
use crate::telemetry::metrics::CollectorOutcomeLabel;
use crate::telemetry::registry::Event;
use crate::telemetry::server::Telemetry;

/// A state writer job may take this long before `/health` says it is stuck.
pub const PERSIST_DEADLINE: Duration = Duration::from_secs(10);

/// After a cycle: its metrics (outcome, duration, collector runs), the pool's open connections,
/// and its verdict for `/health` (a cycle that could not read the server is an error).
pub fn cycle(telemetry: &Telemetry, report: &CycleReport, db: &Db) {
    cycle::record_cycle(&telemetry.metrics, report);
    telemetry
        .metrics
        .db_connections_open
        .set(db.open_connections() as i64);
    telemetry.record_cycle(if report.server.is_some() {
        None
    } else {
        Some(
            report
                .server_error
                .clone()
                .unwrap_or_else(|| "the database could not be read".to_string()),
        )
    });
}

/// One run of the sampler (`collector` is `sampling` or `spikes`) with its outcome.
pub fn sample(telemetry: &Telemetry, collector: &str, outcome: &str) {
    telemetry
        .metrics
        .collector_runs
        .get_or_create(&CollectorOutcomeLabel {
            collector: collector.into(),
            outcome: outcome.into(),
        })
        .inc();
}

/// Adds what the state writer did since the last cycle to the summary, and says on `/health` when
/// it has been stuck on the storage longer than [`PERSIST_DEADLINE`] (new batches then wait in
/// its queue, or in memory past its bound).
pub fn writer(telemetry: &Telemetry, writer: &Writer, summary: &mut String) {
    let r = writer.take_report();
    if let Some(w) = r.waiting {
        summary.push_str(&cycle::waiting_text(w));
    }
    if r.held > 0 {
        summary.push_str(&format!(", {} requests newly held in memory", r.held));
    }
    if r.failed > 0 {
        summary.push_str(&format!(", {} batches lost", r.failed));
    }
    if let Some(f) = r.outbox_file {
        summary.push_str(&format!(", {f}"));
    }
    let stuck = writer.busy_for().filter(|d| *d > PERSIST_DEADLINE);
    let reason = stuck.map(|d| {
        format!(
            "writing to the state directory has been stuck for {} s (a hung disk or file \
             system?): new batches wait in the state writer's queue, in memory",
            d.as_secs()
        )
    });
    if reason.is_some() {
        telemetry.counters.incr(Event::OutboxWriteStalls);
    }
    if writer.note_stall(reason.is_some()) {
        if let Some(why) = &reason {
            tracing::error!(event = "outbox_write_stalled", "{why}");
        }
    }
    telemetry.set_condition(Condition::OutboxStalled, reason);
}

/// The counts [`degraded`] compares with, read before a cycle.
#[derive(Debug, Clone, Copy)]
pub struct DegradedCounts([u64; 2]);

impl DegradedCounts {
    pub fn read(telemetry: &Telemetry) -> DegradedCounts {
        let counted = |e| telemetry.counters.get(e);
        DegradedCounts([
            counted(Event::StatementsUnavailable),
            counted(Event::StatementsNoPrivilege),
        ])
    }
}

/// `/health` stays 200 but says `degraded` while the agent works without something it could use,
/// judged by what this cycle counted.
pub fn degraded(telemetry: &Telemetry, before: DegradedCounts) {
    let before = before.0;
    let counted = |e| telemetry.counters.get(e);
    telemetry.set_condition(
        Condition::PgStatStatements,
        (counted(Event::StatementsUnavailable) > before[0]).then(|| {
            "pg_stat_statements is not available: no pg_statements batches (CREATE EXTENSION \
             pg_stat_statements in the configured database; add it to shared_preload_libraries \
             and restart only if the library is not loaded: the agent's log says which)"
                .to_string()
        }),
    );
    telemetry.set_condition(
        Condition::StatementsHidden,
        (counted(Event::StatementsNoPrivilege) > before[1]).then(|| {
            "other roles' statements are hidden from the agent's role: GRANT pg_read_all_stats \
             (or pg_monitor) to it"
                .to_string()
        }),
    );
}

/// `/health` is 503 while a delivery pass has been running far past its budget and the listener's
/// timeout: the delivery thread is stuck (on the storage under the outbox), so nothing is sent.
pub fn delivery_stall(
    telemetry: &Telemetry,
    watch: &deliver::PassWatch,
    interval: Duration,
    listener_timeout: Duration,
) {
    let limit = cycle::drain_budget(interval) + listener_timeout + Duration::from_secs(5);
    let reason = watch.running_for().filter(|d| *d > limit).map(|d| {
        format!(
            "a delivery pass has been running for {} s (limit {} s): delivery is stuck, most \
             likely on the storage under the outbox (a hung disk?)",
            d.as_secs(),
            limit.as_secs()
        )
    });
    if reason.is_some() {
        telemetry.counters.incr(Event::DeliveryStalls);
    }
    telemetry.set_condition(Condition::DeliveryStalled, reason);
}
