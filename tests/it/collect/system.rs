//! system_metrics against the real host: shares and rates in range, the data and log directories'
//! filesystems, the server's processes found from its postmaster; still reported when the database is
//! down.

use crate::support;

use postgres_agent::batch::BatchKind;
use postgres_agent::collect::Outcome;
use support::collect::{batch, cycle, validate};
use support::{agent_config, rt, PgServer};

#[test]
fn host_record_covers_cpu_memory_filesystems_io_and_postgres_processes() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    let report = rt().block_on(cycle(&config));
    assert!(report.all_ok(), "{:?}", report.runs);
    let b = serde_json::to_value(batch(&report, BatchKind::SystemMetrics)).unwrap();
    validate(&b);
    assert_eq!(b["count"], 1);
    let r = &b["data"][0];
    assert!(r["interval_s"].as_f64().unwrap() >= 0.25, "{r}");
    let cpu = &r["cpu"];
    assert!(cpu["cores"].as_u64().unwrap() >= 1);
    let sum: f64 = [
        "user_percent",
        "system_percent",
        "iowait_percent",
        "steal_percent",
        "idle_percent",
    ]
    .iter()
    .map(|k| cpu[*k].as_f64().unwrap())
    .sum();
    assert!((sum - 100.0).abs() < 1.0 || sum == 0.0, "{cpu}");
    assert!(r["load"]["load1"].as_f64().unwrap() >= 0.0);
    let mem = &r["memory"];
    assert!(mem["total_bytes"].as_u64().unwrap() > mem["available_bytes"].as_u64().unwrap());
    assert_eq!(
        mem["used_bytes"].as_u64().unwrap(),
        mem["total_bytes"].as_u64().unwrap() - mem["available_bytes"].as_u64().unwrap()
    );

    let fs = r["filesystems"].as_array().unwrap();
    let root = fs.iter().find(|f| f["role"] == "root").expect("root fs");
    assert_eq!(root["path"], "/");
    assert_eq!(root["mount_point"], "/");
    assert!(root["total_bytes"].as_u64().unwrap() > 0);
    let data_dir = std::fs::canonicalize(&server.data_dir).unwrap();
    let data = fs
        .iter()
        .find(|f| f["role"] == "data_directory")
        .expect("data fs");
    assert_eq!(
        std::fs::canonicalize(data["path"].as_str().unwrap()).unwrap(),
        data_dir
    );
    assert!(data["total_bytes"].as_u64().unwrap() >= data["free_bytes"].as_u64().unwrap());
    assert!(data["free_bytes"].as_u64().unwrap() >= data["available_bytes"].as_u64().unwrap());
    assert!(data["inodes_total"].as_u64().unwrap() > 0 || data["fs_type"] == "btrfs");
    assert!(data_dir.starts_with(data["mount_point"].as_str().unwrap()));
    let log = fs
        .iter()
        .find(|f| f["role"] == "log_directory")
        .expect("log fs");
    assert_eq!(
        std::fs::canonicalize(log["path"].as_str().unwrap()).unwrap(),
        data_dir.join("log")
    );

    let net = r["network"].as_array().unwrap();
    assert!(net.iter().any(|n| n["interface"] == "lo"), "{net:?}");
    assert!(r["disks"].is_array());

    let procs = &r["postgres_processes"];
    assert_eq!(
        procs["postmaster_pid"].as_i64().unwrap(),
        server.pid().unwrap() as i64
    );
    // postmaster, checkpointer, background writer, walwriter, autovacuum launcher, logger, the agent.
    assert!(procs["count"].as_u64().unwrap() >= 5, "{procs}");
    assert!(procs["rss_bytes"].as_u64().unwrap() > 1_000_000, "{procs}");
}

#[test]
fn host_metrics_are_still_reported_when_the_database_is_down() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "[postgres]\nconnect_timeout_s = 2\n");
    server.stop();
    let report = rt().block_on(cycle(&config));
    assert!(!report.all_ok());
    assert_eq!(report.batches.len(), 1, "{:?}", report.runs);
    let b = serde_json::to_value(batch(&report, BatchKind::SystemMetrics)).unwrap();
    validate(&b);
    assert!(b["server"].is_null());
    assert!(b["data"][0]["postgres_processes"].is_null());
    assert_eq!(b["data"][0]["filesystems"][0]["role"], "root");
    for run in &report.runs {
        if run.name != "system" {
            assert!(matches!(run.outcome, Outcome::Failed(_)), "{run:?}");
        }
    }
}
