//! The tailer against a real server: rotation by size and by pg_rotate_logfile() under load, a
//! follower killed with SIGKILL (and restarted) mid-file, and a file truncated in place. In each,
//! what the tailer delivered must equal, entry for entry and in order, what an offline parse of
//! every file the server wrote gives: nothing lost, nothing repeated.

use crate::support;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postgres_agent::log_format::LogFormat;
use postgres_agent::logs::position::Position;
use postgres_agent::logs::source::LogSource;
use postgres_agent::logs::tail::{TailSettings, Tailer};
use serde_json::{json, Value};
use support::logs::{log_files, parse_file, psql_lenient};
use support::{PgOptions, PgServer};

const PREFIX: &str = "%m [%p] %q%u@%d ";

fn start_server(extra: &[&str]) -> PgServer {
    let mut conf = vec![
        format!("log_line_prefix = '{PREFIX}'"),
        "log_min_duration_statement = 0".to_string(),
        "log_connections = on".to_string(),
    ];
    conf.extend(extra.iter().map(|s| s.to_string()));
    PgServer::start_with(PgOptions {
        conf,
        pg_stat_statements: false,
    })
}

/// About `rounds` * 300 multi-line entries (RAISE LOG adds a CONTEXT line), spread over time.
fn load(server: &PgServer, rounds: u32) {
    let sql = format!(
        "do $$ begin for i in 1..{rounds} loop for j in 1..300 loop \
         raise log 'load line %/% with some text ✓ to fill the file', i, j; end loop; \
         perform pg_sleep(0.02); end loop; end $$"
    );
    let out = psql_lenient(server, &server.conn_str("postgres"), &sql, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn settings(server: &PgServer, state_dir: &Path) -> TailSettings {
    let mut s = TailSettings::new(
        LogSource::Dir {
            dir: server.log_dir(),
            format: LogFormat::Stderr,
        },
        LogFormat::Stderr,
        PREFIX,
        state_dir,
    );
    // Parsing is under test here; the privacy policy has tests of its own.
    s.finisher.privacy = postgres_agent::privacy::Privacy::PASS_THROUGH;
    s.start_at_end = false;
    s.poll_interval = Duration::from_millis(20);
    s
}

/// Everything the server wrote, parsed offline, oldest file first.
fn expected(server: &PgServer) -> Vec<Value> {
    log_files(server, "log")
        .iter()
        .flat_map(|f| parse_file(f, LogFormat::Stderr, PREFIX))
        .collect()
}

fn assert_same_sequence(got: &[Value], want: &[Value]) {
    assert!(!want.is_empty());
    if let Some(i) = (0..got.len().min(want.len())).find(|i| got[*i] != want[*i]) {
        panic!("entry {i} differs:\n got  {}\n want {}", got[i], want[i]);
    }
    assert_eq!(got.len(), want.len(), "tailed vs written entry counts");
}

/// Follows the log in-process while `work` runs, committing after every batch.
fn follow_during(server: &PgServer, state: &Path, work: impl FnOnce() + Send) -> Vec<Value> {
    let mut tailer = Tailer::open(settings(server, state)).expect("tailer");
    let mut got = Vec::new();
    std::thread::scope(|s| {
        let worker = s.spawn(work);
        while !worker.is_finished() {
            let batch = tailer.take_batch(100).expect("batch");
            got.extend(batch.entries);
            if let Some(p) = &batch.position {
                tailer.commit(p).expect("commit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    server.stop();
    drain(&mut tailer, &mut got);
    got
}

fn drain(tailer: &mut Tailer, got: &mut Vec<Value>) {
    let mut empty = 0;
    while empty < 4 {
        let batch = tailer.take_batch(100).expect("batch");
        empty = if batch.entries.is_empty() {
            empty + 1
        } else {
            0
        };
        got.extend(batch.entries);
        if let Some(p) = &batch.position {
            tailer.commit(p).expect("commit");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Log files the server must have written before a rotation test stops its load. Rotations are
/// counted, never timed: a rotated file's name carries the second it was opened in
/// (`log_filename` has `%S`), so the server makes at most one new file per second, and how many
/// seconds a load takes depends on the machine.
const ROTATED_FILES: usize = 4;
/// How long the server may take to write them (a bound for a hung server, not a pace).
const ROTATION_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `load` in rounds of `rounds` until the server has written `files` log files.
fn load_until_files(server: &PgServer, rounds: u32, files: usize) {
    let deadline = Instant::now() + ROTATION_DEADLINE;
    while log_files(server, "log").len() < files {
        assert!(
            Instant::now() < deadline,
            "the server wrote only {:?} under load",
            log_files(server, "log")
        );
        load(server, rounds);
    }
}

#[test]
fn rotation_by_size_under_load() {
    // 64 kB: every round of load below overflows the file, so each second of load rotates once.
    let server = start_server(&["log_rotation_size = 64"]);
    let state = tempfile::tempdir().expect("state");
    let got = follow_during(&server, state.path(), || {
        load_until_files(&server, 5, ROTATED_FILES)
    });
    let files = log_files(&server, "log");
    assert!(
        files.len() >= ROTATED_FILES,
        "expected several rotated files: {files:?}"
    );
    assert_same_sequence(&got, &expected(&server));
}

#[test]
fn rotation_by_pg_rotate_logfile_under_load() {
    let server = start_server(&[]);
    let state = tempfile::tempdir().expect("state");
    let done = std::sync::atomic::AtomicBool::new(false);
    let got = follow_during(&server, state.path(), || {
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    load(&server, 5);
                }
            });
            // Rotate while the load runs until the server has made the files; a rotation in the
            // same second as the previous one reopens the same name, so it is simply asked again.
            let deadline = Instant::now() + ROTATION_DEADLINE;
            while log_files(&server, "log").len() < ROTATED_FILES {
                assert!(
                    Instant::now() < deadline,
                    "pg_rotate_logfile() made no new files"
                );
                server.psql("postgres", "select pg_rotate_logfile()");
                std::thread::sleep(Duration::from_millis(100));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    });
    let files = log_files(&server, "log");
    assert!(
        files.len() >= ROTATED_FILES,
        "expected several rotated files: {files:?}"
    );
    assert_same_sequence(&got, &expected(&server));
}

// ---- kill -9: the test binary re-executes itself as the follower ----

const CHILD_ENV: &str = "PGA_TAIL_CHILD";

/// The follower process: reconciles with its "outbox" (a JSON-lines file of batches, each with its
/// position), then loops take → append + fsync → commit, as the daemon does with the real outbox.
#[test]
#[ignore = "helper run by killed_and_restarted_follower_loses_and_repeats_nothing"]
fn tail_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("child spec");
    let dir = PathBuf::from(spec["log_dir"].as_str().expect("log_dir"));
    let state = PathBuf::from(spec["state"].as_str().expect("state"));
    let outbox = state.join("outbox.jsonl");
    let drain_only = spec["drain"].as_bool().unwrap_or(false);
    let max_batches = spec["max_batches"].as_u64().unwrap_or(u64::MAX);

    // A batch cut short by the kill was never "enqueued": drop the partial line.
    let mut last: Option<Position> = None;
    if let Ok(f) = File::open(&outbox) {
        let mut good = 0u64;
        let mut len = 0u64;
        for line in BufReader::new(f).split(b'\n') {
            let line = line.expect("read outbox");
            len += line.len() as u64 + 1;
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                last = serde_json::from_value(v["position"].clone()).ok();
                good = len;
            }
        }
        OpenOptions::new()
            .write(true)
            .open(&outbox)
            .and_then(|f| f.set_len(good))
            .expect("trim outbox");
    }
    let mut s = TailSettings::new(
        LogSource::Dir {
            dir,
            format: LogFormat::Stderr,
        },
        LogFormat::Stderr,
        PREFIX,
        &state,
    );
    // Parsing is under test here; the privacy policy has tests of its own.
    s.finisher.privacy = postgres_agent::privacy::Privacy::PASS_THROUGH;
    s.start_at_end = false;
    s.poll_interval = Duration::from_millis(20);
    let mut tailer = Tailer::open(s).expect("tailer");
    if let Some(p) = &last {
        tailer.reconcile(p).expect("reconcile");
    }
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&outbox)
        .expect("outbox");
    let mut empty = 0;
    let mut batches = 0;
    loop {
        let batch = tailer.take_batch(37).expect("batch");
        if batch.entries.is_empty() {
            empty += 1;
            if drain_only && empty >= 5 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        empty = 0;
        let position = batch.position.expect("position with entries");
        let mut line = serde_json::to_vec(&json!({"position": position, "entries": batch.entries}))
            .expect("serialize");
        line.push(b'\n');
        out.write_all(&line).expect("enqueue");
        out.sync_data().expect("fsync");
        // Widen the window between enqueue and commit so kills land in it: only `reconcile`
        // keeps those batches from being read twice.
        std::thread::sleep(Duration::from_millis(8));
        tailer.commit(&position).expect("commit");
        batches += 1;
        if batches >= max_batches {
            return;
        }
    }
}

fn run_child(log_dir: &Path, state: &Path, extra: Value) -> std::process::Child {
    let mut spec = json!({"log_dir": log_dir, "state": state});
    if let (Some(o), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    support::test_child(module_path!(), "tail_child_process")
        .env(CHILD_ENV, spec.to_string())
        .spawn()
        .expect("spawn follower")
}

#[test]
fn killed_and_restarted_follower_loses_and_repeats_nothing() {
    let server = start_server(&["log_rotation_size = 128"]);
    let state = tempfile::tempdir().expect("state");
    let log_dir = server.log_dir();
    std::thread::scope(|s| {
        let l = s.spawn(|| load(&server, 150));
        let mut kills = 0;
        let mut restarts = 0;
        let mut round = 0u64;
        while !l.is_finished() || kills < 4 {
            round += 1;
            if round % 3 == 0 {
                // A clean stop after a few batches: a restart rather than a crash.
                let status = run_child(&log_dir, state.path(), json!({"max_batches": 5}))
                    .wait()
                    .expect("follower");
                assert!(status.success());
                restarts += 1;
                continue;
            }
            let mut child = run_child(&log_dir, state.path(), json!({}));
            std::thread::sleep(Duration::from_millis(150 + (round * 137) % 400));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            kills += 1;
        }
        assert!(restarts > 0);
    });
    server.stop();
    let status = run_child(&log_dir, state.path(), json!({"drain": true}))
        .wait()
        .expect("final follower");
    assert!(status.success());

    let mut got = Vec::new();
    let f = File::open(state.path().join("outbox.jsonl")).expect("outbox");
    for line in BufReader::new(f).lines() {
        let v: Value = serde_json::from_str(&line.expect("line")).expect("batch line");
        got.extend(v["entries"].as_array().expect("entries").iter().cloned());
    }
    assert_same_sequence(&got, &expected(&server));
}

#[test]
fn truncated_file_is_read_again_from_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("postgresql.log");
    let line = |i: u32| format!("2026-11-27 03:05:14.{i:03} UTC [42] LOG:  line {i}\n");
    let write = |from: u32, to: u32, truncate: bool| {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .append(!truncate)
            .truncate(truncate)
            .open(&path)
            .expect("log file");
        for i in from..to {
            f.write_all(line(i).as_bytes()).expect("write");
        }
    };
    write(0, 50, false);
    let mut s = TailSettings::new(
        LogSource::File(path.clone()),
        LogFormat::Stderr,
        "%m [%p] ",
        dir.path(),
    );
    // Parsing is under test here; the privacy policy has tests of its own.
    s.finisher.privacy = postgres_agent::privacy::Privacy::PASS_THROUGH;
    s.start_at_end = false;
    let mut tailer = Tailer::open(s).expect("tailer");
    let messages = |t: &mut Tailer| -> Vec<String> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let b = t.take_batch(1000).expect("batch");
            let done = b.entries.is_empty();
            all.extend(
                b.entries
                    .iter()
                    .map(|e| e["message"].as_str().unwrap_or("").to_string()),
            );
            if let Some(p) = &b.position {
                t.commit(p).expect("commit");
            }
            if done || Instant::now() > deadline {
                return all;
            }
        }
    };
    let first = messages(&mut tailer);
    assert_eq!(first.len(), 50);
    assert_eq!(first[49], "line 49");
    let before = tailer.take_stats();
    assert_eq!(before.entries, 50, "{before:?}");
    assert_eq!(before.files_truncated, 0);
    write(100, 110, true);
    let second = messages(&mut tailer);
    assert_eq!(
        second,
        (100..110).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    let met = tailer.take_stats();
    assert_eq!(met.files_truncated, 1, "{met:?}");
    assert_eq!(met.entries, 10, "{met:?}");
    // Replaced by a new file at the same path (logrotate's create mode): read from its start.
    std::fs::rename(&path, dir.path().join("postgresql.log.1")).expect("rotate");
    write(200, 205, false);
    let third = messages(&mut tailer);
    assert_eq!(
        third,
        (200..205).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
}

#[test]
fn discovers_the_log_from_the_server_and_batches_early_when_full() {
    use postgres_agent::db::Db;
    use postgres_agent::logs::source::discover;

    let server = PgServer::start();
    let state = tempfile::tempdir().expect("state");
    let config = support::agent_config(
        &server,
        state.path(),
        "[logs]\nstart_at = beginning\npoll_interval_ms = 20\n",
    );
    let rt = support::rt();
    let found = rt.block_on(async {
        let db = Db::new(&config.postgres, &config.safety).expect("pool");
        let mut session = db.session().await.expect("session");
        discover(&mut session).await.expect("discover")
    });
    assert_eq!(found.dir, server.log_dir());
    let expected_format = if server.major() >= 15 {
        LogFormat::Jsonlog
    } else {
        LogFormat::Csvlog
    };
    assert_eq!(found.format, expected_format);
    assert_eq!(found.prefix, "%m [%p] %q%u@%d ");

    let settings = TailSettings::from_config(&config, Some(&found)).expect("settings");
    let mut tailer = Tailer::open(settings).expect("tailer");
    for i in 0..20 {
        server.psql(
            "postgres",
            &format!("do $$ begin raise log 'discover-me {i}'; end $$"),
        );
    }
    // An early batch: max entries reached long before the deadline.
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let batch = rt.block_on(tailer.next_batch(3, deadline)).expect("batch");
    assert_eq!(batch.entries.len(), 3);
    assert!(started.elapsed() < Duration::from_secs(30));
    // The rest arrives within a short deadline.
    let mut all = batch.entries;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let rest = rt
        .block_on(tailer.next_batch(10_000, deadline))
        .expect("batch");
    all.extend(rest.entries);
    let seen = all
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("discover-me")
        })
        .count();
    assert_eq!(seen, 20, "entries: {all:?}");
    tailer
        .commit(&rest.position.expect("position"))
        .expect("commit");
    assert!(state.path().join("log_position.json").exists());
}

/// syslog in the tailer (issue 13): a file rsyslog writes grows a few bytes at a time, splitting
/// messages between their pieces and inside lines; the tailer's entries equal those of the whole
/// file parsed offline.
#[test]
fn tails_a_syslog_file_written_piece_by_piece() {
    const PREFIX: &str = "user=%u,db=%d,app=%a,client=%h ";
    let server = PgServer::start_with(PgOptions {
        conf: support::logs::verbose_logging(&format!("[%p] {PREFIX}"), "UTC"),
        pg_stat_statements: false,
    });
    let db = server.conn_str("postgres");
    let words: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
    for sql in [
        "select 1/0".to_string(),
        "select 'multi\nline'".to_string(),
        format!("select '{}', '{}'", "x".repeat(1500), words.join(" ")),
    ] {
        psql_lenient(&server, &db, &sql, &[]);
    }
    server.stop();
    let dir = tempfile::tempdir().expect("dir");
    let whole = dir.path().join("whole.syslog");
    support::logs::stderr_to_syslog(&log_files(&server, "log")[0], PREFIX, &whole);
    let bytes = std::fs::read(&whole).expect("read");
    let expected = parse_file(&whole, LogFormat::Syslog, PREFIX);
    assert!(expected.len() > 5);

    let live = dir.path().join("postgresql.syslog");
    File::create(&live).expect("create");
    let mut s = TailSettings::new(
        LogSource::File(live.clone()),
        LogFormat::Syslog,
        PREFIX,
        dir.path(),
    );
    s.finisher.privacy = postgres_agent::privacy::Privacy::PASS_THROUGH;
    s.finisher.correlation_keys = vec!["traceparent".into(), "correlation_id".into()];
    s.start_at_end = false;
    s.poll_interval = Duration::from_millis(5);
    let mut tailer = Tailer::open(s).expect("tailer");
    let mut got = Vec::new();
    let mut file = OpenOptions::new().append(true).open(&live).expect("open");
    for piece in bytes.chunks(333) {
        file.write_all(piece).expect("append");
        file.flush().expect("flush");
        let batch = tailer.take_batch(100).expect("batch");
        got.extend(batch.entries);
        if let Some(p) = &batch.position {
            tailer.commit(p).expect("commit");
        }
    }
    drain(&mut tailer, &mut got);
    let sort = |v: &[Value]| {
        let mut s: Vec<String> = v.iter().map(Value::to_string).collect();
        s.sort();
        s
    };
    assert_eq!(sort(&got), sort(&expected));
}
