//! The agent's view of itself: its structured logs, and (issue 6) /health and /metrics.

pub mod logging;
