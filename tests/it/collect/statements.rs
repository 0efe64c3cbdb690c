//! pg_statements against a real server: exact per-interval deltas (in memory and across a restart
//! through the saved baseline), a stats reset flagged and never negative, the top-N bound with its
//! omitted count, the agent's own statements left out, and a server without the extension.

use crate::support;

use postgres_agent::batch::BatchKind;
use postgres_agent::collect::{CollectSettings, Collectors, Outcome};
use postgres_agent::db::Db;
use postgres_agent::telemetry::registry::{Counters, Event};
use serde_json::Value;
use support::collect::{batch, check, client, cycle_counted, validate};
use support::{agent_config, rt, PgOptions, PgServer};

fn statements(report: &postgres_agent::collect::CycleReport) -> Value {
    let b = serde_json::to_value(batch(report, BatchKind::PgStatements)).unwrap();
    validate(&b);
    b
}

/// The records whose text contains `needle`.
fn matching<'a>(b: &'a Value, needle: &str) -> Vec<&'a Value> {
    b["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["query"].as_str().is_some_and(|q| q.contains(needle)))
        .collect()
}

fn assert_never_negative(b: &Value) {
    for r in b["data"].as_array().unwrap() {
        for (k, v) in r.as_object().unwrap() {
            if let Some(n) = v.as_f64() {
                assert!(n >= 0.0, "{k} = {n} in {r}");
            }
        }
    }
}

#[test]
fn calls_between_two_cycles_are_exact_across_a_restart_and_in_memory() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        let tally = Counters::default();
        server.psql(
            "postgres",
            "CREATE TABLE delta_probe AS SELECT g AS id FROM generate_series(1, 100) g",
        );
        let app = client(&server, "postgres", "app").await;
        // First cycle: no baseline yet, so an empty batch that says so.
        let first = statements(&cycle_counted(&config, &tally).await);
        assert_eq!(first["baseline"], "new");
        assert_eq!(first["count"], 0);
        assert!(state.path().join("statements-baseline.json").exists());

        for i in 0..7 {
            app.batch_execute(&format!("SELECT count(*) FROM delta_probe WHERE id < {i}"))
                .await
                .unwrap();
        }
        // Fresh collectors: the baseline comes from disk, as after a restart or a second `once`.
        let second = statements(&cycle_counted(&config, &tally).await);
        assert_eq!(second["baseline"], "continued");
        let probe = matching(&second, "FROM delta_probe");
        assert_eq!(probe.len(), 1, "{second}");
        let r = probe[0];
        assert_eq!(r["calls"], 7);
        assert_eq!(r["rows"], 7);
        assert_eq!(r["reset"], false);
        assert_eq!(r["dbname"], "postgres");
        assert_eq!(r["username"], "postgres");
        assert!(
            r["query"].as_str().unwrap().contains("$1"),
            "normalised text: {r}"
        );
        assert_eq!(r["interval_start"], second["interval_start"]);
        assert_eq!(r["interval_start"], first["interval_end"]);
        assert!(r["total_exec_time_ms"].as_f64().unwrap() > 0.0);
        let mean = r["mean_exec_time_ms"].as_f64().unwrap();
        assert!((mean - r["total_exec_time_ms"].as_f64().unwrap() / 7.0).abs() < 0.01);
        assert_never_negative(&second);
        // The schema is strict: a negative counter, a bad timestamp or an undocumented field fails.
        for (field, bad) in [
            ("calls", serde_json::json!(-1)),
            ("interval_end", serde_json::json!("yesterday")),
            ("surprise", serde_json::json!(1)),
        ] {
            let mut broken = second.clone();
            let idx = second["data"]
                .as_array()
                .unwrap()
                .iter()
                .position(|x| x == r)
                .unwrap();
            broken["data"][idx][field] = bad;
            assert!(check(&broken).is_err(), "{field} accepted");
        }
        if server.major() >= 14 {
            assert_eq!(r["toplevel"], true);
        }
        if server.major() >= 17 {
            assert!(
                r["shared_blk_read_time_ms"].is_number() && r["local_blk_read_time_ms"].is_number()
            );
        } else {
            assert!(
                r["shared_blk_read_time_ms"].is_number() && r["local_blk_read_time_ms"].is_null()
            );
        }
        // The agent's own statements never appear (whatever the server keeps of their text), and are
        // counted.
        for rec in second["data"].as_array().unwrap() {
            let q = rec["query"].as_str().unwrap_or("");
            for agent_view in [
                "pg_stat_activity",
                "pg_locks",
                "pg_settings",
                "pg_stat_statements",
                "pg_extension",
            ] {
                assert!(!q.contains(agent_view), "agent statement reported: {rec}");
            }
            assert!(
                !rec["query"]
                    .as_str()
                    .unwrap_or("")
                    .contains("postgres-agent"),
                "{rec}"
            );
        }
        assert!(tally.get(Event::StatementsAgentOwn) > 0);

        // In memory: one set of collectors over three cycles.
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut collectors = Collectors::new(&CollectSettings::from_config(&config));
        let _ = collectors
            .run_cycle(&db, &CollectSettings::from_config(&config))
            .await;
        for i in 0..3 {
            app.batch_execute(&format!("SELECT count(*) FROM delta_probe WHERE id < {i}"))
                .await
                .unwrap();
        }
        let third = statements(
            &collectors
                .run_cycle(&db, &CollectSettings::from_config(&config))
                .await,
        );
        assert_eq!(matching(&third, "FROM delta_probe")[0]["calls"], 3);
        let idle = statements(
            &collectors
                .run_cycle(&db, &CollectSettings::from_config(&config))
                .await,
        );
        assert!(matching(&idle, "FROM delta_probe").is_empty(), "{idle}");
        db.close();
    });
}

