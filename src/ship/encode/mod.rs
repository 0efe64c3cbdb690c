//! The wire-protocol seam: an [`Encoder`] turns one neutral [`Batch`] into the requests the outbox
//! stores and the sender posts (`listener.protocol`; docs/protocol.md describes both protocols).
//!
//! - `batch` ([`batch`]): the batch envelope as one request (split into linked parts over
//!   `listener.max_body_bytes`).
//! - `bitville` ([`bitville`], [`correlated`]): what the Bitville listener's `POST /ingest/postgres`
//!   accepts, one `{correlation_id, project, timestamp, source, data}` object per request: one
//!   aggregate payload per batch, plus one payload per correlated statement (merged per correlation
//!   ID when a cycle has more than the request budget allows).
//!
//! Every request is stored gzip-compressed in the outbox with the protocol it was written in, so a
//! queued request is always sent as what it is; the sender decides on the wire encoding from that.
//! Encoding happens when a batch is enqueued, so the outbox, breaker, retries, dead letters and
//! `status` work on requests the same way for both protocols.

pub mod batch;
pub mod bitville;
pub mod correlated;
pub mod otlp;
pub mod trim;

use std::time::Instant;

use serde::Serialize;

use crate::batch::Batch;
use crate::config::{Config, Protocol};
use crate::ship::outbox::NewBatch;

pub use batch::{gzip, PrepareError, MAX_BODY_BYTES};

/// What encoding one batch produced.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The requests to store, in sending order.
    pub rows: Vec<NewBatch>,
    /// Correlated-statement payloads among `rows` (bitville only).
    pub correlated_payloads: usize,
    /// Statements that went into another statement's payload of the same correlation ID because
    /// the request budget was spent (bitville only).
    pub merged: usize,
    /// Statements not sent again because the same statement (pid and start) was sent before.
    pub repeated: usize,
}

/// Figures of the encoder since the process started (read from the registry).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EncodeCounters {
    pub correlated_payloads: u64,
    pub correlated_merged: u64,
    pub correlated_repeated: u64,
}

/// Turns batches into stored requests for the configured protocol. Holds the bitville encoder's
/// memory of statements already sent and its request budget, so one instance serves every batch.
pub struct Encoder {
    protocol: Protocol,
    project: String,
    /// The largest body: `listener.max_body_bytes`, never above `ceiling`.
    max_body: usize,
    /// What the caller allows at most ([`MAX_BODY_BYTES`], or less in tests).
    ceiling: usize,
    /// Batch-protocol bodies go out gzipped (`listener.compress`): the limit applies to the gzip.
    gzipped: bool,
    planner: correlated::Planner,
    /// `[otlp]` settings (the otlp protocol).
    otlp: crate::config::otlp::OtlpConfig,
    /// The agent's counters, sent with host metrics in the otlp protocol ([`Encoder::counting`]).
    counters: Option<crate::telemetry::registry::Counters>,
    /// When this encoder was made (unix ns): the start of the counters' cumulative sums.
    started_ns: u64,
}

impl Encoder {
    /// An encoder for `config`; `ceiling` caps `listener.max_body_bytes`.
    pub fn new(config: &Config, ceiling: usize) -> Encoder {
        Encoder {
            protocol: config.listener.protocol,
            project: config.agent.project_id.clone(),
            max_body: config.listener.max_body_bytes.min(ceiling),
            ceiling,
            gzipped: config.listener.compress,
            planner: correlated::Planner::new(&config_budget(config), Instant::now()),
            otlp: config.listener.otlp.clone(),
            counters: None,
            started_ns: (now_seconds() * 1e9) as u64,
        }
    }

    /// Sends the agent's own counters with the host metrics (otlp protocol).
    pub fn counting(mut self, counters: crate::telemetry::registry::Counters) -> Encoder {
        self.counters = Some(counters);
        self
    }

    /// Applies a reloaded configuration; the memory of sent statements is kept.
    pub fn reconfigure(&mut self, config: &Config) {
        self.protocol = config.listener.protocol;
        self.project = config.agent.project_id.clone();
        self.max_body = config.listener.max_body_bytes.min(self.ceiling);
        self.gzipped = config.listener.compress;
        self.planner.set_budget(&config_budget(config));
        self.otlp = config.listener.otlp.clone();
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The requests for `batch` in the configured protocol.
    pub fn encode(&mut self, batch: &Batch) -> Result<Encoded, PrepareError> {
        match self.protocol {
            Protocol::Batch => Ok(Encoded {
                rows: batch::prepare(batch, self.max_body, self.gzipped)?,
                ..Encoded::default()
            }),
            Protocol::Otlp => {
                let counters = self.counters.as_ref().map(|c| c.snapshot());
                let ctx = otlp::Context {
                    project: &self.project,
                    service_name: &self.otlp.service_name,
                    top_statements: self.otlp.top_statements,
                    max_body: self.max_body,
                    counters: counters.as_ref(),
                    process_start_ns: self.started_ns,
                };
                Ok(Encoded {
                    rows: otlp::encode(batch, &ctx)?,
                    ..Encoded::default()
                })
            }
            Protocol::Bitville => {
                let statements = correlated::statements(batch);
                let plan = self.planner.plan(statements, Instant::now());
                let mut rows = Vec::with_capacity(plan.payloads.len() + 1);
                for payload in &plan.payloads {
                    rows.push(correlated::encode(
                        payload,
                        batch,
                        &self.project,
                        self.max_body,
                    )?);
                }
                // The aggregate goes last, so the newest stored request of a type is its
                // aggregate (the log reader resumes from the newest pg_logs aggregate).
                rows.extend(bitville::aggregate(batch, &self.project, self.max_body)?);
                Ok(Encoded {
                    correlated_payloads: plan.payloads.len(),
                    merged: plan.merged,
                    repeated: plan.repeated,
                    rows,
                })
            }
        }
    }
}

/// The request budget the correlated payloads may use.
fn config_budget(config: &Config) -> correlated::Budget {
    correlated::Budget::with_aggregates(
        config.listener.max_requests_per_minute,
        config.agent.collection_interval,
        crate::config::bitville_aggregates_per_cycle(config),
    )
}

pub use crate::clock::unix_seconds;

/// Unix seconds now.
pub fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// gzip of `json` for storage, as a [`NewBatch`].
fn stored(json: Vec<u8>, batch_id: uuid::Uuid, batch: &Batch) -> Result<NewBatch, PrepareError> {
    let body = gzip(&json).map_err(|source| PrepareError::Gzip { batch_id, source })?;
    Ok(NewBatch {
        batch_id,
        kind: batch.kind,
        collected_at: batch.collected_at.clone(),
        body,
        protocol: Protocol::Bitville,
    })
}
