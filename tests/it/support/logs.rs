//! Harness for the log pipeline tests: a server configured to log everything in all three formats,
//! a workload that makes it log every kind of entry, and helpers to parse the files it wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use postgres_agent::log_format::LogFormat;
use postgres_agent::logs::parse::{Parser, MAX_ENTRY_BYTES};
use postgres_agent::logs::reader::EntryReader;
use postgres_agent::logs::{finish_entry, Finisher};
use serde_json::Value;

use super::pg::{PgOptions, PgServer, SUPERUSER};

/// postgresql.conf lines that make the server log every kind of entry the parsers handle.
pub fn verbose_logging(prefix: &str, timezone: &str) -> Vec<String> {
    vec![
        format!("log_line_prefix = '{prefix}'"),
        format!("log_timezone = '{timezone}'"),
        "log_min_duration_statement = 0".into(),
        "log_statement = 'ddl'".into(),
        "log_lock_waits = on".into(),
        "deadlock_timeout = '200ms'".into(),
        "log_temp_files = 0".into(),
        "log_connections = on".into(),
        "log_disconnections = on".into(),
        "log_checkpoints = on".into(),
        "log_autovacuum_min_duration = 0".into(),
        "autovacuum_naptime = 1".into(),
        "shared_preload_libraries = 'auto_explain'".into(),
        "auto_explain.log_format = 'json'".into(),
        "password_encryption = 'scram-sha-256'".into(),
        "max_parallel_workers_per_gather = 2".into(),
        // IPv6 clients too, so `%r`/`%h` print `::1` (the harness listens on 127.0.0.1 only).
        "listen_addresses = '127.0.0.1,::1'".into(),
        // %Q prints 0 unless query identifiers are computed.
        format!(
            "compute_query_id = {}",
            if prefix.contains("%Q") { "on" } else { "auto" }
        ),
    ]
}

pub fn start_logging_server(prefix: &str, timezone: &str) -> PgServer {
    PgServer::start_with(PgOptions {
        conf: verbose_logging(prefix, timezone),
        pg_stat_statements: false,
    })
}

