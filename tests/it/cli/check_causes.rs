//! `postgres-agent check` names the cause of a failed connection and its specific fix, one test per
//! class, each produced for real: a socket directory without the server's socket, a refused TCP port,
//! a wrong or missing password under md5 and scram-sha-256, a pg_hba.conf `reject`, TLS required of a
//! server without it, a listener that accepts and never answers, and a socket directory the user
//! cannot enter. A failed connection does not also fail the log check; a log directory the user
//! cannot read names log_file_mode, the group and the directory modes; a log path that is not the
//! file the server writes warns. `check` creates nothing.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::check::{check, is_root, line, text, write_ini};
use support::{agent, free_port, PgServer};

/// The connection line failed with `cause`; returns it with its fix.
fn failed_with(out: &str, cause: &str) -> String {
    let l = line(out, "connection");
    assert!(
        l.starts_with("FAIL") && l.contains(&format!("[{cause}]")),
        "expected cause {cause}:\n{out}"
    );
    l
}

#[test]
fn a_missing_socket_lists_the_sockets_that_exist_and_skips_the_log_check() {
    let server = PgServer::start();
    // The server's directory, a wrong port: the fix names the port that is there.
    let (code, out) = check(&server, "[postgres]\nport = 1\n");
    assert_eq!(code, 1, "{out}");
    let l = failed_with(&out, "no_socket");
    assert!(
        l.contains(&format!(".s.PGSQL.{}", server.port))
            && l.contains(&format!("set [postgres] port = {}", server.port)),
        "{out}"
    );
    // The log location is asked from the server: not checked, not blamed.
    let logs = line(&out, "logs");
    assert!(logs.starts_with("SKIP"), "{out}");
    assert!(!out.contains("set [logs] path"), "{out}");

    // A directory with no socket at all, and one that does not exist.
    let empty = tempfile::tempdir().unwrap();
    let (_, out) = check(
        &server,
        &format!("[postgres]\nhost = {}\n", empty.path().display()),
    );
    assert!(
        failed_with(&out, "no_socket").contains("holds no PostgreSQL socket"),
        "{out}"
    );
    let (_, out) = check(
        &server,
        &format!(
            "[postgres]\nhost = {}\n",
            empty.path().join("gone").display()
        ),
    );
    assert!(
        failed_with(&out, "no_socket").contains("does not exist"),
        "{out}"
    );
}

#[test]
fn a_refused_port_a_timeout_and_tls_each_name_their_fix() {
    let server = PgServer::start();
    let port = free_port();
    let (code, out) = check(
        &server,
        &format!("[postgres]\nhost = 127.0.0.1\nport = {port}\n"),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        failed_with(&out, "refused")
            .contains(&format!("nothing accepts connections at 127.0.0.1:{port}")),
        "{out}"
    );

    // Accepts the connection and never answers the startup packet.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let (code, out) = check(
        &server,
        &format!("[postgres]\nhost = 127.0.0.1\nport = {silent_port}\nconnect_timeout_s = 1\n[logs]\nenabled = false\n"),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        failed_with(&out, "timeout").contains("did not answer within [postgres] connect_timeout_s"),
        "{out}"
    );

    // The test server has ssl = off.
    let (code, out) = check(
        &server,
        &format!(
            "[postgres]\nhost = 127.0.0.1\nport = {}\nsslmode = require\n",
            server.port
        ),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        failed_with(&out, "tls").contains("turn on ssl in postgresql.conf"),
        "{out}"
    );
}

