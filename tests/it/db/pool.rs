//! The db module against a real server: safety settings in force, the pool surviving a restart, the
//! agent's sessions identifiable, the client deadline discarding a stalled connection.

use crate::support;

use std::time::Duration;

use postgres_agent::db::{Db, DbError};
use postgres_agent::identity::APPLICATION_NAME;
use support::{agent_config, rt, PgServer};

#[test]
fn safety_settings_are_in_force_on_a_pooled_session() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "[safety]\nstatement_timeout_ms = 4321\nlock_timeout_ms = 1234\nidle_in_transaction_timeout_ms = 5555\n");
    rt().block_on(async {
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut s = db.session().await.unwrap();
        let mut got = Vec::new();
        for name in [
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_session_timeout",
            "default_transaction_read_only",
            "jit",
            "application_name",
        ] {
            let rows = s.query("show", &format!("SHOW {name}"), &[]).await.unwrap();
            got.push(rows[0].get::<_, String>(0));
        }
        assert_eq!(
            got,
            ["4321ms", "1234ms", "5555ms", "on", "off", APPLICATION_NAME]
        );
        // Read-only: a write is refused by the server.
        let err = s
            .query("write", "CREATE TABLE should_fail (x int)", &[])
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate(), Some("25006"), "{err}");
    });
}

#[test]
fn agent_sessions_are_visible_with_application_name_and_tagged_queries() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "");
    rt().block_on(async {
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut s = db.session().await.unwrap();
        let rows = s.query("me", "SELECT pg_backend_pid()", &[]).await.unwrap();
        let pid: i32 = rows[0].get(0);
        let seen = server.psql(
            "postgres",
            &format!(
                "SELECT application_name, left(query, 20) FROM pg_stat_activity WHERE pid = {pid}"
            ),
        );
        assert_eq!(seen, format!("{APPLICATION_NAME}\t/* postgres-agent */"));
    });
}

#[test]
fn pool_survives_a_server_restart() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(&server, state.path(), "[postgres]\nconnect_timeout_s = 2\n");
    let config = {
        let mut c = config;
        c.postgres.connect_timeout = Duration::from_secs(2);
        c
    };
    let runtime = rt();
    let db = Db::new(&config.postgres, &config.safety).unwrap();
    let ping = |db: Db| async move {
        let mut s = db.session().await?;
        let rows = s.query("ping", "SELECT 1", &[]).await?;
        Ok::<i32, DbError>(rows[0].get(0))
    };
    assert_eq!(runtime.block_on(ping(db.clone())).unwrap(), 1);
    assert_eq!(db.open_connections(), 1);

    server.stop();
    let err = runtime.block_on(ping(db.clone())).unwrap_err();
    assert!(
        matches!(err, DbError::Connect { .. } | DbError::Query { .. }),
        "unexpected error while down: {err}"
    );
    // Still down: a clean connection error naming the target, no panic.
    let err = runtime.block_on(ping(db.clone())).unwrap_err();
    assert!(err.to_string().contains(&server.port.to_string()), "{err}");

    server.restart_after_stop();
    assert_eq!(runtime.block_on(ping(db.clone())).unwrap(), 1);
}

#[test]
fn client_deadline_discards_a_stalled_connection() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    // Server-side timeout longer than the client deadline, so only the client deadline can fire.
    let config = agent_config(
        &server,
        state.path(),
        "[safety]\nstatement_timeout_ms = 60000\nclient_timeout_ms = 300\n",
    );
    rt().block_on(async {
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut s = db.session().await.unwrap();
        let err = s
            .query("sleep", "SELECT pg_sleep(5)", &[])
            .await
            .unwrap_err();
        assert!(matches!(err, DbError::Deadline { .. }), "{err}");
        drop(s);
        assert_eq!(
            db.open_connections(),
            0,
            "the timed-out connection must not return to the pool"
        );
        let mut s = db.session().await.unwrap();
        let rows = s.query("ping", "SELECT 2", &[]).await.unwrap();
        assert_eq!(rows[0].get::<_, i32>(0), 2);
    });
}

#[test]
fn server_statement_timeout_cancels_long_queries() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(
        &server,
        state.path(),
        "[safety]\nstatement_timeout_ms = 200\n",
    );
    rt().block_on(async {
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut s = db.session().await.unwrap();
        let err = s
            .query("sleep", "SELECT pg_sleep(3)", &[])
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate(), Some("57014"), "{err}");
        // The session is still usable after a server-side cancel.
        let rows = s.query("ping", "SELECT 3", &[]).await.unwrap();
        assert_eq!(rows[0].get::<_, i32>(0), 3);
    });
}

#[test]
fn pool_never_exceeds_max_connections() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let config = agent_config(
        &server,
        state.path(),
        "[safety]\nmax_connections = 2\nclient_timeout_ms = 2000\n",
    );
    rt().block_on(async {
        let db = Db::new(&config.postgres, &config.safety).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = db.session().await.unwrap();
                s.query("sleep", "SELECT pg_sleep(0.2)", &[]).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // At most 2 at once; once idle, the pool keeps one open (README: normally one).
        assert_eq!(db.open_connections(), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let n = server.psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION_NAME}'"),
            );
            if n == "1" {
                break;
            }
            assert!(n == "2" && std::time::Instant::now() < deadline, "{n} agent sessions");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
}
