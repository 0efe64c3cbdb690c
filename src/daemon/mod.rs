//! The daemon: the drift-free collection loop, signals, config reload, and systemd integration.

pub mod notify;
pub mod schedule;
