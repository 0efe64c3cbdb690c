//! `listener.protocol = otlp` end to end: the real daemon with 1 s cycles against a real
//! PostgreSQL, an in-process OTLP/HTTP receiver (tests/it/support/otlp.rs), and every request
//! decoded by the official OpenTelemetry protobuf definitions (PyPI `opentelemetry-proto`).

use crate::support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::otlp::{attr, decode, log_records, metrics, nanos, points, value, OtlpReceiver};
use support::otlp::{resources, OtlpRequest};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

/// The requests decoded so far (each decoded once), with what the receiver answered.
#[derive(Default)]
struct Seen {
    requests: Vec<OtlpRequest>,
    decoded: Vec<Value>,
}

impl Seen {
    fn refresh(&mut self, r: &OtlpReceiver) {
        let all = r.received();
        let new = &all[self.requests.len()..];
        self.decoded.extend(decode(new));
        self.requests.extend_from_slice(new);
    }

    /// Decoded requests the receiver accepted (200).
    fn accepted(&self) -> Vec<Value> {
        self.requests
            .iter()
            .zip(&self.decoded)
            .filter(|(r, _)| r.status == 200)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Polls `cond` (refreshing `seen`) every second until it holds, or fails with `what` after 90 s.
fn wait_for(
    seen: &mut Seen,
    r: &OtlpReceiver,
    agent: &support::child::AgentChild,
    what: &str,
    mut each: impl FnMut(u32),
    mut cond: impl FnMut(&Seen) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    loop {
        seen.refresh(r);
        if cond(seen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within 90 s ({} requests)\n{}",
            seen.requests.len(),
            agent.stderr_text()
        );
        each(round);
        round += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sum of `postgresql.statement.calls` over the accepted points whose text mentions `needle`.
fn calls_of(seen: &Seen, needle: &str) -> f64 {
    let accepted = seen.accepted();
    let m = metrics(&accepted);
    points(&m, "postgresql.statement.calls")
        .into_iter()
        .filter(|p| {
            attr(&p["attributes"], "db.query.text")
                .and_then(Value::as_str)
                .is_some_and(|t| t.contains(needle))
        })
        .map(value)
        .sum()
}

#[test]
fn daemon_over_otlp_decodes_links_traces_counts_calls_and_loses_nothing_to_a_503_outage() {
    let server = support::PgServer::start_with(support::PgOptions {
        conf: vec!["log_min_duration_statement = 0".into()],
        ..Default::default()
    });
    server.psql(
        "postgres",
        "CREATE TABLE otlp_probe (id int); INSERT INTO otlp_probe SELECT generate_series(1, 100)",
    );
    let r = OtlpReceiver::start();
    let state = tempfile::tempdir().unwrap();
    let ini = server.agent_ini(
        state.path(),
        &format!(
            "[agent]\ncollection_interval_s = 1\n[listener]\nprotocol = otlp\nurl = {}\n\
             timeout_s = 5\n[circuit_breaker]\nrecovery_timeout_s = 3\n[logs]\npath = {}\n\
             [otlp]\nservice_name = shop-db\n[health]\nenabled = true\n",
            r.url(),
            server.log_dir().display()
        ),
    );
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let mut agent = support::child::AgentChild::spawn(
        &["run", path.to_str().unwrap()],
        &[("BITVILLE_PG_LOGGING_FORMAT", "text")],
    );
    let mut seen = Seen::default();

    // Host metrics under system.* names, a few cycles in (the statement baseline is taken).
    wait_for(
        &mut seen,
        &r,
        &agent,
        "system.* metrics",
        |_| {},
        |s| {
            let accepted = s.accepted();
            let m = metrics(&accepted);
            points(&m, "system.memory.usage").len() >= 3
                && points(&m, "system.cpu.load_average.1m").len() >= 3
        },
    );

    // A statement run exactly 37 times shows 37 calls on its metric, with its (masked) text.
    let statements: String = (0..37)
        .map(|_| "SELECT count(*) FROM otlp_probe WHERE id > 37;")
        .collect();
    server.psql("postgres", &statements);
    wait_for(
        &mut seen,
        &r,
        &agent,
        "37 calls of the probe",
        |_| {},
        |s| calls_of(s, "otlp_probe WHERE id >") >= 37.0,
    );
    // Two more cycles: no further calls may appear.
    let after = seen.requests.len();
    wait_for(
        &mut seen,
        &r,
        &agent,
        "two more metrics requests",
        |_| {},
        |s| {
            s.requests[after..]
                .iter()
                .filter(|q| q.signal == "metrics")
                .count()
                >= 4
        },
    );
    assert_eq!(calls_of(&seen, "otlp_probe WHERE id >"), 37.0);
    let accepted = seen.accepted();
    let m = metrics(&accepted);
    let probe = points(&m, "postgresql.statement.calls")
        .into_iter()
        .find(|p| {
            attr(&p["attributes"], "db.query.text")
                .and_then(Value::as_str)
                .is_some_and(|t| t.contains("otlp_probe"))
        })
        .expect("the probe's point");
    let text = attr(&probe["attributes"], "db.query.text").unwrap();
    assert!(!text.as_str().unwrap().contains("37"), "masked: {text}");
    assert!(attr(&probe["attributes"], "postgresql.queryid").is_some());
    let sum = m
        .iter()
        .find(|m| m["name"] == "postgresql.statement.calls")
        .unwrap();
    assert_eq!(
        sum["sum"]["aggregation_temporality"],
        "AGGREGATION_TEMPORALITY_DELTA"
    );

    // Health as metrics under the PostgreSQL receiver's names: commits of the database as a delta
    // sum (the first snapshot's counters are withheld, the next ones are deltas), backends a gauge.
    let commits_of_postgres = |s: &Seen| {
        let accepted = s.accepted();
        let m = metrics(&accepted);
        points(&m, "postgresql.commits").iter().any(|p| {
            attr(&p["attributes"], "db.namespace").and_then(Value::as_str) == Some("postgres")
                && value(p) >= 1.0
        })
    };
    wait_for(
        &mut seen,
        &r,
        &agent,
        "postgresql.commits of the database postgres",
        |_| {},
        commits_of_postgres,
    );
    let accepted = seen.accepted();
    let m = metrics(&accepted);
    let commits = m
        .iter()
        .find(|m| m["name"] == "postgresql.commits")
        .unwrap();
    assert_eq!(
        commits["sum"]["aggregation_temporality"], "AGGREGATION_TEMPORALITY_DELTA",
        "{commits}"
    );
    let backends = m
        .iter()
        .find(|m| m["name"] == "postgresql.backends")
        .expect("postgresql.backends");
    assert!(backends["gauge"]["data_points"].is_array(), "{backends}");
    // Settings: the snapshot taken at the start, one event per setting.
    assert!(
        log_records(&accepted).iter().any(|l| {
            l["event_name"] == "postgres_agent.settings_snapshot"
                && attr(&l["attributes"], "postgresql.setting.name").and_then(Value::as_str)
                    == Some("work_mem")
        }),
        "no settings snapshot event for work_mem"
    );

    // The log entry of a statement with a traceparent comment carries its trace and span ID.
    let traced = format!("SELECT 1 AS otlp_trace /*traceparent='00-{TRACE_ID}-{SPAN_ID}-01'*/");
    wait_for(
        &mut seen,
        &r,
        &agent,
        "the traced statement's log record",
        |round| {
            if round % 5 == 0 {
                server.psql("postgres", &traced);
            }
        },
        |s| {
            let accepted = s.accepted();
            log_records(&accepted)
                .iter()
                .any(|l| l["trace_id"] == TRACE_ID)
        },
    );
    let accepted = seen.accepted();
    let logs = log_records(&accepted);
    let rec = logs.iter().find(|l| l["trace_id"] == TRACE_ID).unwrap();
    assert_eq!(rec["span_id"], SPAN_ID, "{rec}");
    assert_eq!(rec["flags"], 1, "the traceparent's sampled flag: {rec}");
    assert!(rec["severity_number"].is_string(), "{rec}");
    assert!(attr(&rec["attributes"], "db.query.text").is_some(), "{rec}");
    assert_eq!(
        attr(&rec["attributes"], "db.namespace").and_then(Value::as_str),
        Some("postgres")
    );
    // Activity samples arrive as events named like the Collector's PostgreSQL receiver's.
    assert!(
        logs.iter()
            .any(|l| l["event_name"] == "db.server.query_sample"),
        "no db.server.query_sample event"
    );

    // A receiver answering 503 (Retry-After: 1) for 10 s loses nothing and duplicates nothing.
    let outage_start = now_ns();
    r.set_status(503);
    std::thread::sleep(Duration::from_secs(10));
    r.set_status(200);
    let outage_end = now_ns();
    wait_for(
        &mut seen,
        &r,
        &agent,
        "host metrics collected after the outage",
        |_| {},
        |s| {
            let accepted = s.accepted();
            let m = metrics(&accepted);
            points(&m, "system.memory.limit")
                .iter()
                .any(|p| nanos(&p["time_unix_nano"]) > outage_end + 3_000_000_000)
        },
    );
    assert!(
        seen.requests.iter().any(|q| q.status == 503),
        "the outage was never felt"
    );
    // Exactly once: no request (Idempotency-Key) accepted twice, and every request answered 503
    // accepted later.
    let accepted_keys: Vec<&str> = seen
        .requests
        .iter()
        .filter(|q| q.status == 200)
        .map(|q| q.idempotency_key.as_str())
        .collect();
    let mut keys = accepted_keys.clone();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(
        keys.len(),
        accepted_keys.len(),
        "a request was accepted twice"
    );
    for q in seen.requests.iter().filter(|q| q.status == 503) {
        assert!(
            accepted_keys.contains(&q.idempotency_key.as_str()),
            "request {} answered 503 was never accepted after the outage",
            q.idempotency_key
        );
    }
    // Nothing lost: the host metrics are a chain, each point's start the previous point's time
    // (a lost batch leaves a hole of a whole 1 s cycle), through the outage.
    let accepted = seen.accepted();
    let m = metrics(&accepted);
    let mut chain: Vec<(u64, u64)> = points(&m, "system.memory.limit")
        .iter()
        .map(|p| {
            (
                nanos(&p["start_time_unix_nano"]),
                nanos(&p["time_unix_nano"]),
            )
        })
        .collect();
    chain.sort_by_key(|(_, t)| *t);
    let during = chain
        .iter()
        .filter(|(_, t)| (outage_start..outage_end).contains(t))
        .count();
    assert!(
        during >= 3,
        "{during} host samples collected during the outage"
    );
    let widest = chain
        .windows(2)
        .map(|w| w[1].0.abs_diff(w[0].1))
        .max()
        .unwrap_or(0);
    eprintln!(
        "host-metric chain: {} points, widest seam {} ms",
        chain.len(),
        widest / 1_000_000
    );
    for pair in chain.windows(2) {
        let ((_, prev), (start, _)) = (pair[0], pair[1]);
        assert!(
            start.abs_diff(prev) < 500_000_000,
            "a hole in the host metrics: a point starting at {start} after one at {prev}"
        );
    }
    // The agent's own counters arrive too: nothing was dead-lettered, the failures were counted.
    let latest = |name: &str| {
        points(&m, name)
            .iter()
            .max_by_key(|p| nanos(&p["time_unix_nano"]))
            .map(|p| value(p))
    };
    assert_eq!(latest("postgres_agent.requests_dead_lettered"), Some(0.0));
    assert!(latest("postgres_agent.send_failures").unwrap_or(0.0) >= 1.0);

    // Every request decoded (above) and every resource says who and what it is.
    for (q, d) in seen.requests.iter().zip(&seen.decoded) {
        assert_eq!(q.content_type, "application/x-protobuf");
        assert_eq!(q.content_encoding, "gzip");
        for res in resources(d) {
            let a = &res["attributes"];
            assert_eq!(
                attr(a, "service.name").and_then(Value::as_str),
                Some("shop-db")
            );
            assert!(attr(a, "host.name")
                .and_then(Value::as_str)
                .is_some_and(|h| !h.is_empty()));
            assert_eq!(
                attr(a, "db.system.name").and_then(Value::as_str),
                Some("postgresql")
            );
        }
    }
    // After the stop (its last drain included), the outbox's own count of delivered requests is
    // exactly what the receiver accepted; none dead-lettered or evicted.
    agent.terminate_within(Duration::from_secs(30));
    let status = support::agent(&["status", "--json", path.to_str().unwrap()], &[]);
    let v: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let accepted_n = r.received().iter().filter(|q| q.status == 200).count() as u64;
    assert_eq!(v["outbox"]["delivered"].as_u64(), Some(accepted_n), "{v}");
    assert_eq!(v["outbox"]["dead_letters"].as_u64(), Some(0), "{v}");
    assert_eq!(v["outbox"]["evicted"].as_u64(), Some(0), "{v}");
}

#[test]
fn a_partial_success_is_delivered_once_and_counted_and_a_400_is_dead_lettered() {
    use postgres_agent::batch::{AgentInfo, Batch, BatchKind, Record};
    use postgres_agent::config::Config;
    use postgres_agent::ship::Shipper;
    use postgres_agent::telemetry::registry::{Counters, Event};

    let r = OtlpReceiver::start();
    r.set_partial_success(2, "2 log records too old");
    let dir = tempfile::tempdir().unwrap();
    let ini = format!(
        "[agent]\nproject_id = shop\nstate_dir = {}\n[listener]\nprotocol = otlp\nurl = {}\n\
         timeout_s = 5\n",
        dir.path().display(),
        r.url()
    );
    let path = dir.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let config = Config::load_with(Some(&path), Vec::<(String, String)>::new()).unwrap();
    let counters = Counters::default();
    let shipper = Shipper::open_counted(
        &config,
        postgres_agent::ship::encode::MAX_BODY_BYTES,
        counters.clone(),
    )
    .unwrap();
    let entry = serde_json::json!({"timestamp": "2026-12-06T10:00:00.000Z",
        "error_severity": "WARNING", "message": "a warning", "dbname": "shop"});
    let batch = || {
        Batch::new(
            BatchKind::PgLogs,
            "shop",
            AgentInfo::new("db1"),
            None,
            1,
            vec![Record::new(&entry).unwrap()],
        )
    };
    let rt = support::rt();
    shipper.enqueue(&batch()).unwrap();
    let report = rt.block_on(shipper.drain(Duration::from_secs(20)));
    assert_eq!((report.delivered, report.failed), (1, 0), "{report:?}");
    assert_eq!(counters.get(Event::OtlpPartialSuccesses), 1);
    assert_eq!(counters.get(Event::OtlpRejectedItems), 2);
    // Never sent again.
    let report = rt.block_on(shipper.drain(Duration::from_secs(5)));
    assert_eq!(report.delivered + report.failed, 0, "{report:?}");
    assert_eq!(r.received().len(), 1);
    let decoded = decode(&r.received());
    let logs = log_records(&decoded);
    assert_eq!(logs[0]["severity_number"], "SEVERITY_NUMBER_WARN");
    assert_eq!(logs[0]["body"]["string_value"], "a warning");

    // A 400 is permanent (OTLP): the request goes to the dead letters, said and counted.
    r.set_status(400);
    shipper.enqueue(&batch()).unwrap();
    let report = rt.block_on(shipper.drain(Duration::from_secs(20)));
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(counters.get(Event::RequestsDeadLettered), 1);
    assert_eq!(r.received().len(), 2);
}

#[test]
fn check_probes_the_otlp_logs_endpoint() {
    use postgres_agent::config::Config;
    use postgres_agent::ship::probe::{probe, Verdict};

    let r = OtlpReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let config = |url: &str| {
        let path = dir.path().join("agent.ini");
        let ini = format!("[listener]\nprotocol = otlp\nurl = {url}\n");
        std::fs::write(&path, ini).unwrap();
        Config::load_with(Some(&path), Vec::<(String, String)>::new()).unwrap()
    };
    let rt = support::rt();
    let good = config(&r.url());
    let p = rt.block_on(probe(&good.listener, &r.url()));
    assert_eq!(p.verdict, Verdict::Ok, "{}", p.detail);
    // The empty request stored nothing a decoder would find.
    let decoded = decode(&r.received());
    assert!(log_records(&decoded).is_empty());
    let wrong = format!("{}/ingest", r.url());
    let p = rt.block_on(probe(&config(&wrong).listener, &wrong));
    assert_eq!(p.verdict, Verdict::Fail, "{}", p.detail);
    assert!(p.detail.contains("HTTP 404"), "{}", p.detail);
}
