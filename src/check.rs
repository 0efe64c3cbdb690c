//! `postgres-agent check`: each prerequisite on its own line with OK, WARN or FAIL and, unless OK,
//! the fix. Usable as systemd `ExecStartPre`: exits non-zero only if a check fails; a WARN names
//! something the daemon will do without (it degrades and says so once in its log).

use std::process::ExitCode;

use crate::config::Config;
use crate::db::{Db, Session};
use crate::ship::probe::{self, Verdict};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The agent runs, without something (named in the detail).
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// The outcome of one check.
pub struct CheckResult {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl CheckResult {
    fn ok(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check, prints the results on stdout, and returns the exit code.
pub fn run(config: &Config) -> ExitCode {
    let Some(runtime) = crate::command_runtime() else {
        return ExitCode::FAILURE;
    };
    let results = runtime.block_on(checks(config));
    if print(&results) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints each result and its fix; true if any failed.
fn print(results: &[CheckResult]) -> bool {
    let mut failed = false;
    for r in results {
        println!("{:<4} {:<18} {}", r.status.label(), r.name, r.detail);
        if let Some(fix) = &r.fix {
            println!("     {:<18} fix: {fix}", "");
        }
        failed |= r.status == Status::Fail;
    }
    failed
}

/// `check --config-only`: the configuration was loaded (file, environment, `*_file` secrets) before
/// this is called, so print its line and succeed; no network, database or disk access.
pub fn config_only(config: &Config) -> ExitCode {
    print(&[config_loaded(config)]);
    ExitCode::SUCCESS
}

fn config_loaded(config: &Config) -> CheckResult {
    CheckResult::ok(
        "config",
        match &config.file {
            Some(p) => format!("loaded {}", p.display()),
            None => "no config file; built-in defaults and environment".to_string(),
        },
    )
}

/// Runs every check against the live system.
pub async fn checks(config: &Config) -> Vec<CheckResult> {
    let mut out = vec![config_loaded(config)];
    out.push(check_state_dir(config));
    let db = match Db::new(&config.postgres, &config.safety) {
        Ok(db) => db,
        Err(e) => {
            out.push(CheckResult::fail(
                "connection",
                e.to_string(),
                "fix the [postgres] TLS settings",
            ));
            return out;
        }
    };
    match db.session().await {
        Ok(mut session) => {
            out.push(check_connection(&mut session, &db).await);
            out.push(check_privileges(&mut session, &config.postgres.user).await);
            out.push(check_filesystems(&mut session, &config.postgres.user).await);
            out.push(check_statements_extension(&mut session).await);
            out.push(check_logs(config, Some(&mut session)).await);
        }
        Err(e) => {
            out.push(CheckResult::fail(
                "connection",
                e.to_string(),
                "check [postgres] host/port/user/password, that the server runs, and pg_hba.conf",
            ));
            out.push(check_logs(config, None).await);
        }
    }
    db.close();
    out.push(check_listener(config).await);
    out
}

async fn check_listener(config: &Config) -> CheckResult {
    let name = "listener";
    let Some(url) = &config.listener.url else {
        return CheckResult::ok(name, "no listener.url: batches are printed to stdout");
    };
    let p = probe::probe(&config.listener, url).await;
    CheckResult {
        name,
        status: match p.verdict {
            Verdict::Ok => Status::Ok,
            Verdict::Warn => Status::Warn,
            Verdict::Fail => Status::Fail,
        },
        detail: p.detail,
        fix: p.fix,
    }
}

fn check_state_dir(config: &Config) -> CheckResult {
    let dir = &config.agent.state_dir;
    let probe = dir.join(".write-check");
    let result = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b"ok"))
        .and_then(|_| std::fs::remove_file(&probe));
    match result {
        Ok(()) => CheckResult::ok("state_dir", format!("{} is writable", dir.display())),
        Err(e) => CheckResult::fail(
            "state_dir",
            format!("{} is not writable: {e}", dir.display()),
            format!(
                "create it and give it to the agent's user (install -d -o postgres-agent {}), or set [agent] state_dir",
                dir.display()
            ),
        ),
    }
}

async fn check_connection(session: &mut Session, db: &Db) -> CheckResult {
    match session
        .query_opt(
            "check_version",
            "SELECT current_setting('server_version')",
            &[],
        )
        .await
    {
        Ok(Some(row)) => CheckResult::ok(
            "connection",
            format!(
                "connected to {} (PostgreSQL {})",
                db.target(),
                row.try_get::<_, String>(0).unwrap_or_default()
            ),
        ),
        Ok(None) => CheckResult::fail(
            "connection",
            "server returned no version",
            "check the server",
        ),
        Err(e) => CheckResult::fail("connection", e.to_string(), "check the server log"),
    }
}

/// What the role may see. pg_monitor includes pg_read_all_stats (other sessions' queries,
/// pg_stat_statements texts) and pg_read_all_settings (the data and log directories).
async fn check_privileges(session: &mut Session, user: &str) -> CheckResult {
    let name = "privileges";
    let sql = "SELECT rolsuper OR pg_has_role(current_user, 'pg_monitor', 'USAGE'), \
               pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), \
               pg_has_role(current_user, 'pg_read_all_settings', 'USAGE') \
               FROM pg_roles WHERE rolname = current_user";
    let row = match session.query_opt("check_privileges", sql, &[]).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return CheckResult::fail(name, "the role is not in pg_roles", "check the role")
        }
        Err(e) => return CheckResult::fail(name, e.to_string(), "check the role"),
    };
    let has = |i: usize| row.try_get::<_, bool>(i).unwrap_or(false);
    let (monitor, stats, settings) = (has(0), has(1), has(2));
    let grant = format!("GRANT pg_monitor TO \"{user}\";");
    match (monitor, stats, settings) {
        (true, _, _) => CheckResult::ok(name, format!("role {user} has pg_monitor (or is superuser)")),
        (false, true, true) => CheckResult::ok(
            name,
            format!("role {user} has pg_read_all_stats and pg_read_all_settings: everything the agent reads is visible"),
        ),
        (false, true, false) => CheckResult::warn(
            name,
            format!(
                "role {user} has pg_read_all_stats but not pg_monitor: activity, statements and locks are complete; \
                 the data and log directories are hidden (no log discovery, no filesystem metrics)"
            ),
            format!("{grant} (or GRANT pg_read_all_settings TO \"{user}\";)"),
        ),
        (false, false, _) => CheckResult::fail(
            name,
            format!("role {user} lacks pg_monitor: other sessions' queries and pg_stat_statements texts are hidden"),
            grant,
        ),
    }
}

