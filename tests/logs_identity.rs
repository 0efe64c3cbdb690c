//! Which file and which server a log position belongs to (issue 20, points 2, 5 and 6), against the
//! real daemon, real PostgreSQL servers and an in-process `protocol = batch` listener:
//!
//! - a log file name the server reuses (`log_filename` switched a -> b -> a: PostgreSQL appends to
//!   the file it wrote before) is followed, across a restart of the agent, every marker once;
//! - a read error right after a rotation (the new file unreadable to the agent's user) keeps the
//!   entries read before it;
//! - a reload that points `[postgres]` at another server does not apply the first server's position
//!   to the second one's files, and labels entries with the second server's identity.

mod support;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::child::AgentChild;
use support::listener::Listener;
use support::{PgOptions, PgServer};

/// Writes the agent's config (batch protocol, fast polling) and returns its path.
fn write_config(
    server: &PgServer,
    state: &Path,
    listener: &Listener,
    interval_s: u32,
    logs: &str,
) -> String {
    let ini = format!(
        "[agent]\nproject_id = identity\ncollection_interval_s = {interval_s}\nstate_dir = {}\n\n\
         [postgres]\nhost = {}\nport = {}\nuser = postgres\n\n\
         [listener]\nprotocol = batch\nurl = {}\ncompress = true\nmax_requests_per_minute = 100000\n\n\
         [telemetry]\nlisten =\n\n[logging]\nlevel = info\n\n[logs]\npoll_interval_ms = 20\n{logs}\n",
        state.display(),
        server.socket_dir.display(),
        server.port,
        listener.url(),
    );
    let path = state.join("agent.ini");
    std::fs::write(&path, ini).expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every shipped pg_logs entry, with the `server` of its batch envelope.
fn shipped(listener: &Listener) -> Vec<(Value, Value)> {
    listener
        .bodies_of_type("pg_logs")
        .iter()
        .flat_map(|b| {
            let server = b["server"].clone();
            b["data"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |e| (e, server.clone()))
        })
        .collect()
}

/// How many times each of `markers` was shipped (as an entry's exact message).
fn counts(listener: &Listener, markers: &[String]) -> Vec<usize> {
    let all = shipped(listener);
    markers
        .iter()
        .map(|m| all.iter().filter(|(e, _)| e["message"] == m.as_str()).count())
        .collect()
}

fn all_delivered(listener: &Listener, markers: &[String]) -> bool {
    counts(listener, markers).iter().all(|&n| n >= 1)
}

fn markers(tag: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{tag}-{i:03}")).collect()
}

/// Makes the server log `markers(tag, n)`, one entry each.
fn raise(server: &PgServer, tag: &str, n: usize) -> Vec<String> {
    server.psql(
        "postgres",
        &format!(
            "DO $$ BEGIN FOR i IN 1..{n} LOOP RAISE LOG '{tag}-%', lpad(i::text, 3, '0'); END LOOP; END $$"
        ),
    );
    markers(tag, n)
}

fn start_agent(config: &str) -> AgentChild {
    let agent = AgentChild::spawn(&["run", config], &[]);
    agent.wait_for_line(Duration::from_secs(60), "the log task", |l| {
        l.contains("following the server log")
    });
    agent
}

fn stop(agent: &mut AgentChild) {
    agent.signal("TERM");
    let (status, _) = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
}

/// Points the server's log at `<name>.log` (and `.json`, `.csv`) and waits until it writes there.
fn switch_log(server: &PgServer, name: &str) {
    server.psql(
        "postgres",
        &format!("ALTER SYSTEM SET log_filename = '{name}.log'"),
    );
    server.psql("postgres", "SELECT pg_reload_conf()");
    wait_until(Duration::from_secs(60), "the server to switch its log", || {
        server
            .psql("postgres", "SELECT pg_current_logfile('jsonlog')")
            .ends_with(&format!("/{name}.json"))
    });
}

/// Point 2: `log_filename` switched a -> b -> a -> b -> a, with a restart of the agent while the
/// server writes `b`. PostgreSQL appends to the file it wrote before (same inode, same first
/// bytes): before, the tailer skipped it as finished (entries stopped) and, after a restart, read
/// it again from offset 0 (duplicates).
#[test]
fn reused_log_file_names_are_followed_and_every_marker_delivered_once() {
    let server = PgServer::start_with(PgOptions {
        conf: vec!["log_filename = 'a.log'".into()],
        pg_stat_statements: false,
    });
    let state = tempfile::tempdir().expect("state");
    let listener = Listener::start();
    let config = write_config(&server, state.path(), &listener, 1, "start_at = beginning\n");
    let mut agent = start_agent(&config);
    let mut sent = Vec::new();
    for (n, file) in [(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "a")] {
        if n > 1 {
            switch_log(&server, file);
        }
        let m = raise(&server, &format!("idm{n}-{file}"), 40);
        wait_until(
            Duration::from_secs(90),
            &format!("phase {n} ({file}.json)"),
            || all_delivered(&listener, &m),
        );
        sent.extend(m);
        if n == 2 {
            // Restart while `b` is written: `a` is remembered in the saved position.
            stop(&mut agent);
            let saved = std::fs::read_to_string(state.path().join("log_position.json"))
                .expect("position saved");
            assert!(saved.contains("\"version\":2"), "{saved}");
            assert!(saved.contains("\"read\":[{"), "{saved}");
            agent = start_agent(&config);
        }
    }
    // A last marker: anything read twice would have been shipped by now.
    let last = raise(&server, "idm-last", 1);
    wait_until(Duration::from_secs(90), "the last marker", || {
        all_delivered(&listener, &last)
    });
    let got = counts(&listener, &sent);
    let wrong: Vec<(&String, usize)> = sent
        .iter()
        .zip(got)
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(wrong.is_empty(), "markers not delivered exactly once: {wrong:?}");
    // The server really reused the names: two files per format.
    let json: Vec<_> = support::logs::log_files(&server, "json");
    assert_eq!(json.len(), 2, "{json:?}");
    stop(&mut agent);
}
