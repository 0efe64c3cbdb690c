//! Files under `agent.state_dir` that belong to no one subsystem: the lock that makes the
//! directory one daemon's ([`lock`]), the daemon's last-cycle record ([`last_cycle`]), the atomic
//! write and set-aside every state file goes through ([`file`]), and the set-aside of a damaged
//! file or database ([`aside`]).

pub mod aside;
pub mod file;
pub mod last_cycle;
pub mod lock;
