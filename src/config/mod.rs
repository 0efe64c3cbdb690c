//! Configuration: INI file + `BITVILLE_PG_*` environment + libpq variables + defaults, validated into
//! [`Config`].
//!
//! Two stages, as in ripgrep: [`raw`] turns text into a map of known keys (no I/O beyond what it is
//! given); [`Config::from_raw`] checks every value and reads `*_file` secrets. Only a validated
//! `Config` reaches the rest of the program. Every error names the file or variable, the section, the
//! key and the value (secrets are shown as `<redacted>`); the CLI maps them to exit status 78.
//! [`aliases`] lets the Python agent's INI file and variables be used unchanged.

pub mod aliases;
pub mod correlation_shape;
pub mod env;
mod health;
pub mod keys;
pub mod otlp;
pub mod plans;
mod protocol;
pub mod raw;
mod secret;
mod validate;
pub mod value;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use env::ENV_CONFIG_PATH;
pub use health::HealthConfig;
pub use protocol::{
    bitville_aggregates_per_cycle, Protocol, BITVILLE_AGGREGATES_PER_CYCLE,
    BITVILLE_MAX_PROJECT_LEN,
};
pub use secret::Secret;
use validate::Validator;
pub use value::{Origin, RawConfig};

/// The default config path, used when it exists and no other is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bitville/postgres-agent.ini";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: INI syntax error: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: key `{key}` is outside any [section]")]
    KeyOutsideSection { origin: Origin, key: String },
    #[error("{origin}: unknown section [{section}]{}", hint(suggestion))]
    UnknownSection {
        origin: Origin,
        section: String,
        suggestion: Option<String>,
    },
    #[error("{origin}: [{section}] unknown key `{key}`{}", hint(suggestion))]
    UnknownKey {
        origin: Origin,
        section: String,
        key: String,
        suggestion: Option<String>,
    },
    #[error(
        "unknown environment variable {name}: no such section and key{}",
        hint(suggestion)
    )]
    UnknownEnv {
        name: String,
        suggestion: Option<String>,
    },
    #[error("{origin}: [{section}] {key} = {value}: {reason}")]
    BadValue {
        origin: Origin,
        section: &'static str,
        key: &'static str,
        /// Already quoted, or `<redacted>` for secrets.
        value: String,
        reason: String,
    },
    #[error("environment variable {name} is not valid UTF-8")]
    EnvNotUnicode { name: String },
    #[error("{origin}: [{section}] {key} is given more than once ({first}, then {second}); set it only once")]
    DuplicateKey {
        origin: Origin,
        section: &'static str,
        key: &'static str,
        /// `key = value` as first given (quoted, or `<redacted>`).
        first: String,
        second: String,
    },
    #[error("{old} and {new} set [{section}] {key} to different values; set it only once")]
    AliasConflict {
        /// The Python agent's name where it was given, and its value (quoted, or `<redacted>`).
        old: String,
        /// Our name where it was given, and its value.
        new: String,
        section: &'static str,
        key: &'static str,
    },
}