#[test]
fn a_stats_reset_between_cycles_is_flagged_and_never_negative() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        let tally = Counters::default();
        server.psql("postgres", "CREATE TABLE reset_probe (id int)");
        let app = client(&server, "postgres", "app").await;
        let _ = cycle_counted(&config, &tally).await;
        for _ in 0..5 {
            app.batch_execute("SELECT * FROM reset_probe WHERE id = 1")
                .await
                .unwrap();
        }
        let before = statements(&cycle_counted(&config, &tally).await);
        assert_eq!(matching(&before, "FROM reset_probe")[0]["calls"], 5);
        assert_eq!(before["stats_reset"], false);

        for _ in 0..3 {
            app.batch_execute("SELECT * FROM reset_probe WHERE id = 1")
                .await
                .unwrap();
        }
        app.batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .unwrap();
        for _ in 0..2 {
            app.batch_execute("SELECT * FROM reset_probe WHERE id = 1")
                .await
                .unwrap();
        }
        let resets_before = tally.get(Event::StatementsResetEntries);
        let after = statements(&cycle_counted(&config, &tally).await);
        let r = matching(&after, "FROM reset_probe");
        assert_eq!(r.len(), 1, "{after}");
        // Only what ran since the reset: never 2 - 5, never 5 + 3 + 2.
        assert_eq!(r[0]["calls"], 2);
        assert_eq!(r[0]["reset"], true);
        assert_never_negative(&after);
        assert!(tally.get(Event::StatementsResetEntries) > resets_before);
        if server.major() >= 14 {
            assert_eq!(after["stats_reset"], true);
        }
    });
}

#[test]
fn top_statements_by_total_time_are_kept_and_the_rest_counted() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "[safety]\nmax_statement_rows = 3\n");
    rt().block_on(async {
        let tally = Counters::default();
        let app = client(&server, "postgres", "app").await;
        let _ = cycle_counted(&config, &tally).await;
        // Ten statements of distinct shapes; the slow one must be first.
        app.batch_execute("SELECT pg_sleep(0.2)").await.unwrap();
        for n in 1..10 {
            let cols: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            app.batch_execute(&format!("SELECT {}", cols.join(", ")))
                .await
                .unwrap();
        }
        let omitted_before = tally.get(Event::StatementsOmitted);
        let b = statements(&cycle_counted(&config, &tally).await);
        assert_eq!(b["count"], 3, "{b}");
        let omitted = b["omitted"].as_u64().unwrap();
        assert!(omitted >= 7, "{b}");
        assert!(tally.get(Event::StatementsOmitted) >= omitted_before + omitted);
        assert!(
            b["data"][0]["query"].as_str().unwrap().contains("pg_sleep"),
            "{b}"
        );
        let totals: Vec<f64> = b["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["total_exec_time_ms"].as_f64().unwrap()
                    + r["total_plan_time_ms"].as_f64().unwrap_or(0.0)
            })
            .collect();
        assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
    });
}

