//! Faults injected into the log task of the real daemon (the Reliability issue): a damaged
//! `log_position.json`, a `[logs] path` that is not a regular file, and very long log lines. Each
//! test runs the real binary against a real server and a `protocol = batch` listener.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use postgres_agent::logs::parse::LogFormat;
use postgres_agent::logs::source::LogSource;
use postgres_agent::logs::tail::{TailSettings, Tailer};
use support::child::AgentChild;
use support::listener::Listener;
use support::{PgOptions, PgServer};

/// Writes the agent's config (one-second cycles, batch protocol) and returns its path.
fn write_config(server: &PgServer, state: &Path, listener: &Listener, extra: &str) -> String {
    let ini = format!(
        "[agent]\nproject_id = faults\ncollection_interval_s = 1\nstate_dir = {}\n\n\
         [postgres]\nhost = {}\nport = {}\nuser = postgres\n\n\
         [listener]\nprotocol = batch\nurl = {}\ncompress = true\n\n\
         [telemetry]\nlisten =\n\n[logging]\nlevel = info\n\n{extra}\n",
        state.display(),
        server.socket_dir.display(),
        server.port,
        listener.url(),
    );
    let path = state.join("agent.ini");
    std::fs::create_dir_all(state).expect("state dir");
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

/// Shipped pg_logs entries whose text contains `needle`.
fn shipped_with(listener: &Listener, needle: &str) -> usize {
    listener
        .bodies_of_type("pg_logs")
        .iter()
        .flat_map(|b| b["data"].as_array().cloned().unwrap_or_default())
        .filter(|e| e.to_string().contains(needle))
        .count()
}

fn corrupt_files(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state)
        .expect("state dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("log_position.json.corrupt-"))
        .collect();
    names.sort();
    names
}

fn stop(agent: &mut AgentChild) {
    agent.signal("TERM");
    let (status, _) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
}

/// A damaged position file is moved aside, named in one error, and the stream resumes after the
/// newest pg_logs batch in the outbox: what was enqueued before the damage is sent once, what is
/// written after the restart is shipped too.
#[test]
fn damaged_position_file_resumes_from_the_outbox_and_keeps_shipping() {
    let server = PgServer::start_with(PgOptions {
        conf: vec!["log_min_duration_statement = 0".into()],
        pg_stat_statements: false,
    });
    let state = tempfile::tempdir().expect("state");
    let logs = "[logs]\nstart_at = beginning\npoll_interval_ms = 20\n";

    // First run: the listener refuses everything, so the pg_logs batches stay in the outbox.
    let refusing = Listener::start();
    refusing.set_status(503);
    let config = write_config(&server, state.path(), &refusing, logs);
    let mut agent = AgentChild::spawn(&["run", &config], &[]);
    agent.wait_for_line(Duration::from_secs(20), "the log task", |l| {
        l.contains("following the server log")
    });
    server.psql("postgres", "SELECT 1 AS before_damage_4417");
    support::logs::wait_for_log(&server, "before_damage_4417", Duration::from_secs(20));
    stop(&mut agent);
    let position = state.path().join("log_position.json");
    assert!(position.exists(), "the first run saved no position");

    // Damage the position while the agent is stopped.
    std::fs::write(&position, b"\0\0garbage{\"path\":").expect("damage the position");

    let listener = Listener::start();
    let config = write_config(&server, state.path(), &listener, logs);
    let mut agent = AgentChild::spawn(&["run", &config], &[]);
    let error = agent.wait_for_line(Duration::from_secs(20), "the set-aside error", |l| {
        l.contains("log_position_corrupt")
    });
    let aside = corrupt_files(state.path());
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        error.contains(&aside[0]),
        "the error names the file: {error}"
    );
    assert!(error.contains("ERROR"), "{error}");
    server.psql("postgres", "SELECT 1 AS after_damage_4417");
    wait_until(
        Duration::from_secs(30),
        "the entry written after the restart",
        || shipped_with(&listener, "after_damage_4417") == 1,
    );
    // The batch enqueued before the damage is delivered once, and not read again.
    assert_eq!(shipped_with(&listener, "before_damage_4417"), 1);
    // Cycles keep shipping the log: a later entry arrives too.
    server.psql("postgres", "SELECT 1 AS later_4417");
    wait_until(Duration::from_secs(30), "a later entry", || {
        shipped_with(&listener, "later_4417") == 1
    });
    stop(&mut agent);
    let errors = agent
        .stderr_text()
        .lines()
        .filter(|l| l.contains("log_position_corrupt"))
        .count();
    assert_eq!(errors, 1, "{}", agent.stderr_text());
    assert_eq!(shipped_with(&listener, "before_damage_4417"), 1);
    assert_eq!(shipped_with(&listener, "after_damage_4417"), 1);
    assert_eq!(
        std::fs::read(&position)
            .map(|b| b.first() == Some(&b'{'))
            .ok(),
        Some(true)
    );
}

