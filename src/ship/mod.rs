//! Shipping: the durable outbox, the circuit breaker and HTTP(S) delivery to the listener
//! (docs/shipping.md describes the guarantees and the transport for users). The batch envelope it
//! ships is [`crate::batch`], a leaf every layer imports.
//!
//! The daemon holds one [`Shipper`]:
//!
//! ```no_run
//! # async fn cycle(config: &postgres_agent::config::Config, batch: postgres_agent::batch::Batch)
//! #     -> Result<(), postgres_agent::ship::ShipError> {
//! use std::time::Duration;
//! use postgres_agent::ship::Shipper;
//!
//! let shipper = Shipper::open(config)?;          // opens <state_dir>/outbox.db when a listener is set
//! shipper.enqueue(&batch)?;                      // durable when it returns (or one stdout line)
//! let report = shipper.drain(Duration::from_secs(20)).await; // oldest first, within the budget
//! let stats = shipper.stats()?;                  // depth/bytes/evictions per type, breaker, ...
//! shipper.reconfigure(config)?;                  // on SIGHUP: listener, breaker and cap; queue kept
//! # let _ = (report, stats); Ok(()) }
//! ```
//!
//! - [`Shipper::enqueue`] never sends: it encodes the batch for `listener.protocol` ([`encode`]:
//!   the batch envelope, or Bitville payloads), gzips each request for storage, splits a body over
//!   `listener.max_body_bytes` into linked parts, and commits them to the outbox ([`outbox`]) before returning. With no
//!   `listener.url` it prints the batch as one JSON line on stdout instead and the outbox is unused.
//!   It is synchronous and short (one SQLite transaction per part, fsynced); call it from the task
//!   that built the batch.
//! - [`Shipper::drain`] sends oldest-first, with a quarter kept for the newest data while a backlog
//!   waits (`storage::queue`), while the [`breaker`] allows and, where pacing applies, within
//!   `listener.max_requests_per_minute` ([`ratelimit`]), stopping at the first failed request (the
//!   rest waits for the next pass), at a `Retry-After` or 429, or when the budget is spent; a
//!   request already started is allowed to finish ([`http`]). One drain runs at a time.
//! - [`Shipper::stats`] and `status` (`crate::cli::status`) read the same figures; `status` opens the database read-only
//!   so it works while the daemon runs.
//!
//! Every batch that leaves the outbox without a 2xx is counted: evictions per type, dead letters per
//! type, dropped dead letters, enqueue failures, and replaced corrupt databases.

pub mod breaker;
pub mod delivery;
pub mod encode;
pub mod held;
pub mod http;
pub mod otlp_wire;
pub mod outbox;
pub mod probe;
pub mod python_buffer;
pub mod ratelimit;
pub mod shipper;
pub mod storage;
pub mod tls_error;

pub use delivery::{DrainReport, DrainStop};
pub use shipper::{EnqueueReport, ProcessStats, ShipStats, Shipper};
pub use storage::recreate;

/// Errors of the shipping side.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Prepare(#[from] encode::PrepareError),
    #[error("cannot serialize batch {batch_id}: {source}")]
    Json {
        batch_id: uuid::Uuid,
        source: serde_json::Error,
    },
    #[error("cannot write the batch to stdout: {source}")]
    Stdout { source: std::io::Error },
    #[error("the outbox is not open")]
    NoOutbox,
    #[error("the write to the outbox did not finish: {0}")]
    Task(String),
}
