//! Collectors: what the agent reads from PostgreSQL and the host each cycle, and the batches it makes.
//!
//! Every collector has the same shape ([`Collector`]): a name, the batch kind it fills, a record type,
//! and one `collect` that reads (SQL over a pooled [`Session`], or /proc) and returns records plus
//! batch-level fields. Adding a collector is adding one file and one line in [`Collectors::run_cycle`].
//!
//! [`Collectors`] owns the state that must survive between cycles (the pg_stat_statements baseline,
//! the previous host sample) and runs one cycle: each collector under its own deadline, on its own
//! session from the pool (normally the same single connection), so one that fails or times out is
//! logged and skipped while the others still run.
//!
//! Every query text a collector emits goes through [`query_text`], the one place where text is cut to
//! `safety.max_query_length` (and where obfuscation plugs in). Drops and skips are counted in
//! the telemetry registry ([`crate::telemetry::registry`], handed in as [`Context::counters`]). This
//! module does not ship anything: the caller decides where batches go.

pub mod activity;
pub mod health;
pub mod locks;
pub mod plans;
pub mod sampling;
pub mod settings;
pub mod spikes;
pub(crate) mod state_write;
pub mod statements;
pub mod system;

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::batch::correlated::Correlated;
use crate::batch::{Batch, BatchKind, Record, Stamp};
use crate::db::{ConnectionId, Db, DbError, ServerInfo, Session};
use crate::privacy::PrivacyCounts;
use crate::telemetry::registry::{Counters, Event};
pub use settings::CollectSettings;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("unexpected value in column {column} of {query}: {message}")]
    Column {
        query: &'static str,
        column: &'static str,
        message: String,
    },
    #[error("reading {what}: {message}")]
    Host { what: String, message: String },
    #[error("no database session: {0}")]
    NoSession(String),
    #[error("did not finish within {0:?}")]
    Timeout(Duration),
}

/// What a collector read in one cycle.
pub struct Collected<R> {
    pub records: Vec<R>,
    /// Batch-level fields beside `data` (for example `omitted`, `held_by_mode`).
    pub extra: Map<String, Value>,
}

impl<R> Collected<R> {
    pub fn new(records: Vec<R>) -> Collected<R> {
        Collected {
            records,
            extra: Map::new(),
        }
    }
}

/// Facts about the watched server that every collector may need, read once per connection.
#[derive(Debug, Clone)]
pub struct ServerContext {
    pub info: ServerInfo,
    /// `track_activity_query_size` in bytes: texts this long were cut by the server.
    pub track_activity_query_size: usize,
    /// Absolute data directory, when the role may read it (superuser or pg_read_all_settings).
    pub data_directory: Option<String>,
    /// Absolute log directory (resolved against the data directory), when readable.
    pub log_directory: Option<String>,
}

/// What a collector gets to read from.
pub struct Context<'a> {
    /// What the collectors read of the configuration.
    pub settings: &'a CollectSettings,
    /// Where the collectors count what they skip, drop or cut.
    pub counters: &'a Counters,
    /// None when the server could not be reached this cycle.
    pub server: Option<&'a ServerContext>,
    /// A session from the pool; None when the server is unreachable (host collectors still run).
    pub session: Option<&'a mut Session>,
}

impl Context<'_> {
    /// The session and server facts, or an error for collectors that need the database.
    pub fn db(&mut self) -> Result<(&mut Session, &ServerContext), CollectError> {
        match (self.session.as_deref_mut(), self.server) {
            (Some(s), Some(c)) => Ok((s, c)),
            _ => Err(CollectError::NoSession(
                "the server was not reachable at the start of the cycle".into(),
            )),
        }
    }
}

/// The shared shape of a collector.
// Collectors are only ever called through concrete types (never `dyn`), so the future's Send-ness is
// known at each call site and the lint's concern does not apply.
#[allow(async_fn_in_trait)]
pub trait Collector {
    /// Name in logs and metrics.
    const NAME: &'static str;
    /// The batch type this collector fills.
    const KIND: BatchKind;
    /// Whether it reads from the database (false: host only).
    const NEEDS_DB: bool = true;
    type Record: Serialize;

    /// Reads one cycle's records. `Ok(None)`: nothing to report this cycle, not an error (for
    /// example pg_stat_statements is not installed; the collector logs why).
    async fn collect(
        &mut self,
        ctx: &mut Context<'_>,
    ) -> Result<Option<Collected<Self::Record>>, CollectError>;

