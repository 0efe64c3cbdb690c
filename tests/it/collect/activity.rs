//! pg_activity against a real server: live sessions with their state, waits and correlation tags from
//! each comment style; the agent's own sessions absent; the row bound counted; batches match the
//! schema.

use crate::support;

use postgres_agent::batch::BatchKind;
use postgres_agent::identity::APPLICATION_NAME;
use postgres_agent::telemetry::registry::{Counters, Event};
use serde_json::Value;
use support::collect::{batch, client, cycle, cycle_counted, pid, validate, wait_until};
use support::{agent_config, rt, PgServer};

fn record_of(batch: &Value, pid: i32) -> &Value {
    batch["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("no record for pid {pid} in {batch}"))
}

#[test]
fn live_sessions_carry_state_timing_and_correlation_from_each_comment_style() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        let watcher = client(&server, "postgres", "watcher").await;
        let statements = [
            (
                "sqlcommenter",
                "SELECT pg_sleep(60) /*route='%2Forders%2F42',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
            ),
            (
                "marginalia",
                "/*application:Shop,controller:orders,action:show,request_id:req-77*/ SELECT pg_sleep(60)",
            ),
            ("plain", "SELECT /* correlation_id=abc-123 */ pg_sleep(60)"),
        ];
        let idle_tx = client(&server, "postgres", "idle-tx").await;
        idle_tx.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let idle_tx_pid = pid(&idle_tx).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut pids = Vec::new();
        for (app, sql) in statements {
            let c = client(&server, "postgres", app).await;
            pids.push(pid(&c).await);
            tokio::spawn(async move {
                let _ = c.simple_query(sql).await;
                drop(c);
            });
        }
        wait_until(
            &watcher,
            "SELECT count(*) = 3 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' AND query LIKE '%pg_sleep(60)%'",
        )
        .await;

        let report = cycle(&config).await;
        assert!(report.all_ok(), "{:?}", report.runs);
        let b = serde_json::to_value(batch(&report, BatchKind::PgActivity)).unwrap();
        validate(&b);
        assert_eq!(b["type"], "pg_activity");
        assert_eq!(b["server"]["version_num"].as_i64().unwrap() / 10000, server.major() as i64);

        let sc = record_of(&b, pids[0]);
        assert_eq!(sc["application_name"], "sqlcommenter");
        assert_eq!(sc["state"], "active");
        assert_eq!(sc["wait_event"], "PgSleep");
        assert_eq!(sc["datname"], "postgres");
        assert!(sc["query_duration_ms"].as_f64().unwrap() >= 0.0);
        // Literals are masked by default; the sqlcommenter comment is kept.
        assert!(sc["query"].as_str().unwrap().contains("pg_sleep(?)"), "{sc}");
        assert!(sc["query"].as_str().unwrap().contains("traceparent="), "{sc}");
        assert_eq!(sc["fingerprint"].as_str().map(str::len), Some(16));
        assert_eq!(sc["correlation"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc["correlation"]["span_id"], "00f067aa0ba902b7");
        assert_eq!(sc["correlation"]["id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc["correlation"]["tags"]["route"], "/orders/42");

        let m = record_of(&b, pids[1]);
        assert_eq!(m["correlation"]["id"], "req-77");
        assert_eq!(m["correlation"]["tags"]["controller"], "orders");

        let p = record_of(&b, pids[2]);
        assert_eq!(p["correlation"]["id"], "abc-123");

        let tx = record_of(&b, idle_tx_pid);
        assert_eq!(tx["state"], "idle in transaction");
        assert!(tx["xact_duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(tx["xact_start"].as_str().unwrap().ends_with('Z'));
        assert!(tx["correlation"].is_null());
        if server.major() >= 14 {
            assert!(sc["query_id"].is_string(), "{sc}");
        } else {
            assert!(sc["query_id"].is_null());
        }
        assert!(b["with_correlation"].as_u64().unwrap() >= 3);
        assert_eq!(
            b["with_correlation"].as_u64().unwrap(),
            b["data"].as_array().unwrap().iter().filter(|r| !r["correlation"].is_null()).count() as u64
        );
        // Longest-running first: the transaction opened before the three sleeps comes first.
        let order: Vec<i64> = b["data"].as_array().unwrap().iter().map(|r| r["pid"].as_i64().unwrap()).collect();
        let pos = |p: i32| order.iter().position(|x| *x == p as i64).unwrap();
        assert!(pids.iter().all(|p| pos(idle_tx_pid) < pos(*p)), "{order:?}");
        // The agent's own sessions never appear.
        for r in b["data"].as_array().unwrap() {
            assert_ne!(r["application_name"], APPLICATION_NAME, "{r}");
            assert!(!r["query"].as_str().unwrap_or("").starts_with("/* postgres-agent */"), "{r}");
        }
    });
}

#[test]
fn long_texts_are_cut_and_flagged_and_the_row_bound_is_counted() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(
        &server,
        state.path(),
        "[safety]\nmax_query_length = 100\nmax_activity_rows = 2\n",
    );
    rt().block_on(async {
        let mut keep = Vec::new();
        for i in 0..4 {
            let c = client(&server, "postgres", &format!("s{i}")).await;
            c.batch_execute(&format!("SELECT '{}'", "x".repeat(300)))
                .await
                .unwrap();
            keep.push(c);
        }
        let tally = Counters::default();
        let report = cycle_counted(&config, &tally).await;
        let b = serde_json::to_value(batch(&report, BatchKind::PgActivity)).unwrap();
        validate(&b);
        assert_eq!(b["count"], 2);
        let omitted = b["omitted"].as_u64().unwrap();
        // 4 clients plus background processes, minus the 2 reported.
        assert!(omitted >= 2, "{b}");
        assert_eq!(tally.get(Event::ActivityRowsOmitted), omitted);
        let config = agent_config(&server, state.path(), "[safety]\nmax_query_length = 100\n");
        let report = cycle(&config).await;
        let b = serde_json::to_value(batch(&report, BatchKind::PgActivity)).unwrap();
        let cut: Vec<&Value> = b["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["application_name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with('s')
            })
            .collect();
        assert_eq!(cut.len(), 4, "{b}");
        for r in cut {
            assert_eq!(r["query_truncated"], true);
            // Cut at 100 bytes inside the literal: the unterminated literal is masked whole.
            assert_eq!(r["query"], "SELECT ?");
        }
        drop(keep);
    });
}

#[test]
fn literals_are_masked_by_default_and_sent_when_obfuscation_is_off() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let c = client(&server, "postgres", "secrets").await;
        c.batch_execute(
            "SELECT 'alice@example.com' AS email, 4111111111111111 AS card /* request_id=r1 */",
        )
        .await
        .unwrap();
        let find = |b: &Value| -> Value {
            b["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["application_name"] == "secrets")
                .cloned()
                .unwrap()
        };
        let config = agent_config(&server, state.path(), "");
        let masked = find(
            &serde_json::to_value(batch(&cycle(&config).await, BatchKind::PgActivity)).unwrap(),
        );
        assert_eq!(
            masked["query"],
            "SELECT ? AS email, ? AS card /* request_id=r1 */"
        );
        assert_eq!(masked["correlation"]["id"], "r1");
        let config = agent_config(
            &server,
            state.path(),
            "[privacy]\nobfuscate_queries = false\n",
        );
        let raw = find(
            &serde_json::to_value(batch(&cycle(&config).await, BatchKind::PgActivity)).unwrap(),
        );
        assert!(
            raw["query"].as_str().unwrap().contains("alice@example.com"),
            "{raw}"
        );
        assert_eq!(
            raw["fingerprint"], masked["fingerprint"],
            "fingerprints ignore obfuscation"
        );
    });
}
