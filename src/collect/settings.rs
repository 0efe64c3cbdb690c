//! What the collectors are handed instead of the whole configuration: the values they read, with
//! the privacy policy and the batch envelope ([`Stamp`]) built once. The daemon's `Setup` makes one
//! per configuration (at start and on each reload); `once` and `check` make their own the same way
//! ([`CollectSettings::new`]). It owns no behaviour: collectors decide what to do with it.

use std::path::PathBuf;

use crate::batch::Stamp;
use crate::config::{
    ActivityConfig, Config, CorrelationConfig, HealthConfig, PostgresConfig, SafetyConfig,
    SpikesConfig,
};
use crate::privacy::Privacy;

/// The collectors' part of a configuration.
#[derive(Debug, Clone)]
pub struct CollectSettings {
    /// The envelope of every batch they make (project, agent, collection interval).
    pub stamp: Stamp,
    /// `[privacy]`, applied to every query text ([`super::query_text`]).
    pub privacy: Privacy,
    /// Row and text bounds, and `client_timeout` (a collector's budget is twice it).
    pub safety: SafetyConfig,
    /// Which comment keys count as the correlation ID.
    pub correlation: CorrelationConfig,
    /// Active-session sampling.
    pub activity: ActivityConfig,
    /// Spike thresholds and gaps.
    pub spikes: SpikesConfig,
    /// Where the statement baseline lives (`agent.state_dir`).
    pub state_dir: PathBuf,
    /// `[postgres] host` and `port`: the server's address in every batch's `server`.
    pub host: String,
    pub port: u16,
    /// `[postgres] user`: host collectors recognise the agent's own backends by it.
    pub user: String,
    /// `[postgres] database`: the database whose statements are attributed as local.
    pub database: String,
    /// `[health]`: server and table health collectors.
    pub health: HealthConfig,
    /// `[postgres]`: the table pass opens one session per other database with it.
    pub postgres: PostgresConfig,
    /// The current plan of each statement, published by the plans collector for spike snapshots.
    pub current_plans: super::plans::CurrentPlans,
    /// `[plans]`: EXPLAIN on demand.
    pub plans: crate::config::plans::PlansConfig,
}

impl CollectSettings {
    /// The settings of `config`, with `privacy` built from its `[privacy]` section.
    pub fn new(config: &Config, privacy: Privacy) -> CollectSettings {
        CollectSettings {
            stamp: Stamp::new(
                &config.agent.project_id,
                &config.agent.hostname,
                config.agent.collection_interval.as_secs(),
            ),
            privacy,
            safety: config.safety.clone(),
            correlation: config.correlation.clone(),
            activity: config.activity.clone(),
            spikes: config.spikes.clone(),
            state_dir: config.agent.state_dir.clone(),
            host: config.postgres.host.clone(),
            port: config.postgres.port,
            user: config.postgres.user.clone(),
            database: config.postgres.database.clone(),
            health: config.health.clone(),
            postgres: config.postgres.clone(),
            current_plans: Default::default(),
            plans: config.plans.clone(),
        }
    }

    /// The settings of `config` with its own privacy policy (commands and tests that hold only a
    /// `Config`; the daemon's `Setup` shares one policy between collectors and the log finisher).
    pub fn from_config(config: &Config) -> CollectSettings {
        CollectSettings::new(config, crate::privacy::from_validated(&config.privacy))
    }
}