    /// The correlated statement `record` carries, for a batch collected at `collected_at`
    /// (RFC 3339): attached to the batch while the record is still typed ([`Batch::correlated`]).
    /// None by default: only sessions and lock waiters carry one.
    fn correlated(_record: &Self::Record, _collected_at: &str) -> Option<Correlated> {
        None
    }
}

/// The text of one query as the agent emits it: cut to `safety.max_query_length` bytes at a
/// character boundary, then passed through the privacy policy (literals masked unless
/// `privacy.obfuscate_queries = false`, credentials redacted either way); with whether it was cut.
/// Every query text in every batch goes through here; what the policy masked or redacted is added to
/// `counters`. Correlation tags and fingerprints must be read from `raw` before this.
pub fn query_text(raw: &str, settings: &CollectSettings, counters: &Counters) -> (String, bool) {
    let max = settings.safety.max_query_length;
    let (cut, truncated) = if raw.len() <= max {
        (raw, false)
    } else {
        let mut end = max;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        (&raw[..end], true)
    };
    let mut counts = PrivacyCounts::default();
    let text = settings.privacy.query_text(cut, &mut counts).into_owned();
    crate::privacy::count(counters, counts);
    (text, truncated)
}

/// How one collector fared in a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A batch was made with this many records.
    Ok { records: usize },
    /// Nothing to report this cycle, by design (the reason was logged).
    Skipped,
    /// The collector failed; the message was logged.
    Failed(String),
    /// The collector ran past its budget and was abandoned; logged.
    TimedOut(Duration),
}

#[derive(Debug, Clone)]
pub struct CollectorRun {
    pub name: &'static str,
    pub kind: BatchKind,
    pub duration: Duration,
    pub outcome: Outcome,
}

/// The result of one cycle: the batches made and how each collector fared.
#[derive(Debug, Clone)]
pub struct CycleReport {
    pub batches: Vec<Batch>,
    pub runs: Vec<CollectorRun>,
    pub server: Option<ServerInfo>,
    /// Why the server could not be read this cycle (with the fix, when the cause is known).
    pub server_error: Option<String>,
    pub duration: Duration,
}

impl CycleReport {
    /// True when no collector failed.
    pub fn all_ok(&self) -> bool {
        !self
            .runs
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_) | Outcome::TimedOut(_)))
    }
}

/// The collectors and the state they keep between cycles. The daemon holds one for its lifetime.
pub struct Collectors {
    counters: Counters,
    activity: activity::ActivityCollector,
    statements: statements::StatementsCollector,
    locks: locks::LocksCollector,
    system: system::SystemCollector,
    health: Health,
    plans: plans::PlansCollector,
    /// The server facts, the connection they were read on and when ([`Collectors::server_facts`]).
    server: Option<(ConnectionId, Instant, ServerContext)>,
}

/// The health collectors (`collect::health`), off unless `[health] enabled`.
struct Health {
    database: health::database::DatabaseCollector,
    server: health::server::ServerHealthCollector,
    settings: health::settings::SettingsCollector,
    tables: health::tables::TablesCollector,
}

impl Health {
    fn new(settings: &CollectSettings, read_only: bool) -> Health {
        let dir = &settings.state_dir;
        Health {
            database: health::database::DatabaseCollector::new(dir, read_only),
            server: health::server::ServerHealthCollector::new(dir, read_only),
            settings: health::settings::SettingsCollector::new(dir, read_only),
            tables: health::tables::TablesCollector::new(dir, read_only),
        }
    }
}

/// How long the server facts read on one connection are reused: `log_directory` may change on a
/// server reload without a new connection.
const SERVER_REFRESH: Duration = Duration::from_secs(600);

impl Collectors {
    /// Collectors counting into counters of their own (see [`Collectors::with_counters`]).
    pub fn new(settings: &CollectSettings) -> Collectors {
        Collectors::with_counters(settings, Counters::default())
    }

    /// Collectors counting into `counters` (the daemon's, exported on /metrics).
    pub fn with_counters(settings: &CollectSettings, counters: Counters) -> Collectors {
        Collectors {
            counters,
            activity: activity::ActivityCollector,
            statements: statements::StatementsCollector::new(&settings.state_dir),
            locks: locks::LocksCollector,
            system: system::SystemCollector::default(),
            health: Health::new(settings, false),
            plans: plans::PlansCollector::new(&settings.state_dir),
            server: None,
        }
    }