/// Runs psql without failing on SQL errors (the workload makes errors on purpose).
pub fn psql_lenient(server: &PgServer, conn: &str, sql: &str, env: &[(&str, &str)]) -> Output {
    // Server-only builds (other majors) come without psql: any psql speaks to them.
    let psql = server.bindir.join("psql");
    let psql = if psql.exists() {
        psql
    } else {
        PathBuf::from("psql")
    };
    let mut cmd = Command::new(psql);
    cmd.args(["-X", "-q", "-d", conn, "-c", sql]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run psql")
}

/// Makes the server log errors, multi-line and non-ASCII statements, a deadlock, lock waits, temp
/// files, an authentication failure over TCP, autovacuum and autoanalyze, checkpoints, JSON
/// auto_explain plans, a canceled statement, PL/pgSQL errors with QUERY/CONTEXT, verbose errors with
/// LOCATION, and a parallel worker's error.
pub fn workload(server: &PgServer) {
    let db = server.conn_str("postgres");
    let app = format!("{db} application_name='my app@x'");
    let run = |conn: &str, sql: &str| psql_lenient(server, conn, sql, &[]);
    run(
        &db,
        "create table t (id int primary key, v text); insert into t values (1, 'a'), (2, 'b')",
    );
    run(&db, "create table vac (id int, pad text) with (autovacuum_vacuum_threshold = 10, autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 10, autovacuum_analyze_scale_factor = 0)");
    run(
        &db,
        "insert into vac select g, repeat('x', 100) from generate_series(1, 2000) g",
    );
    run(&db, "delete from vac where id % 2 = 0");
    run(&app, "select 1/0");
    // An application name holding the separators prefixes put around %a.
    run(
        &format!("{db} application_name='app: [1], x,client=y @z'"),
        "select 1/0",
    );
    run(&app, "selec 1");
    run(&db, "select * from no_such_table");
    // Statements over syslog's 900-byte line limit: one long word, then many short ones.
    let words: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
    run(
        &db,
        &format!(
            "select '{}' as long_word, '{}' as many_words",
            "x".repeat(1200),
            words.join(" ")
        ),
    );
    run(&db, "select 'héllo\n\twörld ✓ 😀' as \"naïve\",\n  2 as x");
    run(&db, "do $$ begin raise warning 'wärning %', 1; raise notice 'note' using detail = 'dé\ntail', hint = 'a hint'; end $$");
    run(
        &db,
        "do $$ begin execute 'select * from no_such_in_plpgsql'; end $$",
    );
    run(&db, "do $$ begin raise exception 'boom' using detail = 'the detail', hint = 'the hint', errcode = 'P0001'; end $$");
    run(&db, "set log_error_verbosity = verbose; select 1/0");
    run(&db, "set statement_timeout = 100; select pg_sleep(2)");
    run(&db, "set work_mem = '64kB'; select count(*) from (select g from generate_series(1, 50000) g order by g desc) s");
    run(&db, "set auto_explain.log_min_duration = 0; select count(*) from t /* traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' */");
    // force_parallel_mode is debug_parallel_query from PostgreSQL 16 on (the other one fails).
    for setting in ["force_parallel_mode", "debug_parallel_query"] {
        run(&db, &format!("set {setting} = on; set parallel_setup_cost = 0; set parallel_tuple_cost = 0; select 1/(g - g) from generate_series(1, 3) g"));
    }
    run(&db, "checkpoint");
    // A password-protected role over TCP, allowed by pg_hba, with a wrong password.
    run(&db, "create role pwuser login password 'right'");
    let hba = server.data_dir.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).expect("read pg_hba");
    std::fs::write(
        &hba,
        format!("host all pwuser 127.0.0.1/32 scram-sha-256\n{text}"),
    )
    .expect("write pg_hba");
    run(&db, "select pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    let tcp = format!(
        "host=127.0.0.1 port={} user=pwuser dbname=postgres",
        server.port
    );
    psql_lenient(server, &tcp, "select 1", &[("PGPASSWORD", "wrong")]);
    psql_lenient(
        server,
        &tcp,
        "select 'ok over tcp'",
        &[("PGPASSWORD", "right")],
    );
    let tcp6 = format!(
        "host=::1 port={} user={} dbname=postgres",
        server.port, SUPERUSER
    );
    psql_lenient(server, &tcp6, "select 'ok over ipv6'", &[]);
    // A lock wait that resolves, then a deadlock between two sessions.
    std::thread::scope(|s| {
        s.spawn(|| {
            run(
                &db,
                "begin; update t set v = 'w' where id = 1; select pg_sleep(0.6); commit",
            )
        });
        std::thread::sleep(Duration::from_millis(150));
        s.spawn(|| run(&db, "update t set v = 'x' where id = 1"));
    });
    std::thread::scope(|s| {
        s.spawn(|| run(&db, "begin; update t set v = 'd1' where id = 1; select pg_sleep(0.4); update t set v = 'd1' where id = 2; commit"));
        s.spawn(|| run(&db, "begin; update t set v = 'd2' where id = 2; select pg_sleep(0.4); update t set v = 'd2' where id = 1; commit"));
    });
    wait_for_log(
        server,
        "automatic analyze of table",
        Duration::from_secs(40),
    );
    wait_for_log(server, "automatic vacuum of table", Duration::from_secs(40));
}

/// Waits until some jsonlog file contains `needle`.
pub fn wait_for_log(server: &PgServer, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for f in log_files(server, "json") {
            if std::fs::read_to_string(&f)
                .unwrap_or_default()
                .contains(needle)
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the server never logged {needle:?}");
}

/// The server's log files with this extension, oldest first.
pub fn log_files(server: &PgServer, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(server.log_dir())
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == ext));
    files.sort();
    files
}

/// Parses a file with the library's reader and finisher, as JSON values.
pub fn parse_file(path: &Path, format: LogFormat, prefix: &str) -> Vec<Value> {
    let file = std::fs::File::open(path).expect("open log");
    let mut reader = EntryReader::new(file, Parser::new(format, prefix, MAX_ENTRY_BYTES), 0);
    let finisher = Finisher {
        correlation_keys: vec!["traceparent".into(), "correlation_id".into()],
        // These tests are about parsing; the privacy policy is tested in tests/it/privacy.rs.
        privacy: postgres_agent::privacy::Privacy::PASS_THROUGH,
    };
    let mut out = Vec::new();
    while let Some((mut e, _)) = reader.next_entry().expect("read log") {
        finish_entry(&mut e, &finisher);
        // parse-log's writer makes exactly what serde_json makes of the entry.
        let mut direct = Vec::new();
        e.write_json(&mut direct).expect("write json");
        assert_eq!(
            String::from_utf8(direct).expect("utf8"),
            serde_json::to_string(&e).expect("entry to json")
        );
        out.push(serde_json::to_value(&e).expect("entry to json"));
    }
    out
}

