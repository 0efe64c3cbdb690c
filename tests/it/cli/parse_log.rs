//! `postgres-agent parse-log`, the real binary, on logs a real server wrote: format and prefix
//! detection, stdin, and clear errors.

use crate::support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::logs::{log_files, psql_lenient, start_logging_server};

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON entry per line"))
        .collect()
}

fn sorted(v: &[Value]) -> Vec<String> {
    let mut s: Vec<String> = v.iter().map(Value::to_string).collect();
    s.sort();
    s
}

#[test]
fn parse_log_detects_formats_and_prefix_and_reads_stdin() {
    let server = start_logging_server("%m [%p] %q%u@%d ", "UTC");
    let db = server.conn_str("postgres");
    psql_lenient(&server, &db, "select 1/0", &[]);
    psql_lenient(
        &server,
        &db,
        "select 'multi\nline ✓' /* correlation_id='req-42' */",
        &[],
    );
    server.stop();
    let json = log_files(&server, "json").remove(0);
    let csv = log_files(&server, "csv").remove(0);
    let stderr = log_files(&server, "log").remove(0);
    let run = |args: &[&str]| support::agent(args, &[]);

    let from_json = run(&["parse-log", json.to_str().unwrap()]);
    assert!(from_json.status.success());
    let from_json = lines(&from_json.stdout);
    assert!(from_json.len() > 10);
    assert!(from_json.iter().any(|e| e["event"] == "data_exception"));
    assert!(from_json.iter().any(|e| e["correlation"]["id"] == "req-42"));

    let from_csv = run(&["parse-log", csv.to_str().unwrap()]);
    assert!(from_csv.status.success());
    assert_eq!(sorted(&lines(&from_csv.stdout)), sorted(&from_json));

    // stderr without --prefix: the Debian prefix is detected.
    let out = run(&["parse-log", stderr.to_str().unwrap()]);
    assert!(out.status.success());
    let from_stderr = lines(&out.stdout);
    assert_eq!(from_stderr.len(), from_json.len());
    assert!(from_stderr
        .iter()
        .all(|e| !e["error_severity"].is_null() && e["pid"].is_i64()));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(&format!("{} entries, 0 unparsed", from_json.len())),
        "{summary}"
    );

    // stdin, explicit format and prefix.
    let mut child = Command::new(env!("CARGO_BIN_EXE_postgres-agent"))
        .args([
            "parse-log",
            "--format",
            "stderr",
            "--prefix",
            "%m [%p] %q%u@%d ",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let data = std::fs::read(&stderr).expect("read log");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&data)
        .expect("write stdin");
    let piped = child.wait_with_output().expect("wait");
    assert!(piped.status.success());
    assert_eq!(lines(&piped.stdout), from_stderr);
}

#[test]
fn parse_log_errors_name_what_was_wrong() {
    let out = support::agent(&["parse-log", "/nonexistent/postgresql.log"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/postgresql.log") && err.contains("cannot read"),
        "{err}"
    );
    let out = support::agent(&["parse-log", "--format", "xml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
}

#[test]
fn parse_log_keeps_unparsable_lines_and_counts_them() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("mixed.log");
    std::fs::write(
        &path,
        "2026-11-27 03:05:14.907 UTC [7] LOG:  checkpoint starting: time\nrandom noise from archive_command\n",
    )
    .expect("write");
    let out = support::agent(
        &["parse-log", "--prefix", "%m [%p] ", path.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success());
    let entries = lines(&out.stdout);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["event"], "checkpoint_starting");
    assert!(entries[1]["error_severity"].is_null());
    assert_eq!(entries[1]["message"], "random noise from archive_command");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 unparsed lines"));
}

/// Issue 13: a log written with Amazon RDS's prefix parsed nothing. Every entry must parse, with
/// the prefix given and without it (inferred, and said so on stderr).
#[test]
fn parse_log_reads_amazon_rds_logs_with_and_without_prefix() {
    const RDS: &str = "%t:%r:%u@%d:[%p]:";
    let server = start_logging_server(RDS, "UTC");
    let db = server.conn_str("postgres");
    psql_lenient(&server, &db, "select 1/0", &[]);
    let tcp = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        server.port
    );
    psql_lenient(&server, &tcp, "select 'over tcp'", &[]);
    server.stop();
    let json = log_files(&server, "json").remove(0);
    let stderr = log_files(&server, "log").remove(0);
    let run = |args: &[&str]| support::agent(args, &[]);
    let from_json = lines(&run(&["parse-log", json.to_str().unwrap()]).stdout);
    assert!(from_json.len() > 10);
    for args in [
        vec!["parse-log", "--prefix", RDS, stderr.to_str().unwrap()],
        vec!["parse-log", stderr.to_str().unwrap()],
    ] {
        let out = run(&args);
        assert!(out.status.success());
        let entries = lines(&out.stdout);
        let summary = String::from_utf8_lossy(&out.stderr);
        assert_eq!(entries.len(), from_json.len(), "{summary}");
        assert!(
            summary.contains(&format!("{} entries, 0 unparsed", from_json.len())),
            "{summary}"
        );
        assert!(entries.iter().any(|e| e["remote_host"] == "[local]"));
        assert!(entries
            .iter()
            .any(|e| e["remote_host"] == "127.0.0.1" && e["remote_port"].is_u64()));
        if args.len() == 2 {
            assert!(
                summary.contains(&format!("inferred log_line_prefix '{RDS}'")),
                "{summary}"
            );
        }
    }
}