    /// These collectors with the inbox of plan sightings the daemon's log task fills.
    pub fn with_plan_inbox(mut self, inbox: plans::PlanInbox) -> Collectors {
        self.plans = self.plans.with_inbox(inbox);
        self
    }

    /// Collectors that read their saved state (the statement baseline) but never write it, for
    /// `once --dry-run`.
    pub fn read_only(settings: &CollectSettings) -> Collectors {
        let mut c = Collectors::new(settings);
        c.statements = statements::StatementsCollector::new(&settings.state_dir).read_only();
        c.health = Health::new(settings, true);
        c.plans = plans::PlansCollector::new(&settings.state_dir).read_only();
        c
    }

    /// What these collectors counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Runs one cycle: reads the server's identity, then each collector in turn under its own
    /// deadline. Never fails as a whole: failures are in the report's runs.
    pub async fn run_cycle(&mut self, db: &Db, settings: &CollectSettings) -> CycleReport {
        let started = Instant::now();
        self.system.begin_window();
        let mut server_error = None;
        let server = match self.server_facts(db, settings).await {
            Ok(s) => Some(s),
            // A refused password or a pg_hba.conf rejection is a configuration error, not an
            // outage: ERROR with the fix, where an unreachable server is a WARN.
            Err(e) => {
                match (e.connect_failure(), e.connect_fix()) {
                    (Some(f), Some(fix)) if f.needs_operator() => tracing::error!(
                        error = %e, cause = f.as_str(), fix,
                        "cannot connect to the server; database collectors skip this cycle"),
                    (Some(f), fix) => tracing::warn!(error = %e, cause = f.as_str(), fix,
                        "cannot read the server identity; database collectors skip this cycle"),
                    (None, _) => tracing::warn!(error = %e,
                        "cannot read the server identity; database collectors skip this cycle"),
                }
                server_error = Some(match (e.connect_failure(), e.connect_fix()) {
                    (Some(f), Some(fix)) => format!("{} ({e}): {fix}", f.as_str()),
                    _ => e.to_string(),
                });
                None
            }
        };
        let mut out = CycleReport {
            batches: Vec::new(),
            runs: Vec::new(),
            server: server.as_ref().map(|s| s.info.clone()),
            server_error,
            duration: Duration::ZERO,
        };
        let server = server.as_ref();
        let c = &self.counters;
        run_one(&mut self.activity, db, settings, c, server, &mut out).await;
        run_one(&mut self.statements, db, settings, c, server, &mut out).await;
        run_one(&mut self.locks, db, settings, c, server, &mut out).await;
        run_one(&mut self.system, db, settings, c, server, &mut out).await;
        if settings.health.enabled {
            let h = &mut self.health;
            run_one(&mut h.database, db, settings, c, server, &mut out).await;
            run_one(&mut h.server, db, settings, c, server, &mut out).await;
            run_one(&mut h.settings, db, settings, c, server, &mut out).await;
            run_one(&mut h.tables, db, settings, c, server, &mut out).await;
        }
        if settings.plans.explain {
            self.plans.set_candidates(plans::candidates(&out.batches));
        }
        if self.plans.has_work(settings) {
            run_one(&mut self.plans, db, settings, c, server, &mut out).await;
        } else {
            self.plans.idle(settings, c);
        }
        out.duration = started.elapsed();
        out
    }

    /// The server facts, read once per connection (and again after [`SERVER_REFRESH`]) instead of
    /// once per cycle: `pg_control_system()` reads the control file, and the query cost about as
    /// much server time per cycle as the sessions collector (docs/cost.md). A new connection
    /// (restart, failover, `session_max_age_s`) reads them again.
    async fn server_facts(
        &mut self,
        db: &Db,
        settings: &CollectSettings,
    ) -> Result<ServerContext, DbError> {
        let mut session = db.session().await?;
        let id = session.connection_id();
        if let Some((known, read, facts)) = &self.server {
            if Some(*known) == id && read.elapsed() < SERVER_REFRESH {
                return Ok(facts.clone());
            }
        }
        let facts = server_context_on(&mut session, settings).await?;
        self.server = id.map(|id| (id, Instant::now(), facts.clone()));
        Ok(facts)
    }
}

/// The time one collector may take: each of its queries already has the client deadline; this bounds
/// the whole collector (several queries, /proc reads) so one cannot eat the cycle.
fn collector_budget(settings: &CollectSettings) -> Duration {
    settings.safety.client_timeout * 2
}

