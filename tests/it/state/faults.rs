//! Faults in the state directory against the real daemon: a second agent on it (refused, exit 75),
//! the outbox deleted under a running agent (recreated, nothing lost or repeated), and a frozen file
//! system under it (no tick skipped).

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::child::AgentChild;
use support::fault_listener::{Behavior, Listener};
use support::http::get;
use support::{free_port, PgServer};

/// The sum of a counter family on /metrics (0 when it does not answer).
fn metric(port: u16, name: &str) -> u64 {
    let Some((_, body)) = get(port, "/metrics", Duration::from_secs(2)) else {
        return 0;
    };
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn cycles(port: u16) -> u64 {
    metric(port, "postgres_agent_cycles_total")
}

/// The daemon's configuration: the batch protocol to `url`, 1 s cycles, no log reader,
/// `/health` and `/metrics` on `port`, a breaker that probes again after 1 s.
fn ini(server: &PgServer, state: &Path, dir: &Path, url: &str, port: u16) -> PathBuf {
    ini_every(server, state, dir, url, port, 1)
}

/// [`ini`] with cycles every `interval_s`.
fn ini_every(
    server: &PgServer,
    state: &Path,
    dir: &Path,
    url: &str,
    port: u16,
    interval_s: u64,
) -> PathBuf {
    let ini = server.agent_ini(
        state,
        &format!(
            "[listener]\nprotocol = batch\nurl = {url}\ntimeout_s = 2\n\
             [agent]\ncollection_interval_s = {interval_s}\n[logs]\nenabled = false\n\
             [circuit_breaker]\nrecovery_timeout_s = 1\n\
             [telemetry]\nlisten = 127.0.0.1:{port}\n"
        ),
    );
    let path = dir.join(format!("agent-{port}.ini"));
    std::fs::write(&path, ini).unwrap();
    path
}

/// The in-process listener on a runtime of its own thread, so it answers while the test sleeps.
fn start_listener() -> Listener {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        support::rt().block_on(async {
            tx.send(Listener::start().await).unwrap();
            std::future::pending::<()>().await
        })
    });
    rx.recv().unwrap()
}

/// Accepted system_metrics batch IDs, with how often each was accepted.
fn accepted_system_metrics(listener: &Listener) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in listener.accepted() {
        if r.body["type"] == "system_metrics" {
            *seen.entry(r.batch_id()).or_insert(0) += 1;
        }
    }
    seen
}

