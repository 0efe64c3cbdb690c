//! Every metric the agent exposes about itself, defined once. The daemon updates them; `/metrics`
//! renders them in the Prometheus text format. Names are documented in README.md (Operations).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabel {
    pub collector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorOutcomeLabel {
    pub collector: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeOutcomeLabel {
    pub r#type: String,
    pub outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The agent's metrics. Cheap to clone (every field is an Arc inside).
#[derive(Clone, Default)]
pub struct Metrics {
    pub cycles: Family<OutcomeLabel, Counter>,
    pub cycle_duration_seconds: FloatGauge,
    pub last_success_timestamp_seconds: FloatGauge,
    pub collector_duration_seconds: Family<CollectorLabel, FloatGauge>,
    pub collector_runs: Family<CollectorOutcomeLabel, Counter>,
    pub batches: Family<TypeOutcomeLabel, Counter>,
    pub records: Family<TypeLabel, Counter>,
    pub outbox_batches: Family<TypeLabel, Gauge>,
    pub outbox_bytes: Gauge,
    pub outbox_oldest_age_seconds: FloatGauge,
    pub outbox_evictions: Family<TypeLabel, Counter>,
    pub dead_letters: Gauge,
    pub breaker_state: Gauge,
    pub held_requests: Gauge,
    pub process_resident_memory_bytes: Gauge,
    pub process_cpu_seconds: FloatGauge,
    pub db_connections_open: Gauge,
}

impl Metrics {
    /// Registers every metric under the `postgres_agent_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("postgres_agent");
        r.register(
            "cycles",
            "Collection cycles by outcome (ok, partial, failed)",
            self.cycles.clone(),
        );
        r.register(
            "cycle_duration_seconds",
            "Wall time of the last collection cycle",
            self.cycle_duration_seconds.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful cycle",
            self.last_success_timestamp_seconds.clone(),
        );
        r.register(
            "collector_duration_seconds",
            "Wall time of each collector in the last cycle",
            self.collector_duration_seconds.clone(),
        );
        r.register(
            "collector_runs",
            "Collector runs by outcome (ok, failed, timeout, disabled)",
            self.collector_runs.clone(),
        );
        r.register(
            "batches",
            "Batches by type and outcome (enqueued, sent, failed, dead_lettered, printed)",
            self.batches.clone(),
        );
        r.register(
            "records",
            "Records collected by batch type",
            self.records.clone(),
        );
        r.register(
            "outbox_batches",
            "Batches waiting in the outbox by type",
            self.outbox_batches.clone(),
        );
        r.register(
            "outbox_bytes",
            "On-disk size of the outbox (database + WAL)",
            self.outbox_bytes.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest batch in the outbox",
            self.outbox_oldest_age_seconds.clone(),
        );
        r.register(
            "outbox_evictions",
            "Batches evicted from the outbox by the size cap, by type",
            self.outbox_evictions.clone(),
        );
        r.register(
            "dead_letters",
            "Batches in the dead-letter table",
            self.dead_letters.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            self.breaker_state.clone(),
        );
        r.register(
            "held_requests",
            "Requests held in memory because the outbox does not take writes",
            self.held_requests.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the agent",
            self.process_resident_memory_bytes.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "CPU time (user + system) of the agent",
            self.process_cpu_seconds.clone(),
        );
        r.register(
            "db_connections_open",
            "Connections the agent holds open to the server",
            self.db_connections_open.clone(),
        );
    }

    /// Counts a batch of `records` records of `kind` with `outcome`.
    pub fn count_batch(&self, kind: crate::batch::BatchKind, records: usize, outcome: &str) {
        self.batches
            .get_or_create(&TypeOutcomeLabel {
                r#type: kind.as_str().to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if outcome == "enqueued" || outcome == "printed" {
            self.records
                .get_or_create(&TypeLabel {
                    r#type: kind.as_str().to_string(),
                })
                .inc_by(records as u64);
        }
    }

    /// Reads the agent's own RSS and CPU time from /proc/self.
    pub fn refresh_process(&self) {
        if let Ok(me) = procfs::process::Process::myself() {
            if let Ok(stat) = me.stat() {
                let tps = procfs::ticks_per_second() as f64;
                self.process_cpu_seconds
                    .set((stat.utime + stat.stime) as f64 / tps);
                self.process_resident_memory_bytes
                    .set((stat.rss * procfs::page_size()) as i64);
            }
        }
    }
}

/// Raises a counter to an externally kept total (counters never go down).
pub fn set_counter(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}
