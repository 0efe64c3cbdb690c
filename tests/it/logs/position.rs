//! Which file and which server a log position belongs to (issue 20, points 2, 5 and 6), against the
//! real daemon, real PostgreSQL servers and an in-process `protocol = batch` listener:
//!
//! - a log file name the server reuses (`log_filename` switched a -> b -> a: PostgreSQL appends to
//!   the file it wrote before) is followed, across a restart of the agent, every marker once;
//! - a read error right after a rotation (the new file unreadable to the agent's user) keeps the
//!   entries read before it;
//! - a reload that points `[postgres]` at another server does not apply the first server's position
//!   to the second one's files, and labels entries with the second server's identity.

use crate::support;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use postgres_agent::log_format::LogFormat;
use postgres_agent::logs::source::LogSource;
use postgres_agent::logs::tail::{TailSettings, Tailer};
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
        .map(|m| {
            all.iter()
                .filter(|(e, _)| e["message"] == m.as_str())
                .count()
        })
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
    wait_until(
        Duration::from_secs(60),
        "the server to switch its log",
        || {
            server
                .psql("postgres", "SELECT pg_current_logfile('jsonlog')")
                .ends_with(&format!("/{name}.json"))
        },
    );
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
    let config = write_config(
        &server,
        state.path(),
        &listener,
        1,
        "start_at = beginning\n",
    );
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
    let wrong: Vec<(&String, usize)> = sent.iter().zip(got).filter(|(_, n)| *n != 1).collect();
    assert!(
        wrong.is_empty(),
        "markers not delivered exactly once: {wrong:?}"
    );
    // The server really reused the names: two files per format.
    let json: Vec<_> = support::logs::log_files(&server, "json");
    assert_eq!(json.len(), 2, "{json:?}");
    stop(&mut agent);
}

/// Writes (or, with `append`, appends) stderr entries logged at second `at` to `path`, then sets its
/// modification time to `at` seconds after a fixed base (the order of files in a directory).
fn write_at(path: &Path, at: u64, append: bool, messages: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .expect("open log");
    for m in messages {
        writeln!(f, "2026-12-06 09:00:{at:02}.123 UTC [4242] LOG:  {m}").expect("write");
    }
    let base = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    f.set_modified(base + Duration::from_secs(at))
        .expect("set mtime");
}

/// Reads every entry the tailer can reach now, committing each batch; their messages.
fn drain(tailer: &mut Tailer) -> Vec<String> {
    let mut out = Vec::new();
    let mut quiet = 0;
    while quiet < 3 {
        let batch = tailer.take_batch(1000).expect("batch");
        if batch.entries.is_empty() {
            quiet += 1;
        }
        out.extend(
            batch
                .entries
                .iter()
                .map(|e| e["message"].as_str().unwrap_or_default().to_string()),
        );
        if let Some(p) = batch.position {
            tailer.commit(&p).expect("commit");
        }
    }
    out
}

/// Point 2 at the tailer, with the cases a server cannot be made to produce quickly:
/// `postgresql-%a.log` appended to after a week (continued where it was left, also after a
/// restart), then truncated and rewritten by `log_truncate_on_rotation` (read from its start,
/// whether the new content is longer or shorter than what was read).
#[test]
fn weekday_log_names_appended_or_rewritten_are_read_once_each() {
    let dir = tempfile::tempdir().expect("dir");
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs).expect("log dir");
    let state = dir.path().join("state");
    let settings = || {
        let mut s = TailSettings::new(
            LogSource::Dir {
                dir: logs.clone(),
                format: LogFormat::Stderr,
            },
            LogFormat::Stderr,
            "%m [%p] ",
            &state,
        );
        s.start_at_end = false;
        s
    };
    let (mon, tue) = (
        logs.join("postgresql-Mon.log"),
        logs.join("postgresql-Tue.log"),
    );
    let mut tailer = Tailer::open(settings()).expect("tailer");
    let mut want = Vec::new();
    let mut got = Vec::new();
    let mut step = |tailer: &mut Tailer, path: &Path, at: u64, append: bool, tag: &str, n| {
        let m = markers(tag, n);
        write_at(path, at, append, &m);
        want.extend(m);
        got.extend(drain(tailer));
    };
    step(&mut tailer, &mon, 1, false, "mon1", 30);
    step(&mut tailer, &tue, 2, false, "tue1", 30);
    // A week later Monday's file is appended to.
    step(&mut tailer, &mon, 3, true, "mon2", 30);
    // A restart while Monday's file is read; then Tuesday's file is appended to.
    drop(tailer);
    let mut tailer = Tailer::open(settings()).expect("tailer again");
    step(&mut tailer, &tue, 4, true, "tue2", 30);
    // log_truncate_on_rotation: rewritten longer, and shorter, than what was read from them.
    step(&mut tailer, &mon, 5, false, "mon3", 100);
    step(&mut tailer, &tue, 6, false, "tue3", 5);
    assert_eq!(got, want);
}