#[test]
fn authentication_failures_are_told_apart() {
    let server = PgServer::start();
    let hba = server.psql("postgres", "SHOW hba_file");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all pw_scram 127.0.0.1/32 scram-sha-256\nhost all pw_md5 127.0.0.1/32 md5\n\
             host all shut_out 127.0.0.1/32 reject\n{old}"
        ),
    )
    .unwrap();
    server.psql("postgres", "SELECT pg_reload_conf()");
    server.psql(
        "postgres",
        "CREATE ROLE pw_scram LOGIN PASSWORD 'right'; GRANT pg_monitor TO pw_scram; \
         SET password_encryption = 'md5'; CREATE ROLE pw_md5 LOGIN PASSWORD 'right'; \
         CREATE ROLE shut_out LOGIN",
    );
    let tcp = |user: &str, password: Option<&str>| {
        let password = password
            .map(|p| format!("password = {p}\n"))
            .unwrap_or_default();
        check(
            &server,
            &format!(
                "[postgres]\nhost = 127.0.0.1\nport = {}\nuser = {user}\n{password}[logs]\nenabled = false\n",
                server.port
            ),
        )
    };
    // The right password connects: the setup itself is sound.
    let (code, out) = tcp("pw_scram", Some("right"));
    assert_eq!(code, 0, "{out}");
    for user in ["pw_scram", "pw_md5"] {
        let (code, out) = tcp(user, Some("wrong"));
        assert_eq!(code, 1, "{out}");
        assert!(
            failed_with(&out, "password").contains(&format!("ALTER ROLE \"{user}\" PASSWORD")),
            "{out}"
        );
        let (_, out) = tcp(user, None);
        assert!(
            failed_with(&out, "password_missing").contains("set [postgres] password_file"),
            "{out}"
        );
    }
    // The daemon and `once` log a refused password as an ERROR with its fix, not as an outage.
    let dir = tempfile::tempdir().unwrap();
    let ini = write_ini(
        dir.path(),
        &server,
        &format!(
            "[postgres]\nhost = 127.0.0.1\nport = {}\nuser = pw_scram\npassword = wrong\n[logs]\nenabled = false\n",
            server.port
        ),
    );
    let out = agent(
        &["once", "--dry-run", &ini],
        &[("BITVILLE_PG_LOGGING_FORMAT", "json")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("\"cause\":\"password\""))
        .unwrap_or_else(|| panic!("no password cause logged:\n{stderr}"));
    assert!(
        line.contains("\"level\":\"ERROR\"") && line.contains("ALTER ROLE"),
        "{stderr}"
    );
    let (_, out) = tcp("shut_out", Some("x"));
    assert!(
        failed_with(&out, "rejected").contains("pg_hba.conf must allow it"),
        "{out}"
    );
    let (_, out) = tcp("no_such_role", None);
    assert!(
        failed_with(&out, "rejected").contains("CREATE ROLE \"no_such_role\""),
        "{out}"
    );
}

/// Runs the binary as a user without access to what `block` closed: `nobody` when the tests run as
/// root (root passes every permission check), else the current user.
fn unprivileged(args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_postgres-agent");
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BITVILLE_PG_") || k.starts_with("PG") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run postgres-agent")
}

/// Closes a directory to [`unprivileged`] runs; the returned guard opens it again.
struct Blocked<'a>(&'a Path, u32);

fn block(dir: &Path) -> Blocked<'_> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(dir).unwrap().mode() & 0o7777;
    let closed = if is_root() { 0o700 } else { 0o000 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(closed)).unwrap();
    Blocked(dir, mode)
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(self.1));
    }
}

#[test]
fn permission_on_the_socket_and_the_log_directory_names_modes_and_groups() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ini = write_ini(dir.path(), &server, "[logs]\nenabled = false\n");
    // The directory above the socket directory (the server's own root).
    let guard = block(server.root.path());
    let (code, out) = text(unprivileged(&["check", &ini]));
    drop(guard);
    assert_eq!(code, 1, "{out}");
    assert!(
        failed_with(&out, "permission").contains("search (x) permission"),
        "{out}"
    );

    // A log directory the user cannot enter, given as [logs] path over TCP.
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(logs.path().join("postgresql.log"), "").unwrap();
    let ini = write_ini(
        dir.path(),
        &server,
        &format!(
            "[postgres]\nhost = 127.0.0.1\n[logs]\npath = {}\n",
            logs.path().join("postgresql.log").display()
        ),
    );
    let guard = block(logs.path());
    let (code, out) = text(unprivileged(&["check", &ini]));
    drop(guard);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "logs");
    assert!(l.starts_with("FAIL"), "{out}");
    for needle in [
        "log_file_mode = 0640",
        "usermod -aG",
        &format!("{} mode 0", logs.path().display()),
        "chmod g+rx",
        "the check runs as user",
    ] {
        assert!(l.contains(needle), "{needle:?} missing:\n{out}");
    }
}

