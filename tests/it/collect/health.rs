//! Server and table health (issue 24) against a real server: a second database the agent is not
//! configured for, with dead tuples, seq scans and rollbacks made after the start, checkpoints and a
//! settings change, all seen as exact deltas, while the agent holds at most two sessions; and, on
//! whatever major the suite runs against (scripts/pg-versions.sh runs 13-18), every version-aware
//! section reads or degrades alone when the role may not read a view.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;

use postgres_agent::batch::BatchKind;
use postgres_agent::collect::{CollectSettings, Collectors, CycleReport, Outcome};
use postgres_agent::db::Db;
use serde_json::Value;
use support::collect::{client, validate, wait_until};
use support::{agent_config, rt, PgServer};

pub(super) const HEALTH: &str = "[health]\nenabled = true\ntable_interval_s = 1\n";

fn records(report: &CycleReport, kind: BatchKind) -> Vec<Value> {
    report
        .batches
        .iter()
        .filter(|b| b.kind == kind)
        .flat_map(|b| {
            let v = serde_json::to_value(b).unwrap();
            validate(&v);
            v["data"].as_array().unwrap().clone()
        })
        .collect()
}

fn health_runs_ok(report: &CycleReport) {
    for run in report.runs.iter().filter(|r| r.name.starts_with("health_")) {
        assert!(
            matches!(run.outcome, Outcome::Ok { .. } | Outcome::Skipped),
            "{:?}",
            report.runs
        );
    }
}

