//! Bitville interoperability: the agent against a listener that enforces the Bitville listener's
//! contract (tests/it/support/bitville.rs), through the shipper and through the real daemon with a real
//! PostgreSQL and correlated traffic of both PHP-agent styles.

use crate::support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postgres_agent::batch::{AgentInfo, Batch, BatchKind, Record};
use postgres_agent::config::Config;
use postgres_agent::ship::breaker::CircuitState;
use postgres_agent::ship::{DrainStop, Shipper};
use serde_json::{json, Value};
use support::bitville::BitvilleListener;

const KEY: &str = "key-shop-123";

/// A raw HTTP/1.1 request; returns (status, headers, body).
fn request(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{head}\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (headers, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, headers.to_ascii_lowercase(), body.to_string())
}

fn post(addr: SocketAddr, auth: Option<&str>, extra: &str, body: &[u8]) -> (u16, String, String) {
    let mut head = "POST /ingest/postgres HTTP/1.1\r\nContent-Type: application/json".to_string();
    if let Some(a) = auth {
        head.push_str(&format!("\r\nAuthorization: {a}"));
    }
    head.push_str(extra);
    request(addr, &head, body)
}

#[test]
fn the_test_listener_enforces_the_bitville_contract() {
    let l = BitvilleListener::start(&[(KEY, "shop")], 10);
    let bearer = format!("Bearer {KEY}");
    let good =
        json!({"project": "shop", "timestamp": 1.5, "source": "pg_log", "data": {}, "extra": 1});
    assert_eq!(request(l.addr, "GET /health HTTP/1.1", b"").0, 200);
    assert_eq!(post(l.addr, None, "", good.to_string().as_bytes()).0, 401);
    assert_eq!(
        post(l.addr, Some("Bearer nope"), "", good.to_string().as_bytes()).0,
        401
    );
    let gz = postgres_agent::ship::encode::gzip(good.to_string().as_bytes()).unwrap();
    let (status, _, body) = post(l.addr, Some(&bearer), "\r\nContent-Encoding: gzip", &gz);
    assert_eq!(status, 400);
    assert!(body.contains("Invalid JSON payload"), "{body}");
    for bad in [
        json!({"project": "shop", "timestamp": 1, "source": "pg_locks", "data": {}}),
        json!({"project": "x".repeat(51), "timestamp": 1, "source": "pg_log", "data": {}}),
        json!({"project": "", "timestamp": 1, "source": "pg_log", "data": {}}),
        json!({"correlation_id": null, "project": "shop", "timestamp": 1, "source": "pg_log", "data": {}}),
        json!({"project": "shop", "timestamp": "1", "source": "pg_log", "data": {}}),
        json!({"project": "shop", "timestamp": 1, "source": "pg_log", "data": []}),
    ] {
        let (status, _, body) = post(l.addr, Some(&bearer), "", bad.to_string().as_bytes());
        assert_eq!(status, 400, "{bad}");
        assert!(body.contains("Payload validation failed"), "{body}");
    }
    assert_eq!(
        post(l.addr, Some(&bearer), "", good.to_string().as_bytes()).0,
        200
    );
    let rows = l.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].project, "shop");
    assert_eq!(rows[0].correlation_id, "");
    assert!(
        rows[0].payload.get("extra").is_none(),
        "unknown keys stripped"
    );
    // 10 allowed in the window (the 401s and 400s count too); the next is 429 with Retry-After.
    let (status, headers, _) = post(l.addr, Some(&bearer), "", good.to_string().as_bytes());
    assert_eq!(status, 429);
    let retry: u64 = headers
        .lines()
        .find_map(|h| h.strip_prefix("retry-after: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

fn shipper_config(dir: &std::path::Path, url: &str, extra: &str) -> Config {
    let ini = format!(
        "[agent]\nproject_id = shop\nstate_dir = {}\n[listener]\nurl = {url}\napi_key = {KEY}\n\
         timeout_s = 2\n{extra}\n",
        dir.display()
    );
    let path = dir.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    Config::load_with(Some(&path), Vec::<(String, String)>::new()).unwrap()
}

fn batch(kind: BatchKind, records: &[Value]) -> Batch {
    let data = records.iter().map(|r| Record::new(r).unwrap()).collect();
    let mut b = Batch::new(kind, "shop", AgentInfo::new("db1"), None, 60, data);
    // Built from JSON: the correlated statements a producer attaches are rebuilt from it.
    b.restore_correlated();
    b
}

fn session(pid: i64, id: Option<&str>, start: &str) -> Value {
    json!({"pid": pid, "state": "active", "datname": "shop", "usename": "php",
           "query": "SELECT * FROM orders WHERE id = ?", "query_start": start,
           "query_duration_ms": 2500.0, "wait_event_type": null,
           "correlation": id.map(|id| json!({"id": id}))})
}

fn cycle(ids: &[&str]) -> Vec<Batch> {
    let start = "2026-11-28T10:00:00.000Z";
    let sessions: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| session(100 + i as i64, Some(id), start))
        .chain([session(99, None, start)])
        .collect();
    vec![
        batch(BatchKind::PgActivity, &sessions),
        batch(
            BatchKind::PgStatements,
            &[json!({"queryid": "1", "calls": 3})],
        ),
        batch(BatchKind::Locks, &[]),
        batch(
            BatchKind::SystemMetrics,
            &[json!({"interval_s": 0.1, "load": {"load1": 0.5}})],
        ),
        batch(
            BatchKind::PgLogs,
            &[
                json!({"timestamp": "2026-11-28T10:00:03.500Z", "error_severity": "LOG",
                     "message": "duration: 1500.000 ms  statement: /* correlation:log-1 */ SELECT ?",
                     "duration_ms": 1500.0, "correlation": {"id": "log-1"}}),
            ],
        ),
    ]
}

#[test]
fn every_record_type_is_accepted_and_every_correlation_id_links() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let l = BitvilleListener::start(&[(KEY, "shop")], 100);
        let shipper = Shipper::open(&shipper_config(dir.path(), &l.url(), "")).unwrap();
        for b in cycle(&["php-a", "php-b"]) {
            shipper.enqueue(&b).unwrap();
        }
        let r = shipper.drain(Duration::from_secs(20)).await;
        assert_eq!(r.stopped, DrainStop::Empty, "{r:?} {:?}", l.failures());
        assert_eq!(r.dead_lettered, 0);
        let t = l.tally();
        assert_eq!(
            (t.invalid, t.bad_json, t.rate_limited),
            (0, 0, 0),
            "{:?}",
            l.failures()
        );
        // Five aggregates and three correlated statements.
        assert_eq!(t.stored, 8);
        let sources: Vec<String> = l
            .rows()
            .iter()
            .filter(|r| r.correlation_id.is_empty())
            .map(|r| r.payload["source"].as_str().unwrap().to_string())
            .collect();
        for s in support::bitville::SOURCES {
            assert!(sources.iter().any(|x| x == s), "{s} in {sources:?}");
        }
        for id in ["php-a", "php-b"] {
            let rows = l.by_correlation(id);
            assert_eq!(rows.len(), 1, "{id}");
            let p = &rows[0].payload;
            assert_eq!(p["source"], "pg_stat_activity");
            assert_eq!(p["data"]["query"], "SELECT * FROM orders WHERE id = ?");
            assert_eq!(p["data"]["duration_ms"], 2500.0);
            // The statement's start, not the collection time.
            assert_eq!(p["timestamp"].as_f64().unwrap(), 1_795_860_000.0);
        }
        let log = l.by_correlation("log-1");
        assert_eq!(log[0].payload["source"], "pg_log");
        assert_eq!(log[0].payload["data"]["duration_ms"], 1500.0);
        assert!((log[0].timestamp - 1_795_860_002.0).abs() < 1e-3);

        // The same sessions next cycle are not sent again.
        for b in cycle(&["php-a", "php-b"]) {
            shipper.enqueue(&b).unwrap();
        }
        shipper.drain(Duration::from_secs(20)).await;
        assert_eq!(l.by_correlation("php-a").len(), 1);
        assert_eq!(l.by_correlation("log-1").len(), 2, "log entries are events");
    });
}

