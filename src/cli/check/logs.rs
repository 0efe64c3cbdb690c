//! The `logs` line of `check`: where the server log is, whether the agent's user can read it, and
//! whether it is the file the server writes now (`pg_current_logfile()`, where the role may call it:
//! superusers, or roles granted EXECUTE on it).
//!
//! A permission error names what decides it: `log_file_mode`, the directory modes on the way to the
//! file, and the groups of the user the check runs as.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio_postgres::types::Type;

use super::CheckResult;
use crate::config::Config;
use crate::db::Session;
use crate::log_format::LogFormat;
use crate::logs::settings::{SettingsError, TailSettings};
use crate::logs::source::{self, LogSource};

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
        Err(_) => config.logs.format.unwrap_or(LogFormat::Stderr),
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

/// For a path that does not exist: what its nearest existing directory holds, so a typo shows.
fn nearest(path: &Path) -> String {
    let Some(dir) = path.ancestors().skip(1).find(|p| p.is_dir()) else {
        return "no directory above it exists".to_string();
    };
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    format!("{name}/")
                } else {
                    name
                }
            })
            .collect(),
        Err(e) => return format!("{} cannot be listed: {e}", dir.display()),
    };
    if names.is_empty() {
        return format!("{} is empty", dir.display());
    }
    names.sort();
    const SHOWN: usize = 20;
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{} holds: {}{more}", dir.display(), names.join(", "))
}

/// A permission error: which directory or file blocks the agent's user, and what to change. Only
/// what applies is suggested: `log_file_mode` only when the logging collector writes the file and
/// the file is not group-readable yet; the group only when the user is not in it.
fn denied(path: &Path, error: &std::io::Error, server: Option<&ServerFile>) -> CheckResult {
    let me = Identity::current();
    let mut modes = Vec::new();
    let mut blocked = None;
    // From the top down: the first directory the user cannot search is the one to open up.
    let mut chain: Vec<&Path> = path.ancestors().collect();
    chain.reverse();
    for p in chain {
        if let Ok(meta) = std::fs::metadata(p) {
            let searchable =
                !meta.is_dir() || rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok();
            if p.as_os_str().len() > 1 && (!searchable || p == path) {
                modes.push(format!(
                    "{} mode {:04o} {}:{}",
                    p.display(),
                    meta.mode() & 0o7777,
                    user_name(meta.uid()),
                    group_name(meta.gid())
                ));
            }
            if !searchable && blocked.is_none() {
                blocked = Some((p.to_path_buf(), meta.gid()));
            }
        }
    }
    let target = std::fs::metadata(path).ok();
    let gid = blocked
        .as_ref()
        .map(|(_, g)| *g)
        .or_else(|| target.as_ref().map(|m| m.gid()));
    let user = user_name(me.uid);
    let mut fixes = Vec::new();
    // The file itself: readable by its group? (Unknown when a directory above hides it.)
    let file_unreadable_by_group = target
        .as_ref()
        .is_some_and(|m| m.is_file() && m.mode() & 0o040 == 0);
    let set_mode = |now: Option<&str>| {
        format!(
            "set log_file_mode = 0640 in postgresql.conf{} and reload (chmod g+r the existing files)",
            now.map(|m| format!(" (now {m})")).unwrap_or_default()
        )
    };
    let file_fix = match server {
        // Without the collector, log_file_mode does not apply.
        Some(s) if !s.collector => (file_unreadable_by_group || target.is_none()).then(|| {
            format!(
                "make {} group-readable (chmod g+r; logging_collector is off, so log_file_mode \
                 does not apply: the file's mode is whatever the server's start script gives it)",
                path.display()
            )
        }),
        Some(s) => match s.file_mode.as_deref() {
            Some(m) if group_readable(m) => file_unreadable_by_group.then(|| {
                format!(
                    "chmod g+r {} (log_file_mode is already {m}: new files are group-readable)",
                    path.display()
                )
            }),
            now => Some(set_mode(now)),
        },
        None => (file_unreadable_by_group || target.is_none()).then(|| set_mode(None)),
    };
    fixes.extend(file_fix);
    if let Some((dir, _)) = &blocked {
        fixes.push(format!(
            "let the group search {} (chmod g+rx; with log_directory inside the data directory, \
             PostgreSQL allows 0750 on it when the cluster was initialised with --allow-group-access, \
             else move log_directory to /var/log/postgresql)",
            dir.display()
        ));
    }
    match gid {
        Some(g) if !me.groups.contains(&g) => {
            let group = group_name(g);
            fixes.push(format!(
                "add the agent's user to group {group} (usermod -aG {group} {user}: {user} is the \
                 user this check ran as; the systemd unit has SupplementaryGroups=postgres)"
            ));
        }
        Some(g) => fixes.push(format!(
            "user {user} is already in group {}: the group lacks read permission",
            group_name(g)
        )),
        None => {}
    }
    if fixes.is_empty() {
        fixes.push("give the agent's user read access to the log file".to_string());
    }
    CheckResult::fail(
        NAME,
        format!(
            "cannot read {}: {error}; {}; the check runs as {}",
            path.display(),
            modes.join(", "),
            me.describe()
        ),
        fixes.join("; "),
    )
}

/// Whether an octal mode text such as `0640` lets the group read.
fn group_readable(mode: &str) -> bool {
    u32::from_str_radix(mode.trim_start_matches('0'), 8).is_ok_and(|m| m & 0o040 != 0)
}

/// The name of the user this process runs as, for fixes that name the agent's user.
pub(super) fn current_user() -> String {
    user_name(rustix::process::geteuid().as_raw())
}

/// The user and groups this process runs as, for messages.
struct Identity {
    uid: u32,
    groups: Vec<u32>,
}

impl Identity {
    fn current() -> Identity {
        let mut groups = vec![rustix::process::getegid().as_raw()];
        if let Ok(more) = rustix::process::getgroups() {
            for g in more {
                if !groups.contains(&g.as_raw()) {
                    groups.push(g.as_raw());
                }
            }
        }
        Identity {
            uid: rustix::process::geteuid().as_raw(),
            groups,
        }
    }

    fn describe(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(|g| group_name(*g)).collect();
        format!(
            "user {} (groups {})",
            user_name(self.uid),
            groups.join(", ")
        )
    }
}

/// The name of a user or group id from /etc/passwd or /etc/group, else the number.
fn name_in(file: &str, id: u32) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| id.to_string())
}

fn user_name(uid: u32) -> String {
    name_in("/etc/passwd", uid)
}

fn group_name(gid: u32) -> String {
    name_in("/etc/group", gid)
}
