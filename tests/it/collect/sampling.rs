//! Active-session sampling against a real server: a controlled workload (4 sessions in one query
//! all along, 2 sessions waiting on a lock held by an idle transaction) is reported as 4 and 2
//! average active sessions for those groups, with the per-sample series and the seconds each
//! correlation ID was active. The window here is 25 samples 200 ms apart (5 s) instead of 30 s at
//! 1 s: the average is the same sum of sessions over samples.
//!
//! A row bound below the sessions running keeps the totals exact.
//!
//! Sampling never opens a connection: without one open it reports the tick as unreachable, and with
//! the connection in use as busy.

use crate::support;

use std::time::Duration;

use postgres_agent::collect::sampling::{Outcome, Sampler};
use postgres_agent::collect::CollectSettings;
use postgres_agent::db::Db;
use serde_json::Value;
use support::collect::{client, validate, wait_until};
use support::{agent_config, rt, PgOptions, PgServer};

const SAMPLES: u64 = 25;

fn group(batch: &Value, pred: impl Fn(&Value) -> bool) -> &Value {
    batch["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| pred(g))
        .unwrap_or_else(|| panic!("no such group in {batch:#}"))
}

#[test]
fn a_controlled_workload_is_reported_as_its_average_active_sessions() {
    // No autovacuum worker may add itself to the sessions counted exactly below.
    let server = PgServer::start_with(PgOptions {
        conf: vec!["autovacuum = off".into()],
        ..Default::default()
    });
    server.psql("postgres", "CREATE TABLE t (id int)");
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(
        &server,
        state.path(),
        "[activity]\nsample_interval_ms = 200\n[spikes]\nenabled = false\n[correlation]\nid_shape = any\n",
    );
    rt().block_on(async {
        let watcher = client(&server, "postgres", "watcher").await;
        for i in 0..4 {
            let c = client(&server, "postgres", &format!("bitville-sleeper-{i}")).await;
            tokio::spawn(async move {
                let _ = c.simple_query("SELECT pg_sleep(600)").await;
                drop(c);
            });
        }
        let holder = client(&server, "postgres", "holder").await;
        holder
            .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        for i in 0..2 {
            let c = client(&server, "postgres", &format!("waiter-{i}")).await;
            tokio::spawn(async move {
                let _ = c.simple_query("SELECT count(*) FROM t").await;
                drop(c);
            });
        }
        wait_until(
            &watcher,
            "SELECT count(*) FILTER (WHERE wait_event = 'PgSleep') = 4 \
                AND count(*) FILTER (WHERE wait_event_type = 'Lock') = 2 \
             FROM pg_stat_activity WHERE state = 'active'",
        )
        .await;

        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut sampler = Sampler::new();
        // No connection open yet: the sample is skipped, and none is opened.
        let t = sampler
            .tick(&db, &CollectSettings::from_config(&config))
            .await;
        assert!(
            matches!(t.outcome, Outcome::Unreachable(_)),
            "{:?}",
            t.outcome
        );
        assert_eq!(db.open_connections(), 0);
        // The connection the collection cycle opens; while it is in use, samples are skipped.
        let held = db.session().await.unwrap();
        let t = sampler
            .tick(&db, &CollectSettings::from_config(&config))
            .await;
        assert_eq!(t.outcome, Outcome::Busy);
        assert_eq!(db.open_connections(), 1);
        drop(held);
        assert!(sampler
            .take_window(&CollectSettings::from_config(&config))
            .is_some());

        for _ in 0..SAMPLES {
            let t = sampler
                .tick(&db, &CollectSettings::from_config(&config))
                .await;
            match t.outcome {
                Outcome::Sampled(p) => {
                    assert_eq!((p.active, p.lock_waits), (6, 2), "{p:?}");
                    assert_eq!(p.sessions, 7, "{p:?}");
                    assert!(p.waiting >= 6, "{p:?}");
                }
                other => panic!("sample not taken: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            db.open_connections(),
            1,
            "sampling reuses the one connection"
        );
        let batch = serde_json::to_value(
            sampler
                .take_window(&CollectSettings::from_config(&config))
                .unwrap(),
        )
        .unwrap();
        validate(&batch);
        assert_eq!(batch["type"], "pg_activity_samples");
        assert_eq!(batch["samples"], SAMPLES);
        assert_eq!(batch["skipped"]["busy"], 0);
        assert_eq!(batch["sample_interval_ms"], 200);
        assert_eq!(batch["omitted"], 0);

        let sleep = group(&batch, |g| g["wait_event"] == "PgSleep");
        let avg = sleep["avg_active_sessions"].as_f64().unwrap();
        assert!((avg - 4.0).abs() <= 0.4, "{sleep}");
        assert_eq!(sleep["state"], "active");
        assert_eq!(sleep["wait_event_type"], "Timeout");
        assert!(
            sleep["query"].as_str().unwrap().contains("pg_sleep(?)"),
            "{sleep}"
        );
        assert_eq!(sleep["datname"], "postgres");
        assert_eq!(sleep["peak_sessions"], 4);

        let lock = group(&batch, |g| g["wait_event_type"] == "Lock");
        let avg = lock["avg_active_sessions"].as_f64().unwrap();
        assert!((avg - 2.0).abs() <= 0.2, "{lock}");
        assert_eq!(lock["wait_event"], "relation");
        assert!(lock["query"].as_str().unwrap().contains("FROM t"), "{lock}");

        let idle_tx = group(&batch, |g| g["state"] == "idle in transaction");
        assert!((idle_tx["avg_active_sessions"].as_f64().unwrap() - 1.0).abs() <= 0.1);
        // Most active first; the agent's own sampling query never appears.
        let avgs: Vec<f64> = batch["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["avg_active_sessions"].as_f64().unwrap())
            .collect();
        assert!(avgs.windows(2).all(|w| w[0] >= w[1]), "{avgs:?}");
        for g in batch["data"].as_array().unwrap() {
            assert!(
                !g["query"].as_str().unwrap_or("").contains("postgres-agent"),
                "{g}"
            );
        }

        let series = batch["series"].as_array().unwrap();
        assert_eq!(series.len() as u64, SAMPLES);
        for p in series {
            assert_eq!(p["active"], 6, "{p}");
            assert_eq!(p["lock_waits"], 2, "{p}");
            assert!(p["t"].as_str().unwrap().ends_with('Z'));
            assert!(p["load1"].as_f64().is_some(), "{p}");
        }
        let cpu: Vec<&Value> = series.iter().map(|p| &p["cpu_percent"]).collect();
        assert!(cpu.iter().skip(1).all(|c| c.as_f64().is_some()), "{cpu:?}");
        assert!((batch["avg_active_sessions"].as_f64().unwrap() - 6.0).abs() < 1e-9);

        let correlations = batch["correlations"].as_array().unwrap();
        assert_eq!(correlations.len(), 4, "{correlations:?}");
        for c in correlations {
            assert!(c["id"].as_str().unwrap().starts_with("sleeper-"), "{c}");
            assert_eq!(c["samples"], SAMPLES);
            assert!((c["seconds"].as_f64().unwrap() - SAMPLES as f64 * 0.2).abs() < 1e-9);
        }

        // A row bound below the sessions running: 3 rows are kept, and the totals are still
        // those of every session (counted on the server when the bound cut the result).
        let bounded = agent_config(
            &server,
            state.path(),
            "[activity]\nsample_interval_ms = 200\n[spikes]\nenabled = false\n\
             [safety]\nmax_activity_rows = 3\n",
        );
        let mut sampler = Sampler::new();
        match sampler
            .tick(&db, &CollectSettings::from_config(&bounded))
            .await
            .outcome
        {
            Outcome::Sampled(p) => {
                assert_eq!((p.active, p.lock_waits, p.sessions), (6, 2, 7), "{p:?}");
                assert!(p.waiting >= 6, "{p:?}");
            }
            other => panic!("sample not taken: {other:?}"),
        }
        db.close();
    });
}

#[test]
fn sampling_and_spike_settings_have_defaults_and_clear_errors() {
    use postgres_agent::config::Config;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.ini");
    let load = |ini: &str, env: &[(&str, &str)]| {
        std::fs::write(&path, ini).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(Some(&path), env)
    };
    let c = load("", &[]).unwrap();
    assert_eq!(
        c.activity.sample_interval,
        Some(Duration::from_millis(1000))
    );
    assert_eq!(c.activity.sample_top_n, 50);
    assert!(c.spikes.enabled);
    assert_eq!((c.spikes.active_sessions, c.spikes.load), (None, None));
    assert_eq!(c.spikes.lock_wait, Some(Duration::from_millis(5000)));
    assert_eq!(c.spikes.lookback, Duration::from_secs(60));
    assert_eq!(c.spikes.min_gap, Duration::from_secs(60));

    let c = load(
        "[activity]\nsample_interval_ms = 0\n[spikes]\nactive_sessions = 12\nload = 2.5\nlock_wait_ms = 0\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.activity.sample_interval, None);
    assert_eq!(
        (c.spikes.active_sessions, c.spikes.load),
        (Some(12), Some(2.5))
    );
    assert_eq!(c.spikes.lock_wait, None);
    let c = load("", &[("BITVILLE_PG_SPIKES_LOAD", "3")]).unwrap();
    assert_eq!(c.spikes.load, Some(3.0));

    for (ini, wanted) in [
        (
            "[activity]\nsample_interval_ms = 50\n",
            "[activity] sample_interval_ms = \"50\": must be 0 (sampling off) or from 100 to 60000",
        ),
        (
            "[spikes]\nactive_sessions = 1.5\n",
            "[spikes] active_sessions = \"1.5\": expected a whole number above 0",
        ),
        (
            "[spikes]\nload = -1\n",
            "[spikes] load = \"-1\": expected a number above 0",
        ),
        ("[spikes]\nload = lots\n", "[spikes] load = \"lots\""),
        (
            "[spikes]\nlookback_s = 0\n",
            "[spikes] lookback_s = \"0\": must be from 1 to 3600",
        ),
        ("[activity]\nsample_top_n = 0\n", "[activity] sample_top_n"),
    ] {
        let e = load(ini, &[]).unwrap_err().to_string();
        assert!(e.contains(wanted), "{ini}: {e}");
        assert!(e.contains("agent.ini"), "{e}");
    }
}
