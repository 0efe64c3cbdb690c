//! The commands of the `postgres-agent` binary: [`command`] parses the arguments and dispatches;
//! [`check`], [`once`] and [`status`] are the one-shot commands, [`pretty`] and [`stdout_filter`] the
//! table view of batches. `run` is [`crate::daemon`]; `parse-log` is [`parse_log`]; `demo` is
//! [`demo`] (a throwaway server, a workload, and the daemon against it).

pub mod check;
pub mod command;
pub mod demo;
pub mod once;
pub mod parse_log;
pub mod pretty;
pub mod status;
pub mod stdout_filter;

pub use command::main;