/// PostgreSQL's `PG_SYSLOG_LIMIT` (elog.c).
const PG_SYSLOG_LIMIT: usize = 900;

/// Writes what rsyslog would have written to a file had the server that wrote `stderr_log` used
/// `log_destination = syslog` (with the default `syslog_sequence_numbers` and
/// `syslog_split_messages` on) and `log_line_prefix` without its leading `[%p] `: the server sends
/// the very text it writes to stderr to syslog, so each stderr message (framed by the library's
/// stderr parser under `[%p] ` + `prefix`, which the stderr oracle checks) is turned into syslog
/// lines as `write_syslog` in `src/backend/utils/error/elog.c` does: one `syslog()` call per line,
/// lines over 900 bytes cut at the last whitespace before the limit (or at the limit, clipped to a
/// character boundary, when there is none), each tagged `[seq-chunk]` with a per-process message
/// counter; rsyslog then writes `Mon DD HH:MM:SS host ident[pid]: msg` with control characters
/// escaped as `#` and three octal digits (`RSYSLOG_TraditionalFileFormat`).
pub fn stderr_to_syslog(stderr_log: &Path, prefix: &str, out: &Path) {
    let data = std::fs::read(stderr_log).expect("read stderr log");
    let mut parser = Parser::new(
        LogFormat::Stderr,
        &format!("[%p] {prefix}"),
        MAX_ENTRY_BYTES,
    );
    let mut seqs: std::collections::HashMap<u32, u64> = Default::default();
    let mut syslog = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let n = match parser.frame(&data[pos..], postgres_agent::logs::parse::End::Eof) {
            postgres_agent::logs::parse::Frame::Entry(n) => n,
            other => panic!("unexpected frame {other:?}"),
        };
        let message = &data[pos..pos + n];
        pos += n;
        // `[pid] ` starts every prefixed line; continuation lines start with a tab.
        let pid: u32 =
            std::str::from_utf8(&message[1..message.iter().position(|b| *b == b']').expect("pid")])
                .expect("utf8")
                .parse()
                .expect("pid");
        let mut text = Vec::with_capacity(message.len());
        for line in message.split_inclusive(|b| *b == b'\n') {
            let strip = format!("[{pid}] ");
            text.extend_from_slice(line.strip_prefix(strip.as_bytes()).unwrap_or(line));
        }
        let seq = seqs.entry(pid).or_default();
        *seq += 1;
        for (chunk, piece) in write_syslog_pieces(&text).iter().enumerate() {
            let mut line = format!(
                "Nov 28 23:59:01 testhost postgres[{pid}]: [{}-{}] ",
                seq,
                chunk + 1
            )
            .into_bytes();
            for &b in piece {
                if b < 0x20 || b == 0x7f {
                    line.extend_from_slice(format!("#{b:03o}").as_bytes());
                } else {
                    line.push(b);
                }
            }
            line.push(b'\n');
            syslog.extend_from_slice(&line);
        }
    }
    std::fs::write(out, syslog).expect("write syslog file");
}

/// The pieces `write_syslog` sends for one message (its split path: every message ends in a
/// newline, so it is always taken).
fn write_syslog_pieces(message: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut line = message;
    while !line.is_empty() {
        if line[0] == b'\n' {
            line = &line[1..];
            continue;
        }
        let nl = line.iter().position(|b| *b == b'\n');
        let mut buflen = nl.unwrap_or(line.len()).min(PG_SYSLOG_LIMIT);
        // pg_mbcliplen: back to a character boundary (UTF-8).
        while buflen > 0 && buflen < line.len() && (line[buflen] & 0xC0) == 0x80 {
            buflen -= 1;
        }
        if buflen == 0 {
            break;
        }
        if buflen < line.len() && !line[buflen].is_ascii_whitespace() {
            let mut i = buflen - 1;
            while i > 0 && !line[i].is_ascii_whitespace() {
                i -= 1;
            }
            if i > 0 {
                buflen = i;
            }
        }
        pieces.push(line[..buflen].to_vec());
        line = &line[buflen..];
    }
    pieces
}