#[test]
fn without_the_extension_statements_are_skipped_and_the_rest_still_run() {
    let server = PgServer::start_with(PgOptions {
        pg_stat_statements: false,
        ..PgOptions::default()
    });
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        let tally = Counters::default();
        let before = tally.get(Event::StatementsUnavailable);
        let report = cycle_counted(&config, &tally).await;
        let run = report.runs.iter().find(|r| r.name == "statements").unwrap();
        assert_eq!(run.outcome, Outcome::Skipped);
        assert!(report.all_ok(), "{:?}", report.runs);
        assert!(report
            .batches
            .iter()
            .all(|b| b.kind != BatchKind::PgStatements));
        for kind in [
            BatchKind::PgActivity,
            BatchKind::Locks,
            BatchKind::SystemMetrics,
        ] {
            let _ = batch(&report, kind);
        }
        assert!(tally.get(Event::StatementsUnavailable) > before);

        // Created but not preloaded: the library refuses (SQLSTATE 55000); still a skip, not a failure.
        server.psql("postgres", "CREATE EXTENSION pg_stat_statements");
        let report = cycle_counted(&config, &tally).await;
        let run = report.runs.iter().find(|r| r.name == "statements").unwrap();
        assert_eq!(run.outcome, Outcome::Skipped, "{:?}", report.runs);
        assert_eq!(report.batches.len(), 3);
    });
}

#[test]
fn a_failed_cycle_loses_no_calls_the_next_one_reports_both_intervals() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    server.psql(
        "postgres",
        "CREATE ROLE watcher LOGIN; GRANT pg_monitor TO watcher; \
         CREATE TABLE gap_probe AS SELECT g AS id FROM generate_series(1, 10) g",
    );
    let config = agent_config(&server, state.path(), "[postgres]\nuser = watcher\n");
    rt().block_on(async {
        let app = client(&server, "postgres", "app").await;
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut collectors = Collectors::new(&CollectSettings::from_config(&config));
        let first = statements(
            &collectors
                .run_cycle(&db, &CollectSettings::from_config(&config))
                .await,
        );
        assert_eq!(first["baseline"], "new");
        let probe = |n: usize| {
            let app = &app;
            async move {
                for i in 0..n {
                    app.batch_execute(&format!("SELECT count(*) FROM gap_probe WHERE id < {i}"))
                        .await
                        .unwrap();
                }
            }
        };
        probe(4).await;
        // The snapshot query fails after the baseline was taken for subtraction.
        server.psql(
            "postgres",
            "REVOKE EXECUTE ON FUNCTION pg_stat_statements(boolean) FROM PUBLIC",
        );
        let failed = collectors
            .run_cycle(&db, &CollectSettings::from_config(&config))
            .await;
        let run = failed.runs.iter().find(|r| r.name == "statements").unwrap();
        assert!(
            matches!(run.outcome, Outcome::Failed(_)),
            "{:?}",
            failed.runs
        );
        assert!(failed
            .batches
            .iter()
            .all(|b| b.kind != BatchKind::PgStatements));
        server.psql(
            "postgres",
            "GRANT EXECUTE ON FUNCTION pg_stat_statements(boolean) TO PUBLIC",
        );
        probe(2).await;
        // The next cycle subtracts the last good snapshot: the failed interval is not lost.
        let third = statements(
            &collectors
                .run_cycle(&db, &CollectSettings::from_config(&config))
                .await,
        );
        assert_eq!(third["baseline"], "continued", "{third}");
        assert_eq!(third["interval_start"], first["interval_end"]);
        let rec = matching(&third, "FROM gap_probe");
        assert_eq!(rec.len(), 1, "{third}");
        assert_eq!(rec[0]["calls"], 6);
        assert_never_negative(&third);
        db.close();
    });
}

/// A damaged baseline file is moved aside (named in one error) and a new baseline starts; the
/// cycle after that reports deltas again.
#[test]
fn a_damaged_baseline_is_moved_aside_and_a_new_one_starts() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        let tally = Counters::default();
        let first = statements(&cycle_counted(&config, &tally).await);
        assert_eq!(first["baseline"], "new");
        let file = state.path().join("statements-baseline.json");
        std::fs::write(&file, b"{\"format\": 1, \"entries\": [garbage").unwrap();
        let second = statements(&cycle_counted(&config, &tally).await);
        assert_eq!(second["baseline"], "new", "{second}");
        let moved: Vec<String> = std::fs::read_dir(state.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("statements-baseline.json.corrupt-"))
            .collect();
        assert_eq!(moved.len(), 1, "{moved:?}");
        let third = statements(&cycle_counted(&config, &tally).await);
        assert_eq!(third["baseline"], "continued", "{third}");
    });
}
