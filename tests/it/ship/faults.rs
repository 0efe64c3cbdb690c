//! Faults injected into the real daemon: what keeps working, what is reported, what is never repeated.

use crate::support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::child::AgentChild;
use support::PgServer;

use support::free_port;
use support::http::get;

/// Waits until `/health` answers 503 because the outbox takes no writes.
fn wait_until_unwritable_is_reported(port: u16, agent: &AgentChild, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((503, body)) = get(port, "/health", Duration::from_secs(1)) {
            if body.contains("does not take writes") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what} was never reported\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cycles(port: u16) -> u64 {
    let Some((_, body)) = get(port, "/metrics", Duration::from_secs(1)) else {
        return 0;
    };
    body.lines()
        .filter(|l| l.starts_with("postgres_agent_cycles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The daemon's configuration for these faults, written to `dir/agent.ini`: the batch protocol to
/// `url`, 1 s cycles, no log reader, `/health` and `/metrics` on `port`, plus `extra`.
fn fault_ini(
    server: &PgServer,
    state: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
    port: u16,
    extra: &str,
) -> std::path::PathBuf {
    let ini = server.agent_ini(
        state,
        &format!(
            "[listener]\nprotocol = batch\nurl = {url}\n\
             [agent]\ncollection_interval_s = 1\n[logs]\nenabled = false\n\
             [telemetry]\nlisten = 127.0.0.1:{port}\n{extra}"
        ),
    );
    let path = dir.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    path
}

/// A listener that accepts connections, reads each request and never answers (or, with `trickle`,
/// starts an answer and then sends one byte of headers every half second): counts the requests per
/// `Idempotency-Key` as they arrive.
fn hung_listener(trickle: bool) -> (String, Arc<Mutex<HashMap<String, u32>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let s = s.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if let Some(key) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("idempotency-key: "))
                {
                    *s.lock().unwrap().entry(key.trim().to_string()).or_insert(0) += 1;
                }
                if trickle {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n");
                    while conn.write_all(b"X").is_ok() {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
                // Hold the connection open, answering nothing, until the client gives up.
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    (url, seen)
}

/// A listener that takes requests and never answers must not delay collection, `/health`, or
/// shutdown, and the request in flight at SIGTERM is not sent a second time.
#[test]
fn a_hung_listener_delays_neither_cycles_nor_health_nor_shutdown() {
    stuck_listener(false);
}

/// The same with a listener that trickles its answer's headers, a byte every half second.
#[test]
fn a_trickling_listener_delays_neither_cycles_nor_health_nor_shutdown() {
    stuck_listener(true);
}

fn stuck_listener(trickle: bool) {
    let server = PgServer::start();
    let (url, seen) = hung_listener(trickle);
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = fault_ini(
        &server,
        state.path(),
        state.path(),
        &url,
        port,
        "[listener]\ntimeout_s = 30\n",
    );
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);

    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no request reached the listener\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A request now hangs for up to 30 s. Cycles keep their 1 s schedule meanwhile.
    let first = cycles(port);
    let watch = Instant::now();
    while cycles(port) < first + 3 {
        assert!(
            watch.elapsed() < Duration::from_secs(10),
            "cycles stalled behind the hung listener: {} -> {}\n{}",
            first,
            cycles(port),
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let asked = Instant::now();
    let health = get(port, "/health", Duration::from_secs(1));
    assert!(health.is_some(), "/health did not answer within 1 s");
    assert!(asked.elapsed() < Duration::from_secs(1));

    agent.terminate_within(Duration::from_secs(2));
    let repeated: Vec<(String, u32)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    assert!(repeated.is_empty(), "requests sent twice: {repeated:?}");
    let stderr = agent.stderr_text();
    assert!(stderr.contains("send_abandoned_at_shutdown"), "{stderr}");
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A full disk (a 96 KiB file-size limit on the agent, so no root is needed) while the listener is
/// down: the outbox stops taking writes; cycles keep their schedule without spinning; `/health`
/// says why; new batches are held in memory and, once the listener is back, delivered from there,
/// each once; SIGTERM still exits 0 at once.
#[test]
fn a_full_disk_holds_batches_in_memory_and_delivery_goes_on() {
    let server = PgServer::start();
    let listener = support::listener::Listener::start();
    listener.set_status(503);
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = fault_ini(
        &server,
        state.path(),
        state.path(),
        &listener.url(),
        port,
        "[listener]\ntimeout_s = 2\n[circuit_breaker]\nrecovery_timeout_s = 1\n",
    );
    let mut agent = AgentChild::spawn_wrapped(
        &["prlimit", "--fsize=98304", "--"],
        &["run", path.to_str().unwrap()],
        &[],
    );

    wait_until_unwritable_is_reported(port, &agent, "the full outbox");
    // Cycles go on, without spinning: under half a core over 3 s.
    let (c0, t0) = (cycles(port), cpu_ticks(agent.pid()));
    std::thread::sleep(Duration::from_secs(3));
    let (c1, t1) = (cycles(port), cpu_ticks(agent.pid()));
    assert!(
        c1 >= c0 + 2,
        "cycles stalled on the full disk: {c0} -> {c1}"
    );
    assert!(
        t1 - t0 < 150,
        "{} ticks of CPU in 3 s on a full disk",
        t1 - t0
    );

    // The listener comes back: what is held in memory is delivered, each request once.
    let before = listener.received().len();
    listener.set_status(200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh = || -> Vec<String> {
        listener.received()[before..]
            .iter()
            .filter(|r| r.body["type"] == "system_metrics")
            .map(|r| r.body["batch_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    while fresh().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "held batches were not delivered\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ids: Vec<String> = listener.received()[before..]
        .iter()
        .map(|r| r.body["batch_id"].as_str().unwrap_or("").to_string())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a delivered request was sent again"
    );
    let (_, body) = get(port, "/metrics", Duration::from_secs(1)).unwrap();
    assert!(
        body.lines().any(
            |l| l.starts_with("postgres_agent_outbox_storage_failures_total") && !l.ends_with(" 0")
        ),
        "storage failures are counted"
    );

    agent.terminate_within(Duration::from_secs(2));
}

/// The state directory is read-only when the daemon starts (a tmpfs mounted `ro`; without the right
/// to mount, a directory the agent may not write): it starts anyway, collection goes on, batches are
/// delivered from memory, `/health` says why, and once the directory is writable again the outbox
/// takes writes and `/health` recovers. (A running file system cannot be remounted read-only while
/// the outbox holds it open for writing; the full-disk test covers writes failing under a running
/// daemon.)
#[test]
fn a_read_only_state_directory_does_not_stop_delivery() {
    let server = PgServer::start();
    let listener = support::listener::Listener::start();
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let tmpfs = support::tmpfs::Tmpfs::mount(&state, "size=64m,ro");
    let port = free_port();
    let config_dir = tempfile::tempdir().unwrap();
    let path = fault_ini(
        &server,
        &state,
        config_dir.path(),
        &listener.url(),
        port,
        "[listener]\ntimeout_s = 2\n",
    );
    if tmpfs.is_none() {
        // Not root: make the directory unwritable before the agent starts.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o500)).unwrap();
    }
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    wait_until_unwritable_is_reported(port, &agent, "the read-only state directory");
    // Delivery goes on from memory.
    let delivered = listener.bodies_of_type("system_metrics").len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while listener.bodies_of_type("system_metrics").len() < delivered + 2 {
        assert!(
            Instant::now() < deadline,
            "nothing delivered while the state directory is read-only\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Writable again: /health recovers.
    match &tmpfs {
        Some(fs) => fs.remount("rw"),
        None => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(get(port, "/health", Duration::from_secs(1)), Some((200, _))) {
        assert!(
            Instant::now() < deadline,
            "/health did not recover: {:?}\n{}",
            get(port, "/health", Duration::from_secs(1)),
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.terminate_within(Duration::from_secs(2));
    drop(tmpfs);
}

/// The state directory's disk hangs (every write blocks, as on a failing disk or a stuck network
/// file system): cycles keep their schedule, `/health` and `/metrics` keep answering and `/health`
/// says delivery or the outbox is stuck (with `[health]` on, whose state files are written every
/// cycle too), SIGTERM stops the daemon (its last stuck write returns
/// once the disk does, and the process exits 0 then), and everything collected during the hang is
/// delivered once the disk is back.
#[test]
fn a_hung_disk_stalls_neither_cycles_nor_health_nor_shutdown() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let Some(disk) = support::freeze::FreezableFs::mount(&root.path().join("disk.img"), &state)
    else {
        eprintln!("skipped: freezing a file system needs root and a loop device");
        return;
    };
    let server = PgServer::start();
    let listener = support::listener::Listener::start();
    let port = free_port();
    let config_dir = tempfile::tempdir().unwrap();
    let path = fault_ini(
        &server,
        &state,
        config_dir.path(),
        &listener.url(),
        port,
        // Health on: its state files (health-*.json) are written every cycle too.
        "[listener]\ntimeout_s = 2\n[health]\nenabled = true\n",
    );
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while listener.bodies_of_type("system_metrics").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "nothing delivered\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    disk.freeze(true);
    let frozen_at = cycles(port);
    // Every /metrics answers while the disk hangs, and cycles go on.
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut reported = None;
    loop {
        let asked = Instant::now();
        let metrics = get(port, "/metrics", Duration::from_secs(10));
        slowest = slowest.max(asked.elapsed());
        assert!(
            metrics.is_some(),
            "/metrics did not answer while the disk hung\n{}",
            agent.stderr_text()
        );
        if let Some((503, body)) = get(port, "/health", Duration::from_secs(10)) {
            if body.contains("stuck") {
                reported = Some(body);
            }
        }
        if reported.is_some() && cycles(port) >= frozen_at + 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cycles stopped ({} since the freeze) or the hang was never reported ({reported:?})\n{}",
            cycles(port) - frozen_at,
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "while frozen: {} cycles, slowest /metrics answer {slowest:?}, /health: {}",
        cycles(port) - frozen_at,
        reported.unwrap_or_default()
    );

    // Back: the disk answers, and everything collected meanwhile is delivered.
    disk.freeze(false);
    let collected = cycles(port);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let delivered: std::collections::HashSet<String> = listener
            .bodies_of_type("system_metrics")
            .iter()
            .filter_map(|b| b["batch_id"].as_str().map(str::to_string))
            .collect();
        if delivered.len() as u64 >= collected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {collected} system_metrics batches delivered after the disk came back\n{}",
            delivered.len(),
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM while the disk hangs: the daemon stops (it logs so); the process exits 0 once its
    // stuck write returns, that is when the disk does.
    disk.freeze(true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(get(port, "/health", Duration::from_secs(10)), Some((503, b)) if b.contains("stuck"))
    {
        assert!(
            Instant::now() < deadline,
            "the second hang was never reported\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.signal("TERM");
    agent.wait_for_line(Duration::from_secs(10), "the daemon to stop", |l| {
        l.contains("\"stopped\"") || l.ends_with(" stopped")
    });
    disk.freeze(false);
    let (status, _) = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    drop(disk);
}
