//! A role granted only `pg_read_all_stats` (not pg_monitor, not superuser) is enough to run: `check`
//! warns about what it lacks (naming the grant) and exits 0, and the daemon collects activity,
//! statements, locks and host metrics, warning once per missing capability, not once per cycle.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::child::AgentChild;
use support::{agent, PgServer};

const ROLE: &str = "stats_only";

/// A server with a role that has pg_read_all_stats and nothing else, and the agent's config for it.
fn setup(extra: &str) -> (PgServer, tempfile::TempDir, String) {
    let server = PgServer::start();
    server.psql(
        "postgres",
        &format!("CREATE ROLE {ROLE} LOGIN; GRANT pg_read_all_stats TO {ROLE}"),
    );
    let state = tempfile::tempdir().unwrap();
    let ini = server.agent_ini(state.path(), &format!("[postgres]\nuser = {ROLE}\n{extra}"));
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let path = path.to_str().unwrap().to_string();
    (server, state, path)
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

fn batches(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn check_warns_with_the_grant_and_passes() {
    let (_server, _state, path) = setup("");
    let out = agent(&["check", &path], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    let privileges = line(&text, "privileges");
    assert!(
        privileges.starts_with("WARN") && privileges.contains("pg_read_all_stats"),
        "{text}"
    );
    assert!(
        text.contains(&format!("GRANT pg_monitor TO \"{ROLE}\"")),
        "{text}"
    );
    let fs = line(&text, "filesystems");
    assert!(
        fs.starts_with("WARN") && fs.contains("data_directory"),
        "{text}"
    );
    let logs = line(&text, "logs");
    assert!(
        logs.starts_with("WARN") && logs.contains("pg_read_all_settings"),
        "{text}"
    );
    assert!(
        text.contains(&format!("GRANT pg_read_all_settings TO \"{ROLE}\""))
            && text.contains("[logs] path"),
        "the fix names the grant and the alternative: {text}"
    );
    assert!(
        line(&text, "pg_stat_statements").starts_with("OK"),
        "{text}"
    );
}

#[test]
fn check_is_clean_with_logs_path_and_pg_read_all_settings() {
    let (server, _state, path) = setup("");
    // [logs] path is the alternative to the grant for the log.
    let with_path = format!(
        "{}\n[logs]\npath = {}\n",
        std::fs::read_to_string(&path).unwrap(),
        server.log_dir().display()
    );
    std::fs::write(&path, with_path).unwrap();
    let out = agent(&["check", &path], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(line(&text, "logs").starts_with("OK"), "{text}");
    // pg_read_all_stats plus pg_read_all_settings is everything the agent reads.
    server.psql("postgres", &format!("GRANT pg_read_all_settings TO {ROLE}"));
    let out = agent(&["check", &path], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("WARN"), "{text}");
}

#[test]
fn once_collects_everything_but_the_directories_with_one_warning() {
    let (server, _state, path) = setup("");
    // The first run saves the statement baseline (no listener: it prints, like --dry-run, which
    // never writes the baseline); the second reports what ran in between.
    let first = agent(&["once", &path], &[]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    server.psql("postgres", "SELECT 4242 AS stats_role_marker");
    let out = agent(&["once", "--dry-run", &path], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let all = batches(&String::from_utf8_lossy(&out.stdout));
    let kind = |k: &str| {
        all.iter()
            .find(|b| b["type"] == k)
            .unwrap_or_else(|| panic!("no {k} batch in {all:?}"))
            .clone()
    };
    kind("pg_activity");
    kind("locks");
    // Another role's statement, with its text: pg_read_all_stats is what shows it.
    let statements = kind("pg_statements");
    let texts: Vec<&str> = statements["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["query"].as_str())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("stats_role_marker")),
        "the superuser's statement is visible: {texts:?}"
    );
    let system = kind("system_metrics");
    assert!(system["data"][0]["cpu"].is_object(), "{system}");
    // Only the root filesystem: the server's directories are hidden from this role.
    let fs = system["data"][0]["filesystems"].as_array().unwrap();
    assert_eq!(fs.len(), 1, "{system}");
    assert_eq!(fs[0]["role"], "root");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("\"WARN\"")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("pg_read_all_settings"), "{stderr}");
}

#[test]
fn daemon_warns_once_per_missing_capability_and_keeps_collecting() {
    let (_server, _state, path) = setup("[agent]\ncollection_interval_s = 1\n");
    let mut daemon = AgentChild::spawn(&["run", &path], &[]);
    // Three cycles.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let count = |lines: &[String], kind: &str| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|b| b["type"] == kind)
            .count()
    };
    while count(&daemon.stdout_lines(), "system_metrics") < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no three cycles; stderr:\n{}",
            daemon.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.signal("TERM");
    let (status, _) = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{}", daemon.stderr_text());
    let lines = daemon.stdout_lines();
    for kind in ["pg_activity", "pg_statements", "locks"] {
        assert!(count(&lines, kind) >= 3, "{kind}: {}", lines.join("\n"));
    }
    let stderr = daemon.stderr_text();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("\"WARN\"")).collect();
    let about = |what: &str| warnings.iter().filter(|w| w.contains(what)).count();
    assert_eq!(about("filesystem metrics"), 1, "{stderr}");
    assert_eq!(about("log location is hidden"), 1, "{stderr}");
    assert_eq!(warnings.len(), 2, "nothing else warns: {stderr}");
    for w in &warnings {
        assert!(w.contains("pg_read_all_settings"), "{w}");
    }
}
