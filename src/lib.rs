//! postgres-agent: a low-overhead PostgreSQL monitoring agent.
//!
//! Data flow: [`config`] loads and validates the INI file and environment. [`db`] holds a small pool of
//! safe, read-only sessions to the watched server. Each cycle the collectors read pg_stat_activity,
//! pg_stat_statements deltas, locks and host metrics; a background task tails the server log. Every
//! kind of data becomes a [`batch::Batch`], written to the durable outbox before it is sent to
//! the listener through a circuit breaker. [`telemetry`] covers the agent's own logs and metrics.
//! [`cli`] is the command line: `check`, `once`, `status` and the table view of batches.

pub mod batch;
pub mod cli;
pub mod clock;
pub mod collect;
pub mod config;
pub mod correlation;
pub mod crypto;
pub mod daemon;
pub mod db;
pub mod identity;
pub use pga_logparse::log_format;
pub mod logs;
pub mod privacy;
pub mod ship;
pub mod state;
pub mod telemetry;

/// A current-thread runtime for the one-shot commands (`once`, `check`); None, after printing why,
/// when it cannot start.
pub(crate) fn command_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("postgres-agent: cannot start the runtime: {e}");
            None
        }
    }
}
