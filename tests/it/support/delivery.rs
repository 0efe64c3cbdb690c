//! Helpers of the delivery fault tests (tests/it/ship/drain.rs): reading the daemon's `/metrics`,
//! waiting for conditions, a small tmpfs to fill, a lock-waiter workload, and reassembling split
//! payloads.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::child::AgentChild;
use super::PgServer;

/// The sum of the /metrics samples whose line starts with `prefix` (None when /metrics is down).
pub fn metric(port: u16, prefix: &str) -> Option<f64> {
    let (_, body) = super::http::get(port, "/metrics", Duration::from_secs(2))?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Requests waiting: in the outbox plus held in memory.
pub fn waiting(port: u16) -> Option<f64> {
    Some(
        metric(port, "postgres_agent_outbox_batches{")?
            + metric(port, "postgres_agent_held_requests ")?,
    )
}

/// Polls `cond` every 200 ms until it holds, or fails with `what` after `limit`.
pub fn wait_until(limit: Duration, agent: &AgentChild, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn write_ini(server: &PgServer, state: &Path, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(state).unwrap();
    let path = state.join("agent.ini");
    std::fs::write(&path, server.agent_ini(state, extra)).unwrap();
    path
}

pub fn unix_seconds(rfc3339: &str) -> f64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
        .unwrap_or(0.0)
}

pub fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn error_lines(agent: &AgentChild) -> Vec<String> {
    agent
        .stderr_text()
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .map(str::to_string)
        .collect()
}

/// Parts of every payload received, by the batch they were split from.
pub fn parts_by_batch(payloads: &[Value], list: &str) -> HashMap<String, Vec<Value>> {
    let mut by: HashMap<String, Vec<Value>> = HashMap::new();
    for p in payloads {
        let id = p["part_of"]
            .as_str()
            .or_else(|| p["batch_id"].as_str())
            .unwrap_or("")
            .to_string();
        if p[list].is_array() {
            by.entry(id).or_default().push(p.clone());
        }
    }
    by
}

/// A batch whose parts all arrived and whose records include every pid of `pids`: the records
/// (union of the parts' `list`), or None.
pub fn complete_with(
    by: &HashMap<String, Vec<Value>>,
    list: &str,
    pids: &HashSet<i64>,
) -> Option<Vec<Value>> {
    by.values().find_map(|parts| {
        let want = parts[0]["parts"].as_u64().unwrap_or(1) as usize;
        let numbers: HashSet<u64> = parts.iter().filter_map(|p| p["part"].as_u64()).collect();
        if want < 2 || numbers.len() != want {
            return None;
        }
        let records: Vec<Value> = parts
            .iter()
            .flat_map(|p| p[list].as_array().cloned().unwrap_or_default())
            .collect();
        let seen: HashSet<i64> = records.iter().filter_map(|r| r["pid"].as_i64()).collect();
        pids.is_subset(&seen).then_some(records)
    })
}

/// ~50 sessions: one holds an exclusive lock, 40 wait for it with long (identifier-padded) queries,
/// one more runs a statement whose text alone is over 8 KiB, even gzipped (16 KiB of random
/// identifiers). Returns the waiters' and the long
/// statement's pids. The sessions live on a thread of their own until the server stops.
pub fn workload(server: &PgServer) -> (HashSet<i64>, i64) {
    server.psql("postgres", "CREATE TABLE IF NOT EXISTS hot (id int)");
    let (socket_dir, port) = (server.socket_dir.clone(), server.port);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        super::rt().block_on(async move {
            let (waiters, long) = sessions(&socket_dir, port).await;
            tx.send((waiters, long)).unwrap();
            std::future::pending::<()>().await;
        })
    });
    rx.recv_timeout(Duration::from_secs(90))
        .expect("the workload starts")
}

pub async fn connect(socket_dir: &Path, port: u16, app: &str) -> tokio_postgres::Client {
    super::collect::connect(socket_dir, port, "postgres", app).await
}

pub async fn pid(c: &tokio_postgres::Client) -> i64 {
    let row = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap();
    i64::from(row.get::<_, i32>(0))
}

pub async fn sessions(socket_dir: &Path, port: u16) -> (HashSet<i64>, i64) {
    {
        let holder = connect(socket_dir, port, "holder").await;
        holder
            .batch_execute("BEGIN; LOCK TABLE hot IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        std::mem::forget(holder);
        let mut pids = HashSet::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut ident = move || -> String {
            (0..40)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect()
        };
        for _ in 0..40 {
            let c = connect(socket_dir, port, "waiter").await;
            pids.insert(pid(&c).await);
            let cols: Vec<String> = (0..12)
                .map(|_| format!("count(*) AS {}", ident()))
                .collect();
            let sql = format!("SELECT {} FROM hot", cols.join(", "));
            tokio::spawn(async move {
                let _ = c.simple_query(&sql).await;
            });
        }
        let c = connect(socket_dir, port, "long").await;
        let long = pid(&c).await;
        let cols: Vec<String> = (0..80)
            .map(|_| {
                format!(
                    "1 AS {}{}{}{}{}",
                    ident(),
                    ident(),
                    ident(),
                    ident(),
                    ident()
                )
            })
            .collect();
        let sql = format!("SELECT pg_sleep(600), {}", cols.join(", "));
        tokio::spawn(async move {
            let _ = c.simple_query(&sql).await;
        });
        let check = connect(socket_dir, port, "check").await;
        super::collect::wait_until(
            &check,
            "SELECT count(*) >= 40 FROM pg_locks WHERE NOT granted",
        )
        .await;
        (pids, long)
    }
}

pub const MAX_BODY: usize = 8192;

/// A server that keeps 16 KiB of each query's text in pg_stat_activity.
pub fn long_queries() -> super::PgOptions {
    super::PgOptions {
        conf: vec!["track_activity_query_size = 16384".into()],
        ..Default::default()
    }
}
