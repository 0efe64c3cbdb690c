//! `postgres-agent check`: each prerequisite on its own line with OK/FAIL and, for a failure, the fix.
//! Usable as systemd `ExecStartPre`; exits non-zero if any check fails.

use std::process::ExitCode;

use crate::config::Config;
use crate::db::{Db, Session};

/// The outcome of one check.
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl CheckResult {
    fn ok(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check, prints the results on stdout, and returns the exit code.
pub fn run(config: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postgres-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = runtime.block_on(checks(config));
    let mut failed = false;
    for r in &results {
        println!(
            "{:<4} {:<18} {}",
            if r.ok { "OK" } else { "FAIL" },
            r.name,
            r.detail
        );
        if let Some(fix) = &r.fix {
            println!("     {:<18} fix: {fix}", "");
        }
        failed |= !r.ok;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs every check against the live system.
pub async fn checks(config: &Config) -> Vec<CheckResult> {
    let mut out = vec![CheckResult::ok(
        "config",
        match &config.file {
            Some(p) => format!("loaded {}", p.display()),
            None => "no config file; built-in defaults and environment".to_string(),
        },
    )];
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
            out.push(check_statements_extension(&mut session).await);
        }
        Err(e) => out.push(CheckResult::fail(
            "connection",
            e.to_string(),
            "check [postgres] host/port/user/password, that the server runs, and pg_hba.conf",
        )),
    }
    db.close();
    out
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

async fn check_privileges(session: &mut Session, user: &str) -> CheckResult {
    let sql = "SELECT rolsuper OR pg_has_role(current_user, 'pg_monitor', 'USAGE') FROM pg_roles WHERE rolname = current_user";
    match session.query_opt("check_privileges", sql, &[]).await {
        Ok(Some(row)) if row.try_get::<_, bool>(0).unwrap_or(false) => {
            CheckResult::ok("privileges", format!("role {user} has pg_monitor (or is superuser)"))
        }
        Ok(_) => CheckResult::fail(
            "privileges",
            format!("role {user} lacks pg_monitor: other sessions' queries and pg_stat_statements texts are hidden"),
            format!("GRANT pg_monitor TO \"{user}\";"),
        ),
        Err(e) => CheckResult::fail("privileges", e.to_string(), "check the role"),
    }
}

async fn check_statements_extension(session: &mut Session) -> CheckResult {
    let sql = "SELECT current_setting('shared_preload_libraries') ~ 'pg_stat_statements', \
               (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements')";
    match session.query_opt("check_pgss", sql, &[]).await {
        Ok(Some(row)) => {
            let loaded: bool = row.try_get(0).unwrap_or(false);
            let version: Option<String> = row.try_get(1).unwrap_or(None);
            match (loaded, version) {
                (true, Some(v)) => CheckResult::ok("pg_stat_statements", format!("loaded and created (version {v})")),
                (false, _) => CheckResult::fail(
                    "pg_stat_statements",
                    "not in shared_preload_libraries: statement statistics are disabled",
                    "add pg_stat_statements to shared_preload_libraries in postgresql.conf and restart the server",
                ),
                (true, None) => CheckResult::fail(
                    "pg_stat_statements",
                    "loaded but the extension is not created in this database",
                    "CREATE EXTENSION pg_stat_statements; (as a superuser, in [postgres] database)",
                ),
            }
        }
        Ok(None) => CheckResult::fail("pg_stat_statements", "no answer", "check the server"),
        Err(e) => CheckResult::fail("pg_stat_statements", e.to_string(), "check the server"),
    }
}
