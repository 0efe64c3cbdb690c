//! pg_statements texts read at most once per `safety.statement_texts_interval_s` (issue 22): against
//! a real server, a statement first seen between two text reads is left out (counted as `deferred`)
//! and reported at the next read with every call since it was last reported and the interval that
//! covers them; statements whose text is known are reported every cycle as before. A statement
//! without a text that took at least 10% of the interval's statement time has its text read at once.

use crate::support;

use postgres_agent::batch::BatchKind;
use postgres_agent::collect::{CollectSettings, Collectors};
use postgres_agent::db::Db;
use serde_json::Value;
use support::collect::{batch, client, validate};
use support::{agent_config, rt, PgServer};

fn statements(report: &postgres_agent::collect::CycleReport) -> Value {
    let b = serde_json::to_value(batch(report, BatchKind::PgStatements)).unwrap();
    validate(&b);
    b
}

fn matching<'a>(b: &'a Value, needle: &str) -> Vec<&'a Value> {
    b["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["query"].as_str().is_some_and(|q| q.contains(needle)))
        .collect()
}

#[test]
fn a_statement_seen_between_text_reads_is_reported_exactly_at_the_next_read() {
    let server = PgServer::start();
    server.psql(
        "postgres",
        "CREATE TABLE known_probe (id int); CREATE TABLE late_probe (id int); \
         CREATE TABLE urgent_probe (id int)",
    );
    let state = tempfile::tempdir().unwrap();
    let hourly = agent_config(
        &server,
        state.path(),
        "[safety]\nstatement_texts_interval_s = 3600\n",
    );
    let every = agent_config(
        &server,
        state.path(),
        "[safety]\nstatement_texts_interval_s = 0\n",
    );
    rt().block_on(async {
        let app = client(&server, "postgres", "app").await;
        let run = |sql: &'static str, n: usize| {
            let app = &app;
            async move {
                for _ in 0..n {
                    app.batch_execute(sql).await.unwrap();
                }
            }
        };
        let db = Db::new(&hourly.postgres, &hourly.safety).unwrap();
        let hourly_settings = CollectSettings::from_config(&hourly);
        let every_settings = CollectSettings::from_config(&every);
        let mut collectors = Collectors::new(&hourly_settings);
        let first = statements(&collectors.run_cycle(&db, &hourly_settings).await);
        assert_eq!(first["baseline"], "new");
        // Ten statements heavier than the probes (5 ms each), distinct by their column count.
        let heavy: Vec<String> = (0..10)
            .map(|i| format!("SELECT pg_sleep(0.005){}", ", 1".repeat(i)))
            .collect();
        let run_heavy = || async {
            for sql in &heavy {
                app.batch_execute(sql).await.unwrap();
            }
        };
        // No text read yet: this cycle reads them.
        run("SELECT count(*) FROM known_probe", 2).await;
        run_heavy().await;
        let second = statements(&collectors.run_cycle(&db, &hourly_settings).await);
        assert_eq!(matching(&second, "known_probe")[0]["calls"], 2, "{second}");

        // Within the hour: the new statement, a sliver of the interval's time next to ten known
        // ones, waits; the known one is reported.
        run("SELECT count(*) FROM known_probe", 1).await;
        run("SELECT count(*) FROM late_probe", 3).await;
        run_heavy().await;
        let third = statements(&collectors.run_cycle(&db, &hourly_settings).await);
        assert_eq!(matching(&third, "known_probe")[0]["calls"], 1, "{third}");
        assert!(matching(&third, "late_probe").is_empty(), "{third}");
        assert!(third["deferred"].as_u64().unwrap() >= 1, "{third}");
        assert!(third["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["query"].is_null()));

        run("SELECT count(*) FROM late_probe", 2).await;
        run_heavy().await;
        let fourth = statements(&collectors.run_cycle(&db, &hourly_settings).await);
        assert!(matching(&fourth, "late_probe").is_empty(), "{fourth}");

        // Texts due (interval 0): every call of both waiting intervals, and since when, although
        // the statement did not run since it was last put off (the read asks for it again).
        let fifth = statements(&collectors.run_cycle(&db, &every_settings).await);
        let late = matching(&fifth, "late_probe");
        assert_eq!(late.len(), 1, "{fifth}");
        assert_eq!(late[0]["calls"], 5, "{fifth}");
        assert_eq!(late[0]["reset"], false);
        assert_eq!(
            late[0]["interval_start"], third["interval_start"],
            "{fifth}"
        );
        assert_eq!(late[0]["interval_end"], fifth["interval_end"]);
        assert_eq!(fifth["deferred"], 0);

        // Within the hour again, but the new statement took most of the interval's time: reported
        // at once, with its text.
        run("SELECT count(*), pg_sleep(0.05) FROM urgent_probe", 2).await;
        let sixth = statements(&collectors.run_cycle(&db, &hourly_settings).await);
        let urgent = matching(&sixth, "urgent_probe");
        assert_eq!(urgent.len(), 1, "{sixth}");
        assert_eq!(urgent[0]["calls"], 2, "{sixth}");
        assert_eq!(sixth["deferred"], 0, "{sixth}");
        db.close();
    });
}
