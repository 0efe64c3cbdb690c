//! systemd notifications (`Type=notify`): READY, STATUS, WATCHDOG, RELOADING and STOPPING, through the
//! sd-notify crate (the NOTIFY_SOCKET datagram protocol; no libsystemd). Outside systemd every call is
//! a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// The watchdog interval requested by systemd (`WATCHDOG_USEC`), if any, and whether to ping.
#[derive(Debug, Clone, Copy)]
pub struct Watchdog {
    /// Ping at this period: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
    pub period: Duration,
}

impl Watchdog {
    pub fn from_env() -> Option<Watchdog> {
        sd_notify::watchdog_enabled().map(|timeout| Watchdog {
            period: (timeout / 2).max(Duration::from_millis(10)),
        })
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "systemd notification failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
