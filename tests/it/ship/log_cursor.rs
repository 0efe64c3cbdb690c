//! The log cursor as outbox data of its own (issue 21 item 2): stored with the pg_logs requests it
//! covers, read back on start while one of them waits, and read from the request body for an
//! outbox written by the previous version (which had no cursor table).

use crate::support;

use std::time::Duration;

use postgres_agent::batch::{AgentInfo, Batch, BatchKind, Record};
use postgres_agent::config::Config;
use postgres_agent::ship::{DrainStop, Shipper};
use serde_json::{json, Value};
use support::bitville::BitvilleListener;

const KEY: &str = "key-shop-123";

fn config(dir: &std::path::Path, url: &str, extra: &str) -> Config {
    let ini = format!(
        "[agent]\nproject_id = shop\nstate_dir = {}\n[listener]\nurl = {url}\napi_key = {KEY}\n\
         timeout_s = 2\n{extra}\n",
        dir.display()
    );
    let path = dir.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    Config::load_with(Some(&path), Vec::<(String, String)>::new()).unwrap()
}

/// A pg_logs batch whose body carries `position` as `log_position`, as the log task writes it.
fn logs_batch(position: &Value) -> Batch {
    let entry = json!({"timestamp": "2026-11-28T10:00:03.500Z", "error_severity": "LOG",
                       "message": "checkpoint starting: time"});
    let mut b = Batch::new(
        BatchKind::PgLogs,
        "shop",
        AgentInfo::new("db1"),
        None,
        60,
        vec![Record::new(&entry).unwrap()],
    );
    b.extra.insert("log_position".into(), position.clone());
    b
}

fn position(offset: u64) -> Value {
    json!({"version": 1, "path": "/var/log/postgresql/pg.log", "offset": offset})
}

#[test]
fn an_outbox_of_the_previous_version_resumes_after_its_newest_pg_logs_request() {
    for protocol in ["", "protocol = batch\n"] {
        let dir = tempfile::tempdir().unwrap();
        // Nothing is drained: the listener is never asked.
        let cfg = config(dir.path(), "http://127.0.0.1:9/ingest/postgres", protocol);
        {
            let shipper = Shipper::open(&cfg).unwrap();
            shipper.enqueue(&logs_batch(&position(10))).unwrap();
            shipper.enqueue(&logs_batch(&position(20))).unwrap();
        }
        // The previous version's outbox had no cursor table: its cursor is only in the bodies.
        let db = rusqlite::Connection::open(dir.path().join("outbox.db")).unwrap();
        db.execute_batch("DROP TABLE log_cursor").unwrap();
        drop(db);
        let shipper = Shipper::open(&cfg).unwrap();
        assert_eq!(shipper.log_cursor(), Some(position(20)), "{protocol:?}");
        // Written by this version: its cursor row counts from now on.
        let cursor = position(30).to_string();
        shipper
            .enqueue_with_cursor(&logs_batch(&position(30)), Some(&cursor))
            .unwrap();
        assert_eq!(shipper.log_cursor(), Some(position(30)), "{protocol:?}");
    }
}

#[test]
fn the_cursor_counts_while_its_requests_wait_and_is_gone_once_they_are_delivered() {
    support::rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let l = BitvilleListener::start(&[(KEY, "shop")], 100);
        let shipper = Shipper::open(&config(dir.path(), &l.url(), "")).unwrap();
        assert_eq!(shipper.log_cursor(), None, "an empty outbox has no cursor");
        // The cursor row, not the body, is what is read back (here they differ on purpose).
        let cursor = position(7).to_string();
        shipper
            .enqueue_with_cursor(&logs_batch(&position(5)), Some(&cursor))
            .unwrap();
        let other = Batch::new(
            BatchKind::PgStatements,
            "shop",
            AgentInfo::new("db1"),
            None,
            60,
            vec![Record::new(&json!({"queryid": "1", "calls": 3})).unwrap()],
        );
        shipper.enqueue(&other).unwrap();
        assert_eq!(shipper.log_cursor(), Some(position(7)));
        let r = shipper.drain(Duration::from_secs(20)).await;
        assert_eq!(r.stopped, DrainStop::Empty, "{r:?} {:?}", l.failures());
        assert_eq!(r.delivered, 2, "{r:?}");
        // Delivered: the saved position file covers it; nothing to resume after in the outbox.
        assert_eq!(shipper.log_cursor(), None);
        let body = &l.rows()[0].payload;
        assert_eq!(
            body["data"]["log_position"],
            position(5),
            "the wire is unchanged"
        );
    });
}
