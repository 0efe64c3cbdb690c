//! The three-format oracle: a real server writes stderr, csvlog and jsonlog at once while a workload
//! makes it log every kind of entry; the entries parsed from the stderr and csv files must equal the
//! entries parsed from the jsonlog file, as multisets (the logging collector may interleave
//! concurrent processes differently per destination), on every field each format carries.

use crate::support;

use std::collections::BTreeMap;

use postgres_agent::log_format::LogFormat;
use postgres_agent::logs::classify::sqlstate_class;
use postgres_agent::logs::parse::{infer_prefix, infer_prefix_for};
use serde_json::{Map, Value};
use support::logs::{log_files, parse_file, start_logging_server, stderr_to_syslog, workload};

/// Which jsonlog keys a `log_line_prefix` carries, split at `%q` (keys after it are only written for
/// processes with a session).
fn carried(prefix: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    let (before, after) = prefix.split_once("%q").unwrap_or((prefix, ""));
    let keys = |p: &str| {
        let mut k = Vec::new();
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                continue;
            }
            while chars
                .peek()
                .is_some_and(|c| *c == '-' || c.is_ascii_digit())
            {
                chars.next();
            }
            match chars.next() {
                Some('a') => k.push("application_name"),
                Some('u') => k.push("user"),
                Some('d') => k.push("dbname"),
                Some('r') => k.extend(["remote_host", "remote_port"]),
                Some('h') => k.push("remote_host"),
                Some('b') => k.push("backend_type"),
                Some('p') => k.push("pid"),
                Some('P') => k.push("leader_pid"),
                Some('t' | 'm' | 'n') => k.push("timestamp"),
                Some('i') => k.push("ps"),
                Some('e') => k.push("state_code"),
                Some('c') => k.push("session_id"),
                Some('s') => k.push("session_start"),
                Some('v') => k.push("vxid"),
                Some('x') => k.push("txid"),
                Some('Q') => k.push("query_id"),
                _ => {}
            }
        }
        k
    };
    (keys(before), keys(after))
}

/// Keys every stderr entry carries whatever the prefix: the message and its auxiliary lines, and
/// everything derived from them.
const STDERR_BODY: &[&str] = &[
    "error_severity",
    "message",
    "detail",
    "hint",
    "internal_query",
    "internal_position",
    "context",
    "statement",
    "cursor_position",
    "func_name",
    "file_name",
    "file_line_num",
    "event",
    "duration_ms",
    "correlation",
    "fingerprint",
    "extracted",
    "truncated",
];

/// What the stderr parser should produce for a jsonlog entry under `prefix`.
fn stderr_view(json: &Value, prefix: &str) -> Value {
    let (before, after) = carried(prefix);
    let obj = json.as_object().expect("entry object");
    // jsonlog writes `ps` exactly for processes with a session (MyProcPort).
    let has_session = obj.contains_key("ps");
    let mut out = Map::new();
    // With log_error_verbosity = verbose, stderr writes the SQLSTATE before the message.
    let verbose = obj.contains_key("func_name");
    for (k, v) in obj {
        let k_ = k.as_str();
        // These escapes print only for processes with a session, whatever jsonlog writes (a
        // parallel worker has the leader's application_name but no session).
        let needs_session = matches!(
            k_,
            "application_name" | "user" | "dbname" | "remote_host" | "remote_port" | "ps"
        );
        let keep = STDERR_BODY.contains(&k_)
            || (verbose && k_ == "state_code")
            || (before.contains(&k_) && (has_session || !needs_session))
            || (has_session && after.contains(&k_));
        // An empty ps display prints nothing, like an absent one.
        if keep && !(k == "ps" && v == "") {
            out.insert(k.clone(), v.clone());
        }
    }
    // Without %e stderr has no SQLSTATE, so an error no message rule recognises is just `error`.
    if !verbose && !before.contains(&"state_code") && !after.contains(&"state_code") {
        if let Some(code) = obj.get("state_code").and_then(Value::as_str) {
            if obj.get("event").and_then(Value::as_str) == Some(sqlstate_class(code)) {
                out.insert("event".into(), "error".into());
            }
        }
    }
    if whole_seconds(prefix) {
        // %t has whole seconds.
        if let Some(Value::String(ts)) = out.get_mut("timestamp") {
            ts.replace_range(20..23, "000");
        }
    }
    Value::Object(out)
}

fn sorted(values: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut v: Vec<String> = values.into_iter().map(|v| v.to_string()).collect();
    v.sort();
    v
}

