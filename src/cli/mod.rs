//! The commands of the `postgres-agent` binary, apart from the daemon itself ([`crate::daemon`]):
//! how each shows its results to a person or a pipe.

pub mod pretty;
pub mod stdout_filter;
