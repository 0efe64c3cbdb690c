//! Delivery faults against the real daemon: a backlog after an outage drains at 1 s cycles in both
//! protocols while fresh data keeps flowing, each request once; a full disk logs a bounded number
//! of errors and keeps the saved breaker consistent; requests held in memory at SIGTERM are counted
//! as lost; every body stays within `listener.max_body_bytes`, split into parts the Bitville
//! listener accepts.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use support::bitville::BitvilleListener;
use support::child::AgentChild;
use support::delivery::*;
use support::listener::Listener;
use support::{free_port, PgServer};

const KEY: &str = "key-delivery";

/// Batch protocol, 1 s cycles, unpaced (the key is not set): the listener answers 503 for 30 s,
/// then 200. The backlog drains to near zero, data collected after the listener's return is
/// delivered, and every request is accepted exactly once (counted by Idempotency-Key).
#[test]
fn batch_backlog_after_a_503_outage_drains_each_request_once() {
    let server = PgServer::start();
    let listener = Listener::start();
    listener.set_status(503);
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = write_ini(
        &server,
        state.path(),
        &format!(
            "[listener]\nprotocol = batch\nurl = {}\ntimeout_s = 2\n\
             [agent]\ncollection_interval_s = 1\n[logs]\nenabled = false\n\
             [circuit_breaker]\nrecovery_timeout_s = 2\n[telemetry]\nlisten = 127.0.0.1:{port}\n",
            listener.url()
        ),
    );
    let mut agent = AgentChild::spawn(&["run", ini.to_str().unwrap()], &[]);
    wait_until(Duration::from_secs(60), &agent, "a backlog builds", || {
        waiting(port).is_some_and(|w| w >= 60.0)
    });
    std::thread::sleep(Duration::from_secs(15));
    let backlog = waiting(port).unwrap_or(0.0);
    let back_at = now_seconds();
    listener.set_status(200);
    wait_until(
        Duration::from_secs(90),
        &agent,
        "the backlog drains",
        || waiting(port).is_some_and(|w| w <= 8.0),
    );
    eprintln!(
        "batch: {backlog} requests waiting after the outage, drained in {:.1} s",
        now_seconds() - back_at
    );
    // Fresh data: batches collected after the listener came back arrive too.
    wait_until(
        Duration::from_secs(60),
        &agent,
        "fresh batches arrive",
        || {
            listener
                .received()
                .iter()
                .filter(|r| r.status == 200)
                .filter(|r| {
                    unix_seconds(r.body["collected_at"].as_str().unwrap_or("")) > back_at + 2.0
                })
                .count()
                >= 4
        },
    );
    let mut accepted: HashMap<String, u32> = HashMap::new();
    for r in listener.received().iter().filter(|r| r.status == 200) {
        *accepted
            .entry(r.header("idempotency-key").unwrap_or("").to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "accepted more than once: {twice:?}");
    assert!(
        accepted.len() as f64 >= backlog,
        "{} accepted, {backlog} were waiting",
        accepted.len()
    );
    agent.terminate_within(Duration::from_secs(3));
}

/// Bitville protocol, 1 s cycles, paced at 720 requests a minute: the listener's port refuses
/// connections for 30 s, then a real-contract Bitville listener starts on it. The backlog drains,
/// payloads collected after its start arrive while older ones are still being sent (the fresh
/// share of each pass), and no payload is stored twice (counted by content: `data.batch_id`).
/// Refused connections do not use up the request budget, so nothing is throttled.
#[test]
fn bitville_backlog_after_refused_connections_drains_with_fresh_data_first() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let (port, listen_port) = (free_port(), free_port());
    let ini = write_ini(
        &server,
        state.path(),
        &format!(
            "[agent]\nproject_id = shop\ncollection_interval_s = 1\n\
             [listener]\nprotocol = bitville\nurl = http://127.0.0.1:{listen_port}/ingest/postgres\n\
             api_key = {KEY}\ntimeout_s = 2\nmax_requests_per_minute = 720\n[logs]\nenabled = false\n\
             [circuit_breaker]\nrecovery_timeout_s = 2\n[telemetry]\nlisten = 127.0.0.1:{port}\n"
        ),
    );
    let mut agent = AgentChild::spawn(&["run", ini.to_str().unwrap()], &[]);
    wait_until(Duration::from_secs(60), &agent, "a backlog builds", || {
        waiting(port).is_some_and(|w| w >= 60.0)
    });
    std::thread::sleep(Duration::from_secs(15));
    let backlog = waiting(port).unwrap_or(0.0);
    let back_at = now_seconds();
    let listener = BitvilleListener::start_on(&[(KEY, "shop")], 1000, listen_port);
    wait_until(
        Duration::from_secs(120),
        &agent,
        "the backlog drains",
        || waiting(port).is_some_and(|w| w <= 8.0),
    );
    eprintln!(
        "bitville: {backlog} requests waiting after the outage, drained in {:.1} s",
        now_seconds() - back_at
    );
    wait_until(
        Duration::from_secs(60),
        &agent,
        "fresh payloads arrive",
        || {
            listener
                .rows()
                .iter()
                .filter(|r| r.timestamp > back_at + 2.0)
                .count()
                >= 4
        },
    );
    let rows = listener.rows();
    assert!(
        rows.len() as f64 >= backlog,
        "{} stored, {backlog} were waiting",
        rows.len()
    );
    let mut seen = HashSet::new();
    for r in &rows {
        let id = r.payload["data"]["batch_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(seen.insert(id.clone()), "payload {id} stored twice");
    }
    // The first request of a pass is the newest payload: collected within the last seconds (the
    // probe waits up to recovery_timeout_s), not one of the backlog's oldest.
    let first_fresh = rows.iter().position(|r| r.timestamp > back_at - 3.0);
    let last_backlog = rows.iter().rposition(|r| r.timestamp < back_at - 10.0);
    eprintln!(
        "bitville: {} payloads stored; first fresh #{first_fresh:?}, last of the backlog #{last_backlog:?}",
        rows.len()
    );
    match (first_fresh, last_backlog) {
        (Some(f), Some(b)) => assert!(
            f < b,
            "fresh data waited for the whole backlog: first fresh payload #{f}, last backlog #{b}"
        ),
        other => panic!("no fresh or no backlog payloads: {other:?}"),
    }
    let tally = listener.tally();
    assert_eq!(
        tally.invalid + tally.bad_json + tally.unauthorized,
        0,
        "{:?}",
        listener.failures()
    );
    assert_eq!(
        tally.rate_limited, 0,
        "the agent's pacing let the listener throttle"
    );
    agent.terminate_within(Duration::from_secs(3));
}

/// A paced configuration whose own production exceeds its limit is refused at start (exit 78),
/// naming the key, the limit and the production per minute; the batch protocol is paced only when
/// the key is set.
#[test]
fn a_paced_configuration_that_produces_more_than_its_limit_is_refused() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let ini = write_ini(
        &server,
        state.path(),
        "[listener]\nprotocol = batch\nurl = http://127.0.0.1:9/x\nmax_requests_per_minute = 100\n\
         [agent]\ncollection_interval_s = 1\n[activity]\nsample_interval_ms = 1000\n",
    );
    let out = support::agent(&["run", ini.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    for needle in ["max_requests_per_minute", "100", "361 requests per minute"] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    let unpaced = support::agent_config(
        &server,
        state.path(),
        "[listener]\nprotocol = batch\nurl = http://127.0.0.1:9/x\n[agent]\ncollection_interval_s = 1\n",
    );
    assert_eq!(unpaced.listener.request_limit(), None);
    let bitville = support::agent_config(
        &server,
        state.path(),
        "[listener]\nurl = http://127.0.0.1:9/x\n[agent]\ncollection_interval_s = 5\n",
    );
    assert_eq!(bitville.listener.request_limit(), Some(90));
}

/// A full disk (a small tmpfs filled up; needs root, skipped without it) while the listener answers
/// 503 and the breaker opens and probes every second (a transition to save each time): over 20 s
/// the log has a bounded number of ERROR lines (one per storage state change, not one per request
/// or transition). Once the disk has room and the
/// listener answers, everything drains and the breaker state `status` reads from the outbox is
/// the live one (closed).
#[test]
fn a_full_disk_logs_few_errors_and_the_saved_breaker_matches_after_recovery() {
    let server = PgServer::start();
    let listener = Listener::start();
    listener.set_status(503);
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let Some(fs) = support::tmpfs::Tmpfs::mount(&state, "size=16m") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let port = free_port();
    let ini = write_ini(
        &server,
        &state,
        &format!(
            "[listener]\nprotocol = batch\nurl = {}\ntimeout_s = 2\n\
             [agent]\ncollection_interval_s = 1\n[logs]\nenabled = false\n\
             [circuit_breaker]\nfailure_threshold = 2\nrecovery_timeout_s = 1\n\
             [telemetry]\nlisten = 127.0.0.1:{port}\n",
            listener.url()
        ),
    );
    let mut agent = AgentChild::spawn(&["run", ini.to_str().unwrap()], &[]);
    wait_until(Duration::from_secs(60), &agent, "the outbox exists", || {
        waiting(port).is_some_and(|w| w >= 3.0)
    });
    let filler = fs.fill();
    wait_until(
        Duration::from_secs(60),
        &agent,
        "the full disk is met",
        || {
            // The outbox makes room by evicting its oldest requests (counted), or holds new ones
            // in memory.
            metric(port, "postgres_agent_held_requests ").is_some_and(|h| h >= 1.0)
                || metric(port, "postgres_agent_requests_evicted_total").is_some_and(|e| e >= 3.0)
        },
    );
    let errors_before = error_lines(&agent).len();
    std::thread::sleep(Duration::from_secs(20));
    let errors = error_lines(&agent);
    let new = &errors[errors_before..];
    assert!(
        new.len() <= 6,
        "{} ERROR lines in 20 s on a full disk:\n{}",
        new.len(),
        new.join("\n")
    );
    assert!(
        metric(port, "postgres_agent_send_failures_total").unwrap_or(0.0) >= 5.0,
        "the listener was tried meanwhile"
    );

    std::fs::remove_file(&filler).unwrap();
    listener.set_status(200);
    wait_until(
        Duration::from_secs(90),
        &agent,
        "everything is delivered",
        || {
            waiting(port).is_some_and(|w| w <= 6.0)
                && metric(port, "postgres_agent_held_requests ") == Some(0.0)
        },
    );
    wait_until(
        Duration::from_secs(60),
        &agent,
        "the saved breaker is closed",
        || {
            let out = support::agent(&["status", ini.to_str().unwrap()], &[]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.lines()
                .any(|l| l.starts_with("circuit:") && l.contains("closed"))
        },
    );
    assert_eq!(
        metric(port, "postgres_agent_breaker_state"),
        Some(0.0),
        "live breaker closed"
    );
    agent.terminate_within(Duration::from_secs(3));
    drop(fs);
}

/// Requests held in memory (the outbox takes no writes: a 96 KiB file-size limit) while the
/// listener answers 503: at SIGTERM they get one last send attempt, then the rest are counted as
/// lost (`held_lost`), logged with their number, and shown by `status`.
#[test]
fn requests_held_in_memory_at_sigterm_are_counted_and_logged_as_lost() {
    let server = PgServer::start();
    let listener = Listener::start();
    listener.set_status(503);
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = write_ini(
        &server,
        state.path(),
        &format!(
            "[listener]\nprotocol = batch\nurl = {}\ntimeout_s = 2\n\
             [agent]\ncollection_interval_s = 1\n[logs]\nenabled = false\n\
             [circuit_breaker]\nrecovery_timeout_s = 1\n[telemetry]\nlisten = 127.0.0.1:{port}\n",
            listener.url()
        ),
    );
    let mut agent = AgentChild::spawn_wrapped(
        &["prlimit", "--fsize=98304", "--"],
        &["run", ini.to_str().unwrap()],
        &[],
    );
    wait_until(Duration::from_secs(90), &agent, "requests are held", || {
        metric(port, "postgres_agent_held_requests ").is_some_and(|h| h >= 5.0)
    });
    agent.terminate_within(Duration::from_secs(3));
    let line = agent.wait_for_line(Duration::from_secs(1), "the held_lost line", |l| {
        l.contains("\"event\":\"held_lost\"")
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    let lost = v["fields"]["requests"]
        .as_u64()
        .or_else(|| v["requests"].as_u64())
        .unwrap_or(0);
    assert!(lost >= 5, "{line}");
    let out = support::agent(&["status", ini.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    // `status` aligns its counters in columns: name, then the figure.
    let lost_text = lost.to_string();
    assert!(
        text.lines().any(|l| {
            l.split_whitespace().take(2).collect::<Vec<_>>() == ["held_lost", lost_text.as_str()]
        }),
        "status does not show the loss:\n{text}"
    );
}

/// `listener.max_body_bytes = 8192` with a real workload whose locks and activity aggregates are far
/// over it, bitville protocol to the real-contract listener: every body is at most 8 KiB, every
/// part is accepted, the union of a split aggregate's parts holds every waiter, and the statement
/// too long for any body on its own arrives trimmed and marked.
#[test]
fn bitville_bodies_stay_within_max_body_bytes() {
    let server = PgServer::start_with(long_queries());
    let (waiters, long) = workload(&server);
    let listener = BitvilleListener::start(&[(KEY, "shop")], 1000);
    let state = tempfile::tempdir().unwrap();
    let ini = write_ini(
        &server,
        state.path(),
        &format!(
            "[agent]\nproject_id = shop\ncollection_interval_s = 2\n\
             [listener]\nprotocol = bitville\nurl = {}\napi_key = {KEY}\n\
             max_requests_per_minute = 600\nmax_body_bytes = {MAX_BODY}\n[logs]\nenabled = false\n\
             [safety]\nmax_query_length = 16384\n",
            listener.url()
        ),
    );
    let mut agent = AgentChild::spawn(&["run", ini.to_str().unwrap()], &[]);
    let mut all = waiters.clone();
    all.insert(long);
    wait_until(
        Duration::from_secs(90),
        &agent,
        "split aggregates arrive",
        || {
            let data: Vec<Value> = listener
                .rows()
                .iter()
                .map(|r| r.payload["data"].clone())
                .collect();
            complete_with(&parts_by_batch(&data, "locks"), "locks", &waiters).is_some()
                && complete_with(&parts_by_batch(&data, "sessions"), "sessions", &all).is_some()
        },
    );
    agent.terminate_within(Duration::from_secs(3));
    let rows = listener.rows();
    for r in &rows {
        assert!(r.body_bytes <= MAX_BODY, "a {}-byte body", r.body_bytes);
    }
    let tally = listener.tally();
    assert_eq!(tally.stored, tally.requests, "{:?}", listener.failures());
    let data: Vec<Value> = rows.iter().map(|r| r.payload["data"].clone()).collect();
    let sessions = complete_with(&parts_by_batch(&data, "sessions"), "sessions", &all).unwrap();
    let trimmed = sessions
        .iter()
        .find(|s| s["pid"].as_i64() == Some(long))
        .unwrap();
    assert_eq!(trimmed["truncated"], true, "{trimmed}");
    assert!(trimmed["omitted_bytes"].as_u64().unwrap_or(0) > 0);
    let locks = complete_with(&parts_by_batch(&data, "locks"), "locks", &waiters).unwrap();
    let pids: Vec<i64> = locks.iter().filter_map(|l| l["pid"].as_i64()).collect();
    assert_eq!(
        pids.len(),
        pids.iter().collect::<HashSet<_>>().len(),
        "a lock twice"
    );
}

/// The same workload in the batch protocol (gzip bodies, limit on the gzip): every body is at most
/// 8 KiB, each part a complete envelope, the union of the parts holds every waiter.
#[test]
fn batch_bodies_stay_within_max_body_bytes() {
    let server = PgServer::start_with(long_queries());
    let (waiters, long) = workload(&server);
    let listener = Listener::start();
    let state = tempfile::tempdir().unwrap();
    let ini = write_ini(
        &server,
        state.path(),
        &format!(
            "[agent]\ncollection_interval_s = 2\n\
             [listener]\nprotocol = batch\nurl = {}\nmax_body_bytes = {MAX_BODY}\n\
             [logs]\nenabled = false\n[safety]\nmax_query_length = 16384\n",
            listener.url()
        ),
    );
    let mut agent = AgentChild::spawn(&["run", ini.to_str().unwrap()], &[]);
    let mut all = waiters.clone();
    all.insert(long);
    let envelopes = |kind: &str| -> Vec<Value> {
        listener
            .received()
            .into_iter()
            .filter(|r| r.body["type"] == kind)
            .map(|r| r.body)
            .collect()
    };
    wait_until(
        Duration::from_secs(90),
        &agent,
        "split batches arrive",
        || {
            complete_with(
                &parts_by_batch(&envelopes("locks"), "data"),
                "data",
                &waiters,
            )
            .is_some()
                && complete_with(
                    &parts_by_batch(&envelopes("pg_activity"), "data"),
                    "data",
                    &all,
                )
                .is_some()
        },
    );
    agent.terminate_within(Duration::from_secs(3));
    let sessions = complete_with(
        &parts_by_batch(&envelopes("pg_activity"), "data"),
        "data",
        &all,
    )
    .unwrap();
    let trimmed = sessions
        .iter()
        .find(|s| s["pid"].as_i64() == Some(long))
        .unwrap();
    assert_eq!(trimmed["truncated"], true, "{trimmed}");
    for r in listener.received() {
        assert!(r.body_bytes <= MAX_BODY, "a {}-byte body", r.body_bytes);
        assert_eq!(
            r.body["count"].as_u64(),
            r.body["data"].as_array().map(|d| d.len() as u64)
        );
    }
}

/// Refused connections do not use up `max_requests_per_minute`: with a limit of 3 a minute, five
/// passes against a port that refuses, then the listener comes up on it and three requests go at
/// once (were the refusals counted, the minute's slots would be spent and nothing would go).
#[test]
fn refused_connections_do_not_count_against_the_request_limit() {
    use postgres_agent::batch::BatchKind;
    use postgres_agent::ship::{DrainStop, Shipper};
    use support::fault_listener::{self, ship_config, test_batch};
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = ship_config(
            dir.path(),
            Some(&format!("http://{addr}/ingest")),
            "max_requests_per_minute = 3\n[circuit_breaker]\nfailure_threshold = 100\n\
             [agent]\ncollection_interval_s = 300\n",
        );
        assert_eq!(config.listener.request_limit(), Some(3));
        let shipper = Shipper::open(&config).unwrap();
        for i in 0..4 {
            shipper
                .enqueue(&test_batch(BatchKind::ALL[i], 2, i as u64))
                .unwrap();
        }
        for _ in 0..5 {
            let r = shipper.drain(Duration::from_secs(1)).await;
            assert_eq!((r.stopped, r.delivered), (DrainStop::Failed, 0), "{r:?}");
        }
        let listener = fault_listener::Listener::start_on(addr).await;
        let r = shipper.drain(Duration::from_secs(1)).await;
        assert_eq!(
            (r.delivered, r.stopped),
            (3, DrainStop::RateLimited),
            "{r:?}"
        );
        assert_eq!(listener.accepted().len(), 3);
    });
}