fn assert_same(label: &str, expected: Vec<String>, actual: Vec<String>) {
    if expected == actual {
        return;
    }
    let mut counts: BTreeMap<&String, i64> = BTreeMap::new();
    for e in &expected {
        *counts.entry(e).or_default() += 1;
    }
    for a in &actual {
        *counts.entry(a).or_default() -= 1;
    }
    let diff: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n != 0)
        .take(10)
        .map(|(k, n)| format!("{} {k}", if *n > 0 { "missing:" } else { "extra:  " }))
        .collect();
    panic!(
        "{label}: {} expected vs {} parsed entries differ:\n{}",
        expected.len(),
        actual.len(),
        diff.join("\n")
    );
}

/// The oracle, then prefix inference on the stderr file the server wrote: it must pick `prefix`.
fn corpus(prefix: &str, timezone: &str) {
    let sample = oracle(prefix, timezone);
    let inferred = infer_prefix(&sample);
    assert_eq!(inferred.prefix, prefix, "inferred {inferred}");
}

/// Returns the first 64 KiB of the stderr file.
fn oracle(prefix: &str, timezone: &str) -> Vec<u8> {
    let started = std::time::SystemTime::now();
    let server = start_logging_server(prefix, timezone);
    workload(&server);
    server.stop();
    let one = |ext: &str| {
        let files = log_files(&server, ext);
        assert_eq!(files.len(), 1, "one {ext} file expected: {files:?}");
        files[0].clone()
    };
    let json = parse_file(&one("json"), LogFormat::Jsonlog, "");
    let csv = parse_file(&one("csv"), LogFormat::Csvlog, "");
    let stderr = parse_file(&one("log"), LogFormat::Stderr, prefix);

    // The corpus covers what it claims to.
    let events: Vec<&str> = json.iter().filter_map(|e| e["event"].as_str()).collect();
    for needed in [
        "connection_received",
        "connection_authorized",
        "disconnection",
        "statement_duration",
        "statement",
        "data_exception",
        "syntax_error_or_access_rule_violation",
        "deadlock_detected",
        "lock_waiting",
        "lock_acquired",
        "temp_file_created",
        "auth_failed",
        "autovacuum_completed",
        "autoanalyze_completed",
        "checkpoint_starting",
        "checkpoint_complete",
        "auto_explain",
        "statement_canceled",
        "server_start",
        "server_shutdown",
    ] {
        assert!(events.contains(&needed), "no {needed} entry in {events:?}");
    }
    assert!(
        json.iter().all(|e| !e["error_severity"].is_null()),
        "unparsed jsonlog line"
    );
    assert!(json
        .iter()
        .any(|e| e["message"].as_str().unwrap_or("").contains("😀")));
    assert!(
        json.iter().any(|e| e.get("leader_pid").is_some()),
        "no parallel worker entry"
    );
    assert!(
        json.iter().any(|e| e.get("func_name").is_some()),
        "no verbose entry"
    );
    assert!(json.iter().any(|e| e.get("internal_query").is_some()));
    // Every shape of client address: a Unix socket, IPv4 and IPv6 with ports.
    for host in ["[local]", "127.0.0.1", "::1"] {
        assert!(
            json.iter().any(|e| e["remote_host"] == host),
            "no entry from {host}"
        );
    }
    assert!(json
        .iter()
        .any(|e| e["application_name"] == "app: [1], x,client=y @z"));
    assert!(json
        .iter()
        .any(|e| e["extracted"]["plan"]["Plan"].is_object()));
    // Timestamps were converted from log_timezone to UTC correctly.
    let since = |ts: &str| {
        let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .expect("rfc3339");
        (t - time::OffsetDateTime::from(started)).whole_seconds()
    };
    for e in &json {
        let s = since(e["timestamp"].as_str().expect("timestamp"));
        assert!((-2..600).contains(&s), "timestamp off by {s} s: {e}");
    }

    assert_same("csvlog vs jsonlog", sorted(json.clone()), sorted(csv));
    let mut expected: Vec<Value> = json.iter().map(|e| stderr_view(e, prefix)).collect();
    let mut parsed = stderr;
    if whole_seconds(prefix) {
        // PostgreSQL reads the clock again for %t (time(NULL), while building the stderr line)
        // before it takes the timestamp that jsonlog and csvlog share, so across a second boundary
        // the stderr second is one less than jsonlog's. Entries are compared without it; the
        // seconds are compared as sorted lists, each stderr second equal to jsonlog's or one less
        // (a per-entry bound that holds for the sorted order statistics too).
        let (want, got) = (take_seconds(&mut expected), take_seconds(&mut parsed));
        assert_eq!(want.len(), got.len(), "timestamps");
        for (j, s) in want.iter().zip(&got) {
            assert!(
                *s == *j || *s + 1 == *j,
                "stderr second {s} vs jsonlog second {j}"
            );
        }
    }
    assert_same(
        &format!("stderr ({prefix:?}) vs jsonlog"),
        sorted(expected),
        sorted(parsed),
    );
    let mut sample = std::fs::read(one("log")).expect("read the stderr log");
    sample.truncate(64 * 1024);
    sample
}

