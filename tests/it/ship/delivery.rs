//! Delivery to a real HTTP(S) listener in the test process: the wire format, retries with a stable
//! Idempotency-Key, Retry-After, dead letters, the circuit breaker through an outage and across a
//! restart, splitting, reconfiguration, and TLS with `listener.ca_file`.

use crate::support;

use std::time::Duration;

use postgres_agent::batch::BatchKind;
use postgres_agent::ship::breaker::CircuitState;
use postgres_agent::ship::{DrainStop, Shipper};
use support::fault_listener::{ship_config, test_batch, Behavior, Listener};

const BUDGET: Duration = Duration::from_secs(30);

#[test]
fn wire_format_gzip_headers_and_stable_idempotency_key_across_retries() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::start().await;
        let shipper = Shipper::open(&ship_config(dir.path(), Some(&listener.url()), "")).unwrap();
        let batch = test_batch(BatchKind::PgActivity, 20, 1);
        shipper.enqueue(&batch).unwrap();

        listener.set(Behavior::Status(503, None));
        let r = shipper.drain(BUDGET).await;
        assert_eq!(
            (r.stopped, r.failed, r.delivered),
            (DrainStop::Failed, 1, 0)
        );
        listener.set(Behavior::Status(500, None));
        assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::Failed);
        listener.set(Behavior::Accept);
        let r = shipper.drain(BUDGET).await;
        assert_eq!(
            (r.stopped, r.delivered, r.remaining),
            (DrainStop::Empty, 1, 0)
        );

        let got = listener.received();
        assert_eq!(got.len(), 3);
        for req in &got {
            assert_eq!(req.idempotency_key, batch.batch_id.to_string());
            assert_eq!(req.batch_id(), batch.batch_id.to_string());
            assert_eq!(req.authorization.as_deref(), Some("Bearer test-key"));
            assert_eq!(
                req.user_agent.as_deref(),
                Some(concat!("postgres-agent/", env!("CARGO_PKG_VERSION")))
            );
            assert_eq!(req.content_type.as_deref(), Some("application/json"));
            assert_eq!(req.content_encoding.as_deref(), Some("gzip"));
            // The gunzipped body is exactly the envelope's JSON.
            assert_eq!(req.body, serde_json::to_value(&batch).unwrap());
        }
        let stats = shipper.stats().unwrap().outbox.unwrap();
        assert_eq!((stats.depth, stats.delivered), (0, 1));
        assert!(stats.last_success_ms.is_some());
    });
}

#[test]
fn uncompressed_mode_sends_plain_json() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::start().await;
        let config = ship_config(
            dir.path(),
            Some(&listener.url()),
            "[listener]\ncompress = false\n",
        );
        let shipper = Shipper::open(&config).unwrap();
        let batch = test_batch(BatchKind::Locks, 3, 2);
        shipper.enqueue(&batch).unwrap();
        assert_eq!(shipper.drain(BUDGET).await.delivered, 1);
        let got = listener.received();
        assert_eq!(got[0].content_encoding, None);
        assert_eq!(got[0].body, serde_json::to_value(&batch).unwrap());
    });
}

#[test]
fn retry_after_is_honoured_and_stalls_time_out() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::start().await;
        let config = ship_config(
            dir.path(),
            Some(&listener.url()),
            "[listener]\ntimeout_s = 1\n",
        );
        let shipper = Shipper::open(&config).unwrap();
        let batch = test_batch(BatchKind::PgStatements, 5, 3);
        shipper.enqueue(&batch).unwrap();

        listener.set(Behavior::Status(503, Some("2".into())));
        assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::Failed);
        listener.set(Behavior::Accept);
        // Within the Retry-After window nothing is sent.
        let r = shipper.drain(BUDGET).await;
        assert_eq!((r.stopped, r.delivered), (DrainStop::RetryAfter, 0));
        assert_eq!(listener.received().len(), 1);

        tokio::time::sleep(Duration::from_millis(2100)).await;
        listener.set(Behavior::Stall(Duration::from_secs(3)));
        let started = std::time::Instant::now();
        let r = shipper.drain(BUDGET).await;
        assert_eq!(
            r.stopped,
            DrainStop::Failed,
            "a stalled listener is a timeout"
        );
        // The 3 s stall is cut off by the 1 s timeout, not waited out.
        assert!(
            started.elapsed() < Duration::from_millis(2900),
            "{:?}",
            started.elapsed()
        );

        listener.set(Behavior::Accept);
        assert_eq!(shipper.drain(BUDGET).await.delivered, 1);
        let keys: Vec<String> = listener
            .received()
            .iter()
            .map(|r| r.idempotency_key.clone())
            .collect();
        assert_eq!(keys.len(), 3);
        assert!(
            keys.iter().all(|k| *k == batch.batch_id.to_string()),
            "{keys:?}"
        );
    });
}

