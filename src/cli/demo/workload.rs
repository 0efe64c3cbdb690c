//! The demo's workload: what an application with the Bitville PHP agent would do to the throwaway
//! server, so that every kind of data has something to show. Requests tagged both ways the PHP agent
//! tags them (`application_name = 'bitville-<uuid>'` and `/* correlation:<uuid> */`), statements slow
//! enough for the server log (`log_min_duration_statement`, auto_explain), and a row lock held for
//! seconds while another request waits on it (the locks batch, `log_lock_waits`, and the spike
//! trigger `lock_wait_ms`).
//!
//! It runs on its own thread and runtime until told to stop; a failed statement is retried on the
//! next round, never fatal: the demo is about the agent, not the workload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// A random UUID (version 4), as the PHP agent makes one per request.
pub fn uuid_v4() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Connection string of the demo server's Unix socket.
pub fn conninfo(socket_dir: &std::path::Path, port: u16) -> String {
    format!(
        "host={} port={port} user=postgres dbname=postgres",
        socket_dir.display()
    )
}

async fn connect(conninfo: &str, app: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&format!("{conninfo} application_name={app}"), NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates the table the workload uses.
pub async fn prepare(conninfo: &str) -> Result<(), tokio_postgres::Error> {
    let client = connect(conninfo, "demo-setup").await?;
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
             CREATE TABLE IF NOT EXISTS demo_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO demo_accounts SELECT g, 100 FROM generate_series(1, 10000) g
               ON CONFLICT DO NOTHING;
             ANALYZE demo_accounts;",
        )
        .await
}

/// Runs the workload until `stop` is set.
pub fn spawn(conninfo: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let tasks = [
                tokio::spawn(requests_by_application_name(conninfo.clone(), stop.clone())),
                tokio::spawn(requests_by_comment(conninfo.clone(), stop.clone())),
                tokio::spawn(lock_holder(conninfo.clone(), stop.clone())),
                tokio::spawn(lock_waiter(conninfo, stop)),
            ];
            for t in tasks {
                let _ = t.await;
            }
        });
    })
}

/// Sleeps up to `d`, waking early when `stop` is set; false when stopping.
async fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let s = left.min(step);
        tokio::time::sleep(s).await;
        left -= s;
    }
    !stop.load(Ordering::Relaxed)
}

/// Requests tagged the PHP agent's first way: `application_name = 'bitville-<uuid>'` per request.
async fn requests_by_application_name(conninfo: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(client) = connect(&conninfo, "demo-app").await {
            while !stop.load(Ordering::Relaxed) {
                let id = uuid_v4();
                let set = format!("SET application_name = 'bitville-{id}'");
                let ok = client.batch_execute(&set).await.is_ok()
                    && client
                        .batch_execute("SELECT sum(balance) FROM demo_accounts WHERE id % 7 = 3")
                        .await
                        .is_ok()
                    && client
                        .batch_execute(
                            "SELECT pg_sleep(0.6), count(*) FROM demo_accounts WHERE balance > 50",
                        )
                        .await
                        .is_ok();
                if !ok || !pause(&stop, Duration::from_millis(700)).await {
                    break;
                }
            }
        }
        pause(&stop, Duration::from_secs(1)).await;
    }
}

/// Requests tagged the PHP agent's second way: a `/* correlation:<uuid> */` comment on each statement.
async fn requests_by_comment(conninfo: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(client) = connect(&conninfo, "demo-web").await {
            while !stop.load(Ordering::Relaxed) {
                let id = uuid_v4();
                let sql = format!(
                    "/* correlation:{id} */ SELECT pg_sleep(0.4), max(balance) FROM demo_accounts \
                     WHERE id BETWEEN 100 AND 5000"
                );
                if client.batch_execute(&sql).await.is_err()
                    || !pause(&stop, Duration::from_millis(500)).await
                {
                    break;
                }
            }
        }
        pause(&stop, Duration::from_secs(1)).await;
    }
}

/// Holds a row lock for 20 s, lets go for 0.7 s, and again: the waiter waits nearly always, so
/// every collection cycle sees the wait, whatever its phase.
async fn lock_holder(conninfo: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(client) = connect(&conninfo, "demo-batch-job").await {
            while !stop.load(Ordering::Relaxed) {
                if client
                    .batch_execute(
                        "BEGIN; UPDATE demo_accounts SET balance = balance + 1 WHERE id = 1",
                    )
                    .await
                    .is_err()
                {
                    break;
                }
                let held = pause(&stop, Duration::from_secs(20)).await;
                if client.batch_execute("COMMIT").await.is_err() || !held {
                    break;
                }
                if !pause(&stop, Duration::from_millis(700)).await {
                    break;
                }
            }
        }
        pause(&stop, Duration::from_secs(1)).await;
    }
}

/// A correlated request that updates the locked row, and so waits for the holder.
async fn lock_waiter(conninfo: String, stop: Arc<AtomicBool>) {
    // Start after the holder has its lock.
    if !pause(&stop, Duration::from_millis(500)).await {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        if let Ok(client) = connect(&conninfo, "demo-checkout").await {
            let cancel = client.cancel_token();
            while !stop.load(Ordering::Relaxed) {
                let id = uuid_v4();
                let sql = format!(
                    "/* correlation:{id} */ UPDATE demo_accounts SET balance = balance - 1 WHERE id = 1"
                );
                let update = client.batch_execute(&sql);
                tokio::pin!(update);
                // Give up the wait when the demo stops, so the server stops at once.
                let done = loop {
                    tokio::select! {
                        r = &mut update => break r.is_ok(),
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stop.load(Ordering::Relaxed) {
                                let _ = cancel.cancel_query(NoTls).await;
                            }
                        }
                    }
                };
                if !done || !pause(&stop, Duration::from_millis(300)).await {
                    break;
                }
            }
        }
        pause(&stop, Duration::from_secs(1)).await;
    }
}