fn wait_until(what: &str, agent: &AgentChild, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Once the listener accepts again, every system_metrics batch of every cycle so far (plus
/// `earlier`, collected by a previous process) is delivered, and none twice.
fn all_delivered_once(listener: &Listener, agent: &AgentChild, port: u16, earlier: u64) {
    let collected = cycles(port) + earlier;
    wait_until("every system_metrics batch delivered", agent, 90, || {
        accepted_system_metrics(listener).len() as u64 >= collected
    });
    let seen = accepted_system_metrics(listener);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    eprintln!(
        "{} cycles collected, {} system_metrics batches delivered once each",
        collected,
        seen.len()
    );
}

#[test]
fn a_second_agent_on_one_state_dir_exits_75_naming_the_holder() {
    let server = PgServer::start();
    let listener = start_listener();
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let (port1, port2) = (free_port(), free_port());
    let first_ini = ini(&server, &state, root.path(), &listener.url(), port1);
    let second_ini = ini(&server, &state, root.path(), &listener.url(), port2);
    let mut first = AgentChild::spawn(&["run", first_ini.to_str().unwrap()], &[]);
    wait_until("the first agent delivers", &first, 60, || {
        accepted_system_metrics(&listener).len() >= 2
    });

    let mut second = AgentChild::spawn(&["run", second_ini.to_str().unwrap()], &[]);
    let (status, _) = second.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(75), "{}", second.stderr_text());
    let said = second.stderr_text();
    let pid = first.pid().to_string();
    assert!(
        said.contains(&pid) && said.contains(&state.display().to_string()),
        "the message names neither the holder's PID {pid} nor the directory:\n{said}"
    );

    // `once` (without --dry-run) is refused the same way; `once --dry-run` and `status` run.
    let once = support::agent(&["once", "--config", first_ini.to_str().unwrap()], &[]);
    assert_eq!(
        once.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert!(String::from_utf8_lossy(&once.stderr).contains(&pid));
    let dry = support::agent(
        &["once", "--dry-run", "--config", first_ini.to_str().unwrap()],
        &[],
    );
    assert_ne!(
        dry.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let status = support::agent(&["status", "--config", first_ini.to_str().unwrap()], &[]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // The first keeps delivering, nothing twice.
    let before = accepted_system_metrics(&listener).len();
    wait_until("the first agent keeps delivering", &first, 60, || {
        accepted_system_metrics(&listener).len() >= before + 3
    });
    all_delivered_once(&listener, &first, port1, 0);
    first.terminate_within(Duration::from_secs(2));

    // Once it has stopped, the directory is free again.
    let mut third = AgentChild::spawn(&["run", second_ini.to_str().unwrap()], &[]);
    wait_until(
        "a new agent runs on the freed directory",
        &third,
        60,
        || cycles(port2) >= 2,
    );
    third.terminate_within(Duration::from_secs(2));
}

/// Removes the outbox (or the whole state directory) while the listener is down, then restarts the
/// agent (what it held must be in the file at the path by then) and brings the listener back:
/// `/health` and `status` said so, and every batch of both runs is delivered exactly once.
fn outbox_removed_under_the_agent(whole_dir: bool) {
    let server = PgServer::start();
    let listener = start_listener();
    listener.set(Behavior::Status(503, None));
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let port = free_port();
    let path = ini(&server, &state, root.path(), &listener.url(), port);
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    wait_until("a few cycles queued", &agent, 60, || cycles(port) >= 4);

    if whole_dir {
        // The agent writes into the directory while it is being removed (a file created or
        // removed between the listing and the unlink fails the call): retried as `rm -rf` would be.
        let mut tries = 0;
        while let Err(e) = std::fs::remove_dir_all(&state) {
            tries += 1;
            assert!(tries < 100, "cannot remove {}: {e}", state.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        for name in ["outbox.db", "outbox.db-wal", "outbox.db-shm"] {
            let _ = std::fs::remove_file(state.join(name));
        }
    }
    let mut reported = None;
    wait_until("/health reports the vanished outbox", &agent, 60, || {
        if let Some((503, body)) = get(port, "/health", Duration::from_secs(2)) {
            if body.contains("outbox_vanished") {
                reported = Some(body);
            }
        }
        reported.is_some()
    });
    eprintln!("/health: {}", reported.unwrap_or_default());
    wait_until("the outbox file is back", &agent, 60, || {
        state.join("outbox.db").exists()
    });
    assert!(agent.stderr_text().contains("outbox_vanished"));
    if whole_dir {
        wait_until("the lock file is back", &agent, 60, || {
            state.join("agent.lock").exists()
        });
    }
    // More cycles after the removal, then a restart-proof check: what is queued is in the file.
    let at = cycles(port);
    wait_until("cycles go on", &agent, 60, || cycles(port) >= at + 3);
    let status = support::agent(&["status", "--config", path.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        text.contains("outbox_vanished"),
        "status does not say it:\n{text}"
    );

    // A restart reads the file at the path: everything queued before and after the removal.
    let first_run = cycles(port);
    agent.terminate_within(Duration::from_secs(2));
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    wait_until("the restarted agent runs", &agent, 60, || cycles(port) >= 2);
    listener.set(Behavior::Accept);
    all_delivered_once(&listener, &agent, port, first_run);
    agent.terminate_within(Duration::from_secs(2));
}

#[test]
fn an_outbox_removed_under_the_agent_is_recreated_and_nothing_is_lost() {
    outbox_removed_under_the_agent(false);
}

#[test]
fn a_state_dir_removed_under_the_agent_is_recreated_and_nothing_is_lost() {
    outbox_removed_under_the_agent(true);
}

/// The state directory's file system freezes (every write blocks): no cycle tick is skipped while
/// it hangs (collection hands its batches to the state writer and never waits on the disk),
/// `/health` says the writes are stuck, and after the thaw every batch is delivered exactly once.
#[test]
fn a_frozen_state_dir_costs_no_tick_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let Some(disk) = support::freeze::FreezableFs::mount(&root.path().join("disk.img"), &state)
    else {
        eprintln!("skipped: freezing a file system needs root and a loop device");
        return;
    };
    let server = PgServer::start();
    let listener = start_listener();
    let port = free_port();
    // 2 s cycles: a cycle of a debug build on a loaded machine stays well inside its interval;
    // what used to cost a tick here were three 2 s waits on the disk.
    let path = ini_every(&server, &state, root.path(), &listener.url(), port, 2);
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    wait_until("first deliveries", &agent, 60, || {
        accepted_system_metrics(&listener).len() >= 2
    });

    let skipped = metric(port, "postgres_agent_cycles_skipped_total");
    disk.freeze(true);
    let (frozen_at, since) = (cycles(port), Instant::now());
    let mut reported = None;
    wait_until(
        "/health reports the stuck writes while cycles go on",
        &agent,
        120,
        || {
            if let Some((503, body)) = get(port, "/health", Duration::from_secs(10)) {
                if body.contains("stuck") {
                    reported = Some(body);
                }
            }
            reported.is_some() && cycles(port) >= frozen_at + 10
        },
    );
    let (ran, elapsed) = (cycles(port) - frozen_at, since.elapsed());
    let skipped_now = metric(port, "postgres_agent_cycles_skipped_total");
    eprintln!(
        "frozen {elapsed:?}: {ran} cycles for {} ticks, {} skipped; /health: {}",
        elapsed.as_secs() / 2,
        skipped_now - skipped,
        reported.unwrap_or_default()
    );
    assert_eq!(
        skipped_now,
        skipped,
        "ticks were skipped while the disk hung\n{}",
        agent.stderr_text()
    );

    disk.freeze(false);
    all_delivered_once(&listener, &agent, port, 0);
    agent.terminate_within(Duration::from_secs(2));
    drop(disk);
}