#[test]
fn a_429_waits_for_retry_after_and_is_not_a_breaker_failure() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let l = BitvilleListener::start(&[(KEY, "shop")], 2);
        let config = shipper_config(
            dir.path(),
            &l.url(),
            "[circuit_breaker]\nfailure_threshold = 1\n",
        );
        let shipper = Shipper::open(&config).unwrap();
        for b in cycle(&[]) {
            shipper.enqueue(&b).unwrap();
        }
        let r = shipper.drain(Duration::from_secs(5)).await;
        assert_eq!((r.delivered, r.throttled), (2, 1), "{r:?}");
        assert_eq!(r.stopped, DrainStop::RetryAfter);
        let again = shipper.drain(Duration::from_secs(5)).await;
        assert_eq!(
            again.stopped,
            DrainStop::RetryAfter,
            "waits for Retry-After"
        );
        assert_eq!(
            l.tally().rate_limited,
            1,
            "no second request inside the window"
        );
        let stats = shipper.stats().unwrap();
        assert_eq!(stats.breaker.unwrap().state, CircuitState::Closed);
        let o = stats.outbox.unwrap();
        // Six requests (five aggregates and the log entry's statement), two delivered.
        assert_eq!((o.depth, o.dead_letters, o.throttled), (4, 0, 1));
    });
}

