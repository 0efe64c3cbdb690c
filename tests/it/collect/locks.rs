//! locks against a real server: a three-session blocker chain (row lock wait behind an open
//! transaction, and a table lock behind both), a deadlock the server has not broken yet flagged as a
//! cycle, and the summary of held locks by mode.

use crate::support;

use postgres_agent::batch::BatchKind;
use serde_json::Value;
use support::collect::{batch, client, cycle, pid, validate, wait_until};
use support::{agent_config, rt, PgOptions, PgServer};

fn lock_of(b: &Value, pid: i32) -> &Value {
    b["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("no waiting lock of pid {pid} in {b}"))
}

fn links(r: &Value) -> Vec<(i64, i64, u64, bool)> {
    r["blocked_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["pid"].as_i64().unwrap(),
                l["blocks_pid"].as_i64().unwrap(),
                l["depth"].as_u64().unwrap(),
                l["waiting"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_three_session_blocker_chain_is_reported_with_modes_states_and_correlation() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        server.psql(
            "postgres",
            "CREATE TABLE lock_probe (id int PRIMARY KEY, v int); INSERT INTO lock_probe VALUES (1, 0)",
        );
        let watcher = client(&server, "postgres", "watcher").await;
        let a = client(&server, "postgres", "holder").await;
        let b = client(&server, "postgres", "row-waiter").await;
        let c = client(&server, "postgres", "ddl-waiter").await;
        let (pa, pb, pc) = (pid(&a).await, pid(&b).await, pid(&c).await);
        a.batch_execute("BEGIN; /* request_id=holder-1 */ UPDATE lock_probe SET v = 1 WHERE id = 1")
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = b
                .batch_execute("/* correlation_id=blocked-b */ UPDATE lock_probe SET v = 2 WHERE id = 1")
                .await;
        });
        wait_until(&watcher, "SELECT count(*) = 1 FROM pg_locks WHERE NOT granted").await;
        tokio::spawn(async move {
            let _ = c.batch_execute("BEGIN; LOCK TABLE lock_probe IN ACCESS EXCLUSIVE MODE").await;
        });
        wait_until(&watcher, "SELECT count(*) = 2 FROM pg_locks WHERE NOT granted").await;

        let report = cycle(&config).await;
        assert!(report.all_ok(), "{:?}", report.runs);
        let locks = serde_json::to_value(batch(&report, BatchKind::Locks)).unwrap();
        validate(&locks);
        assert_eq!(locks["count"], 2, "{locks}");
        assert_eq!(locks["waiting"], 2);

        let rb = lock_of(&locks, pb);
        assert_eq!(rb["locktype"], "transactionid");
        assert_eq!(rb["mode"], "ShareLock");
        assert_eq!(rb["correlation"]["id"], "blocked-b");
        assert_eq!(rb["state"], "active");
        assert!(rb["waiting_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(links(rb), vec![(pa as i64, pb as i64, 1, false)]);
        let holder = &rb["blocked_by"][0];
        assert_eq!(holder["modes_held"], serde_json::json!(["ExclusiveLock"]));
        assert_eq!(holder["state"], "idle in transaction");
        assert_eq!(holder["correlation"]["id"], "holder-1");
        assert!(holder["xact_age_ms"].as_f64().unwrap() > 0.0);
        assert!(holder["query"].as_str().unwrap().contains("UPDATE lock_probe"));
        assert_eq!(rb["cycle"], false);

        let rc = lock_of(&locks, pc);
        assert_eq!(rc["locktype"], "relation");
        assert_eq!(rc["mode"], "AccessExclusiveLock");
        assert_eq!(rc["relation_name"], "public.lock_probe");
        assert_eq!(rc["datname"], "postgres");
        let mut got = links(rc);
        got.sort();
        let mut want = vec![
            (pa as i64, pc as i64, 1, false),
            (pb as i64, pc as i64, 1, true),
            (pa as i64, pb as i64, 2, false),
        ];
        want.sort();
        assert_eq!(got, want, "{rc}");
        for l in rc["blocked_by"].as_array().unwrap() {
            if l["depth"] == 1 {
                assert_eq!(l["modes_held"], serde_json::json!(["RowExclusiveLock"]), "{l}");
            }
        }
        let held = &locks["held_by_mode"];
        assert!(held["RowExclusiveLock"].as_i64().unwrap() >= 2, "{held}");
        assert!(held["ExclusiveLock"].as_i64().unwrap() >= 1, "{held}");
    });
}

#[test]
fn an_unbroken_deadlock_is_reported_as_a_cycle() {
    // The server would break the deadlock after deadlock_timeout; give the agent time to see it.
    let server = PgServer::start_with(PgOptions {
        conf: vec!["deadlock_timeout = '60s'".into()],
        ..PgOptions::default()
    });
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        server.psql(
            "postgres",
            "CREATE TABLE d1 (x int); CREATE TABLE d2 (x int)",
        );
        let watcher = client(&server, "postgres", "watcher").await;
        let a = client(&server, "postgres", "a").await;
        let b = client(&server, "postgres", "b").await;
        let (pa, pb) = (pid(&a).await, pid(&b).await);
        a.batch_execute("BEGIN; LOCK TABLE d1").await.unwrap();
        b.batch_execute("BEGIN; LOCK TABLE d2").await.unwrap();
        tokio::spawn(async move {
            let _ = a.batch_execute("LOCK TABLE d2; COMMIT").await;
        });
        tokio::spawn(async move {
            let _ = b.batch_execute("LOCK TABLE d1; COMMIT").await;
        });
        wait_until(
            &watcher,
            "SELECT count(*) = 2 FROM pg_locks WHERE NOT granted",
        )
        .await;
        let report = cycle(&config).await;
        let locks = serde_json::to_value(batch(&report, BatchKind::Locks)).unwrap();
        validate(&locks);
        let ra = lock_of(&locks, pa);
        assert_eq!(ra["cycle"], true, "{ra}");
        assert_eq!(
            links(ra),
            vec![
                (pb as i64, pa as i64, 1, true),
                (pa as i64, pb as i64, 2, true)
            ]
        );
        assert_eq!(ra["blocked_by"][1]["cycle"], true);
        assert_eq!(lock_of(&locks, pb)["cycle"], true);
    });
}

#[test]
fn no_waits_gives_an_empty_batch_with_the_held_summary() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        server.psql("postgres", "CREATE TABLE quiet (x int)");
        let a = client(&server, "postgres", "reader").await;
        a.batch_execute("BEGIN; SELECT * FROM quiet").await.unwrap();
        let report = cycle(&config).await;
        let locks = serde_json::to_value(batch(&report, BatchKind::Locks)).unwrap();
        validate(&locks);
        assert_eq!(locks["count"], 0);
        assert!(
            locks["held_by_mode"]["AccessShareLock"].as_i64().unwrap() >= 1,
            "{locks}"
        );
    });
}