/// The OS user the servers run as when the tests run as root (see tests/it/support/pg.rs): the agent
/// runs as it here, so a file with mode 000 is unreadable to it.
fn server_user() -> Option<(u32, u32)> {
    if rustix::process::geteuid().as_raw() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    ["postgres", "pgagent-test"].iter().find_map(|name| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == *name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    })
}

/// Appends stderr-format entries (`%m [%p] `) with these messages to `path` in one write.
fn append_entries(path: &Path, messages: &[String]) {
    use std::io::Write;
    let mut text = String::new();
    for m in messages {
        text.push_str(&format!("2026-12-06 09:00:00.123 UTC [4242] LOG:  {m}\n"));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open log");
    f.write_all(text.as_bytes()).expect("append");
}

/// Point 5: logrotate's create mode (rename, then a new file at the path) where the new file is
/// unreadable to the agent at first (created 000, as a `create 0600 root root` rule would make
/// it). The entries read from the old file just before are kept and shipped: before, `rewind()`
/// dropped them, the saved position's file was no longer at the path, and reading went on with the
/// new file (the entries were lost).
#[test]
fn a_read_error_right_after_a_rotation_loses_no_entry() {
    let server = PgServer::start_with(PgOptions {
        conf: vec![],
        pg_stat_statements: false,
    });
    let state = tempfile::tempdir().expect("state");
    let logs = tempfile::tempdir().expect("log dir");
    std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let log = logs.path().join("postgresql.log");
    std::fs::write(&log, "").expect("create log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let listener = Listener::start();
    let config = write_config(
        &server,
        state.path(),
        &listener,
        5,
        &format!(
            "path = {}\nformat = stderr\nline_prefix = \"%m [%p] \"\nstart_at = beginning\n",
            log.display()
        ),
    );
    let user = server_user();
    if let Some((uid, gid)) = user {
        let status = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(state.path())
            .status()
            .expect("chown");
        assert!(status.success());
    }
    let (reuid, regid) = user.map_or((String::new(), String::new()), |(u, g)| {
        (format!("--reuid={u}"), format!("--regid={g}"))
    });
    let wrapper: Vec<&str> = match user {
        Some(_) => vec!["setpriv", &reuid, &regid, "--clear-groups", "--"],
        None => vec![],
    };
    let agent = AgentChild::spawn_wrapped(&wrapper, &["run", &config], &[]);
    agent.wait_for_line(Duration::from_secs(60), "the log task", |l| {
        l.contains("following the server log")
    });
    let first = markers("idr0", 5);
    append_entries(&log, &first);
    wait_until(Duration::from_secs(90), "the first entries", || {
        all_delivered(&listener, &first)
    });

    // Entries, then at once the rotation: the old file renamed away, an unreadable one created.
    let before = markers("idr1", 50);
    append_entries(&log, &before);
    std::fs::rename(&log, logs.path().join("postgresql.log.1")).expect("rotate");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&log)
        .expect("create the new file");
    let warning = agent.wait_for_line(Duration::from_secs(60), "the read error", |l| {
        l.contains("reading the server log failed")
    });
    // EACCES, whatever the locale says.
    assert!(warning.contains("os error 13"), "{warning}");
    // The new file becomes readable, and the server writes to it.
    let after = markers("idr2", 20);
    append_entries(&log, &after);
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut all = first.clone();
    all.extend(before.iter().cloned());
    all.extend(after.iter().cloned());
    wait_until(Duration::from_secs(90), "every entry", || {
        all_delivered(&listener, &all)
    });
    agent.wait_for_line(Duration::from_secs(60), "the recovery", |l| {
        l.contains("reading the server log works again")
    });
    let got = counts(&listener, &all);
    let wrong: Vec<(&String, usize)> = all.iter().zip(got).filter(|(_, n)| *n != 1).collect();
    assert!(
        wrong.is_empty(),
        "entries not delivered exactly once: {wrong:?}"
    );
    let errors = agent
        .stderr_text()
        .matches("reading the server log failed")
        .count();
    assert_eq!(errors, 1, "said once: {}", agent.stderr_text());
    let mut agent = agent;
    stop(&mut agent);
}

fn system_identifier(server: &PgServer) -> String {
    server.psql(
        "postgres",
        "SELECT system_identifier::text FROM pg_control_system()",
    )
}

/// Point 6: a SIGHUP reload that points `[postgres]` at another server (its own
/// `system_identifier`, its own log directory) with `start_at = end`: what that server logged before
/// the reload is not shipped (before, the first server's position was applied to its files and its
/// whole old log shipped), what it logs after is, labelled with its identity.
#[test]
fn a_reload_to_another_server_starts_its_log_at_the_end_with_its_identity() {
    let options = PgOptions {
        conf: vec![],
        pg_stat_statements: false,
    };
    let first = PgServer::start_with(options.clone());
    let second = PgServer::start_fresh(options);
    let (id1, id2) = (system_identifier(&first), system_identifier(&second));
    assert_ne!(id1, id2, "the two servers must differ");
    let state = tempfile::tempdir().expect("state");
    let listener = Listener::start();
    let config = write_config(&first, state.path(), &listener, 1, "start_at = end\n");
    let mut agent = start_agent(&config);
    let on_first = raise(&first, "ids1", 5);
    wait_until(
        Duration::from_secs(90),
        "the first server's entries",
        || all_delivered(&listener, &on_first),
    );

    // The second server logs before the agent is pointed at it.
    let before = raise(&second, "ids2-before", 20);
    support::logs::wait_for_log(&second, "ids2-before-020", Duration::from_secs(30));
    write_config(&second, state.path(), &listener, 1, "start_at = end\n");
    agent.signal("HUP");
    let position = state.path().join("log_position.json");
    let second_log = second.log_dir();
    wait_until(
        Duration::from_secs(90),
        "the position to move to the second server's log",
        || {
            std::fs::read_to_string(&position).is_ok_and(|p| {
                p.contains(&format!("\"server\":\"{id2}\""))
                    && p.contains(second_log.to_str().expect("utf-8"))
            })
        },
    );
    agent.wait_for_line(Duration::from_secs(30), "the dropped position", |l| {
        l.contains("log_position_other_server")
    });
    let after = raise(&second, "ids2-after", 20);
    wait_until(
        Duration::from_secs(90),
        "the second server's new entries",
        || all_delivered(&listener, &after),
    );
    // One more cycle's worth: anything of the old log would have come with or before these.
    let last = raise(&second, "ids2-last", 1);
    wait_until(Duration::from_secs(90), "the last marker", || {
        all_delivered(&listener, &last)
    });
    assert_eq!(counts(&listener, &before), vec![0; before.len()]);
    assert_eq!(counts(&listener, &after), vec![1; after.len()]);
    assert_eq!(counts(&listener, &on_first), vec![1; on_first.len()]);
    for (e, server) in shipped(&listener) {
        let m = e["message"].as_str().unwrap_or_default();
        let want = if m.starts_with("ids2-") {
            &id2
        } else if m.starts_with("ids1-") {
            &id1
        } else {
            continue;
        };
        assert_eq!(
            server["system_identifier"].as_str(),
            Some(want.as_str()),
            "{m}: {server}"
        );
    }
    stop(&mut agent);
}
