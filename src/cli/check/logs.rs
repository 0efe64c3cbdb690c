//! The `logs` line of `check`: where the server log is, whether the agent's user can read it, and
//! whether it is the file the server writes now (`pg_current_logfile()`, where the role may call it:
//! superusers, or roles granted EXECUTE on it).
//!
//! A permission error names what decides it: `log_file_mode`, the directory modes on the way to the
//! file, and the groups of the user the check runs as.

use std::path::{Path, PathBuf};

use tokio_postgres::types::Type;

use super::CheckResult;
use crate::config::Config;
use crate::db::Session;
use crate::log_format::LogFormat;
use crate::logs::settings::{log_format, SettingsError, TailSettings};
use crate::logs::source::{self, LogSource};

mod access;

pub(super) use access::current_user;
use access::{denied, nearest};

const NAME: &str = "logs";

/// Runs the check; `session` is None when the server is unreachable (then only an explicit
/// `[logs] path` is checked: the caller skips discovery).
pub(super) async fn check(config: &Config, mut session: Option<&mut Session>) -> CheckResult {
    if !config.logs.enabled {
        return CheckResult::ok(NAME, "disabled ([logs] enabled = false)");
    }
    let mut hidden_from = None;
    let mut discover_error = None;
    let server = match session.as_deref_mut() {
        Some(s) if config.logs.path.is_none() || config.logs.line_prefix.is_none() => {
            match source::discover(s).await {
                Ok(found) => Some(found),
                Err(source::DiscoverError::Hidden { role }) => {
                    hidden_from = Some(role);
                    None
                }
                Err(e) => {
                    discover_error = Some(e.to_string());
                    None
                }
            }
        }
        _ => None,
    };
    let settings = TailSettings::from_config(config, server.as_ref());
    let format = match &settings {
        Ok(s) => s.format,
        Err(_) => config.logs.format.map_or(LogFormat::Stderr, log_format),
    };
    let current = match session {
        Some(s) => ServerFile::read(s, format).await,
        None => None,
    };
    // Without the logging collector the server writes to stderr, which its start script sends to
    // a file the server cannot name (Debian: /var/log/postgresql/postgresql-15-main.log), not to
    // log_directory.
    if let (None, Some(c)) = (&config.logs.path, &current) {
        if !c.collector {
            return CheckResult::warn(
                NAME,
                "logging_collector is off: the server writes its log to stderr, wherever its start \
                 script sends it, not to log_directory; server logs will not be collected",
                format!(
                    "set [logs] path to that file{} and give the agent's user read access to it \
                     (Debian: usermod -aG adm {}), or turn logging_collector on",
                    c.debian_log()
                        .map(|p| format!(" ({})", p.display()))
                        .unwrap_or_default(),
                    current_user()
                ),
            );
        }
    }
    let settings = match settings {
        Ok(s) => s,
        // The role cannot see where the log is; the daemon runs without logs until told.
        Err(_) if config.logs.path.is_none() && hidden_from.is_some() => {
            let role = hidden_from.unwrap_or_default();
            return CheckResult::warn(
                NAME,
                format!(
                    "the server's log location is hidden from role {role} (log_directory and \
                     data_directory need pg_read_all_settings): server logs will not be collected"
                ),
                format!(
                    "GRANT pg_read_all_settings TO \"{role}\"; (included in pg_monitor), or set [logs] path \
                     to the server's log directory"
                ),
            );
        }
        Err(SettingsError::NoLocation) if discover_error.is_some() => {
            return CheckResult::fail(
                NAME,
                format!(
                    "cannot ask the server where it logs: {}",
                    discover_error.unwrap_or_default()
                ),
                "see the server's log for the failed query, or set [logs] path to the server's log directory",
            );
        }
        Err(SettingsError::Path { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return denied(&path, &source, current.as_ref());
        }
        Err(SettingsError::Path { path, source })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return CheckResult::fail(
                NAME,
                format!(
                    "[logs] path = {}: {source}; {}",
                    path.display(),
                    nearest(&path)
                ),
                "set [logs] path to the server's log file or directory (log_directory)",
            );
        }
        Err(e) => {
            return CheckResult::fail(
                NAME,
                e.to_string(),
                "set [logs] path to the server's log file or directory (log_directory)",
            )
        }
    };
    let files =
        match settings.source.files() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return denied(where_(&settings.source), &e, current.as_ref())
            }
            Err(e) => return CheckResult::fail(
                NAME,
                format!("cannot list {}: {e}", where_(&settings.source).display()),
                "set [logs] path to the server's log file or directory, or [logs] enabled = false",
            ),
        };
    let Some(newest) = files.last() else {
        return CheckResult::ok(
            NAME,
            format!(
                "{}: no {} file yet; it will be followed when one appears",
                where_(&settings.source).display(),
                settings.format.as_str()
            ),
        );
    };
    if let Err(e) = source::open_regular(&newest.path) {
        return if e.kind() == std::io::ErrorKind::PermissionDenied {
            denied(&newest.path, &e, current.as_ref())
        } else {
            CheckResult::fail(
                NAME,
                format!("cannot read {}: {e}", newest.path.display()),
                "set [logs] path to the server's log file or directory, or [logs] enabled = false",
            )
        };
    }
    let readable = format!(
        "{} is readable ({}, {})",
        newest.path.display(),
        settings.format.as_str(),
        crate::cli::pretty::plural(files.len(), "file", "files")
    );
    match current.map(|c| c.compare(&settings.source, settings.format, newest.size)) {
        Some(Verdict::Different { detail, fix }) => {
            CheckResult::warn(NAME, format!("{readable}, but {detail}"), fix)
        }
        Some(Verdict::Same) => {
            CheckResult::ok(NAME, format!("{readable}; the server writes this file now"))
        }
        Some(Verdict::Unknown(why)) => CheckResult::ok(NAME, format!("{readable} ({why})")),
        None => CheckResult::ok(NAME, readable),
    }
}

