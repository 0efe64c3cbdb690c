//! EXPLAIN on demand (`[plans] explain = true`, `src/collect/plans/explain.rs`): a top statement
//! auto_explain never logged gets a plan with `source: "explain"` on PostgreSQL 16+; a DO block is
//! refused; a function with side effects called through SELECT is only planned, never run. On
//! 13-15 nothing is explained and the agent says why once.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::child::AgentChild;
use support::collect::validate;
use support::listener::Listener;
use support::PgServer;

fn records(listener: &Listener, kind: &str) -> Vec<(String, Value)> {
    listener
        .bodies_of_type(kind)
        .iter()
        .flat_map(|b| {
            let at = b["collected_at"].as_str().unwrap_or("").to_string();
            b["data"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |r| (at.clone(), r))
        })
        .collect()
}

fn statement(listener: &Listener, text: &str) -> Option<(String, Value)> {
    records(listener, "pg_statements")
        .into_iter()
        .find(|(_, r)| r["query"].as_str().is_some_and(|q| q.contains(text)))
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

#[test]
fn top_statements_get_a_generic_plan_and_nothing_is_executed() {
    let server = PgServer::start();
    let major = server.major();
    for sql in [
        "CREATE TABLE explain_t (id int, v int)",
        "INSERT INTO explain_t SELECT g, g % 1000 FROM generate_series(1, 20000) g",
        "CREATE INDEX explain_t_v ON explain_t (v)",
        "ANALYZE explain_t",
        "CREATE TABLE side_log (a int)",
        "CREATE FUNCTION side_effect() RETURNS int LANGUAGE plpgsql VOLATILE AS \
         $$ BEGIN INSERT INTO side_log VALUES (1); RETURN 1; END $$",
    ] {
        server.psql("postgres", sql);
    }
    let listener = Listener::start();
    let state = tempfile::tempdir().unwrap();
    let ini = server.agent_ini(
        state.path(),
        &format!(
            "[agent]\ncollection_interval_s = 2\n[listener]\nprotocol = batch\nurl = {}\n\
             [logs]\nenabled = false\n[plans]\nexplain = true\nexplain_per_cycle = 10\n",
            listener.url()
        ),
    );
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    // The first cycle makes the statement baseline; the workload runs after it.
    wait_for("the first pg_statements batch", &agent, || {
        (!listener.bodies_of_type("pg_statements").is_empty()).then_some(())
    });
    for _ in 0..3 {
        server.psql("postgres", "SELECT count(*) FROM explain_t WHERE v = 42");
        server.psql("postgres", "SELECT side_effect()");
        server.psql(
            "postgres",
            "DO $$ BEGIN PERFORM count(*) FROM explain_t; END $$",
        );
    }
    assert_eq!(
        server.psql("postgres", "SELECT count(*) FROM side_log"),
        "3"
    );
    let (count_at, count) = wait_for("the count statement's record", &agent, || {
        statement(&listener, "FROM explain_t WHERE v =")
    });
    let (_, side) = wait_for("the side_effect statement's record", &agent, || {
        statement(&listener, "side_effect()")
    });
    let (_, block) = wait_for("the DO block's record", &agent, || {
        statement(&listener, "DO ")
    });
    let explained = |fp: &Value| {
        records(&listener, "pg_plans")
            .into_iter()
            .find(|(_, r)| r["source"] == "explain" && r["fingerprint"] == *fp)
    };
    if major >= 16 {
        let (plan_at, plan) = wait_for("the EXPLAIN plan", &agent, || {
            explained(&count["fingerprint"])
        });
        // Explained within two cycles (2 s each) of the one that first reported the statement.
        let secs = |t: &str| postgres_agent::clock::unix_seconds(t).unwrap();
        let after = secs(&plan_at) - secs(&count_at);
        assert!((0.0..4.0).contains(&after), "{plan_at} vs {count_at}");
        assert_eq!(plan["queryid"], count["queryid"]);
        let types = pga_logparse::plan::node_types(&plan["plan"]);
        assert!(types.iter().any(|t| t.contains("Index")), "{types:?}");
        // The function was planned, never run.
        wait_for("the side_effect plan", &agent, || {
            explained(&side["fingerprint"])
        });
        assert_eq!(
            server.psql("postgres", "SELECT count(*) FROM side_log"),
            "3"
        );
        let with_time = listener
            .bodies_of_type("pg_plans")
            .into_iter()
            .find(|b| b["explain_ms"].is_number())
            .expect("a pg_plans batch with explain_ms");
        println!(
            "EXPLAIN server round trips this cycle: {} ms",
            with_time["explain_ms"]
        );
        for b in listener.bodies_of_type("pg_plans") {
            validate(&b);
        }
    } else {
        agent.wait_for_line(Duration::from_secs(30), "the 16+ notice", |l| {
            l.contains("plans.explain needs PostgreSQL 16")
        });
        assert!(explained(&count["fingerprint"]).is_none());
    }
    // The DO block is never planned (refused before it reaches the server).
    assert!(explained(&block["fingerprint"]).is_none());
    assert_eq!(
        server.psql("postgres", "SELECT count(*) FROM side_log"),
        "3"
    );
}
