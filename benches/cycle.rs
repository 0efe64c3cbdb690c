//! One collection cycle against a busy server: 5,000 distinct statements in pg_stat_statements (all of
//! them run during the interval) and 100 client sessions (idle, idle in transaction, active, and lock
//! waits behind one holder). Prints the agent's wall and CPU time per cycle and the time the server
//! spent on the agent's queries, read from pg_stat_statements by their `/* postgres-agent */` tag.
//!
//! Run: `cargo bench --bench cycle` (PG_BINDIR selects the PostgreSQL build, as for the tests).

#[allow(dead_code)] // the bench uses a few of the integration tests' helpers
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use postgres_agent::collect::{CollectSettings, Collectors};
use postgres_agent::db::Db;
use support::collect::{client, wait_until};
use support::{agent_config, PgOptions, PgServer};

const TABLES: usize = 100;
const COLUMNS: usize = 50;
const SESSIONS: usize = 100;

/// CPU time of the calling thread (the current-thread runtime runs the whole cycle on it).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("schedstat field");
    Duration::from_nanos(ns)
}

/// (server ms, calls) of the agent's statements so far.
async fn agent_server_time(c: &tokio_postgres::Client) -> (f64, i64) {
    let row = c
        .query_one(
            "SELECT coalesce(sum(total_exec_time + total_plan_time), 0)::float8, \
             coalesce(sum(calls), 0)::int8 FROM pg_stat_statements \
             WHERE query LIKE '%/* postgres-agent */%'",
            &[],
        )
        .await
        .expect("agent time");
    (row.get(0), row.get(1))
}

/// Server ms per agent statement (keyed by the start of its text).
async fn agent_breakdown(c: &tokio_postgres::Client) -> std::collections::HashMap<String, f64> {
    c.query(
        "SELECT regexp_replace(left(query, 200), '\\s+', ' ', 'g'), \
         (total_exec_time + total_plan_time)::float8 FROM pg_stat_statements \
         WHERE query LIKE '%/* postgres-agent */%'",
        &[],
    )
    .await
    .expect("breakdown")
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn run_workload(c: &tokio_postgres::Client) {
    for t in 0..TABLES {
        let sql: Vec<String> = (0..COLUMNS)
            .map(|col| format!("SELECT c{col} FROM bench_t{t} WHERE c0 = {t}"))
            .collect();
        c.batch_execute(&sql.join(";")).await.expect("workload");
    }
}

fn main() {
    let server = PgServer::start_with(PgOptions {
        conf: vec![
            "pg_stat_statements.max = 10000".into(),
            "max_connections = 250".into(),
        ],
        ..PgOptions::default()
    });
    let state = tempfile::tempdir().expect("state dir");
    let config = agent_config(&server, state.path(), "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin = client(&server, "postgres", "bench-admin").await;
        let cols: Vec<String> = (0..COLUMNS).map(|c| format!("c{c} int")).collect();
        for t in 0..TABLES {
            admin
                .batch_execute(&format!("CREATE TABLE bench_t{t} ({})", cols.join(", ")))
                .await
                .expect("create");
        }
        admin
            .batch_execute("CREATE TABLE bench_lock (id int PRIMARY KEY, v int); INSERT INTO bench_lock VALUES (1, 0)")
            .await
            .expect("lock table");

        // 100 sessions: 1 lock holder + 9 waiters, 30 active, 30 idle in transaction, 30 idle.
        let mut sessions = Vec::new();
        let holder = client(&server, "postgres", "holder").await;
        holder
            .batch_execute("BEGIN; UPDATE bench_lock SET v = 1 WHERE id = 1")
            .await
            .expect("holder");
        sessions.push(holder);
        for i in 0..9 {
            let c = client(&server, "postgres", &format!("waiter-{i}")).await;
            tokio::spawn(async move {
                let _ = c.batch_execute("UPDATE bench_lock SET v = 2 WHERE id = 1").await;
                drop(c);
            });
        }
        for i in 0..30 {
            let c = client(&server, "postgres", &format!("active-{i}")).await;
            tokio::spawn(async move {
                let _ = c
                    .batch_execute(&format!(
                        "SELECT pg_sleep(600) /*traceparent='00-{:032x}-{:016x}-01'*/",
                        i + 1,
                        i + 1
                    ))
                    .await;
                drop(c);
            });
        }
        for i in 0..30 {
            let c = client(&server, "postgres", &format!("idle-tx-{i}")).await;
            c.batch_execute("BEGIN; SELECT 1").await.expect("idle tx");
            sessions.push(c);
        }
        for i in 0..30 {
            sessions.push(client(&server, "postgres", &format!("idle-{i}")).await);
        }
        wait_until(
            &admin,
            "SELECT count(*) >= 39 FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
             AND (wait_event = 'PgSleep' OR wait_event_type = 'Lock')",
        )
        .await;

        let db = Db::new(&config.postgres, &config.safety).expect("db");
        let settings = CollectSettings::from_config(&config);
        let mut collectors = Collectors::new(&settings);
        run_workload(&admin).await;
        let _ = collectors.run_cycle(&db, &settings).await;
        let distinct: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_statements", &[])
            .await
            .expect("count")
            .get(0);

        println!(
            "postgres-agent cycle benchmark: PostgreSQL {}, {distinct} statements in pg_stat_statements, \
             {SESSIONS} client sessions",
            server.major()
        );
        println!(
            "{:<34} {:>9} {:>9} {:>11} {:>7} {:>8}",
            "cycle", "wall ms", "cpu ms", "server ms", "calls", "records"
        );
        for label in [
            "all 5,000 ran, texts not cached",
            "all 5,000 ran, texts cached",
            "all 5,000 ran, texts cached (2)",
        ] {
            run_workload(&admin).await;
            let (ms0, calls0) = agent_server_time(&admin).await;
            let per_query0 = agent_breakdown(&admin).await;
            let cpu0 = thread_cpu();
            let t0 = Instant::now();
            let report = collectors.run_cycle(&db, &settings).await;
            let wall = t0.elapsed();
            let cpu = thread_cpu() - cpu0;
            let (ms1, calls1) = agent_server_time(&admin).await;
            assert!(report.all_ok(), "{:?}", report.runs);
            let records: usize = report.batches.iter().map(|b| b.count).sum();
            println!(
                "{label:<34} {:>9.1} {:>9.1} {:>11.1} {:>7} {:>8}",
                wall.as_secs_f64() * 1e3,
                cpu.as_secs_f64() * 1e3,
                ms1 - ms0,
                calls1 - calls0,
                records
            );
            if label.ends_with("not cached") {
                let per_query1 = agent_breakdown(&admin).await;
                let mut top: Vec<(f64, &String)> = per_query1
                    .iter()
                    .map(|(q, ms)| (ms - per_query0.get(q).copied().unwrap_or(0.0), q))
                    .filter(|(ms, _)| *ms > 0.0)
                    .collect();
                top.sort_by(|a, b| b.0.total_cmp(&a.0));
                for (ms, q) in top.iter().take(4) {
                    let q: String = q.chars().skip(21).take(70).collect();
                    println!("    server {ms:>7.1} ms  {q}");
                }
                for run in &report.runs {
                    println!("    {:<12} {:>8.1} ms  {:?}", run.name, run.duration.as_secs_f64() * 1e3, run.outcome);
                }
            }
        }
        let baseline = state.path().join("statements-baseline.json");
        println!(
            "statement baseline on disk: {} bytes for {distinct} entries",
            std::fs::metadata(&baseline).map(|m| m.len()).unwrap_or(0)
        );
        db.close();
    });
}
