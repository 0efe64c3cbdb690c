//! `postgres-agent check`: each prerequisite on its own line with OK, WARN, FAIL or SKIP and, unless
//! OK, the fix. Usable as systemd `ExecStartPre`: exits non-zero only if a check fails; a WARN names
//! something the daemon will do without (it degrades and says so once in its log); SKIP is a check
//! that needs one that failed (a failed connection is not also reported as a log problem).
//!
//! It changes nothing: no directory or file is created, the state directory is only inspected.

use std::process::ExitCode;

use crate::config::Config;
use crate::db::{Db, Session};
use crate::ship::probe::{self, Verdict};

mod health;
mod logs;
mod plans;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The agent runs, without something (named in the detail).
    Warn,
    Fail,
    /// Not run: it needs another check that failed.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
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
    fn skip(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
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
            out.push(logs::check(config, Some(&mut session)).await);
            out.push(health::check(config, &mut session).await);
            out.extend(plans::check(config, &mut session).await);
        }
        Err(e) => {
            let cause = e
                .connect_failure()
                .map(|f| format!(" [{}]", f.as_str()))
                .unwrap_or_default();
            out.push(CheckResult::fail(
                "connection",
                format!("{e}{cause}"),
                e.connect_fix().unwrap_or(
                    "check [postgres] host/port/user/password, that the server runs, and pg_hba.conf",
                ),
            ));
            for name in ["privileges", "filesystems", "pg_stat_statements", "health"] {
                out.push(CheckResult::skip(name, "needs the connection"));
            }
            // A path given in [logs] can still be checked; finding the log needs the server.
            out.push(if config.logs.enabled && config.logs.path.is_none() {
                CheckResult::skip(
                    "logs",
                    "the server's log location is asked from the server: needs the connection",
                )
            } else {
                logs::check(config, None).await
            });
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

/// Inspects the state directory without creating or writing anything: the daemon (or systemd's
/// `StateDirectory=`) creates it at start.
fn check_state_dir(config: &Config) -> CheckResult {
    let name = "state_dir";
    let dir = &config.agent.state_dir;
    let origin = &config.agent.state_dir_origin;
    let install = format!(
        "install -d -m 0700 -o {} {} (the user this check runs as; systemd's StateDirectory= does \
         this for the unit's user), or set [agent] state_dir",
        logs::current_user(),
        dir.display()
    );
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => match writable(dir) {
            Ok(()) => CheckResult::ok(
                name,
                format!(
                    "{} (from {origin}) is writable{}",
                    dir.display(),
                    daemon_files(dir)
                ),
            ),
            Err(e) => CheckResult::fail(
                name,
                format!("{} (from {origin}) is not writable: {e}", dir.display()),
                install,
            ),
        },
        Ok(_) => CheckResult::fail(
            name,
            format!("{} (from {origin}) is not a directory", dir.display()),
            "set [agent] state_dir to a directory",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.ancestors().skip(1).find(|p| p.exists());
            match parent.map(|p| (p, writable(p))) {
                Some((_, Ok(()))) => CheckResult::ok(
                    name,
                    format!(
                        "{} (from {origin}) does not exist yet: the daemon creates it at start \
                         (no daemon has run with this configuration)",
                        dir.display()
                    ),
                ),
                Some((p, Err(e))) => CheckResult::fail(
                    name,
                    format!(
                        "{} (from {origin}) does not exist and {} is not writable: {e}",
                        dir.display(),
                        p.display()
                    ),
                    install,
                ),
                None => CheckResult::fail(name, format!("{}: {e}", dir.display()), install),
            }
        }
        Err(e) => CheckResult::fail(
            name,
            format!("{} (from {origin}): {e}", dir.display()),
            install,
        ),
    }
}

/// Write and search permission for this process (access(2): the real user, who runs the check).
fn writable(dir: &std::path::Path) -> std::io::Result<()> {
    use rustix::fs::{access, Access};
    access(dir, Access::WRITE_OK | Access::EXEC_OK).map_err(std::io::Error::from)
}

/// What a daemon left in the state directory, so `check` says whether it reads a running daemon's.
fn daemon_files(dir: &std::path::Path) -> String {
    match crate::state::last_cycle::LastCycle::load(dir) {
        Some(c) => format!(
            "; a daemon recorded a cycle there at {}",
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(c.at_ms) * 1_000_000)
                .map(crate::clock::format_rfc3339)
                .unwrap_or_else(|_| c.at_ms.to_string())
        ),
        None => "; no daemon has recorded a cycle there".to_string(),
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

/// pg_stat_statements: loaded (its settings exist in `pg_settings` only once the library is loaded;
/// a `pg_stat_statements.*` line in postgresql.conf alone is a hidden placeholder), created in the
/// configured database, and readable. A restart is suggested only when the library is not loaded.
async fn check_statements_extension(session: &mut Session) -> CheckResult {
    let name = "pg_stat_statements";
    let sql = "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'), \
               EXISTS (SELECT 1 FROM pg_settings WHERE name = 'pg_stat_statements.max'), \
               current_database()::text";
    let row = match session.query_opt("check_pgss", sql, &[]).await {
        Ok(Some(row)) => row,
        Ok(None) => return CheckResult::fail(name, "no answer", "check the server"),
        Err(e) => return CheckResult::fail(name, e.to_string(), "check the server"),
    };
    let version: Option<String> = row.try_get(0).unwrap_or(None);
    let loaded: bool = row.try_get(1).unwrap_or(false);
    let database: String = row.try_get(2).unwrap_or_default();
    let create = format!(
        "CREATE EXTENSION pg_stat_statements; as a superuser in database \"{database}\" \
         (psql -d {database})"
    );
    let preload_fix = "add pg_stat_statements to shared_preload_libraries in postgresql.conf \
                       (keeping the libraries already there) and restart the server";
    let Some(version) = version else {
        return if loaded {
            CheckResult::fail(
                name,
                format!(
                    "loaded, but the extension is not created in database \"{database}\": \
                     statement statistics are disabled"
                ),
                format!("{create}; no restart is needed"),
            )
        } else {
            CheckResult::fail(
                name,
                "not loaded and not created: statement statistics are disabled",
                format!("{preload_fix}, then {create}"),
            )
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
