//! The table view: `once --pretty` and `run --pretty` print a table per batch on stdout instead of
//! JSON lines, against a real server; JSON stays the default on a pipe.

use crate::support;

use std::time::Duration;

use support::child::AgentChild;
use support::{agent, PgServer};

fn ini(server: &PgServer, state: &std::path::Path) -> String {
    let path = state.join("agent.ini");
    std::fs::write(
        &path,
        server.agent_ini(
            state,
            "[agent]\ncollection_interval_s = 1\n[logs]\nenabled = false\n",
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn once_pretty_prints_tables_and_a_pipe_gets_json() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let ini = ini(&server, state.path());
    let out = agent(
        &["once", "--dry-run", "--pretty", &ini],
        &[("COLUMNS", "100")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for kind in ["pg_activity", "pg_statements", "locks", "system_metrics"] {
        assert!(text.contains(&format!("── {kind}  ")), "{kind}:\n{text}");
    }
    assert!(text.contains("baseline new"), "{text}");
    assert!(text.contains("cpu ") && text.contains("mem "), "{text}");
    assert!(!text.contains("\"batch_id\""), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");

    let out = agent(&["once", "--dry-run", &ini], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{text}"
    );
}

#[test]
fn a_terminal_gets_tables_without_asking() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let ini = ini(&server, state.path());
    // script(1) runs the command on a pseudo-terminal.
    let cmd = format!(
        "{} once --dry-run {ini}",
        env!("CARGO_BIN_EXE_postgres-agent")
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("BITVILLE_PG_LOGGING_LEVEL", "error")
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("── system_metrics"), "{text}");
    assert!(!text.contains("\"batch_id\""), "{text}");
}

#[test]
fn run_pretty_shows_each_cycle_as_tables_and_exits_cleanly() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let ini = ini(&server, state.path());
    let mut child = AgentChild::spawn(&["run", "--pretty", &ini], &[]);
    // The first cycle starts the statement baseline; a later one shows this statement's delta.
    child.wait_for_line(Duration::from_secs(30), "the first cycle", |l| {
        l.starts_with("── pg_statements") && l.contains("baseline new")
    });
    server.psql("postgres", "CREATE TABLE pretty_probe (id int)");
    child.wait_for_line(Duration::from_secs(30), "the statement in a table", |l| {
        l.starts_with("1 ") && l.contains("CREATE TABLE pretty_probe")
    });
    assert!(
        child.stdout_lines().iter().any(|l| l.starts_with("CALLS")),
        "{:?}",
        child.stdout_lines()
    );
    child.signal("TERM");
    let (status, _) = child.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", child.stderr_text());
    let lines = child.stdout_lines();
    assert!(
        lines.iter().any(|l| l.starts_with("── system_metrics")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("\"batch_id\"")),
        "{lines:?}"
    );
}
