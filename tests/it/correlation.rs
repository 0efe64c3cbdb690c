//! Correlation IDs only in the Bitville PHP agent's shape (issue 22): against a real server, a
//! session named `bitville-<uuid>` and a `/* correlation:<uuid> */` comment carry an ID; a session
//! named `bitville-monitor` (the Python agent's own), a `/* correlation:monitor */` comment and the
//! agent's own sessions do not, unless `correlation.id_shape = any`.

use crate::support;

use postgres_agent::batch::BatchKind;
use postgres_agent::identity::APPLICATION_NAME;
use serde_json::Value;
use support::collect::{batch, client, cycle, pid, wait_until};
use support::{agent_config, rt, PgServer};

const UUID: &str = "550e8400-e29b-41d4-a716-446655440000";
const COMMENT_UUID: &str = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";

fn record_of(batch: &Value, pid: i32) -> &Value {
    batch["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("no record for pid {pid} in {batch}"))
}

fn id_of(record: &Value) -> Option<&str> {
    record["correlation"]["id"].as_str()
}

#[test]
fn only_php_agent_shapes_become_correlation_ids() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let strict = agent_config(&server, state.path(), "");
    let any_state = tempfile::tempdir().unwrap();
    let any = agent_config(&server, any_state.path(), "[correlation]\nid_shape = any\n");
    rt().block_on(async {
        let watcher = client(&server, "postgres", "watcher").await;
        let sessions = [
            (format!("bitville-{UUID}"), "SELECT pg_sleep(120)".to_string()),
            ("bitville-monitor".to_string(), "SELECT pg_sleep(120)".to_string()),
            // A session that names itself like the agent is not the agent, but its name is no ID.
            (APPLICATION_NAME.to_string(), "SELECT pg_sleep(120)".to_string()),
            (
                "php-comment".to_string(),
                format!("/* correlation:{COMMENT_UUID} */ SELECT pg_sleep(120)"),
            ),
            (
                "word-comment".to_string(),
                "/* correlation:monitor */ SELECT pg_sleep(120)".to_string(),
            ),
        ];
        let mut pids = Vec::new();
        for (app, sql) in sessions {
            let c = client(&server, "postgres", &app).await;
            pids.push(pid(&c).await);
            tokio::spawn(async move {
                let _ = c.simple_query(&sql).await;
                drop(c);
            });
        }
        wait_until(
            &watcher,
            "SELECT count(*) = 5 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' AND query LIKE '%pg_sleep(120)%'",
        )
        .await;

        let report = cycle(&strict).await;
        assert!(report.all_ok(), "{:?}", report.runs);
        let b = serde_json::to_value(batch(&report, BatchKind::PgActivity)).unwrap();
        assert_eq!(id_of(record_of(&b, pids[0])), Some(UUID), "{b}");
        assert_eq!(id_of(record_of(&b, pids[1])), None, "bitville-monitor: {b}");
        assert_eq!(id_of(record_of(&b, pids[3])), Some(COMMENT_UUID), "{b}");
        assert_eq!(id_of(record_of(&b, pids[4])), None, "correlation:monitor: {b}");
        // Sessions named like the agent are left out of pg_activity altogether.
        for r in b["data"].as_array().unwrap() {
            assert_ne!(r["application_name"], APPLICATION_NAME, "{r}");
            if let Some(id) = id_of(r) {
                assert!([UUID, COMMENT_UUID].contains(&id), "{r}");
            }
        }

        // `id_shape = any` takes the word after `bitville-` and any comment value.
        let report = cycle(&any).await;
        assert!(report.all_ok(), "{:?}", report.runs);
        let b = serde_json::to_value(batch(&report, BatchKind::PgActivity)).unwrap();
        assert_eq!(id_of(record_of(&b, pids[0])), Some(UUID), "{b}");
        assert_eq!(id_of(record_of(&b, pids[1])), Some("monitor"), "{b}");
        assert_eq!(id_of(record_of(&b, pids[4])), Some("monitor"), "{b}");
    });
}
