//! Files under `agent.state_dir` that belong to no one subsystem: the lock that makes the
//! directory one daemon's ([`lock`]).

pub mod lock;