fn where_(source: &LogSource) -> &Path {
    match source {
        LogSource::File(p) => p,
        LogSource::Dir { dir, .. } => dir,
    }
}

/// What the server says about the file it writes now.
struct ServerFile {
    /// `pg_current_logfile(format)` made absolute; None when it returned NULL.
    current: Option<PathBuf>,
    /// The role may call `pg_current_logfile()` (superusers, and roles granted EXECUTE on it).
    allowed: bool,
    collector: bool,
    destination: String,
    file_mode: Option<String>,
    /// `cluster_name`; Debian's clusters are named `<major>/<name>`.
    cluster_name: Option<String>,
}

enum Verdict {
    Same,
    Different { detail: String, fix: String },
    Unknown(String),
}

impl ServerFile {
    /// Asks the server; None if the query fails (the other lines report why).
    async fn read(session: &mut Session, format: LogFormat) -> Option<ServerFile> {
        let format = format.as_str().to_string();
        // Asked first: the executor checks EXECUTE on every function of a query before running
        // any of it (a CASE does not help), and the error would land in the server log, the very
        // file being checked.
        let row = session
            .query_opt(
                "check_log_settings",
                "SELECT has_function_privilege('pg_catalog.pg_current_logfile(text)', 'EXECUTE'), \
                 NULL::text, \
                 (SELECT setting FROM pg_settings WHERE name = 'data_directory'), \
                 current_setting('logging_collector'), current_setting('log_destination'), \
                 (SELECT setting FROM pg_settings WHERE name = 'log_file_mode'), \
                 current_setting('cluster_name')",
                &[],
            )
            .await
            .ok()??;
        let allowed: bool = row.try_get(0).unwrap_or(false);
        let current_file = if allowed {
            session
                .query_opt(
                    "check_current_logfile",
                    "SELECT pg_current_logfile($1)",
                    &[(&format, Type::TEXT)],
                )
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get::<_, Option<String>>(0).ok().flatten())
        } else {
            None
        };
        let text = |i: usize| row.try_get::<_, Option<String>>(i).ok().flatten();
        let data_dir = text(2);
        let current = current_file.and_then(|f| {
            let f = PathBuf::from(f);
            match (f.is_absolute(), &data_dir) {
                (true, _) => Some(f),
                (false, Some(d)) => Some(Path::new(d).join(f)),
                (false, None) => None,
            }
        });
        Some(ServerFile {
            current,
            allowed,
            collector: text(3).as_deref() == Some("on"),
            destination: text(4).unwrap_or_default(),
            file_mode: text(5),
            cluster_name: text(6),
        })
    }

    /// Where Debian's pg_ctlcluster sends the server's stderr, if that file exists.
    fn debian_log(&self) -> Option<PathBuf> {
        let (major, name) = self.cluster_name.as_deref()?.split_once('/')?;
        let path = PathBuf::from(format!("/var/log/postgresql/postgresql-{major}-{name}.log"));
        path.exists().then_some(path)
    }

    /// Whether `source` is where the server writes now (the query asked for the file of the
    /// format being followed).
    fn compare(&self, source: &LogSource, format: LogFormat, newest_size: u64) -> Verdict {
        if !self.collector {
            return match source {
                LogSource::File(p) if newest_size == 0 => Verdict::Different {
                    detail: format!(
                        "{} is empty and logging_collector is off: the server's stderr goes \
                         wherever its start script sends it, maybe not there",
                        p.display()
                    ),
                    fix: "set logging_collector = on (and log_directory) in postgresql.conf and \
                          restart, then unset [logs] path so the agent asks the server"
                        .into(),
                },
                _ => Verdict::Unknown(
                    "logging_collector is off: the server's stderr goes wherever its start script \
                     sends it, which the server cannot name"
                        .into(),
                ),
            };
        }
        if !self.allowed {
            return Verdict::Unknown(
                "not compared with the file the server writes: pg_current_logfile() is for \
                 superusers unless granted (GRANT EXECUTE ON FUNCTION pg_current_logfile(text) TO ...)"
                    .into(),
            );
        }
        let Some(current) = &self.current else {
            return Verdict::Different {
                detail: format!(
                    "the server writes no {} file now (log_destination = '{}')",
                    format.as_str(),
                    self.destination
                ),
                fix: format!(
                    "add {} to log_destination in postgresql.conf and reload, or set [logs] \
                     format to one it writes",
                    format.as_str()
                ),
            };
        };
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        let (matches, what) = match source {
            LogSource::File(p) => (same(p, current), p),
            LogSource::Dir { dir, .. } => (current.parent().is_some_and(|d| same(d, dir)), dir),
        };
        if matches {
            return Verdict::Same;
        }
        let dir = current.parent().unwrap_or(current);
        Verdict::Different {
            detail: format!(
                "the server writes {} now, not {}: nothing new will be read",
                current.display(),
                what.display()
            ),
            fix: format!(
                "set [logs] path = {} (the directory: rotated files are followed), or leave it \
                 unset so the agent asks the server",
                dir.display()
            ),
        }
    }
}
