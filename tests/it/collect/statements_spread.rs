//! pg_statements execution-time spread (issue 22): the standard deviation of one interval's
//! execution times, taken out of the server's lifetime sums, and the lifetime extremes reported
//! as such. After an agent restart the first interval's spread is unknown (null), never wrong.

use crate::support;

use postgres_agent::batch::BatchKind;
use postgres_agent::collect::{CollectSettings, Collectors};
use postgres_agent::db::Db;
use serde_json::Value;
use support::collect::{batch, client, validate};
use support::{agent_config, rt, PgServer};

fn probe(report: &postgres_agent::collect::CycleReport) -> Value {
    let b = serde_json::to_value(batch(report, BatchKind::PgStatements)).unwrap();
    validate(&b);
    let found: Vec<&Value> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["query"]
                .as_str()
                .is_some_and(|q| q.contains("spread_probe"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{b}");
    found[0].clone()
}

#[test]
fn the_interval_standard_deviation_is_exact_and_the_extremes_are_lifetime_values() {
    let server = PgServer::start();
    server.psql("postgres", "CREATE TABLE spread_probe (id int)");
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        let app = client(&server, "postgres", "app").await;
        let sleep = |ms: u32| {
            let app = &app;
            async move {
                app.batch_execute(&format!(
                    "SELECT count(*), pg_sleep({}) FROM spread_probe",
                    f64::from(ms) / 1000.0
                ))
                .await
                .unwrap();
            }
        };
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let settings = CollectSettings::from_config(&config);
        let mut collectors = Collectors::new(&settings);
        collectors.run_cycle(&db, &settings).await;

        // First interval: two 50 ms executions (a new entry: its lifetime is the interval).
        sleep(50).await;
        sleep(50).await;
        let first = probe(&collectors.run_cycle(&db, &settings).await);
        assert_eq!(first["calls"], 2, "{first}");
        assert!(
            first["stddev_exec_time_ms"].as_f64().unwrap() < 3.0,
            "{first}"
        );

        // Second: 10, 10, 30, 30 ms. The interval's standard deviation is 10 ms; that of the
        // lifetime (50, 50, 10, 10, 30, 30) would be 16.3. pg_sleep overshoots by a little.
        for ms in [10, 30, 10, 30] {
            sleep(ms).await;
        }
        let second = probe(&collectors.run_cycle(&db, &settings).await);
        assert_eq!(second["calls"], 4, "{second}");
        let sd = second["stddev_exec_time_ms"].as_f64().unwrap();
        assert!((sd - 10.0).abs() < 4.0, "interval stddev {sd}: {second}");
        let mean = second["mean_exec_time_ms"].as_f64().unwrap();
        assert!((20.0..28.0).contains(&mean), "{second}");
        let (min, max) = (
            second["lifetime_min_exec_time_ms"].as_f64().unwrap(),
            second["lifetime_max_exec_time_ms"].as_f64().unwrap(),
        );
        assert!((10.0..20.0).contains(&min), "lifetime min {min}: {second}");
        assert!(max >= 50.0, "lifetime max {max}: {second}");
        db.close();

        // An agent restart: the baseline comes from its file, without the sums; the first
        // interval's spread is null, the extremes are still reported.
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut collectors = Collectors::new(&settings);
        sleep(10).await;
        let third = probe(&collectors.run_cycle(&db, &settings).await);
        assert_eq!(third["calls"], 1, "{third}");
        assert!(third["stddev_exec_time_ms"].is_null(), "{third}");
        assert!(third["lifetime_max_exec_time_ms"].as_f64().unwrap() >= 50.0);
        db.close();
    });
}