#[test]
fn client_errors_go_to_dead_letters_but_auth_errors_are_retried() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::start().await;
        let shipper = Shipper::open(&ship_config(dir.path(), Some(&listener.url()), "")).unwrap();
        let batches: Vec<_> = (0..3)
            .map(|i| test_batch(BatchKind::ALL[i], 2, 10 + i as u64))
            .collect();
        for b in &batches {
            shipper.enqueue(b).unwrap();
        }
        listener.set(Behavior::Status(401, None));
        let r = shipper.drain(BUDGET).await;
        assert_eq!((r.stopped, r.dead_lettered), (DrainStop::Failed, 0));

        listener.set(Behavior::Status(400, None));
        let r = shipper.drain(BUDGET).await;
        assert_eq!(
            (r.stopped, r.dead_lettered, r.remaining),
            (DrainStop::Empty, 3, 0)
        );
        let stats = shipper.stats().unwrap();
        let o = stats.outbox.unwrap();
        assert_eq!(o.dead_letters, 3);
        assert_eq!(o.kinds[0].dead_lettered, 1);
        assert_eq!(o.recent_dead_letters[0].http_status, Some(400));
        assert_eq!(
            o.recent_dead_letters[0].batch_id,
            batches[2].batch_id.to_string()
        );
        assert!(o.recent_dead_letters[0]
            .reason
            .contains("test listener says 400"));
        assert_eq!(o.recent_dead_letters[2].attempts, 2, "one 401 then the 400");
        // A listener that answers is reachable: the breaker stays closed.
        assert_eq!(stats.breaker.unwrap().state, CircuitState::Closed);
        assert_eq!(stats.process.dead_lettered, 3);
    });
}

#[test]
fn outage_longer_than_recovery_loses_nothing_and_keeps_fifo_per_type() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut listener = Listener::start().await;
        let addr = listener.addr;
        let config = ship_config(
            dir.path(),
            Some(&listener.url()),
            "[circuit_breaker]\nfailure_threshold = 2\nrecovery_timeout_s = 1\n",
        );
        let shipper = Shipper::open(&config).unwrap();
        let mut sent = Vec::new();
        let mut cycle = |shipper: &Shipper, seed: u64| {
            for kind in [BatchKind::PgActivity, BatchKind::SystemMetrics] {
                let b = test_batch(kind, 4, seed);
                shipper.enqueue(&b).unwrap();
                sent.push(b);
            }
        };
        cycle(&shipper, 1);
        assert_eq!(shipper.drain(BUDGET).await.delivered, 2);

        listener.stop().await; // the listener disappears: connections are refused
        cycle(&shipper, 2);
        assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::Failed);
        cycle(&shipper, 3);
        assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::Failed);
        let b = shipper.stats().unwrap().breaker.unwrap();
        assert_eq!(
            b.state,
            CircuitState::Open,
            "two consecutive failures open it"
        );
        cycle(&shipper, 4);
        assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::BreakerOpen);
        // Recovery passes; the probe still fails and re-opens the circuit.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = shipper.drain(BUDGET).await;
        assert_eq!((r.stopped, r.failed), (DrainStop::Failed, 1));
        let b = shipper.stats().unwrap().breaker.unwrap();
        let t = b.last_transition.unwrap();
        assert_eq!(
            (b.state, t.from, t.to),
            (
                CircuitState::Open,
                CircuitState::HalfOpen,
                CircuitState::Open
            )
        );
        cycle(&shipper, 5);

        // The listener comes back on the same port; after the recovery timeout one probe succeeds
        // and the whole backlog drains.
        let listener = Listener::start_on(addr).await;
        assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::BreakerOpen);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = shipper.drain(BUDGET).await;
        assert_eq!(
            (r.stopped, r.delivered, r.remaining),
            (DrainStop::Empty, 8, 0)
        );
        let b = shipper.stats().unwrap().breaker.unwrap();
        assert_eq!(b.state, CircuitState::Closed);
        assert_eq!(b.last_transition.unwrap().from, CircuitState::HalfOpen);

        let got: Vec<String> = listener.accepted().iter().map(|r| r.batch_id()).collect();
        let expected: Vec<String> = sent[2..].iter().map(|b| b.batch_id.to_string()).collect();
        assert_eq!(got, expected, "every batch of the outage, oldest first");
        let o = shipper.stats().unwrap().outbox.unwrap();
        assert_eq!((o.evicted, o.dead_letters, o.delivered), (0, 0, 10));
    });
}