/// Whether the prefix's only timestamp is `%t`, in whole seconds.
fn whole_seconds(prefix: &str) -> bool {
    prefix.contains("%t") && !prefix.contains("%m") && !prefix.contains("%n")
}

/// Removes each entry's timestamp and returns them as sorted Unix seconds.
fn take_seconds(entries: &mut [Value]) -> Vec<i64> {
    let mut secs: Vec<i64> = entries
        .iter_mut()
        .filter_map(|e| e.as_object_mut()?.remove("timestamp"))
        .map(|t| {
            let t = t.as_str().expect("timestamp string");
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .expect("rfc3339")
                .unix_timestamp()
        })
        .collect();
    secs.sort_unstable();
    secs
}

// The corpus: prefixes people run, each from public documentation (docs/logs.md cites them). Each
// test also checks that prefix inference picks the prefix from the file alone.

#[test]
fn corpus_debian_ubuntu_default() {
    corpus("%m [%p] %q%u@%d ", "UTC");
}

#[test]
fn corpus_pgdg_rhel_default() {
    corpus("%m [%p] ", "UTC");
}

#[test]
fn corpus_amazon_rds_aurora() {
    corpus("%t:%r:%u@%d:[%p]:", "UTC");
}

#[test]
fn corpus_azure_flexible_server() {
    corpus("%t-%c-", "UTC");
}

#[test]
fn corpus_pgbadger_full() {
    corpus(
        "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
        "Europe/Berlin",
    );
}

#[test]
fn corpus_pgbadger_without_line_numbers() {
    corpus("%t [%p]: user=%u,db=%d,app=%a,client=%h ", "UTC");
}

#[test]
fn corpus_pgbadger_minimal_line_numbers() {
    corpus("%t [%p]: [%l-1] ", "UTC");
}

#[test]
fn corpus_session_and_transaction_ids() {
    corpus("%m [%p] %c %x %q%u@%d/%a ", "UTC");
}

#[test]
fn corpus_query_id() {
    corpus("%m [%p] %Q %q%u@%d ", "UTC");
}

#[test]
fn corpus_time_only() {
    corpus("%t ", "UTC");
}

#[test]
fn oracle_padded_prefix_with_numeric_offset() {
    oracle(
        "%n|%-10u|%-12d|%5p|%c|%e|%x|%-6v|%q%a|%r|%i|%Q|%b ",
        "America/Sao_Paulo",
    );
}

/// `%L` (the server's address: PostgreSQL 18 prints it, `[local]` for a Unix socket and `[none]`
/// without a client; older servers print nothing) next to `%r`, padded, and an application name in
/// brackets. Run with `PG_BINDIR` set to an 18 server to see real values.
#[test]
fn oracle_local_address_prefix() {
    oracle("%m [%p] %-12L|%r %q%u@%d [%a] ", "UTC");
}

#[test]
fn oracle_session_prefix() {
    oracle("[%s] %h %P %l %m %e: ", "UTC");
}

#[test]
fn oracle_empty_prefix() {
    oracle("", "UTC");
}

/// syslog (issue 13): the same events as rsyslog would have written them (see
/// `support::logs::stderr_to_syslog`), with pgBadger's syslog prefix, equal the jsonlog entries on
/// everything the prefix and the syslog header (the pid) carry; inference finds the prefix.
#[test]
fn syslog_equals_jsonlog() {
    const PREFIX: &str = "user=%u,db=%d,app=%a,client=%h ";
    let with_pid = format!("[%p] {PREFIX}");
    let server = start_logging_server(&with_pid, "UTC");
    workload(&server);
    server.stop();
    let json = parse_file(&log_files(&server, "json")[0], LogFormat::Jsonlog, "");
    let syslog = server.root.path().join("postgresql.syslog");
    stderr_to_syslog(&log_files(&server, "log")[0], PREFIX, &syslog);
    let text = std::fs::read_to_string(&syslog).expect("read syslog");
    // The file has what the framing must undo: pieces of split lines and escaped tabs.
    assert!(text.contains("-3] ") && text.contains("#011"));
    let parsed = parse_file(&syslog, LogFormat::Syslog, PREFIX);
    assert!(json.iter().any(|e| e["message"]
        .as_str()
        .is_some_and(|m| m.contains(&"x".repeat(1200)))));
    let expected: Vec<Value> = json.iter().map(|e| stderr_view(e, &with_pid)).collect();
    assert_same("syslog vs jsonlog", sorted(expected), sorted(parsed));
    let sample: Vec<u8> = text.bytes().take(64 * 1024).collect();
    assert_eq!(
        postgres_agent::logs::parse::detect_format(&sample),
        LogFormat::Syslog
    );
    assert_eq!(infer_prefix_for(LogFormat::Syslog, &sample).prefix, PREFIX);
}
