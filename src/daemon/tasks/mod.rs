//! The daemon's tasks, one file each, all under the daemon's shutdown token: collection
//! (`collect`), active-session sampling (`sample`), the log reader (`log`), delivery on its own
//! thread (`deliver`) and the state writer thread (`writer`). The daemon (`super`) starts them,
//! hands them a new `Setup` on reload and stops them; what they share lives beside them in
//! `super` (`cycle`, `publish`, `schedule`, `setup`, `notify`).

pub mod collect;
pub mod deliver;
pub mod log;
pub mod sample;
pub mod writer;
