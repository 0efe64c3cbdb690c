//! Faults injected into the log task of the real daemon (the Reliability issue): a damaged
//! `log_position.json`, a `[logs] path` that is not a regular file, and very long log lines. Each
//! test runs the real binary against a real server and a `protocol = batch` listener.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use postgres_agent::log_format::LogFormat;
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
         [listener]\nprotocol = batch\nurl = {}\ncompress = true\nmax_requests_per_minute = 100000\n\n\
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
    // The set-aside and the entries read are counted, and `status` (another process) shows them.
    wait_until(
        Duration::from_secs(30),
        "status to show the counters",
        || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_postgres-agent"))
                .args(["status", &config])
                .output()
                .expect("status");
            let text = String::from_utf8_lossy(&out.stdout);
            // `status` aligns its counters in columns: name, then the figure.
            let row = |name: &str| {
                text.lines()
                    .find_map(|l| {
                        let mut words = l.split_whitespace();
                        (words.next() == Some(name)).then(|| words.next().map(str::to_string))
                    })
                    .flatten()
            };
            row("log_position_set_aside").as_deref() == Some("1")
                && row("log_entries_parsed").is_some()
        },
    );
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
            "[logs]\npath = {}\nformat = jsonlog\npoll_interval_ms = 20\n",
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
    agent.terminate_within(Duration::from_secs(2));
    let warnings = agent
        .stderr_text()
        .lines()
        .filter(|l| l.contains("FIFO"))
        .count();
    assert_eq!(warnings, 1, "{}", agent.stderr_text());
}

/// The daemon's peak resident memory (VmHWM) in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// 150 jsonlog lines of 900 KB (135 MB) in a file the daemon follows: pg_logs batches are bounded by
/// `logs.max_batch_bytes`, so peak memory stays far below the log's size, every entry is shipped
/// and cycles go on. The daemon runs under a 300 MB address-space limit (standing in for the unit's
/// `MemoryMax=256M`), under which it used to abort on one 236 MB allocation.
#[test]
fn long_log_lines_keep_memory_bounded() {
    const LINES: usize = 150;
    const LINE_BYTES: usize = 900 * 1000;
    let server = PgServer::start_with(PgOptions {
        pg_stat_statements: false,
        ..Default::default()
    });
    let state = tempfile::tempdir().expect("state");
    let log = state.path().join("big.json");
    std::fs::write(&log, "").expect("log file");
    let listener = Listener::start();
    let config = write_config(
        &server,
        state.path(),
        &listener,
        &format!(
            "[logs]\npath = {}\nformat = jsonlog\npoll_interval_ms = 20\n",
            log.display()
        ),
    );
    let agent =
        AgentChild::spawn_wrapped(&["prlimit", "--as=314572800", "--"], &["run", &config], &[]);
    agent.wait_for_line(Duration::from_secs(20), "the log task", |l| {
        l.contains("following the server log")
    });
    let before = peak_rss_kib(agent.pid());
    {
        use std::io::Write;
        let filler = "long log line text ".repeat(LINE_BYTES / 19 + 1);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open log");
        for i in 0..LINES {
            let head = r#"{"timestamp":"2026-11-28 21:00:00.000 UTC","pid":42,"error_severity":"LOG","message":""#;
            let message = format!("big-{i:03} {filler}");
            let message = &message[..LINE_BYTES - head.len() - 2];
            writeln!(f, "{head}{message}\"}}").expect("write line");
        }
    }
    let big = |e: &serde_json::Value| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("big-") && m.len() > 800_000)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while listener.count_records("pg_logs", big) < LINES {
        assert!(
            Instant::now() < deadline,
            "{} of {LINES} long entries shipped ({} pg_logs records{}); stderr:\n{}",
            listener.count_records("pg_logs", big),
            listener.count_records("pg_logs", |_| true),
            listener
                .bodies_of_type("pg_logs")
                .first()
                .map(|b| format!(", the first: {:.300}", b["data"][0]))
                .unwrap_or_default(),
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let peak = peak_rss_kib(agent.pid());
    println!("VmHWM before the long lines: {before} KiB; peak: {peak} KiB");
    assert_eq!(
        listener.count_records("pg_logs", big),
        LINES,
        "an entry was repeated"
    );
    assert!(
        peak < 100 * 1024,
        "peak RSS {peak} KiB for {LINES} lines of {LINE_BYTES} bytes"
    );
    // Batches of at most 8 MiB: about 9 entries each.
    assert!(listener.count_batches("pg_logs") >= LINES / 10);
    // Cycles go on.
    let cycles = listener.count_batches("system_metrics");
    wait_until(Duration::from_secs(30), "two more cycles", || {
        listener.count_batches("system_metrics") >= cycles + 2
    });
}

/// Batches cut by `max_batch_bytes` commit the position after their last entry, so a tailer
/// reopened between batches neither repeats nor loses an entry.
#[test]
fn byte_bounded_batches_resume_exactly_after_their_last_entry() {
    use postgres_agent::logs::tail::ENVELOPE_BYTES;
    const ENTRIES: usize = 200;
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("postgresql.json");
    let text: String = (0..ENTRIES)
        .map(|i| {
            format!(
                "{{\"timestamp\":\"2026-11-28 21:00:00.000 UTC\",\"pid\":42,\"error_severity\":\"LOG\",\"message\":\"m{i:03} {}\"}}\n",
                "x".repeat(100 + (i * 37) % 3000)
            )
        })
        .collect();
    std::fs::write(&log, text).expect("log");
    let settings = || {
        let mut s = TailSettings::new(
            LogSource::File(log.clone()),
            LogFormat::Jsonlog,
            "",
            dir.path(),
        );
        s.start_at_end = false;
        s.max_batch_bytes = 64 * 1024;
        s
    };
    let mut got = Vec::new();
    let mut batches = 0;
    let mut tailer = Tailer::open(settings()).expect("tailer");
    loop {
        let batch = tailer.take_batch(1000).expect("batch");
        if batch.entries.is_empty() {
            break;
        }
        let bytes: usize = batch.entries.iter().map(|e| e.to_string().len() + 1).sum();
        assert!(
            bytes <= 64 * 1024 - ENVELOPE_BYTES,
            "{bytes} bytes in one batch"
        );
        got.extend(
            batch
                .entries
                .iter()
                .map(|e| e["message"].as_str().unwrap_or("")[..4].to_string()),
        );
        tailer
            .commit(&batch.position.expect("position"))
            .expect("commit");
        batches += 1;
        if batches % 2 == 0 {
            // A restart: reading resumes at the committed position, dropping what was read ahead.
            tailer = Tailer::open(settings()).expect("tailer");
        }
    }
    let want: Vec<String> = (0..ENTRIES).map(|i| format!("m{i:03}")).collect();
    assert_eq!(got, want);
    assert!(batches >= 5, "only {batches} batches");
}
