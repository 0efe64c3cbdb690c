//! One point of the sampled series ([`Point`]): what a tick saw, as the window and the spike
//! triggers read it and as it is written into `pg_activity_samples` and spike batches.
//!
//! It does not take samples (the parent module) or decide whether a spike fired (`collect::spikes`).

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::host::HostPoint;
use crate::clock::format_rfc3339;

/// One sample in the series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Non-idle sessions (active, idle in transaction, ...).
    pub sessions: u32,
    pub active: u32,
    /// Active sessions waiting on a wait event (not on CPU).
    pub waiting: u32,
    /// Active sessions waiting on a heavyweight lock.
    pub lock_waits: u32,
    pub host: HostPoint,
}

impl Serialize for Point {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.at_ms) * 1_000_000)
            .map(format_rfc3339)
            .unwrap_or_default();
        let mut st = s.serialize_struct("Point", 7)?;
        st.serialize_field("t", &t)?;
        st.serialize_field("sessions", &self.sessions)?;
        st.serialize_field("active", &self.active)?;
        st.serialize_field("waiting", &self.waiting)?;
        st.serialize_field("lock_waits", &self.lock_waits)?;
        st.serialize_field("load1", &self.host.load1)?;
        st.serialize_field("cpu_percent", &self.host.cpu_percent)?;
        st.end()
    }
}
