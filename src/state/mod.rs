//! Files under `agent.state_dir` that belong to no one subsystem: the lock that makes the
//! directory one daemon's ([`lock`]), the daemon's last-cycle record ([`last_cycle`]), and the
//! set-aside of a damaged file ([`aside`]).

pub mod aside;
pub mod last_cycle;
pub mod lock;