#[test]
fn breaker_state_survives_a_restart() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut listener = Listener::start().await;
        let addr = listener.addr;
        let config = ship_config(
            dir.path(),
            Some(&listener.url()),
            "[circuit_breaker]\nfailure_threshold = 1\nrecovery_timeout_s = 2\n",
        );
        listener.stop().await;
        {
            let shipper = Shipper::open(&config).unwrap();
            shipper
                .enqueue(&test_batch(BatchKind::PgLogs, 3, 7))
                .unwrap();
            assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::Failed);
            assert_eq!(
                shipper.stats().unwrap().breaker.unwrap().state,
                CircuitState::Open
            );
        }
        let listener = Listener::start_on(addr).await;
        let shipper = Shipper::open(&config).unwrap();
        let b = shipper.stats().unwrap().breaker.unwrap();
        assert_eq!(b.state, CircuitState::Open, "reopened still open");
        assert_eq!(b.consecutive_failures, 1);
        assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::BreakerOpen);
        assert!(listener.received().is_empty(), "nothing sent while open");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(shipper.drain(BUDGET).await.delivered, 1);
        assert_eq!(
            shipper.stats().unwrap().breaker.unwrap().state,
            CircuitState::Closed
        );
    });
}

#[test]
fn oversized_batch_is_split_never_dropped() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::start().await;
        let config = ship_config(dir.path(), Some(&listener.url()), "");
        let shipper = Shipper::open_with(&config, 600).unwrap();
        let batch = test_batch(BatchKind::PgActivity, 300, 9);
        let report = shipper.enqueue(&batch).unwrap();
        assert!(report.stored_parts > 2, "{report:?}");
        let r = shipper.drain(BUDGET).await;
        assert_eq!(r.delivered as usize, report.stored_parts);
        let mut records = Vec::new();
        for (i, req) in listener.accepted().iter().enumerate() {
            assert_eq!(req.body["part_of"], batch.batch_id.to_string());
            assert_eq!(req.body["part"], i + 1);
            assert_eq!(req.body["parts"], report.stored_parts);
            assert_eq!(req.idempotency_key, req.batch_id());
            records.extend(req.body["data"].as_array().unwrap().clone());
        }
        let sent: Vec<serde_json::Value> =
            batch.data.iter().map(|r| r.to_value().unwrap()).collect();
        assert_eq!(records, sent);
    });
}

#[test]
fn reload_switches_listener_and_keeps_the_queue() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Listener::start().await;
        old.stop().await;
        let shipper = Shipper::open(&ship_config(dir.path(), Some(&old.url()), "")).unwrap();
        let batches: Vec<_> = (0..4).map(|i| test_batch(BatchKind::Locks, 2, i)).collect();
        for b in &batches {
            shipper.enqueue(b).unwrap();
        }
        assert_eq!(shipper.drain(BUDGET).await.stopped, DrainStop::Failed);

        let new = Listener::start().await;
        shipper
            .reconfigure(&ship_config(dir.path(), Some(&new.url()), ""))
            .unwrap();
        assert_eq!(shipper.drain(BUDGET).await.delivered, 4);
        let got: Vec<String> = new.accepted().iter().map(|r| r.batch_id()).collect();
        let want: Vec<String> = batches.iter().map(|b| b.batch_id.to_string()).collect();
        assert_eq!(got, want);
    });
}

