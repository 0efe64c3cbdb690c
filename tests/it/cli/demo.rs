//! `postgres-agent demo` run headless (issue 25): on a pipe it prints JSON lines, and within a
//! generous deadline every kind of data shows (activity, statements with deltas, locks with a waiter,
//! a server-log entry, a spike snapshot, correlation IDs of both Bitville styles as UUIDs); SIGTERM
//! stops it with exit 0 and leaves no server process and no directory behind.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::child::AgentChild;

/// The batches printed so far.
fn batches(child: &AgentChild) -> Vec<Value> {
    child
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// What is still missing from `batches`, by name.
fn missing(batches: &[Value]) -> Vec<&'static str> {
    let of = |kind: &'static str| batches.iter().filter(move |b| b["type"] == kind);
    let has_rows =
        |kind: &'static str| of(kind).any(|b| b["data"].as_array().is_some_and(|d| !d.is_empty()));
    let text = batches.iter().map(Value::to_string).collect::<String>();
    let mut out = Vec::new();
    for kind in ["pg_activity", "pg_statements", "locks", "pg_logs", "spike"] {
        if !has_rows(kind) {
            out.push(kind);
        }
    }
    // Both correlation styles, each a UUID: a session tagged by application_name, and a statement
    // tagged by a comment.
    let by_app = of("pg_activity").chain(of("spike")).any(|b| {
        b["data"].as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["application_name"]
                    .as_str()
                    .and_then(|a| a.strip_prefix("bitville-"))
                    .is_some_and(|id| is_uuid(id) && r["correlation"]["id"] == id)
            })
        })
    });
    if !by_app {
        out.push("correlation by application_name");
    }
    if !text.contains("/* correlation:") {
        out.push("correlation by comment");
    }
    out
}

#[test]
fn the_demo_shows_every_kind_of_data_and_leaves_nothing_behind() {
    let mut child = AgentChild::spawn(&["demo"], &[]);
    let started = child.wait_for_line(Duration::from_secs(90), "the demo server", |l| {
        l.contains("postgres-agent demo: PostgreSQL") && l.contains("data in ")
    });
    let dir = started
        .rsplit("data in ")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let pid: i32 = started
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {started:?}"));
    assert!(std::path::Path::new(&dir).is_dir(), "{dir}");

    // The issue asks for a minute on an idle machine; CI is a loaded 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let left = missing(&batches(&child));
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still missing {left:?}; stderr:\n{}",
            child.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    child.signal("TERM");
    let (status, _) = child.wait_exit(Duration::from_secs(60));
    let stderr = child.stderr_text();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("removed"), "{stderr}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    assert!(!running(pid), "the demo server (pid {pid}) still runs");
}

/// Whether `pid` is a live process (a zombie waiting for its new parent to reap it is not).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
