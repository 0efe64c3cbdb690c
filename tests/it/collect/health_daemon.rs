//! Server and table health (issue 24) through the real daemon: the four kinds shipped to the
//! Bitville listener, and one warning per refused or missing view over many cycles.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;

use super::health::{watch_sessions, HEALTH};
use serde_json::Value;
use support::bitville::BitvilleListener;
use support::child::AgentChild;
use support::collect::validate;
use support::PgServer;

/// The real daemon with the Bitville listener: the four kinds arrive as `system_metrics` payloads
/// the listener's schema accepts, the table pass covers the unconfigured database, and the agent
/// holds at most two sessions.
#[test]
fn the_daemon_ships_the_health_kinds_to_the_bitville_listener() {
    const KEY: &str = "k-health";
    let server = PgServer::start();
    server.psql("postgres", "CREATE DATABASE other");
    server.psql("other", "CREATE TABLE far_away (id int)");
    let listener = BitvilleListener::start(&[(KEY, "shop")], 100);
    let state = tempfile::tempdir().unwrap();
    let ini = server.agent_ini(
        state.path(),
        &format!(
            "[agent]\nproject_id = shop\ncollection_interval_s = 5\n[listener]\nurl = {}\n\
             api_key = {KEY}\n[logs]\nenabled = false\n[activity]\nsample_interval_ms = 0\n\
             {HEALTH}",
            listener.url()
        ),
    );
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    watch_sessions(&server, stop.clone(), most.clone());
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    let of_type = |kind: &str| -> Vec<Value> {
        listener
            .rows()
            .into_iter()
            .filter(|r| r.payload["data"]["type"] == kind)
            .map(|r| r.payload)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    // Two of each per-cycle kind: the second has deltas.
    while of_type("pg_database").len() < 2
        || of_type("pg_server_health").len() < 2
        || of_type("pg_tables").is_empty()
        || of_type("pg_settings").is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "rows: {:?}\nfailures: {:?}\n{}",
            listener
                .rows()
                .iter()
                .map(|r| r.payload["data"]["type"].clone())
                .collect::<Vec<_>>(),
            listener.failures(),
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (kind, list) in [
        ("pg_database", "databases"),
        ("pg_server_health", "sections"),
        ("pg_tables", "tables"),
        ("pg_settings", "settings"),
    ] {
        let p = &of_type(kind)[0];
        assert_eq!(p["source"], "system_metrics", "{p}");
        assert!(
            p["data"][list].as_array().is_some_and(|l| !l.is_empty()),
            "{kind}: {p}"
        );
    }
    let tables = &of_type("pg_tables")[0]["data"];
    assert!(
        tables["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["datname"] == "other" && t["relname"] == "far_away"),
        "{tables}"
    );
    assert!(listener.failures().is_empty(), "{:?}", listener.failures());
    agent.terminate_within(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let most = most.load(Ordering::Relaxed);
    assert!(
        (1..=2).contains(&most),
        "the agent held {most} sessions at once"
    );
}

/// A view the role may not read and a view the server does not have (dropped, as some managed
/// services hide views): one warning each over many cycles, and the rest of every cycle's data.
#[test]
fn a_refused_view_and_a_missing_view_give_one_warning_each_and_the_rest() {
    let server = PgServer::start();
    server.psql(
        "postgres",
        "CREATE ROLE limited LOGIN; GRANT pg_read_all_stats TO limited; \
         REVOKE SELECT ON pg_catalog.pg_stat_progress_vacuum FROM PUBLIC; \
         SET allow_system_table_mods = on; DROP VIEW pg_catalog.pg_stat_progress_cluster",
    );
    let state = tempfile::tempdir().unwrap();
    let ini = server.agent_ini(
        state.path(),
        &format!(
            "[agent]\ncollection_interval_s = 1\n[postgres]\nuser = limited\n[logs]\nenabled = false\n\
             [activity]\nsample_interval_ms = 0\n{HEALTH}"
        ),
    );
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    let health = |agent: &AgentChild| -> Vec<Value> {
        agent
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|b| b["type"] == "pg_server_health")
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while health(&agent).len() < 4 {
        assert!(Instant::now() < deadline, "{}", agent.stderr_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.terminate_within(Duration::from_secs(10));
    let stderr = agent.stderr_text();
    let warnings = |section: &str| {
        stderr
            .lines()
            .filter(|l| l.contains("cannot read this section") && l.contains(section))
            .count()
    };
    assert_eq!(warnings("\"progress_vacuum\""), 1, "{stderr}");
    assert_eq!(warnings("\"progress_cluster\""), 1, "{stderr}");
    for b in health(&agent) {
        validate(&b);
        let sections: Vec<&str> = b["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["section"].as_str().unwrap())
            .collect();
        assert!(sections.contains(&"bgwriter"), "{sections:?}");
        assert!(sections.contains(&"checkpointer"), "{sections:?}");
    }
    let databases = agent
        .stdout_lines()
        .iter()
        .filter(|l| l.contains("\"type\":\"pg_database\""))
        .count();
    assert!(databases >= 4, "{databases}");
}
