//! A cycle as a whole: a collector that cannot get its answer (a view locked by another session) fails
//! alone within its deadline, its connection is not reused, the other collectors still report, and
//! the next cycle recovers once the lock is gone.

use crate::support;

use std::time::{Duration, Instant};

use postgres_agent::batch::BatchKind;
use postgres_agent::collect::{CollectSettings, Collectors, Outcome};
use postgres_agent::db::Db;
use postgres_agent::telemetry::registry::Event;
use support::collect::{client, validate};
use support::{agent_config, rt, PgServer};

#[test]
fn a_blocked_collector_fails_alone_within_its_deadline_and_the_next_cycle_recovers() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    // Server-side timeouts far away: only the client deadline can end the blocked query.
    let config = agent_config(
        &server,
        state.path(),
        "[safety]\nlock_timeout_ms = 60000\nstatement_timeout_ms = 60000\nclient_timeout_ms = 500\n",
    );
    rt().block_on(async {
        let blocker = client(&server, "postgres", "blocker").await;
        blocker
            .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_locks IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut collectors = Collectors::new(&CollectSettings::from_config(&config));
        let started = Instant::now();
        let report = collectors
            .run_cycle(&db, &CollectSettings::from_config(&config))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let outcome = |name: &str| {
            report
                .runs
                .iter()
                .find(|r| r.name == name)
                .unwrap()
                .outcome
                .clone()
        };
        assert!(
            matches!(outcome("locks"), Outcome::Failed(ref m) if m.contains("deadline")),
            "{:?}",
            report.runs
        );
        for ok in ["activity", "statements", "system"] {
            assert!(
                matches!(outcome(ok), Outcome::Ok { .. }),
                "{ok}: {:?}",
                report.runs
            );
        }
        assert!(report.batches.iter().all(|b| b.kind != BatchKind::Locks));
        assert_eq!(report.batches.len(), 3);
        for b in &report.batches {
            validate(&serde_json::to_value(b).unwrap());
        }
        let c = collectors.counters();
        assert!(c.get(Event::CollectorFailures) + c.get(Event::CollectorTimeouts) > 0);
        // The blocked connection was discarded; the pool never grew past its bound.
        assert!(db.open_connections() <= 1, "{}", db.open_connections());

        blocker.batch_execute("COMMIT").await.unwrap();
        let report = collectors
            .run_cycle(&db, &CollectSettings::from_config(&config))
            .await;
        assert!(report.all_ok(), "{:?}", report.runs);
        assert_eq!(report.batches.len(), 4);
        db.close();
    });
}
