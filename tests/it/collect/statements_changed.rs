//! pg_statements read as changes against the baseline: after the first cycle the server sends only
//! the entries that ran (and the fingerprints of baseline entries it no longer has), and the deltas
//! stay exact, also for an entry removed between cycles that comes back with more calls than it had.

use crate::support;

use postgres_agent::batch::BatchKind;
use postgres_agent::telemetry::registry::Counters;
use serde_json::Value;
use support::collect::{batch, client, cycle_counted, validate};
use support::{agent_config, rt, PgServer};

fn probe_calls(report: &postgres_agent::collect::CycleReport) -> Vec<Value> {
    let b = serde_json::to_value(batch(report, BatchKind::PgStatements)).unwrap();
    validate(&b);
    b["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["query"]
                .as_str()
                .is_some_and(|q| q.contains("changed_probe"))
        })
        .map(|r| r["calls"].clone())
        .collect()
}

#[test]
fn only_changed_entries_are_sent_and_an_entry_gone_comes_back_as_new() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        let tally = Counters::default();
        server.psql("postgres", "CREATE TABLE changed_probe (id int)");
        // 400 distinct entries that run once, before the baseline, and never again.
        let idle: String = (0..400)
            .map(|i| format!("SELECT 1{};", ", 1".repeat(i)))
            .collect();
        let app = client(&server, "postgres", "app").await;
        app.batch_execute(&idle).await.unwrap();
        let _ = cycle_counted(&config, &tally).await;

        for _ in 0..5 {
            app.batch_execute("SELECT * FROM changed_probe WHERE id = 1")
                .await
                .unwrap();
        }
        assert_eq!(probe_calls(&cycle_counted(&config, &tally).await), [5]);
        assert!(probe_calls(&cycle_counted(&config, &tally).await).is_empty());

        // The entry is removed (as an eviction would), then runs more often than before: the
        // baseline must have let it go, or its 8 calls would be reported as 8 - 5.
        server.psql(
            "postgres",
            "SELECT pg_stat_statements_reset(0, 0, queryid) FROM pg_stat_statements \
             WHERE query LIKE '%FROM changed_probe%'",
        );
        assert!(probe_calls(&cycle_counted(&config, &tally).await).is_empty());
        for _ in 0..8 {
            app.batch_execute("SELECT * FROM changed_probe WHERE id = 1")
                .await
                .unwrap();
        }
        assert_eq!(probe_calls(&cycle_counted(&config, &tally).await), [8]);

        // The reads after the first sent the changed entries, not every entry.
        let read = server.psql(
            "postgres",
            "SELECT sum(calls), sum(rows), (SELECT count(*) FROM pg_stat_statements) \
             FROM pg_stat_statements WHERE query LIKE '%FULL JOIN unnest%'",
        );
        let n: Vec<f64> = read.split('\t').map(|x| x.parse().unwrap()).collect();
        assert!(n[0] >= 4.0, "changed-only reads: {read}");
        assert!(n[2] > 400.0, "{read}");
        assert!(n[1] / n[0] < 100.0, "rows per read: {read}");
    });
}
