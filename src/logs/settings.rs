//! What the tailer follows and how: built from the `[logs]` configuration, completed by what the
//! server says about its logging when `logs.path`, `logs.format` or `logs.line_prefix` are unset.
//! Also the one place the log entry [`Finisher`] is made from a configuration ([`finisher`]: the
//! daemon's `Setup` and `parse-log` both use it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::parse::{detect_format, infer_prefix_for, MAX_ENTRY_BYTES};
use super::source::{LogSource, ServerLogging};
use super::Finisher;
use crate::config::{Config, LogFileFormat, LogsConfig};
use crate::log_format::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("[logs] path is empty and the server's log location is unknown: set logs.path")]
    NoLocation,
    #[error("[logs] path = {} is {kind}: only a regular file or a directory of them is read as the server log", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("[logs] path = {}: {source}", path.display())]
    Path {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The entry finisher of a configuration: `correlation.keys` and the `[privacy]` policy. The one
/// function that assembles it, for the log task (through the daemon's `Setup`) and `parse-log`.
pub fn finisher(config: &Config) -> Finisher {
    Finisher {
        correlation_keys: config.correlation.keys.clone(),
        privacy: crate::privacy::from_validated(&config.privacy),
    }
}

/// The log task's part of a configuration, built once per `Setup`: `[logs]`, where the position
/// file lives, and the finisher. [`TailSettings::resolve`] completes it with what the server
/// says.
#[derive(Debug, Clone)]
pub struct TailConfig {
    pub logs: LogsConfig,
    /// `agent.state_dir`.
    pub state_dir: PathBuf,
    pub finisher: Finisher,
}

impl TailConfig {
    pub fn new(config: &Config, finisher: Finisher) -> TailConfig {
        TailConfig {
            logs: config.logs.clone(),
            state_dir: config.agent.state_dir.clone(),
            finisher,
        }
    }

    /// With the finisher of `config` ([`finisher`]), for commands that hold only a `Config`.
    pub fn from_config(config: &Config) -> TailConfig {
        TailConfig::new(config, finisher(config))
    }
}

/// What the tailer follows and how.
#[derive(Debug, Clone)]
pub struct TailSettings {
    pub source: LogSource,
    pub format: LogFormat,
    /// `log_line_prefix` for stderr logs.
    pub prefix: String,
    /// Where `log_position.json` lives (`agent.state_dir`).
    pub state_dir: PathBuf,
    /// With no saved position: start at the end of the newest file (true) or the start of the
    /// oldest (false).
    pub start_at_end: bool,
    pub poll_interval: Duration,
    pub max_entry_bytes: usize,
    /// Most bytes of serialized entries plus envelope in one batch (`logs.max_batch_bytes`).
    pub max_batch_bytes: usize,
    pub finisher: Finisher,
}

/// `logs.max_batch_bytes` by default: 8 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

impl TailSettings {
    pub fn new(source: LogSource, format: LogFormat, prefix: &str, state_dir: &Path) -> Self {
        TailSettings {
            source,
            format,
            prefix: prefix.to_string(),
            state_dir: state_dir.to_path_buf(),
            start_at_end: true,
            poll_interval: Duration::from_millis(100),
            max_entry_bytes: MAX_ENTRY_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            finisher: Finisher::default(),
        }
    }
}

impl TailSettings {
    /// [`TailSettings::resolve`] for commands that hold only a `Config` (`check`).
    pub fn from_config(
        config: &Config,
        server: Option<&ServerLogging>,
    ) -> Result<TailSettings, SettingsError> {
        TailSettings::resolve(&TailConfig::from_config(config), server)
    }

    /// Settings from the configuration; `server` is what [`super::source::discover`] found, used
    /// for whatever `[logs]` leaves unset. With `format = auto` and no server information, the
    /// format (and for stderr the prefix) is detected from the newest file's first bytes.
    pub fn resolve(
        config: &TailConfig,
        server: Option<&ServerLogging>,
    ) -> Result<TailSettings, SettingsError> {
        let logs = &config.logs;
        let path = match (&logs.path, server) {
            (Some(p), _) => p.clone(),
            (None, Some(s)) => s.dir.clone(),
            (None, None) => return Err(SettingsError::NoLocation),
        };
        let meta = std::fs::metadata(&path).map_err(|source| SettingsError::Path {
            path: path.clone(),
            source,
        })?;
        if !meta.is_dir() && !meta.is_file() {
            // Opening a FIFO or a device could block the agent or never end: only regular files
            // (or a directory of them) are read as logs.
            return Err(SettingsError::NotRegular {
                path,
                kind: super::source::describe(meta.file_type()),
            });
        }
        let sample = newest_sample(&path, meta.is_dir());
        let format = match (logs.format, server) {
            (Some(f), _) => log_format(f),
            (None, Some(s)) if logs.path.is_none() || meta.is_dir() => s.format,
            (None, _) if !meta.is_dir() => path
                .to_str()
                .and_then(LogFormat::from_file_name)
                .unwrap_or_else(|| detect_format(&sample)),
            (None, _) => dir_format(&path),
        };
        let prefix = match (&logs.line_prefix, server) {
            (Some(p), _) => p.clone(),
            (None, Some(s)) => s.prefix.clone(),
            (None, None) if matches!(format, LogFormat::Stderr | LogFormat::Syslog) => {
                let inferred = infer_prefix_for(format, &sample);
                tracing::info!(
                    event = "log_prefix_inferred",
                    prefix = inferred.prefix,
                    matched = inferred.matched,
                    lines = inferred.lines,
                    "logs.line_prefix is unset and the server cannot be asked: inferred {inferred}"
                );
                inferred.prefix.to_string()
            }
            (None, None) => String::new(),
        };
        let source = if meta.is_dir() {
            LogSource::Dir { dir: path, format }
        } else {
            LogSource::File(path)
        };
        Ok(TailSettings {
            source,
            format,
            prefix,
            state_dir: config.state_dir.clone(),
            start_at_end: logs.start_at_end,
            poll_interval: logs.poll_interval,
            max_entry_bytes: MAX_ENTRY_BYTES,
            max_batch_bytes: logs.max_batch_bytes,
            finisher: config.finisher.clone(),
        })
    }
}

/// The parser's format for a configured `[logs] format` (config holds its own plain value).
pub fn log_format(format: LogFileFormat) -> LogFormat {
    match format {
        LogFileFormat::Stderr => LogFormat::Stderr,
        LogFileFormat::Csvlog => LogFormat::Csvlog,
        LogFileFormat::Jsonlog => LogFormat::Jsonlog,
        LogFileFormat::Syslog => LogFormat::Syslog,
    }
}

/// jsonlog if the directory has .json files, else csvlog if it has .csv files, else stderr.
fn dir_format(dir: &Path) -> LogFormat {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if names.iter().any(|n| n.ends_with(".json")) {
        LogFormat::Jsonlog
    } else if names.iter().any(|n| n.ends_with(".csv")) {
        LogFormat::Csvlog
    } else {
        LogFormat::Stderr
    }
}

/// The first 64 KiB of the file (or of the directory's newest stderr file).
fn newest_sample(path: &Path, is_dir: bool) -> Vec<u8> {
    use std::io::Read;
    let file = if is_dir {
        LogSource::Dir {
            dir: path.to_path_buf(),
            format: LogFormat::Stderr,
        }
        .files()
        .ok()
        .and_then(|f| f.last().map(|f| f.path.clone()))
    } else {
        Some(path.to_path_buf())
    };
    let mut sample = Vec::new();
    if let Some(f) = file.and_then(|p| super::source::open_regular(&p).ok()) {
        let _ = f.take(64 * 1024).read_to_end(&mut sample);
    }
    sample
}
