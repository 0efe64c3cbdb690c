//! Outbox benchmark: enqueue and drain rates with realistic 50 KB JSON batches against a real HTTP
//! listener on 127.0.0.1 (its own thread and runtime), and the drain of a 24-hour backlog
//! (5 types x 1440 batches) as the daemon would do it in 60 s cycles.
//!
//! Run: `cargo bench --bench outbox` (BENCH_BATCHES=N changes the rate-test size). Prints figures;
//! asserts nothing about speed.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use postgres_agent::batch::{AgentInfo, Batch, BatchKind, Record};
use postgres_agent::config::Config;
use postgres_agent::ship::{DrainStop, Shipper};
use serde_json::{json, Value};

/// Budget the daemon gives one drain pass in a 60 s cycle (half the interval, at most 30 s:
/// `daemon::cycle::drain_budget`).
const CYCLE_BUDGET: Duration = Duration::from_secs(30);

fn main() {
    let n: usize = std::env::var("BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let received = Arc::new(AtomicU64::new(0));
    let addr = start_listener(received.clone());
    let url = format!("http://{addr}/ingest");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let sample = batch(BatchKind::PgActivity, 0);
    let json_len = serde_json::to_vec(&sample).map(|v| v.len()).unwrap_or(0);
    let gz_len = postgres_agent::ship::encode::batch::prepare(&sample, usize::MAX, true)
        .map(|p| p[0].body.len())
        .unwrap_or(0);
    println!(
        "batch: {} records, {:.1} KB JSON, {:.1} KB gzip",
        sample.data.len(),
        json_len as f64 / 1000.0,
        gz_len as f64 / 1000.0
    );

    // Rates.
    let dir = tempfile::tempdir().expect("tempdir");
    let shipper = Shipper::open(&config(dir.path(), &url)).expect("open");
    let batches: Vec<Batch> = (0..n)
        .map(|i| batch(BatchKind::ALL[i % 5], i as u64))
        .collect();
    let t = Instant::now();
    for b in &batches {
        shipper.enqueue(b).expect("enqueue");
    }
    let enq = t.elapsed();
    println!(
        "enqueue: {n} batches in {:.2} s = {:.0} batches/s ({:.2} ms each; serialize + gzip + fsynced commit)",
        enq.as_secs_f64(),
        n as f64 / enq.as_secs_f64(),
        enq.as_secs_f64() * 1000.0 / n as f64
    );
    let t = Instant::now();
    let r = rt.block_on(shipper.drain(Duration::from_secs(3600)));
    let dr = t.elapsed();
    assert_eq!(r.stopped, DrainStop::Empty, "{r:?}");
    println!(
        "drain:   {} batches in {:.2} s = {:.0} batches/s ({:.1} MB/s of JSON; POST + delete)",
        r.delivered,
        dr.as_secs_f64(),
        r.delivered as f64 / dr.as_secs_f64(),
        (r.delivered as f64 * json_len as f64) / dr.as_secs_f64() / 1e6
    );
    drop(shipper);

    // A 24-hour backlog: 1440 cycles x 5 types queued during an outage, then drained in passes of
    // CYCLE_BUDGET each, as the daemon does once per cycle.
    let dir = tempfile::tempdir().expect("tempdir");
    let shipper = Shipper::open(&config(dir.path(), &url)).expect("open");
    let t = Instant::now();
    for cycle in 0..1440u64 {
        for kind in BatchKind::ALL {
            shipper.enqueue(&batch(kind, cycle)).expect("enqueue");
        }
    }
    let fill = t.elapsed();
    let stats = shipper.stats().expect("stats");
    let o = stats.outbox.expect("outbox");
    println!(
        "backlog: 7200 batches queued in {:.1} s; outbox {} batches, {:.1} MB compressed, {:.1} MB on disk, {} evicted (cap 100 MB)",
        fill.as_secs_f64(),
        o.depth,
        o.bytes as f64 / 1e6,
        o.file_bytes as f64 / 1e6,
        o.evicted
    );
    let before = received.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut passes = 0;
    loop {
        passes += 1;
        let r = rt.block_on(shipper.drain(CYCLE_BUDGET));
        if r.stopped != DrainStop::Budget {
            assert_eq!(r.stopped, DrainStop::Empty, "{r:?}");
            break;
        }
    }
    let drain = t.elapsed();
    println!(
        "backlog drain: {} batches in {:.1} s of sending = {} pass(es) of at most {} s, i.e. {} cycle(s) of 60 s ({:.0} batches/s)",
        received.load(Ordering::Relaxed) - before,
        drain.as_secs_f64(),
        passes,
        CYCLE_BUDGET.as_secs(),
        passes,
        (received.load(Ordering::Relaxed) - before) as f64 / drain.as_secs_f64()
    );
}

fn config(dir: &std::path::Path, url: &str) -> Config {
    let ini = format!(
        "[agent]\nstate_dir = {}\n[listener]\nprotocol = batch\nurl = {url}\napi_key = bench\n",
        dir.display()
    );
    let path = dir.join("agent.ini");
    std::fs::write(&path, ini).expect("write ini");
    Config::load_with(Some(&path), Vec::<(String, String)>::new()).expect("config")
}

/// About 50 KB of pg_activity-like JSON: 107 backends with realistic field spread.
fn batch(kind: BatchKind, seed: u64) -> Batch {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let tables = [
        "orders",
        "customers",
        "line_items",
        "payments",
        "shipments",
        "audit_log",
    ];
    let data: Vec<Value> = (0..107)
        .map(|i| {
            let t = tables[(rnd() % 6) as usize];
            json!({
                "pid": 20_000 + rnd() % 40_000,
                "datname": "shop",
                "usename": if i % 5 == 0 { "reporting" } else { "app_rw" },
                "application_name": format!("web-{}", rnd() % 12),
                "client_addr": format!("10.0.{}.{}", rnd() % 8, rnd() % 250),
                "backend_start": "2026-11-27T00:00:00.000Z",
                "xact_start": null,
                "query_start": format!("2026-11-27T00:{:02}:{:02}.{:03}Z", rnd() % 60, rnd() % 60, rnd() % 1000),
                "state": if rnd() % 3 == 0 { "active" } else { "idle" },
                "wait_event_type": if rnd() % 7 == 0 { Value::from("Lock") } else { Value::Null },
                "wait_event": null,
                "backend_type": "client backend",
                "query": format!("SELECT id, status, total FROM {t} WHERE customer_id = $1 AND created_at > $2 ORDER BY id DESC LIMIT {}", rnd() % 100),
                "query_id": rnd() as i64,
                "correlation": if i % 4 == 0 { Value::from(format!("{:016x}", rnd())) } else { Value::Null },
            })
        })
        .collect();
    let data = data
        .iter()
        .map(|v| Record::new(v).expect("a JSON value serializes"))
        .collect();
    Batch::new(kind, "bench", AgentInfo::new("db1"), None, 60, data)
}

async fn ingest(State(count): State<Arc<AtomicU64>>, body: Bytes) -> StatusCode {
    // Decompress like a real listener would, so its CPU cost is on the listener's thread.
    let mut out = Vec::new();
    if flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .is_err()
    {
        return StatusCode::BAD_REQUEST;
    }
    count.fetch_add(1, Ordering::Relaxed);
    StatusCode::ACCEPTED
}

fn start_listener(count: Arc<AtomicU64>) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("listener runtime");
        rt.block_on(async move {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let _ = tx.send(tcp.local_addr().expect("addr"));
            let app = axum::Router::new()
                .route("/ingest", axum::routing::post(ingest))
                .with_state(count);
            let _ = axum::serve(tcp, app).await;
        });
    });
    rx.recv().expect("listener address")
}
