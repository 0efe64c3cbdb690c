//! Every hint of `check` (and of the daemon's matching warnings) checked against the failure it
//! names, each failure produced for real (issue 25): an unreadable log names the user that ran and
//! suggests `log_file_mode` only where it applies; pg_stat_statements missing from the configured
//! database names that database and no restart; `once` after a refused password says the
//! authentication failed; a failed connection shows SKIP for what it prevents; a mistyped log path
//! lists what its directory holds.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use support::check::{check, is_root, line, text, write_ini};
use support::{agent, PgOptions, PgServer};

/// Runs the binary as `nobody` (uid 65534, no supplementary groups).
fn as_nobody(args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_postgres-agent"))
        .args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BITVILLE_PG_") || k.starts_with("PG") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run postgres-agent")
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

#[test]
fn an_unreadable_log_names_the_user_that_ran_and_only_settings_that_apply() {
    if !is_root() {
        eprintln!("skipped: needs root to run the check as another user");
        return;
    }
    // Debian's case: logging_collector off, the start script's file 0640 root:adm-like group the
    // agent's user is not in.
    let server = PgServer::start_with(PgOptions {
        conf: vec!["logging_collector = off".into()],
        ..Default::default()
    });
    let logs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = logs.path().join("postgresql-15-main.log");
    std::fs::write(&file, "").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ini = write_ini(
        dir.path(),
        &server,
        &format!(
            "[postgres]\nhost = 127.0.0.1\n[logs]\npath = {}\nformat = stderr\n",
            file.display()
        ),
    );
    let (code, out) = text(as_nobody(&["check", &ini]));
    assert_eq!(code, 1, "{out}");
    let me = user_name(65534);
    let l = line(&out, "logs");
    assert!(l.starts_with("FAIL"), "{out}");
    assert!(
        l.contains(&format!("usermod -aG root {me}")),
        "names the group and the user that ran:\n{out}"
    );
    assert!(
        !l.contains("log_file_mode") && !l.contains("chmod g+r"),
        "the file is 0640 and the collector is off: no mode to change:\n{out}"
    );
    assert!(!l.contains("postgres-agent"), "{out}");
    // The state directory under a root-owned 0755 directory: the fix names the same user.
    let s = line(&out, "state_dir");
    assert!(
        s.starts_with("FAIL")
            && s.contains(&format!("install -d -m 0700 -o {me} "))
            && !s.contains("postgres-agent"),
        "{out}"
    );

    // The file not group-readable either: chmod it, still no log_file_mode (the collector is off).
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, out) = text(as_nobody(&["check", &ini]));
    let l = line(&out, "logs");
    assert!(
        l.contains("chmod g+r") && l.contains("log_file_mode does not apply"),
        "{out}"
    );
    assert!(!l.contains("log_file_mode = 0640"), "{out}");
}

#[test]
fn a_log_under_the_collector_suggests_log_file_mode_only_when_it_is_not_group_readable() {
    if !is_root() {
        eprintln!("skipped: needs root to run the check as another user");
        return;
    }
    let server = PgServer::start_with(PgOptions {
        conf: vec!["log_file_mode = 0640".into()],
        ..Default::default()
    });
    // The server's own log directory inside the data directory (0700): the directory blocks, not
    // the files' mode.
    let dir = tempfile::tempdir().unwrap();
    let ini = write_ini(
        dir.path(),
        &server,
        &format!(
            "[postgres]\nhost = 127.0.0.1\n[logs]\npath = {}\nformat = stderr\n",
            server.log_dir().display()
        ),
    );
    let (code, out) = text(as_nobody(&["check", &ini]));
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "logs");
    assert!(l.starts_with("FAIL") && l.contains("chmod g+rx"), "{out}");
    assert!(
        !l.contains("set log_file_mode"),
        "log_file_mode is already 0640:\n{out}"
    );
}

#[test]
fn pg_stat_statements_missing_in_the_configured_database_names_it_and_no_restart() {
    let server = PgServer::start();
    server.psql("postgres", "CREATE DATABASE appdb");
    let extra = "[postgres]\ndatabase = appdb\n[logs]\nenabled = false\n";
    let (code, out) = check(&server, extra);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "pg_stat_statements");
    assert!(
        l.starts_with("FAIL") && l.contains("database \"appdb\"") && l.contains("no restart"),
        "{out}"
    );
    assert!(
        !l.contains("[postgres] database") && !l.contains("shared_preload_libraries"),
        "{out}"
    );

    // The daemon's warning says the same: created in appdb, no restart.
    let dir = tempfile::tempdir().unwrap();
    let ini = write_ini(dir.path(), &server, extra);
    let o = agent(
        &["once", "--dry-run", "--json", &ini],
        &[("BITVILLE_PG_LOGGING_FORMAT", "json")],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("pg_stat_statements is not available"))
        .unwrap_or_else(|| panic!("no statements warning:\n{stderr}"));
    assert!(
        warning.contains("appdb")
            && warning.contains("no restart")
            && !warning.contains("shared_preload_libraries"),
        "{warning}"
    );

    // Not loaded at all: then (and only then) the restart, keeping the libraries there.
    let bare = PgServer::start_with(PgOptions {
        pg_stat_statements: false,
        ..Default::default()
    });
    let (_, out) = check(&bare, "[logs]\nenabled = false\n");
    let l = line(&out, "pg_stat_statements");
    assert!(
        l.contains("not loaded")
            && l.contains("restart")
            && l.contains("keeping the libraries already there")
            && l.contains("database \"postgres\""),
        "{out}"
    );
}

#[test]
fn after_a_refused_password_once_says_authentication_failed() {
    let server = PgServer::start();
    let hba = server.psql("postgres", "SHOW hba_file");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pw_user 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    server.psql("postgres", "SELECT pg_reload_conf()");
    server.psql("postgres", "CREATE ROLE pw_user LOGIN PASSWORD 'right'");
    let dir = tempfile::tempdir().unwrap();
    let ini = write_ini(
        dir.path(),
        &server,
        &format!(
            "[postgres]\nhost = 127.0.0.1\nport = {}\nuser = pw_user\npassword = wrong\n[logs]\nenabled = false\n",
            server.port
        ),
    );
    let (code, out) = text(agent(&["once", "--dry-run", "--json", &ini], &[]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("authentication failed"), "{out}");
    assert!(!out.contains("not reachable"), "{out}");
}

#[test]
fn a_failed_connection_shows_skip_for_what_it_prevents() {
    let server = PgServer::start();
    let (code, out) = check(&server, "[postgres]\nport = 1\n");
    assert_eq!(code, 1, "{out}");
    for name in ["privileges", "filesystems", "pg_stat_statements", "logs"] {
        assert!(line(&out, name).starts_with("SKIP"), "{name}:\n{out}");
    }
}

#[test]
fn a_mistyped_log_path_lists_what_the_directory_holds() {
    let server = PgServer::start();
    let dir = server.log_dir();
    let real = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".log"))
        .expect("a log file");
    let (code, out) = check(
        &server,
        &format!("[logs]\npath = {}\n", dir.join("postgresq.log").display()),
    );
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "logs");
    assert!(
        l.starts_with("FAIL")
            && l.contains(&format!("{} holds: ", dir.display()))
            && l.contains(&real),
        "{out}"
    );
}