async fn run_one<C: Collector>(
    collector: &mut C,
    db: &Db,
    settings: &CollectSettings,
    counters: &Counters,
    server: Option<&ServerContext>,
    out: &mut CycleReport,
) {
    let started = Instant::now();
    let stamp = &settings.stamp;
    let mut session = match (C::NEEDS_DB, server) {
        (true, Some(_)) => match db.session().await {
            Ok(s) => Some(s),
            Err(e) => {
                finish::<C>(
                    out,
                    started,
                    Err(CollectError::Db(e)),
                    stamp,
                    counters,
                    server,
                );
                return;
            }
        },
        (true, None) => {
            // Say why: a refused password is not an unreachable server.
            let e = CollectError::NoSession(match &out.server_error {
                Some(why) => format!("cannot connect: {why}"),
                None => "the server is not reachable".into(),
            });
            finish::<C>(out, started, Err(e), stamp, counters, server);
            return;
        }
        // Host collectors use the database only for optional facts (paths, pids), when reachable.
        (false, Some(_)) => db.session().await.ok(),
        (false, None) => None,
    };
    let budget = collector_budget(settings);
    let result = {
        let mut ctx = Context {
            settings,
            counters,
            server,
            session: session.as_mut(),
        };
        match tokio::time::timeout(budget, collector.collect(&mut ctx)).await {
            Ok(r) => r,
            Err(_) => Err(CollectError::Timeout(budget)),
        }
    };
    if matches!(result, Err(CollectError::Timeout(_))) {
        // A query may still be in flight on this connection: never hand it back to the pool.
        if let Some(s) = session.as_mut() {
            s.discard();
        }
    }
    finish::<C>(out, started, result, stamp, counters, server);
}

fn finish<C: Collector>(
    out: &mut CycleReport,
    started: Instant,
    result: Result<Option<Collected<C::Record>>, CollectError>,
    stamp: &Stamp,
    counters: &Counters,
    server: Option<&ServerContext>,
) {
    let outcome = match result {
        Ok(Some(collected)) => match make_batch::<C>(collected, stamp, server) {
            Ok(batch) => {
                let records = batch.count;
                out.batches.push(batch);
                Outcome::Ok { records }
            }
            Err(e) => {
                counters.incr(Event::CollectorFailures);
                tracing::warn!(collector = C::NAME, error = %e, "cannot serialise records; batch skipped");
                Outcome::Failed(e.to_string())
            }
        },
        Ok(None) => Outcome::Skipped,
        Err(CollectError::Timeout(budget)) => {
            counters.incr(Event::CollectorTimeouts);
            tracing::warn!(
                collector = C::NAME,
                budget_ms = budget.as_millis() as u64,
                "collector did not finish within its budget; skipped this cycle"
            );
            Outcome::TimedOut(budget)
        }
        Err(e) => {
            counters.incr(Event::CollectorFailures);
            tracing::warn!(collector = C::NAME, error = %e, "collector failed; skipped this cycle");
            Outcome::Failed(e.to_string())
        }
    };
    out.runs.push(CollectorRun {
        name: C::NAME,
        kind: C::KIND,
        duration: started.elapsed(),
        outcome,
    });
}

fn make_batch<C: Collector>(
    collected: Collected<C::Record>,
    stamp: &Stamp,
    server: Option<&ServerContext>,
) -> Result<Batch, serde_json::Error> {
    let data = collected
        .records
        .iter()
        .map(Record::new)
        .collect::<Result<Vec<Record>, _>>()?;
    let mut batch = stamp.batch(C::KIND, server.map(|s| s.info.clone()), data);
    batch.extra = collected.extra;
    batch.correlated = collected
        .records
        .iter()
        .filter_map(|r| C::correlated(r, &batch.collected_at))
        .collect();
    Ok(batch)
}

/// Reads the server identity (the fields of [`ServerInfo`]) and the settings collectors need, in one
/// query. pg_settings hides superuser-only rows from roles without pg_read_all_settings instead of
/// failing, so a less privileged role simply gets no paths. The tag sits after `SELECT` because
/// PostgreSQL 18 drops leading comments from pg_stat_statements texts (see
/// [`crate::identity::is_agent_text`]).
pub(crate) async fn server_context(
    db: &Db,
    settings: &CollectSettings,
) -> Result<ServerContext, DbError> {
    server_context_on(&mut db.session().await?, settings).await
}

