//! Plans tied to their statements and plan changes (issue 23, `src/collect/plans`), end to end: a
//! real server with auto_explain, the real daemon, the in-process listener (batch protocol).

use crate::support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::child::AgentChild;
use support::collect::validate;
use support::listener::Listener;
use support::{PgOptions, PgServer};

const LITERAL: &str = "918273645";
const QUERY: &str = "SELECT count(*) FROM plan_t WHERE v = 918273645";

/// Every string value anywhere in `v`, with its object keys.
fn all_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn wait_for<T>(what: &str, agent: &AgentChild, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn records(listener: &Listener, kind: &str) -> Vec<Value> {
    listener
        .bodies_of_type(kind)
        .iter()
        .filter_map(|b| b["data"].as_array().cloned())
        .flatten()
        .collect()
}

/// A server with auto_explain logging every statement of the database `plan_app` (text format),
/// and its table `plan_t` (20,000 rows, no index yet).
fn server_with_auto_explain() -> PgServer {
    let server = PgServer::start_with(PgOptions {
        conf: vec![
            "shared_preload_libraries = 'pg_stat_statements,auto_explain'".into(),
            "log_line_prefix = '%m [%p] %q%u@%d %Q '".into(),
        ],
        ..Default::default()
    });
    // auto_explain only in the application's database: the agent's own statements stay out.
    server.psql("postgres", "CREATE DATABASE plan_app");
    for sql in [
        "ALTER DATABASE plan_app SET auto_explain.log_min_duration = 0",
        "ALTER DATABASE plan_app SET auto_explain.log_verbose = on",
        "ALTER DATABASE plan_app SET auto_explain.log_format = 'text'",
    ] {
        server.psql("postgres", sql);
    }
    // Autovacuum off for it: a VACUUM after the insert changes relallvisible and with it the
    // choice between an index and a bitmap scan mid-test, a third plan the test did not make.
    server.psql(
        "plan_app",
        "CREATE TABLE plan_t (id int, v int) WITH (autovacuum_enabled = off)",
    );
    server.psql(
        "plan_app",
        "INSERT INTO plan_t SELECT g, g % 1000 FROM generate_series(1, 20000) g",
    );
    server.psql("plan_app", "ANALYZE plan_t");

    server
}

/// The daemon for `server`, shipping to `listener` every 2 s with `extra` settings.
fn start_agent(
    server: &PgServer,
    listener: &Listener,
    state: &std::path::Path,
    extra: &str,
) -> AgentChild {
    let ini = server.agent_ini(
        state,
        &format!(
            "[agent]\ncollection_interval_s = 2\n[listener]\nprotocol = batch\nurl = {}\n{extra}",
            listener.url()
        ),
    );
    let path = state.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    agent.wait_for_line(Duration::from_secs(60), "the log task", |l| {
        l.contains("following the server log")
    });
    agent
}

/// The done-when of issue 23: a statement run before and after CREATE INDEX, logged by auto_explain
/// in text then JSON format, reaches the listener as two plan records (a seq scan, then a bitmap or
/// index scan) with the fingerprint and queryid of its pg_statements record, and one change record
/// from the first plan_id to the second; the literal appears nowhere in anything received.
#[test]
fn a_plan_change_after_create_index_reaches_the_listener_joined_to_its_statement() {
    let server = server_with_auto_explain();
    let major = server.major();
    let listener = Listener::start();
    let state = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &server,
        &listener,
        state.path(),
        "[activity]\nsample_interval_ms = 200\n\
         [spikes]\nactive_sessions = 1\nload = 100000\nlock_wait_ms = 0\nmin_gap_s = 3\n",
    );

    // Before the index, in text format then JSON: one plan (the same plan_id in both formats).
    server.psql("plan_app", QUERY);
    server.psql(
        "postgres",
        "ALTER DATABASE plan_app SET auto_explain.log_format = 'json'",
    );
    server.psql("plan_app", QUERY);
    let seq = wait_for("the seq scan plan", &agent, || {
        records(&listener, "pg_plans")
            .into_iter()
            .find(|r| r["record_type"] == "plan")
    });
    server.psql("plan_app", "CREATE INDEX plan_t_v ON plan_t (v)");
    server.psql("plan_app", "ANALYZE plan_t");
    // After it, in JSON format then text.
    server.psql("plan_app", QUERY);
    server.psql(
        "postgres",
        "ALTER DATABASE plan_app SET auto_explain.log_format = 'text'",
    );
    server.psql("plan_app", QUERY);

    let change = wait_for("the plan change", &agent, || {
        records(&listener, "pg_plans")
            .into_iter()
            .find(|r| r["record_type"] == "plan_change")
    });
    let fingerprint = seq["fingerprint"].as_str().unwrap().to_string();
    // The statement's pg_statements record (texts of new statements are read every cycle).
    let statement = wait_for("the pg_statements record", &agent, || {
        records(&listener, "pg_statements").into_iter().find(|r| {
            r["query"]
                .as_str()
                .is_some_and(|q| q.contains("FROM plan_t WHERE v ="))
        })
    });
    assert_eq!(
        statement["fingerprint"],
        fingerprint.as_str(),
        "{statement}"
    );

    let plans: Vec<Value> = records(&listener, "pg_plans")
        .into_iter()
        .filter(|r| r["record_type"] == "plan" && r["fingerprint"] == fingerprint.as_str())
        .collect();
    let ids: std::collections::BTreeSet<&str> =
        plans.iter().filter_map(|p| p["plan_id"].as_str()).collect();
    assert_eq!(
        ids.len(),
        2,
        "two plans, one per side of the index: {plans:#?}"
    );
    let with_tree: Vec<&Value> = plans.iter().filter(|p| p["plan"].is_object()).collect();
    assert_eq!(with_tree.len(), 2, "each tree sent once: {plans:#?}");
    let types = |p: &Value| pga_logparse::plan::node_types(&p["plan"]);
    assert!(
        types(with_tree[0]).contains(&"Seq Scan".to_string()),
        "{:?}",
        types(with_tree[0])
    );
    let after = types(with_tree[1]);
    assert!(
        after.iter().any(|t| t.contains("Index")),
        "an index or bitmap scan after CREATE INDEX: {after:?}"
    );
    assert_eq!(change["fingerprint"], fingerprint.as_str());
    assert_eq!(change["previous_plan_id"], with_tree[0]["plan_id"]);
    assert_eq!(change["plan_id"], with_tree[1]["plan_id"]);
    assert_eq!(
        records(&listener, "pg_plans")
            .iter()
            .filter(|r| r["record_type"] == "plan_change")
            .count(),
        1,
        "text and JSON of one plan are one plan_id: one change only"
    );
    // queryid: where the server computes one (14+), exactly as pg_statements has it.
    if major >= 14 {
        for p in &plans {
            assert_eq!(p["queryid"], statement["queryid"], "{p}");
        }
        assert_eq!(change["queryid"], statement["queryid"]);
    }
    for b in listener.bodies_of_type("pg_plans") {
        validate(&b);
    }
    validate(
        &listener
            .bodies_of_type("pg_statements")
            .into_iter()
            .next()
            .unwrap(),
    );

    // A spike while the statement runs (blocked behind a lock) lists its current plan.
    let current = with_tree[1]["plan_id"].as_str().unwrap().to_string();
    std::thread::scope(|s| {
        s.spawn(|| {
            server.psql(
                "plan_app",
                "BEGIN; LOCK plan_t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(8); COMMIT",
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        s.spawn(|| server.psql("plan_app", QUERY));
        let spike = wait_for("a spike listing the statement's plan", &agent, || {
            listener
                .bodies_of_type("spike")
                .into_iter()
                .find(|b| b["plans"].get(fingerprint.as_str()).is_some())
        });
        assert_eq!(spike["plans"][fingerprint.as_str()], current.as_str());
        validate(&spike);
    });

    // The literal appears nowhere in anything the listener received.
    for r in listener.received() {
        let text = all_text(&r.body);
        assert!(
            !text.contains(LITERAL),
            "{LITERAL} left the host in {}: {text}",
            r.body["type"]
        );
    }
    drop(agent);
}

/// The plan store survives a restart (`plans.json` under the state directory): a plan seen before
/// the agent stopped and another one logged while it was down make a change record after it
/// starts again, and times_seen goes on counting.
#[test]
fn the_plan_store_survives_a_restart() {
    let server = server_with_auto_explain();
    let listener = Listener::start();
    let state = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&server, &listener, state.path(), "");
    server.psql("plan_app", QUERY);
    let seq = wait_for("the seq scan plan", &agent, || {
        records(&listener, "pg_plans")
            .into_iter()
            .find(|r| r["record_type"] == "plan")
    });
    wait_for("plans.json", &agent, || {
        state.path().join("plans.json").exists().then_some(())
    });
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(30));
    server.psql("plan_app", "CREATE INDEX plan_t_v ON plan_t (v)");
    server.psql("plan_app", "ANALYZE plan_t");
    server.psql("plan_app", QUERY);
    let agent = start_agent(&server, &listener, state.path(), "");
    let change = wait_for("the change after the restart", &agent, || {
        records(&listener, "pg_plans")
            .into_iter()
            .find(|r| r["record_type"] == "plan_change")
    });
    assert_eq!(change["previous_plan_id"], seq["plan_id"]);
    assert_ne!(change["plan_id"], seq["plan_id"]);
    assert_eq!(change["fingerprint"], seq["fingerprint"]);
    // The seq scan plan's executions before the restart are kept in the change's figures.
    assert_eq!(change["previous_duration_ms_mean"], seq["duration_ms_mean"]);
    drop(agent);
}