/// Damaged again and again: at most two set-aside files are kept, the newest ones.
#[test]
fn at_most_two_damaged_position_files_are_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("postgresql.log");
    std::fs::write(&log, "2026-11-27 03:05:14.000 UTC [42] LOG:  hello\n").expect("log");
    let settings = || {
        TailSettings::new(
            LogSource::File(log.clone()),
            LogFormat::Stderr,
            "%m [%p] ",
            dir.path(),
        )
    };
    let position = dir.path().join("log_position.json");
    let mut moved = Vec::new();
    for i in 0..4 {
        std::fs::write(&position, format!("damaged {i}")).expect("damage");
        let tailer = Tailer::open(settings()).expect("a damaged position does not fail open");
        let aside = tailer.set_aside().expect("set aside").moved_to.clone();
        assert_eq!(
            std::fs::read_to_string(&aside).expect("moved file"),
            format!("damaged {i}")
        );
        assert!(tailer.committed().is_none());
        assert!(!position.exists());
        moved.push(
            aside
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    assert_eq!(corrupt_files(dir.path()), moved[2..].to_vec());
    // A good position is loaded as before, and nothing is set aside.
    let mut tailer = Tailer::open(settings()).expect("tailer");
    let batch = tailer.take_batch(10).expect("batch");
    let p = batch.position.expect("position");
    tailer.commit(&p).expect("commit");
    let tailer = Tailer::open(settings()).expect("tailer");
    assert!(tailer.set_aside().is_none());
    assert_eq!(tailer.committed(), Some(&p));
}

/// `[logs] path` naming a FIFO: nothing opens it (which would block the whole agent), one warning
/// names it and says what it is, cycles keep running, and SIGTERM still stops the agent at once.
#[test]
fn fifo_log_path_is_reported_and_never_blocks_the_agent() {
    let server = PgServer::start_with(PgOptions {
        pg_stat_statements: false,
        ..Default::default()
    });
    let state = tempfile::tempdir().expect("state");
    let fifo = state.path().join("postgresql.log");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    let listener = Listener::start();
    let config = write_config(
        &server,
        state.path(),
        &listener,
        &format!(
            "[logs]\npath = {}\nformat = stderr\nline_prefix = %m [%p] \npoll_interval_ms = 20\n",
            fifo.display()
        ),
    );
    let mut agent = AgentChild::spawn(&["run", &config], &[]);
    let warning = agent.wait_for_line(Duration::from_secs(20), "the FIFO warning", |l| {
        l.contains("FIFO")
    });
    assert!(warning.contains(&fifo.display().to_string()), "{warning}");
    assert!(warning.contains("WARN"), "{warning}");
    // Cycles go on: batches of three more cycles arrive.
    let first = listener.bodies_of_type("system_metrics").len();
    wait_until(Duration::from_secs(30), "three more cycles", || {
        listener.bodies_of_type("system_metrics").len() >= first + 3
    });
    agent.signal("TERM");
    let (status, took) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM to exit took {took:?}"
    );
    let warnings = agent
        .stderr_text()
        .lines()
        .filter(|l| l.contains("FIFO"))
        .count();
    assert_eq!(warnings, 1, "{}", agent.stderr_text());
}
