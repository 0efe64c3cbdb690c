//! The daemon holds one connection to the server while idle, as README promises: the first cycle and
//! the log task's discovery run at the same time at start and may open two, but the second is closed
//! when it is returned, and no later cycle opens another. Counted in pg_stat_activity of the real
//! server while the real daemon runs.

use crate::support;

use std::time::{Duration, Instant};

use postgres_agent::identity::APPLICATION_NAME;
use support::child::AgentChild;
use support::PgServer;

fn agent_sessions(server: &PgServer) -> u32 {
    server
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION_NAME}'"
            ),
        )
        .parse()
        .unwrap()
}

fn cycles(agent: &AgentChild) -> usize {
    agent
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("cycle finished"))
        .count()
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_daemon_holds_one_connection_at_idle() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let ini = state.path().join("agent.ini");
    std::fs::write(
        &ini,
        server.agent_ini(
            state.path(),
            "[agent]\ncollection_interval_s = 1\n[logging]\nlevel = info\nformat = text\n",
        ),
    )
    .unwrap();
    let agent = AgentChild::spawn(&["run", ini.to_str().unwrap()], &[]);
    agent.wait_for_line(Duration::from_secs(30), "the log task", |l| {
        l.contains("following the server log")
    });
    wait_until(Duration::from_secs(30), "two cycles", || {
        cycles(&agent) >= 2
    });
    // A connection closed by the pool ends on the server shortly after.
    wait_until(Duration::from_secs(20), "one agent session", || {
        agent_sessions(&server) == 1
    });
    // Later cycles reuse it: still one after two more.
    let seen = cycles(&agent);
    wait_until(Duration::from_secs(30), "two more cycles", || {
        cycles(&agent) >= seen + 2
    });
    assert_eq!(agent_sessions(&server), 1, "{}", agent.stderr_text());
}