#[test]
fn a_log_file_the_server_does_not_write_warns() {
    let server = PgServer::start();
    // Debian's case: a file in another directory that the server no longer writes.
    let other = tempfile::tempdir().unwrap();
    let stale = other.path().join("postgresql-15-main.log");
    std::fs::write(&stale, "").unwrap();
    let (code, out) = check(
        &server,
        &format!("[logs]\npath = {}\nformat = stderr\n", stale.display()),
    );
    assert_eq!(code, 0, "a warning is not a failure:\n{out}");
    let l = line(&out, "logs");
    assert!(l.starts_with("WARN"), "{out}");
    assert!(
        l.contains(&format!("set [logs] path = {}", server.log_dir().display())),
        "{out}"
    );
    // Its own directory is what the server writes.
    let (_, out) = check(
        &server,
        &format!(
            "[logs]\npath = {}\nformat = stderr\n",
            server.log_dir().display()
        ),
    );
    let l = line(&out, "logs");
    assert!(
        l.starts_with("OK") && l.contains("the server writes this file now"),
        "{out}"
    );
    // pg_monitor may not call pg_current_logfile(): no comparison, no error in the server log;
    // granted, it compares.
    server.psql(
        "postgres",
        "CREATE ROLE watcher LOGIN; GRANT pg_monitor TO watcher",
    );
    let as_watcher = format!(
        "[postgres]\nuser = watcher\n[logs]\npath = {}\nformat = stderr\n",
        stale.display()
    );
    let (code, out) = check(&server, &as_watcher);
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "logs");
    assert!(
        l.starts_with("OK") && l.contains("pg_current_logfile() is for superusers"),
        "{out}"
    );
    let log = std::fs::read_dir(server.log_dir())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(!log.contains("permission denied for function"), "{log}");
    server.psql(
        "postgres",
        "GRANT EXECUTE ON FUNCTION pg_current_logfile(text) TO watcher",
    );
    let (_, out) = check(&server, &as_watcher);
    assert!(line(&out, "logs").starts_with("WARN"), "{out}");
}

#[test]
fn check_creates_nothing() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ini = write_ini(dir.path(), &server, "");
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    let (code, out) = text(agent(&["check", &ini], &[]));
    assert_eq!(code, 0, "{out}");
    assert!(!state.exists(), "check created the state directory:\n{out}");
    let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(before.len(), after.len(), "{out}");
    let l = line(&out, "state_dir");
    assert!(
        l.starts_with("OK")
            && l.contains(&format!("{} (from {ini})", state.display()))
            && l.contains("does not exist yet"),
        "{out}"
    );
}

#[test]
fn check_and_status_say_which_state_dir_they_read() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ini = write_ini(dir.path(), &server, "[logs]\nenabled = false\n");
    let elsewhere = dir.path().join("from-env");
    let env = [("BITVILLE_PG_AGENT_STATE_DIR", elsewhere.to_str().unwrap())];
    let (code, out) = text(agent(&["status", &ini], &env));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "state dir:     {} (from environment variable BITVILLE_PG_AGENT_STATE_DIR)",
            elsewhere.display()
        )) && out.contains("no daemon has run with this state dir"),
        "{out}"
    );
    let (_, out) = text(agent(&["check", &ini], &env));
    assert!(
        line(&out, "state_dir").contains("from environment variable BITVILLE_PG_AGENT_STATE_DIR"),
        "{out}"
    );
    assert!(!elsewhere.exists(), "status or check created the state dir");
}

#[test]
fn without_the_logging_collector_the_discovered_directory_is_not_trusted() {
    let server = PgServer::start_with(support::PgOptions {
        conf: vec!["logging_collector = off".into()],
        ..Default::default()
    });
    let (code, out) = check(&server, "");
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "logs");
    assert!(
        l.starts_with("WARN")
            && l.contains("logging_collector is off")
            && l.contains("set [logs] path"),
        "{out}"
    );
}
