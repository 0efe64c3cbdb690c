//! What the tasks run with, built once from a [`Config`]: at start and on each reload (SIGHUP), in
//! [`Setup::new`]. It holds the built objects (the privacy policy, the log entry finisher, the batch
//! [`Stamp`](crate::batch::Stamp) inside the collect settings) so that `Config` holds values only,
//! and each task takes the part it needs: collectors [`CollectSettings`], the log task
//! [`TailConfig`], delivery and the outbox the listener values of [`Setup::config`]. A reload builds
//! a new `Setup` and hands it to the tasks as a whole; a task never sees half of each.

use std::sync::Arc;

use crate::collect::CollectSettings;
use crate::config::Config;
use crate::db::Db;
use crate::logs::settings::{finisher, TailConfig};

/// One configuration's worth of what the tasks run with.
pub struct Setup {
    /// The values, for what reads them directly (delivery, the outbox, intervals, reload checks).
    pub config: Arc<Config>,
    /// The pool of safe sessions (kept across a reload that leaves `[postgres]` and `[safety]`).
    pub db: Db,
    /// What the collectors and the sampler read, with the privacy policy and the stamp.
    pub collect: CollectSettings,
    /// What the log task reads, with the entry finisher.
    pub tail: TailConfig,
}

impl Setup {
    /// Builds every part from `config` once: the privacy policy is made here and shared by the
    /// collectors and the log finisher.
    pub fn new(config: Arc<Config>, db: Db) -> Setup {
        let finisher = finisher(&config);
        let collect = CollectSettings::new(&config, finisher.privacy);
        let tail = TailConfig::new(&config, finisher);
        Setup {
            config,
            db,
            collect,
            tail,
        }
    }
}