fn hint(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub project_id: String,
    pub collection_interval: Duration,
    pub state_dir: PathBuf,
    /// Where `state_dir` was set (file, environment, or the built-in default), for `check` and
    /// `status`, which say which state directory they read.
    pub state_dir_origin: Origin,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// Host name, IP address, or Unix socket directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub database: String,
    pub sslmode: String,
    pub sslrootcert: Option<PathBuf>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SafetyConfig {
    pub max_connections: usize,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    pub client_timeout: Duration,
    pub session_max_age: Duration,
    pub max_activity_rows: usize,
    pub max_statement_rows: usize,
    /// `safety.statement_texts_interval_s`; zero = every cycle.
    pub statement_texts_interval: Duration,
    pub max_query_length: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// None: batches go to stdout as JSON lines.
    pub url: Option<String>,
    pub api_key: Secret,
    pub timeout: Duration,
    pub protocol: Protocol,
    /// Most requests per rolling minute; what paces delivery is [`ListenerConfig::request_limit`].
    pub max_requests_per_minute: u32,
    /// `max_requests_per_minute` was set (file or environment), not the built-in default.
    pub max_requests_per_minute_set: bool,
    /// Largest request body on the wire ([`crate::ship::encode`] splits or trims to fit).
    pub max_body_bytes: usize,
    /// gzip bodies; the batch protocol only.
    pub compress: bool,
    pub ca_file: Option<PathBuf>,
    /// The `[otlp]` section (`protocol = otlp`).
    pub otlp: otlp::OtlpConfig,
}

impl ListenerConfig {
    /// The request pacing delivery applies: `max_requests_per_minute` for the bitville protocol
    /// (the Bitville listener's limit per client IP); for the batch protocol only when the key was
    /// set, since nothing on that side asks for it.
    pub fn request_limit(&self) -> Option<u32> {
        (self.protocol == Protocol::Bitville || self.max_requests_per_minute_set)
            .then_some(self.max_requests_per_minute)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    pub max_size_bytes: u64,
    /// The Python agent's persist-queue buffer directory, to be sent once; None when empty.
    pub python_buffer_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub recovery_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogsConfig {
    pub enabled: bool,
    pub path: Option<PathBuf>,
    /// None: `auto` (asked from the server, else detected from the file).
    pub format: Option<LogFileFormat>,
    pub line_prefix: Option<String>,
    pub poll_interval: Duration,
    pub max_buffered_entries: usize,
    pub max_batch_bytes: usize,
    pub start_at_end: bool,
}

/// `[logs] format` when not `auto`: a plain value. The log layer turns it into its parser's format
/// (`logs::settings::log_format`), so `config` depends on nothing of the agent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFileFormat {
    Stderr,
    Csvlog,
    Jsonlog,
    /// `log_destination = syslog`, as rsyslog writes it to a file.
    Syslog,
}

impl LogFileFormat {
    /// One of [`keys::LOG_FORMATS`] other than `auto`.
    pub fn from_name(name: &str) -> Option<LogFileFormat> {
        match name {
            "stderr" => Some(LogFileFormat::Stderr),
            "csvlog" => Some(LogFileFormat::Csvlog),
            "jsonlog" => Some(LogFileFormat::Jsonlog),
            "syslog" => Some(LogFileFormat::Syslog),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationConfig {
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrivacyConfig {
    pub obfuscate_queries: bool,
    pub redact_log_secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub listen: Option<std::net::SocketAddr>,
    /// `/health` is 503 once delivery has failed this long (`unhealthy_after_s`).
    pub unhealthy_after: Duration,
}

/// Active-session sampling (`[activity]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityConfig {
    /// None: sampling (and spike detection) is off.
    pub sample_interval: Option<Duration>,
    pub sample_top_n: usize,
}

/// Spike snapshots (`[spikes]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpikesConfig {
    pub enabled: bool,
    /// None: twice the host's cores.
    pub active_sessions: Option<u32>,
    /// None: twice the host's cores.
    pub load: Option<f64>,
    /// None: the lock-wait trigger is off.
    pub lock_wait: Option<Duration>,
    pub lookback: Duration,
    pub min_gap: Duration,
    /// `spikes.baseline_s`: the trailing window whose median a trigger must exceed.
    pub baseline: Duration,
    /// `spikes.baseline_factor` in `spikes.mode = baseline`; None in `absolute` mode.
    pub baseline_factor: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggingConfig {
    pub level: String,
    pub format: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from, if any.
    pub file: Option<PathBuf>,
    pub agent: AgentConfig,
    pub postgres: PostgresConfig,
    pub safety: SafetyConfig,
    pub listener: ListenerConfig,
    pub buffer: BufferConfig,
    pub circuit_breaker: BreakerConfig,
    pub logs: LogsConfig,
    pub correlation: CorrelationConfig,
    pub privacy: PrivacyConfig,
    pub telemetry: TelemetryConfig,
    pub logging: LoggingConfig,
    pub activity: ActivityConfig,
    pub spikes: SpikesConfig,
    /// Server and table health (`[health]`).
    pub health: HealthConfig,
    /// `[plans]`: EXPLAIN on demand.
    pub plans: plans::PlansConfig,
    /// One line per Python agent name used (see [`aliases`]), to be logged at WARN once logging runs;
    /// not a setting, so left out of comparisons.
    pub notices: Vec<String>,
}

/// Equal settings; `notices` are not compared, so renaming an old key is an unchanged reload.
impl PartialEq for Config {
    fn eq(&self, other: &Config) -> bool {
        let Config {
            file,
            agent,
            postgres,
            safety,
            listener,
            buffer,
            circuit_breaker,
            logs,
            correlation,
            privacy,
            telemetry,
            logging,
            activity,
            spikes,
            health,
            plans,
            notices: _,
        } = self;
        *file == other.file
            && *agent == other.agent
            && *postgres == other.postgres
            && *safety == other.safety
            && *listener == other.listener
            && *buffer == other.buffer
            && *circuit_breaker == other.circuit_breaker
            && *logs == other.logs
            && *correlation == other.correlation
            && *privacy == other.privacy
            && *telemetry == other.telemetry
            && *logging == other.logging
            && *activity == other.activity
            && *spikes == other.spikes
            && *health == other.health
            && *plans == other.plans
    }
}

/// Chooses the config file: the explicit path, else `BITVILLE_PG_CONFIG_PATH`, else the default path
/// if it exists, else none (built-in defaults).
pub fn resolve_path(explicit: Option<&Path>, env_path: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env_path.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    default.exists().then(|| default.to_path_buf())
}

impl Config {
    /// Loads the configuration the way the binary does: the resolved file, the process environment,
    /// and the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env = env::read(std::env::vars_os())?;
        let env_path = env.iter().find(|(n, _)| n == ENV_CONFIG_PATH);
        let path = resolve_path(explicit, env_path.map(|(_, v)| v.as_str()));
        Config::load_with(path.as_deref(), env)
    }

    /// Loads from an optional file and an explicit set of environment variables.
    pub fn load_with<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut raw = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
                        path: path.to_path_buf(),
                        source,
                    })?;
                RawConfig::from_ini(&text, path)?
            }
            None => RawConfig::default(),
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        raw.apply_env(env.iter().cloned())?;
        aliases::resolve(&mut raw)?;
        raw.apply_libpq_env(env.iter().cloned())?;
        otlp::apply_env(&mut raw, &env)?;
        Config::from_raw(&raw)
    }

    /// Stage two: checks every value and builds the typed sections. Expects the Python agent's names
    /// already merged ([`aliases::resolve`], as [`Config::load_with`] does).
    pub fn from_raw(raw: &RawConfig) -> Result<Config, ConfigError> {
        let v = Validator { raw };
        let listener_url = v.listener_url()?;
        let telemetry_listen = match v.opt_str("telemetry", "listen") {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| {
                v.bad(
                    "telemetry",
                    "listen",
                    "expected IP:PORT, for example 127.0.0.1:9188",
                )
            })?),
        };
        let protocol =
            Protocol::parse(&v.choice("listener", "protocol")?).unwrap_or(Protocol::Bitville);
        let project_id = v.str("agent", "project_id")?;
        if listener_url.is_some() && protocol == Protocol::Bitville {
            let chars = project_id.chars().count();
            if chars == 0 || chars > BITVILLE_MAX_PROJECT_LEN {
                return Err(v.bad(
                    "agent",
                    "project_id",
                    format!(
                        "the Bitville listener needs a project of 1 to {BITVILLE_MAX_PROJECT_LEN} characters \
                         (listener.protocol = bitville); this one has {chars}"
                    ),
                ));
            }
        }
        let paced = protocol == Protocol::Bitville
            || !matches!(
                raw.get("listener", "max_requests_per_minute").origin,
                Origin::Default
            );
        if listener_url.is_some() && paced {
            // The agent's own production: one request per type per cycle (activity, statements,
            // locks, system metrics, pg_logs; the sampling aggregate when sampling is on), counted
            // even when a type has nothing to send or the log reader is off, plus the most spike
            // snapshots a minute can have (one per spikes.min_gap_s), so the estimate is never
            // below what the agent makes. Parts of oversized aggregates and correlated statements
            // come on top and are paced, not refused.
            let interval = v.int("agent", "collection_interval_s")?;
            let limit = v.int("listener", "max_requests_per_minute")?;
            let sampling = v.sample_interval()?.is_some();
            let per_cycle = u64::from(BITVILLE_AGGREGATES_PER_CYCLE)
                + u64::from(sampling)
                + u64::from(health::AGGREGATES_PER_CYCLE) * u64::from(v.bool("health", "enabled")?);
            let spikes = match sampling && v.bool("spikes", "enabled")? {
                true => 60u64.div_ceil(v.int("spikes", "min_gap_s")?.max(1)),
                false => 0,
            };
            let needed = (per_cycle * 60).div_ceil(interval) + spikes;
            if needed > limit {
                return Err(v.bad(
                    "listener",
                    "max_requests_per_minute",
                    format!(
                        "listener.protocol = {protocol} sends {per_cycle} requests per cycle, so \
                         agent.collection_interval_s = {interval} produces {needed} requests per \
                         minute (with {spikes} spike snapshots), more than this limit of {limit} \
                         (before any correlated statement or split part): delivery could never \
                         catch up; raise collection_interval_s to at least {} or this limit (the \
                         Bitville listener allows BITVILLE_RATE_LIMIT, 100 by default, per client \
                         IP){}",
                        (per_cycle * 60).div_ceil(limit.saturating_sub(spikes).max(1)),
                        if protocol == Protocol::Batch {
                            ", or remove it: the batch protocol is not paced unless it is set"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        let hostname = v
            .opt_str("agent", "hostname")
            .unwrap_or_else(system_hostname);
        Ok(Config {
            file: raw.file.clone(),
            agent: AgentConfig {
                project_id,
                collection_interval: Duration::from_secs(v.int("agent", "collection_interval_s")?),
                state_dir: v.state_dir()?,
                state_dir_origin: raw.get("agent", "state_dir").origin,
                hostname,
            },
            postgres: PostgresConfig {
                host: v.nonempty("postgres", "host")?,
                port: v.int("postgres", "port")? as u16,
                user: v.nonempty("postgres", "user")?,
                password: v.secret_or_file("postgres", "password", "password_file")?,
                database: v.nonempty("postgres", "database")?,
                sslmode: v.choice("postgres", "sslmode")?,
                sslrootcert: v.opt_str("postgres", "sslrootcert").map(PathBuf::from),
                connect_timeout: Duration::from_secs(v.int("postgres", "connect_timeout_s")?),
            },
            safety: SafetyConfig {
                max_connections: v.int("safety", "max_connections")? as usize,
                statement_timeout: v.millis("safety", "statement_timeout_ms")?,
                lock_timeout: v.millis("safety", "lock_timeout_ms")?,
                idle_in_transaction_timeout: v
                    .millis("safety", "idle_in_transaction_timeout_ms")?,
                client_timeout: v.millis("safety", "client_timeout_ms")?,
                session_max_age: Duration::from_secs(v.int("safety", "session_max_age_s")?),
                max_activity_rows: v.int("safety", "max_activity_rows")? as usize,
                max_statement_rows: v.int("safety", "max_statement_rows")? as usize,
                statement_texts_interval: Duration::from_secs(
                    v.int("safety", "statement_texts_interval_s")?,
                ),
                max_query_length: v.int("safety", "max_query_length")? as usize,
            },
            listener: ListenerConfig {
                url: listener_url,
                api_key: v.api_key()?,
                timeout: Duration::from_secs(v.int("listener", "timeout_s")?),
                protocol,
                max_requests_per_minute: v.int("listener", "max_requests_per_minute")? as u32,
                max_requests_per_minute_set: !matches!(
                    raw.get("listener", "max_requests_per_minute").origin,
                    Origin::Default
                ),
                max_body_bytes: v.int("listener", "max_body_bytes")? as usize,
                compress: v.bool("listener", "compress")?,
                ca_file: v.opt_str("listener", "ca_file").map(PathBuf::from),
                otlp: v.otlp()?,
            },
            buffer: BufferConfig {
                max_size_bytes: v.int("buffer", "max_size_mb")? * 1024 * 1024,
                python_buffer_path: v.opt_str("buffer", "python_buffer_path").map(PathBuf::from),
            },
            circuit_breaker: BreakerConfig {
                failure_threshold: v.int("circuit_breaker", "failure_threshold")? as u32,
                recovery_timeout: Duration::from_secs(
                    v.int("circuit_breaker", "recovery_timeout_s")?,
                ),
            },
            logs: LogsConfig {
                enabled: v.bool("logs", "enabled")?,
                path: v.opt_str("logs", "path").map(PathBuf::from),
                // Checked against keys.rs's choices: anything else than `auto` is a format name.
                format: LogFileFormat::from_name(&v.choice("logs", "format")?),
                line_prefix: v.opt_str("logs", "line_prefix"),
                poll_interval: v.millis("logs", "poll_interval_ms")?,
                max_buffered_entries: v.int("logs", "max_buffered_entries")? as usize,
                max_batch_bytes: v.int("logs", "max_batch_bytes")? as usize,
                start_at_end: v.choice("logs", "start_at")? == "end",
            },
            correlation: CorrelationConfig {
                // `id_shape` travels inside the keys list, so every reader applies it.
                keys: correlation_shape::keys_with_shape(
                    v.list("correlation", "keys", None)?,
                    &v.choice("correlation", "id_shape")?,
                ),
            },
            privacy: PrivacyConfig {
                obfuscate_queries: v.bool("privacy", "obfuscate_queries")?,
                redact_log_secrets: {
                    let classes =
                        v.list("privacy", "redact_log_secrets", Some(keys::REDACT_CLASSES))?;
                    if classes.len() > 1 && classes.iter().any(|c| c == "none") {
                        return Err(v.bad(
                            "privacy",
                            "redact_log_secrets",
                            "`none` cannot be combined with other classes",
                        ));
                    }
                    classes
                },
            },
            telemetry: TelemetryConfig {
                listen: telemetry_listen,
                unhealthy_after: Duration::from_secs(v.int("telemetry", "unhealthy_after_s")?),
            },
            logging: LoggingConfig {
                level: v.choice("logging", "level")?,
                format: v.choice("logging", "format")?,
            },
            activity: ActivityConfig {
                sample_interval: v.sample_interval()?,
                sample_top_n: v.int("activity", "sample_top_n")? as usize,
            },
            spikes: SpikesConfig {
                enabled: v.bool("spikes", "enabled")?,
                active_sessions: v
                    .opt_positive("spikes", "active_sessions", 1_000_000.0, true)?
                    .map(|n| n as u32),
                load: v.opt_positive("spikes", "load", 1_000_000.0, false)?,
                lock_wait: Some(v.millis("spikes", "lock_wait_ms")?).filter(|d| !d.is_zero()),
                lookback: Duration::from_secs(v.int("spikes", "lookback_s")?),
                min_gap: Duration::from_secs(v.int("spikes", "min_gap_s")?),
                baseline: Duration::from_secs(v.int("spikes", "baseline_s")?),
                baseline_factor: match v.choice("spikes", "mode")?.as_str() {
                    "absolute" => None,
                    _ => v.opt_positive("spikes", "baseline_factor", 1000.0, false)?,
                },
            },
            health: health::parse(&v)?,
            plans: plans::PlansConfig::read(&v)?,
            notices: raw.notices.clone(),
        })
    }

    /// Logs each notice at WARN; call once logging is initialised.
    pub fn log_notices(&self) {
        for notice in &self.notices {
            tracing::warn!("{notice}");
        }
    }
}

fn system_hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