/// Samples the agent's sessions in pg_stat_activity every 20 ms on a thread of its own.
pub(super) fn watch_sessions(server: &PgServer, stop: Arc<AtomicBool>, most: Arc<AtomicI64>) {
    let (dir, port) = (server.socket_dir.clone(), server.port);
    std::thread::spawn(move || {
        rt().block_on(async {
            let c = support::collect::connect(&dir, port, "postgres", "watcher").await;
            while !stop.load(Ordering::Relaxed) {
                let row = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE application_name = 'bitville-postgres-agent'",
                        &[],
                    )
                    .await;
                // The server goes away when the test ends (or fails).
                let Ok(row) = row else { break };
                most.fetch_max(row.get(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
}

#[test]
fn dead_tuples_scans_rollbacks_checkpoints_and_a_setting_change_in_an_unconfigured_database() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), HEALTH);
    server.psql("postgres", "CREATE DATABASE other");
    server.psql(
        "other",
        "CREATE TABLE dead (id int) WITH (autovacuum_enabled = false); \
         INSERT INTO dead SELECT generate_series(1, 20000); \
         DELETE FROM dead WHERE id <= 10000; \
         CREATE TABLE scanned (id int) WITH (autovacuum_enabled = false); \
         INSERT INTO scanned SELECT generate_series(1, 100)",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    watch_sessions(&server, stop.clone(), most.clone());
    rt().block_on(async {
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let settings = CollectSettings::from_config(&config);
        let mut collectors = Collectors::new(&settings);
        // The start: settings snapshot, baselines of every counter.
        let first = collectors.run_cycle(&db, &settings).await;
        health_runs_ok(&first);
        let snapshot = records(&first, BatchKind::PgSettings);
        assert!(snapshot.iter().all(|r| r["change"] == "snapshot"));
        assert!(snapshot.iter().any(|r| r["name"] == "work_mem"));
        let tables = records(&first, BatchKind::PgTables);
        let scanned = tables.iter().find(|r| r["relname"] == "scanned").unwrap();
        assert_eq!(scanned["counters"], "first", "{scanned}");
        assert!(scanned.get("seq_scan").is_none(), "{scanned}");

        // After the start, in the database the agent is not configured for.
        server.psql("other", &"SELECT count(*) FROM scanned;".repeat(7));
        let other = client(&server, "other", "rollbacks").await;
        for _ in 0..5 {
            other
                .batch_execute("BEGIN; SELECT 1; ROLLBACK")
                .await
                .unwrap();
        }
        drop(other);
        for _ in 0..3 {
            server.psql("postgres", "CHECKPOINT");
        }
        server.psql("postgres", "ALTER SYSTEM SET work_mem = '7MB'");
        server.psql("postgres", "SELECT pg_reload_conf()");

        let (mut seq_scan, mut rollbacks, mut checkpoints) = (0, 0, 0);
        let mut change = None;
        let mut dead = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut extra_cycles = 0;
        while extra_cycles < 3 {
            assert!(
                Instant::now() < deadline,
                "seq_scan {seq_scan}, xact_rollback {rollbacks}, checkpoints_req {checkpoints}, \
                 change {change:?}"
            );
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let report = collectors.run_cycle(&db, &settings).await;
            health_runs_ok(&report);
            for r in records(&report, BatchKind::PgTables) {
                if r["datname"] == "other" && r["kind"] == "table" {
                    if r["relname"] == "scanned" {
                        seq_scan += r["seq_scan"].as_i64().unwrap();
                    }
                    if r["relname"] == "dead" {
                        dead = r["n_dead_tup"].as_i64();
                    }
                }
            }
            for r in records(&report, BatchKind::PgDatabase) {
                if r["datname"] == "other" {
                    rollbacks += r["xact_rollback"].as_i64().unwrap();
                }
            }
            for r in records(&report, BatchKind::PgServerHealth) {
                if r["section"] == "checkpointer" {
                    checkpoints += r["checkpoints_req"].as_i64().unwrap();
                    assert_eq!(r["checkpoints_req"], r["num_requested"], "{r}");
                }
            }
            for r in records(&report, BatchKind::PgSettings) {
                if r["name"] == "work_mem" {
                    change = Some(r);
                }
            }
            let done = seq_scan >= 7 && rollbacks >= 5 && checkpoints >= 3 && change.is_some();
            // A few cycles more, to see that nothing is counted twice.
            if done {
                extra_cycles += 1;
            }
        }
        assert_eq!(seq_scan, 7);
        assert_eq!(rollbacks, 5);
        assert_eq!(checkpoints, 3);
        let change = change.unwrap();
        assert_eq!(change["change"], "changed", "{change}");
        assert_eq!(change["setting"], "7168", "{change}");
        assert_eq!(change["previous_setting"], "4096", "{change}");
        assert_eq!(change["unit"], "kB", "{change}");
        let dead = dead.unwrap();
        assert!((9_000..=11_000).contains(&dead), "n_dead_tup {dead}");

        // datfrozenxid_age as the server says it, read right after the cycle on a quiet server.
        let report = collectors.run_cycle(&db, &settings).await;
        let server_age: i64 = server
            .psql(
                "postgres",
                "SELECT age(datfrozenxid) FROM pg_database WHERE datname = 'other'",
            )
            .parse()
            .unwrap();
        let ours = records(&report, BatchKind::PgDatabase)
            .into_iter()
            .find(|r| r["datname"] == "other")
            .unwrap();
        let ours = ours["datfrozenxid_age"].as_i64().unwrap();
        // Only transaction IDs assigned between the two reads (none by the agent: read-only) differ.
        assert!(
            ours <= server_age && server_age - ours <= 2,
            "agent {ours}, server {server_age}"
        );
        db.close();
    });
    stop.store(true, Ordering::Relaxed);
    let most = most.load(Ordering::Relaxed);
    assert!(most >= 1, "the watcher never saw the agent");
    assert!(most <= 2, "the agent held {most} sessions at once");
}

#[test]
fn a_restart_reports_deltas_across_it_and_no_settings_change() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), HEALTH);
    server.psql("postgres", "CREATE TABLE probe (id int)");
    rt().block_on(async {
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let settings = CollectSettings::from_config(&config);
        let _ = Collectors::new(&settings).run_cycle(&db, &settings).await;
        server.psql("postgres", &"SELECT count(*) FROM probe;".repeat(4));
        // Before 15 the statistics collector publishes counters up to half a second late.
        let watcher = client(&server, "postgres", "watcher").await;
        wait_until(
            &watcher,
            "SELECT seq_scan = 4 FROM pg_stat_user_tables WHERE relname = 'probe'",
        )
        .await;
        // A new agent process: baselines come from the state directory.
        let report = Collectors::new(&settings).run_cycle(&db, &settings).await;
        health_runs_ok(&report);
        let probe = records(&report, BatchKind::PgTables)
            .into_iter()
            .find(|r| r["relname"] == "probe")
            .unwrap();
        assert_eq!(probe["counters"], "delta", "{probe}");
        assert_eq!(probe["seq_scan"], 4, "{probe}");
        // The restart sends a snapshot, but no setting is reported as changed.
        let settings_records = records(&report, BatchKind::PgSettings);
        assert!(!settings_records.is_empty());
        assert!(settings_records.iter().all(|r| r["change"] == "snapshot"));
        db.close();
    });
}

#[test]
fn every_section_of_this_major_reads_and_a_refused_view_leaves_the_rest() {
    let server = PgServer::start();
    let major = server.major();
    let state = tempfile::tempdir().unwrap();
    // A role without pg_monitor, and a view it may not read.
    let refused = if major >= 17 {
        "pg_stat_checkpointer"
    } else {
        "pg_stat_bgwriter"
    };
    server.psql(
        "postgres",
        &format!(
            "CREATE ROLE limited LOGIN; GRANT pg_read_all_stats TO limited; \
             REVOKE SELECT ON {refused} FROM PUBLIC"
        ),
    );
    for (user, bgwriter_readable) in [("postgres", true), ("limited", false)] {
        let _ = user;
        let extra = if bgwriter_readable {
            HEALTH.to_string()
        } else {
            format!("{HEALTH}[postgres]\nuser = limited\n")
        };
        let config = agent_config(&server, state.path(), &extra);
        rt().block_on(async {
            let db = Db::new(&config.postgres, &config.safety).unwrap();
            let settings = CollectSettings::from_config(&config);
            let mut collectors = Collectors::new(&settings);
            let _ = collectors.run_cycle(&db, &settings).await;
            let report = collectors.run_cycle(&db, &settings).await;
            health_runs_ok(&report);
            let sections: Vec<String> = records(&report, BatchKind::PgServerHealth)
                .iter()
                .map(|r| r["section"].as_str().unwrap().to_string())
                .collect();
            let has = |s: &str| sections.iter().any(|x| x == s);
            assert_eq!(
                has("checkpointer"),
                bgwriter_readable,
                "{major}: {sections:?}"
            );
            assert_eq!(has("wal"), major >= 14, "{major}: {sections:?}");
            assert_eq!(has("io"), major >= 16, "{major}: {sections:?}");
            let dbs = records(&report, BatchKind::PgDatabase);
            let postgres = dbs.iter().find(|r| r["datname"] == "postgres").unwrap();
            assert_eq!(postgres["counters"], "delta", "{postgres}");
            assert!(postgres["datfrozenxid_age"].as_i64().unwrap() > 0);
            assert_eq!(postgres.get("session_time").is_some(), major >= 14);
            if bgwriter_readable {
                let c = records(&report, BatchKind::PgServerHealth)
                    .into_iter()
                    .find(|r| r["section"] == "checkpointer")
                    .unwrap();
                for f in [
                    "checkpoints_req",
                    "num_requested",
                    "checkpoints_timed",
                    "num_timed",
                ] {
                    assert!(c[f].is_number(), "{f}: {c}");
                }
            }
            db.close();
        });
    }
}

/// A real standby made with pg_basebackup: the primary shows the standby's replication record with
/// its lag and the slot's `wal_status`; the standby shows its receive/replay lag.
#[test]
fn a_real_standby_shows_replay_lag_and_the_slot_wal_status() {
    let primary = PgServer::start();
    let Some(basebackup) = support::standby::basebackup(&primary) else {
        // The embedded builds of scripts/pg-versions.sh carry only the server; PostgreSQL 15 (the
        // suite's own) always has it.
        assert_ne!(
            primary.major(),
            15,
            "pg_basebackup missing for PostgreSQL 15"
        );
        eprintln!(
            "no pg_basebackup for PostgreSQL {}: skipped",
            primary.major()
        );
        return;
    };
    let standby = support::standby::Standby::start(&primary, &basebackup, "health_standby");
    let state = tempfile::tempdir().unwrap();
    let on_primary = agent_config(&primary, &state.path().join("p"), HEALTH);
    let mut on_standby = agent_config(&primary, &state.path().join("s"), HEALTH);
    on_standby.postgres.host = standby.socket_dir.display().to_string();
    on_standby.postgres.port = standby.port;
    primary.psql(
        "postgres",
        "CREATE TABLE replicated AS SELECT generate_series(1, 1000) AS id",
    );
    rt().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(90);
        let section = |report: &CycleReport, name: &str| -> Vec<Value> {
            records(report, BatchKind::PgServerHealth)
                .into_iter()
                .filter(|r| r["section"] == name)
                .collect()
        };
        // The primary: the standby streams through the slot.
        loop {
            let report = support::collect::cycle(&on_primary).await;
            health_runs_ok(&report);
            let repl = section(&report, "replication");
            let slot = section(&report, "replication_slot");
            let streaming = repl.iter().find(|r| r["state"] == "streaming");
            let slot = slot.iter().find(|r| r["slot_name"] == "health_standby");
            if let (Some(r), Some(s)) = (streaming, slot) {
                assert!(r["replay_lag_bytes"].is_number(), "{r}");
                assert!(r.get("replay_lag_s").is_some(), "{r}");
                assert_eq!(s["wal_status"], "reserved", "{s}");
                assert_eq!(s["active"], true, "{s}");
                assert!(s["retained_bytes"].is_number(), "{s}");
                break;
            }
            assert!(Instant::now() < deadline, "{repl:?} {slot:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The standby: its receive/replay positions and lag once a transaction was replayed.
        loop {
            let report = support::collect::cycle(&on_standby).await;
            health_runs_ok(&report);
            let recovery = section(&report, "recovery");
            let receiver = section(&report, "wal_receiver");
            assert!(section(&report, "replication_slot").is_empty());
            if let (Some(r), Some(w)) = (recovery.first(), receiver.first()) {
                if r["replay_lag_s"].is_number() && w["status"] == "streaming" {
                    assert!(r["replay_lag_bytes"].as_f64().unwrap() >= 0.0, "{r}");
                    assert_eq!(r["in_recovery"], true, "{r}");
                    assert!(w.get("conninfo").is_none(), "{w}");
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{recovery:?} {receiver:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    drop(standby);
}