#[test]
fn requests_are_paced_under_max_requests_per_minute() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let l = BitvilleListener::start(&[(KEY, "shop")], 6);
        let shipper = Shipper::open(&shipper_config(
            dir.path(),
            &l.url(),
            // Five aggregates per cycle: without the sampling aggregate.
            "max_requests_per_minute = 5\n[agent]\ncollection_interval_s = 60\n\
             [activity]\nsample_interval_ms = 0\n",
        ))
        .unwrap();
        for b in cycle(&["a", "b", "c"]) {
            shipper.enqueue(&b).unwrap();
        }
        let r = shipper.drain(Duration::from_secs(2)).await;
        assert_eq!(
            (r.delivered, r.stopped),
            (5, DrainStop::RateLimited),
            "{r:?}"
        );
        assert_eq!(
            l.tally().rate_limited,
            0,
            "the agent never hits the listener's limit"
        );
    });
}

#[test]
fn over_the_budget_statements_merge_per_correlation_id_and_every_id_links() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let l = BitvilleListener::start(&[(KEY, "shop")], 100);
        // 8 per minute less 5 aggregates of a 60 s cycle: room for 3 correlated payloads.
        let shipper = Shipper::open(&shipper_config(
            dir.path(),
            &l.url(),
            "max_requests_per_minute = 8\n",
        ))
        .unwrap();
        let ids: Vec<String> = (0..10).map(|i| format!("req-{}", i % 2)).collect();
        let start = "2026-11-28T10:00:00.000Z";
        let sessions: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| session(200 + i as i64, Some(id), start))
            .collect();
        shipper
            .enqueue(&batch(BatchKind::PgActivity, &sessions))
            .unwrap();
        let r = shipper.drain(Duration::from_secs(5)).await;
        assert_eq!(r.delivered, 3, "{r:?}");
        for id in ["req-0", "req-1"] {
            let rows = l.by_correlation(id);
            assert_eq!(rows.len(), 1);
            let d = &rows[0].payload["data"];
            assert_eq!(d["merged"], 5);
            assert_eq!(d["queries"].as_array().unwrap().len(), 5);
            assert_eq!(d["duration_ms"], 12_500.0);
        }
        let stats = shipper.stats().unwrap();
        assert_eq!(stats.outbox.unwrap().correlated_merged, 8);
        assert_eq!(stats.process.encode.correlated_merged, 8);
    });
}