/// Filesystem metrics need the data directory's path, hidden without pg_read_all_settings.
async fn check_filesystems(session: &mut Session, user: &str) -> CheckResult {
    let name = "filesystems";
    let sql = "SELECT (SELECT setting FROM pg_settings WHERE name = 'data_directory')";
    match session.query_opt("check_data_directory", sql, &[]).await {
        Ok(Some(row)) => match row.try_get::<_, Option<String>>(0).unwrap_or(None) {
            Some(dir) => CheckResult::ok(
                name,
                format!("data_directory {dir} is visible: its filesystem (and the log directory's) is measured"),
            ),
            None => CheckResult::warn(
                name,
                format!(
                    "data_directory is hidden from role {user}: the filesystems of the data and log \
                     directories are not measured (the other host metrics are)"
                ),
                format!("GRANT pg_read_all_settings TO \"{user}\"; (included in pg_monitor)"),
            ),
        },
        Ok(None) => CheckResult::fail(name, "no answer", "check the server"),
        Err(e) => CheckResult::fail(name, e.to_string(), "check the server"),
    }
}

async fn check_statements_extension(session: &mut Session) -> CheckResult {
    let name = "pg_stat_statements";
    let sql = "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'), \
               (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries')";
    let row = match session.query_opt("check_pgss", sql, &[]).await {
        Ok(Some(row)) => row,
        Ok(None) => return CheckResult::fail(name, "no answer", "check the server"),
        Err(e) => return CheckResult::fail(name, e.to_string(), "check the server"),
    };
    let version: Option<String> = row.try_get(0).unwrap_or(None);
    // Hidden from roles without pg_read_all_settings (pg_monitor has it).
    let preload: Option<String> = row.try_get(1).unwrap_or(None);
    let preload_fix = "add pg_stat_statements to shared_preload_libraries in postgresql.conf and restart the server";
    let Some(version) = version else {
        return match preload {
            Some(p) if !p.contains("pg_stat_statements") => CheckResult::fail(
                name,
                "not loaded and not created: statement statistics are disabled",
                format!("{preload_fix}, then CREATE EXTENSION pg_stat_statements;"),
            ),
            _ => CheckResult::fail(
                name,
                "the extension is not created in this database: statement statistics are disabled",
                "CREATE EXTENSION pg_stat_statements; (as a superuser, in [postgres] database)",
            ),
        };
    };
    // Created is not enough: reading it proves the library is loaded.
    match session
        .query(
            "check_pgss_read",
            "SELECT count(*) FROM pg_stat_statements(false)",
            &[],
        )
        .await
    {
        Ok(_) => CheckResult::ok(name, format!("loaded and created (version {version})")),
        Err(e) if e.sqlstate() == Some("55000") => CheckResult::fail(
            name,
            "created but not loaded: statement statistics are disabled",
            preload_fix,
        ),
        Err(e) => CheckResult::fail(name, e.to_string(), "GRANT pg_monitor to the agent's role"),
    }
}