#[test]
fn https_with_ca_file_and_rejection_without_it() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "postgres-agent test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &*ca).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let listener = Listener::start_tls(&leaf.pem(), &leaf_key.serialize_pem()).await;
        assert!(listener.url().starts_with("https://"));

        // Without the CA the certificate is unknown: a failure, kept for retry.
        let plain_dir = dir.path().join("no-ca");
        let shipper = Shipper::open(&ship_config(&plain_dir, Some(&listener.url()), "")).unwrap();
        shipper
            .enqueue(&test_batch(BatchKind::SystemMetrics, 1, 1))
            .unwrap();
        let r = shipper.drain(BUDGET).await;
        assert_eq!((r.stopped, r.delivered), (DrainStop::Failed, 0));

        let config = ship_config(
            &dir.path().join("with-ca"),
            Some(&listener.url()),
            &format!("[listener]\nca_file = {}\n", ca_file.display()),
        );
        let shipper = Shipper::open(&config).unwrap();
        let batch = test_batch(BatchKind::SystemMetrics, 1, 2);
        shipper.enqueue(&batch).unwrap();
        let r = shipper.drain(BUDGET).await;
        assert_eq!((r.stopped, r.delivered), (DrainStop::Empty, 1));
        assert_eq!(
            listener.accepted()[0].body,
            serde_json::to_value(&batch).unwrap()
        );

        // A bad ca_file is a clear error naming the key and the file.
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let config = ship_config(
            &dir.path().join("bad"),
            Some(&listener.url()),
            &format!("[listener]\nca_file = {}\n", bad.display()),
        );
        let err = Shipper::open(&config)
            .err()
            .expect("bad CA file rejected")
            .to_string();
        assert!(
            err.contains("listener.ca_file") && err.contains("bad.pem"),
            "{err}"
        );
    });
}

#[test]
fn shipper_can_be_shared_across_tasks() {
    fn is_send<T: Send>(_: &T) {}
    fn is_sync<T: Sync>() {}
    is_sync::<Shipper>();
    let dir = tempfile::tempdir().unwrap();
    let shipper = Shipper::open(&ship_config(dir.path(), None, "")).unwrap();
    // The daemon spawns drains on a multi-task runtime: the future must be Send.
    let drain = shipper.drain(Duration::from_secs(1));
    is_send(&drain);
    let report = support::rt().block_on(drain);
    assert_eq!(report.stopped, DrainStop::NoListener);
}

#[test]
fn a_drain_pass_stops_at_its_budget_and_the_next_continues_in_order() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::start().await;
        let shipper = Shipper::open(&ship_config(dir.path(), Some(&listener.url()), "")).unwrap();
        let batches: Vec<_> = (0..5)
            .map(|i| test_batch(BatchKind::PgActivity, 2, i))
            .collect();
        for b in &batches {
            shipper.enqueue(b).unwrap();
        }
        // Each answer takes 300 ms: a 500 ms budget allows two requests (the second one starts
        // inside the budget and is allowed to finish).
        listener.set(Behavior::Stall(Duration::from_millis(300)));
        let r = shipper.drain(Duration::from_millis(500)).await;
        assert_eq!(
            (r.stopped, r.delivered, r.remaining),
            (DrainStop::Budget, 2, 3)
        );
        assert!(r.elapsed_ms >= 500, "{r:?}");
        listener.set(Behavior::Accept);
        let r = shipper.drain(BUDGET).await;
        assert_eq!((r.stopped, r.delivered), (DrainStop::Empty, 3));
        let got: Vec<String> = listener.received().iter().map(|r| r.batch_id()).collect();
        let want: Vec<String> = batches.iter().map(|b| b.batch_id.to_string()).collect();
        assert_eq!(got, want);
    });
}