async fn connect(server: &support::PgServer, application_name: &str) -> tokio_postgres::Client {
    let conn = format!(
        "{} application_name={application_name}",
        server.conn_str("postgres")
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// A client session with `application_name` running `sql` in the background.
async fn session_running(server: &support::PgServer, application_name: &str, sql: &str) {
    let client = connect(server, application_name).await;
    let sql = sql.to_string();
    tokio::spawn(async move {
        let _ = client.batch_execute(&sql).await;
    });
}

/// The daemon, started as the Python agent was (its example INI file, a bare path), against the
/// contract listener with traffic of both PHP-agent styles: sessions with
/// `application_name = 'bitville-<uuid>'` (one of them waiting on a lock) and statements tagged
/// `/* correlation:<uuid> */` logged with their duration; and the Python agent's unsent buffer.
#[test]
fn daemon_links_both_php_agent_styles_with_no_dead_letters_and_no_429() {
    let server = support::PgServer::start_with(support::PgOptions {
        conf: vec!["log_min_duration_statement = 0".into()],
        ..Default::default()
    });
    server.psql("postgres", "CREATE TABLE orders (id int)");
    let l = BitvilleListener::start(&[(KEY, "shop")], 100);
    let state = tempfile::tempdir().unwrap();
    // The Python agent's buffer, written by the real persist-queue package: six unsent payloads.
    let python = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/python_buffer/buffer/data.db");
    std::fs::copy(&fixture, python.path().join("data.db")).unwrap();
    let before = std::fs::read(python.path().join("data.db")).unwrap();
    // The Python agent's own example file, its values set for this server, run unchanged through
    // the Python entry point's form (a bare path). What it lacks comes from our variables.
    let ini = support::python::PYTHON_EXAMPLE
        .replace("5.9.121.222", &server.socket_dir.display().to_string())
        .replace("port = 5432", &format!("port = {}", server.port))
        .replace("user = bitville_monitor", "user = postgres")
        .replace("<your-password-here>", "unused-with-trust")
        .replace("interval_s = 60", "interval_s = 5")
        .replace(
            "/var/log/postgresql/postgresql-main.log",
            &server.log_dir().display().to_string(),
        )
        .replace("https://88.198.22.206:8443/ingest/postgres", &l.url())
        .replace("<your-api-key-here>", KEY)
        .replace("project_id = bitville", "project_id = shop")
        .replace(
            "/var/lib/bitville-postgres-agent/buffer",
            &python.path().display().to_string(),
        );
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let state_dir = state.path().display().to_string();
    let env = [
        ("BITVILLE_PG_AGENT_STATE_DIR", state_dir.as_str()),
        ("BITVILLE_PG_TELEMETRY_LISTEN", ""),
        ("BITVILLE_PG_LOGGING_FORMAT", "text"),
    ];

    let running = "550e8400-e29b-41d4-a716-446655440001";
    let waiting = "550e8400-e29b-41d4-a716-446655440002";
    let logged = [
        "550e8400-e29b-41d4-a716-446655440003",
        "550e8400-e29b-41d4-a716-446655440004",
    ];
    let rt = support::rt();
    let mut agent = support::child::AgentChild::spawn(&[path.to_str().unwrap()], &env);
    rt.block_on(async {
        session_running(
            &server,
            &format!("bitville-{running}"),
            "SELECT pg_sleep(120)",
        )
        .await;
        let holder = connect(&server, "holder").await;
        holder
            .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        session_running(
            &server,
            &format!("bitville-{waiting}"),
            "SELECT count(*) FROM orders",
        )
        .await;
        let (tagged, connection) =
            tokio_postgres::connect(&server.conn_str("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let deadline = Instant::now() + Duration::from_secs(120);
        let ids = [running, waiting, logged[0], logged[1]];
        let mut i = 0;
        loop {
            let id = logged[i % 2];
            i += 1;
            tagged
                .batch_execute(&format!(
                    "/* correlation:{id} */ SELECT pg_sleep(0.02), {i} AS n"
                ))
                .await
                .unwrap();
            let found = [running, waiting]
                .iter()
                .all(|id| !l.by_correlation(id).is_empty())
                && logged.iter().all(|id| {
                    l.by_correlation(id)
                        .iter()
                        .any(|r| r.payload["source"] == "pg_log")
                });
            let aggregates = l
                .rows()
                .iter()
                .filter(|r| r.payload["data"]["sessions"].is_array())
                .count();
            if found && aggregates >= 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not every ID linked: {:?}; tally {:?}; failures {:?}\n{}",
                ids.map(|id| l.by_correlation(id).len()),
                l.tally(),
                l.failures(),
                agent.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        holder.batch_execute("ROLLBACK").await.unwrap();
    });
    agent.signal("TERM");
    let (status, _) = agent.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", agent.stderr_text());

    let t = l.tally();
    assert_eq!(
        (
            t.invalid,
            t.bad_json,
            t.unauthorized,
            t.not_found,
            t.rate_limited
        ),
        (0, 0, 0, 0, 0),
        "{:?}",
        l.failures()
    );
    let stderr = agent.stderr_text();
    assert!(!stderr.contains("batch_dead_lettered"), "{stderr}");
    let r = &l.by_correlation(running)[0].payload;
    assert_eq!(r["source"], "pg_stat_activity");
    assert!(
        r["data"]["query"].as_str().unwrap().contains("pg_sleep"),
        "{r}"
    );
    assert!(r["data"]["duration_ms"].is_number(), "{r}");
    assert_eq!(
        l.by_correlation(running).len(),
        1,
        "sent once across cycles"
    );
    let rows = l.by_correlation(waiting);
    let w = &rows
        .iter()
        .find(|r| r.payload["source"] == "pg_stat_activity")
        .unwrap_or_else(|| panic!("the waiter was not seen waiting: {rows:?}"))
        .payload;
    assert_eq!(w["data"]["wait_event_type"], "Lock", "{w}");
    for id in logged {
        let rows = l.by_correlation(id);
        // The tagged session's statements also show in pg_stat_activity (running, or idle with
        // its last statement); the log entries carry the full duration.
        let p = &rows
            .iter()
            .find(|r| r.payload["source"] == "pg_log")
            .unwrap_or_else(|| panic!("no pg_log row for {id}: {rows:?}"))
            .payload;
        let q = p["data"]["query"].as_str().unwrap();
        assert!(q.contains(&format!("correlation:{id}")), "{q}");
        assert!(!q.contains("0.02"), "literals masked: {q}");
        assert!(p["data"]["duration_ms"].as_f64().unwrap() >= 20.0, "{p}");
    }
    // Every row is a payload the listener stores under the key's project.
    assert!(l.rows().iter().all(|r| r.project == "shop"));
    // The Python agent's unsent payloads went first, in order, and its file was left alone.
    let first: Vec<Value> = l.rows().iter().take(6).map(|r| r.payload.clone()).collect();
    for (i, p) in first.iter().enumerate() {
        assert_eq!(p["project"], "shop-eu", "{p}");
        assert_eq!(p["timestamp"], 1_764_300_000.25 + (i + 1) as f64, "{p}");
    }
    assert_eq!(first[3]["source"], "pg_stat_activity", "pg_locks converted");
    assert_eq!(first[3]["data"]["converted_from"], "pg_locks");
    assert_eq!(l.by_correlation("req-7f3a").len(), 1);
    assert_eq!(
        std::fs::read(python.path().join("data.db")).unwrap(),
        before
    );
}

#[test]
fn batches_queued_in_the_batch_protocol_are_sent_as_bitville_after_a_switch() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let l = BitvilleListener::start(&[(KEY, "shop")], 100);
        // Queued while the agent spoke the batch protocol (never sent: nothing drained).
        let old =
            Shipper::open(&shipper_config(dir.path(), &l.url(), "protocol = batch\n")).unwrap();
        for b in cycle(&["queued-1"]) {
            old.enqueue(&b).unwrap();
        }
        drop(old);
        let shipper = Shipper::open(&shipper_config(dir.path(), &l.url(), "")).unwrap();
        let r = shipper.drain(Duration::from_secs(20)).await;
        assert_eq!((r.stopped, r.dead_lettered), (DrainStop::Empty, 0), "{r:?}");
        let t = l.tally();
        assert_eq!((t.invalid, t.bad_json), (0, 0), "{:?}", l.failures());
        assert_eq!(t.stored, 7, "five aggregates and two correlated statements");
        assert_eq!(l.by_correlation("queued-1").len(), 1);
        assert_eq!(l.by_correlation("log-1").len(), 1);
    });
}

/// The same settings as the Python agent's twelve environment variables, and no file at all.
#[test]
fn the_python_agents_twelve_variables_run_the_daemon() {
    let server = support::PgServer::start();
    let l = BitvilleListener::start(&[(KEY, "shop")], 100);
    let state = tempfile::tempdir().unwrap();
    let python = tempfile::tempdir().unwrap();
    let (host, port) = (
        server.socket_dir.display().to_string(),
        server.port.to_string(),
    );
    let (log, url, state_dir, buffer) = (
        server.log_dir().display().to_string(),
        l.url(),
        state.path().display().to_string(),
        python.path().display().to_string(),
    );
    let env = [
        ("BITVILLE_PG_DB_HOST", host.as_str()),
        ("BITVILLE_PG_DB_PORT", port.as_str()),
        ("BITVILLE_PG_DB_NAME", "postgres"),
        ("BITVILLE_PG_DB_USER", "postgres"),
        ("BITVILLE_PG_DB_PASSWORD", "unused-with-trust"),
        ("BITVILLE_PG_STATEMENT_TIMEOUT_MS", "5000"),
        ("BITVILLE_PG_COLLECTION_INTERVAL_S", "5"),
        ("BITVILLE_PG_LISTENER_URL", url.as_str()),
        ("BITVILLE_PG_LISTENER_API_KEY", KEY),
        ("BITVILLE_PG_PROJECT_ID", "shop"),
        ("BITVILLE_PG_BUFFER_PATH", buffer.as_str()),
        ("BITVILLE_PG_LOG_PATH", log.as_str()),
        // Not the Python agent's: where this test keeps state, and no fixed telemetry port.
        ("BITVILLE_PG_AGENT_STATE_DIR", state_dir.as_str()),
        ("BITVILLE_PG_TELEMETRY_LISTEN", ""),
    ];
    let mut agent = support::child::AgentChild::spawn(&["run"], &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let sources = || -> Vec<String> {
        l.rows()
            .iter()
            .map(|r| r.payload["source"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let mut tries = 0;
    while !support::bitville::SOURCES
        .iter()
        .all(|s| sources().iter().any(|x| x == s))
    {
        // Something for the log reader (following the log from its end) to ship.
        if tries % 10 == 0 {
            server.psql(
                "postgres",
                "DO $$ BEGIN RAISE LOG 'bitville test %', now(); END $$",
            );
        }
        tries += 1;
        assert!(
            Instant::now() < deadline,
            "sources {:?}, tally {:?}, failures {:?}\n{}",
            sources(),
            l.tally(),
            l.failures(),
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal("TERM");
    let (status, _) = agent.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", agent.stderr_text());
    let t = l.tally();
    assert_eq!(
        (t.invalid, t.bad_json, t.unauthorized, t.rate_limited),
        (0, 0, 0, 0)
    );
    assert!(l.rows().iter().all(|r| r.payload["project"] == "shop"));
    let stderr = agent.stderr_text();
    assert!(
        stderr.contains("BITVILLE_PG_DB_HOST"),
        "one warning per old variable, naming it: {stderr}"
    );
}

/// With a listener and the bitville protocol, a project the listener would refuse, or a cycle too
/// short for its request budget, is a configuration error naming the key, not a stream of dead
/// letters.
#[test]
fn bitville_settings_the_listener_would_refuse_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &str| {
        let path = dir.path().join("agent.ini");
        std::fs::write(
            &path,
            format!(
                "[agent]\nstate_dir = {}\n{extra}\n[listener]\nurl = https://l.example/ingest/postgres\n",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let out = support::agent(&["check", "--config-only", path.to_str().unwrap()], &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check("project_id =");
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("project_id") && err.contains("1 to 50"),
        "{err}"
    );
    let (code, err) = check(&format!("project_id = {}", "p".repeat(51)));
    assert_eq!(code, Some(78), "{err}");
    let (code, err) = check("project_id = shop\ncollection_interval_s = 2");
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("max_requests_per_minute") && err.contains("collection_interval_s"),
        "{err}"
    );
    assert_eq!(check("project_id = shop").0, Some(0));
    // The batch protocol has no such limits.
    assert_eq!(
        check("project_id =\n[listener]\nprotocol = batch").0,
        Some(0)
    );
}
