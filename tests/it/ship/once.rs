//! End to end through the real binary: `postgres-agent once` against a real PostgreSQL delivers its
//! batches to a real listener through the outbox; with the listener failing they stay queued,
//! `status` shows them, and the next run delivers them in order.

use crate::support;

use support::fault_listener::{Behavior, Listener};
use support::{agent, PgServer};

async fn once(server: &PgServer, state: &std::path::Path, url: &str) -> (i32, String) {
    std::fs::create_dir_all(state).unwrap();
    let ini = state.join("agent.ini");
    let extra = format!("[listener]\nprotocol = batch\nurl = {url}\napi_key = k\ntimeout_s = 2\n");
    std::fs::write(&ini, server.agent_ini(state, &extra)).unwrap();
    let ini = ini.to_str().unwrap().to_string();
    // The listener runs on this thread's runtime: run the binary off it.
    let out = tokio::task::spawn_blocking(move || {
        agent(&["once", &ini], &[("BITVILLE_PG_LOGGING_FORMAT", "text")])
    })
    .await
    .unwrap();
    assert!(
        out.stdout.is_empty(),
        "batches go to the listener, not stdout"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn once_delivers_through_the_outbox_and_keeps_batches_through_an_outage() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    support::rt().block_on(async {
        let listener = Listener::start().await;
        let (code, stderr) = once(&server, state.path(), &listener.url()).await;
        assert_eq!(code, 0, "{stderr}");
        let got = listener.accepted();
        let kinds: Vec<&str> = got
            .iter()
            .map(|r| r.body["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["pg_activity", "pg_statements", "locks", "system_metrics"]
        );
        for r in &got {
            assert_eq!(r.content_encoding.as_deref(), Some("gzip"));
            assert_eq!(r.idempotency_key, r.batch_id());
            assert_eq!(r.authorization.as_deref(), Some("Bearer k"));
        }

        // The listener fails: the batches stay queued (safely: the run still succeeds).
        listener.set(Behavior::Status(503, Some("0".into())));
        let (code, stderr) = once(&server, state.path(), &listener.url()).await;
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.contains("4 batches wait in the outbox"), "{stderr}");
        let ini = state.path().join("agent.ini");
        let status = agent(&["status", "--json", ini.to_str().unwrap()], &[]);
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(v["outbox"]["depth"], 4, "{v}");
        assert_eq!(v["outbox"]["delivered"], 4);
        let first_failed = listener.received().last().unwrap().batch_id();

        // Back up: the next run sends the queued batches first, then its own.
        listener.set(Behavior::Accept);
        let (code, stderr) = once(&server, state.path(), &listener.url()).await;
        assert_eq!(code, 0, "{stderr}");
        let accepted = listener.accepted();
        assert_eq!(accepted.len(), 12);
        assert_eq!(accepted[4].batch_id(), first_failed, "oldest first");
        let status = agent(&["status", "--json", ini.to_str().unwrap()], &[]);
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(
            (
                v["outbox"]["depth"].as_u64(),
                v["outbox"]["delivered"].as_u64()
            ),
            (Some(0), Some(12))
        );
    });
}