/// [`server_context`] on a session the caller holds.
async fn server_context_on(
    session: &mut Session,
    settings: &CollectSettings,
) -> Result<ServerContext, DbError> {
    let row = session
        .query_opt(
            "server_context",
            "SELECT /* postgres-agent */ \
             (SELECT system_identifier::text FROM pg_control_system()) AS system_identifier, \
             current_setting('server_version_num')::int AS version_num, \
             (SELECT setting FROM pg_settings WHERE name = 'track_activity_query_size') AS tas, \
             (SELECT setting FROM pg_settings WHERE name = 'data_directory') AS data_directory, \
             (SELECT setting FROM pg_settings WHERE name = 'log_directory') AS log_directory",
            &[],
        )
        .await?;
    let text = |name: &str| -> Option<String> {
        row.as_ref()
            .and_then(|r| r.try_get::<_, Option<String>>(name).ok().flatten())
    };
    let info = ServerInfo {
        system_identifier: text("system_identifier").unwrap_or_default(),
        version_num: row
            .as_ref()
            .and_then(|r| r.try_get::<_, i32>("version_num").ok())
            .unwrap_or(0),
        host: settings.host.clone(),
        port: settings.port,
    };
    let data_directory = text("data_directory");
    let log_directory = match (text("log_directory"), &data_directory) {
        (Some(log), _) if log.starts_with('/') => Some(log),
        (Some(log), Some(data)) => Some(format!("{data}/{log}")),
        _ => None,
    };
    Ok(ServerContext {
        info,
        track_activity_query_size: text("tas").and_then(|t| t.parse().ok()).unwrap_or(1024),
        data_directory,
        log_directory,
    })
}

/// Reads a column, mapping a type mismatch to an error that names the query and the column.
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    query: &'static str,
    column: &'static str,
) -> Result<T, CollectError> {
    row.try_get(column).map_err(|e| CollectError::Column {
        query,
        column,
        message: e.to_string(),
    })
}

/// Milliseconds as a JSON-friendly float rounded to microseconds.
pub(crate) fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: usize) -> crate::config::Config {
        let mut c = crate::config::Config::load_with(None, Vec::<(String, String)>::new()).unwrap();
        c.safety.max_query_length = max;
        c
    }

    #[test]
    fn query_text_cuts_at_a_character_boundary_and_flags_it() {
        let c = CollectSettings::from_config(&config(64));
        let n = Counters::default();
        assert_eq!(
            query_text("SELECT x", &c, &n),
            ("SELECT x".to_string(), false)
        );
        assert_eq!(
            query_text("SELECT 1", &c, &n),
            ("SELECT ?".to_string(), false)
        );
        let long = format!("SELECT {}", "é".repeat(100));
        let (text, cut) = query_text(&long, &c, &n);
        assert!(cut);
        assert!(text.len() <= 64 && text.len() >= 63, "{}", text.len());
        assert!(long.starts_with(&text));
        // A literal cut by the bound is masked whole.
        let long = format!("SELECT '{}'", "é".repeat(100));
        assert_eq!(query_text(&long, &c, &n), ("SELECT ?".to_string(), true));
        // ... and counted where /metrics reads it, not in a process-wide static.
        assert_eq!(n.get(Event::PrivacyLiteralsMasked), 1);
        assert_eq!(n.get(Event::PrivacyLogSpansRedacted), 0);
    }

    #[test]
    fn query_text_counts_credentials_redacted_with_obfuscation_off() {
        let mut c = config(1024);
        c.privacy.obfuscate_queries = false;
        let c = CollectSettings::from_config(&c);
        let n = Counters::default();
        let (text, _) = query_text("ALTER ROLE x PASSWORD 'secret'", &c, &n);
        assert_eq!(text, "ALTER ROLE x PASSWORD [redacted]");
        assert_eq!(n.get(Event::PrivacyLogSpansRedacted), 1);
        assert_eq!(n.get(Event::PrivacyLiteralsMasked), 0);
    }

    #[test]
    fn run_cycle_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let c = config(64);
        let db = Db::new(&c.postgres, &c.safety).unwrap();
        let settings = CollectSettings::from_config(&c);
        let mut collectors = Collectors::new(&settings);
        let fut = collectors.run_cycle(&db, &settings);
        assert_send(&fut);
    }
}
