//! The agent's view of itself: its structured logs, its metrics, and the /health and /metrics endpoint.

pub mod conditions;
pub mod delivery_health;
pub mod logging;
pub mod metrics;
pub mod registry;
pub mod server;