async fn check_logs(config: &Config, session: Option<&mut Session>) -> CheckResult {
    use crate::logs::settings::TailSettings;
    use crate::logs::source::{self, LogSource};
    if !config.logs.enabled {
        return CheckResult::ok("logs", "disabled ([logs] enabled = false)");
    }
    let mut hidden_from = None;
    let server = match session {
        Some(s) if config.logs.path.is_none() || config.logs.line_prefix.is_none() => {
            match source::discover(s).await {
                Ok(found) => Some(found),
                Err(source::DiscoverError::Hidden { role }) => {
                    hidden_from = Some(role);
                    None
                }
                Err(_) => None,
            }
        }
        _ => None,
    };
    let settings = match (TailSettings::from_config(config, server.as_ref()), hidden_from) {
        (Ok(s), _) => s,
        // The role cannot see where the log is; the daemon runs without logs until told.
        (Err(_), Some(role)) if config.logs.path.is_none() => {
            return CheckResult::warn(
                "logs",
                format!(
                    "the server's log location is hidden from role {role} (log_directory and \
                     data_directory need pg_read_all_settings): server logs will not be collected"
                ),
                format!(
                    "GRANT pg_read_all_settings TO \"{role}\"; (included in pg_monitor), or set [logs] path \
                     to the server's log directory"
                ),
            )
        }
        (Err(e), _) => {
            return CheckResult::fail(
                "logs",
                e.to_string(),
                "set [logs] path to the server's log file or directory (log_directory)",
            )
        }
    };
    let fix = "give the agent's user read access (add it to the postgres group), or set [logs] enabled = false";
    let files = match settings.source.files() {
        Ok(f) => f,
        Err(e) => {
            return CheckResult::fail(
                "logs",
                format!("cannot list {:?}: {e}", settings.source),
                fix,
            )
        }
    };
    let where_ = match &settings.source {
        LogSource::File(p) => p.display().to_string(),
        LogSource::Dir { dir, .. } => dir.display().to_string(),
    };
    let Some(newest) = files.last() else {
        return CheckResult::ok(
            "logs",
            format!(
                "{where_}: no {} file yet; it will be followed when one appears",
                settings.format.as_str()
            ),
        );
    };
    match std::fs::File::open(&newest.path) {
        Ok(_) => CheckResult::ok(
            "logs",
            format!(
                "{} is readable ({}, {} files)",
                newest.path.display(),
                settings.format.as_str(),
                files.len()
            ),
        ),
        Err(e) => CheckResult::fail(
            "logs",
            format!("cannot read {}: {e}", newest.path.display()),
            fix,
        ),
    }
}
