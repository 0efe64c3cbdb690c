//! Faults injected into the real daemon: what keeps working, what is reported, what is never repeated.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::child::AgentChild;
use support::PgServer;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET with a read deadline; None when no answer came in time.
fn get(port: u16, path: &str, deadline: Duration) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(deadline)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
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

/// A listener that accepts connections, reads each request and never answers: counts the requests
/// per `Idempotency-Key` as they arrive.
fn hung_listener() -> (String, Arc<Mutex<HashMap<String, u32>>>) {
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
    let server = PgServer::start();
    let (url, seen) = hung_listener();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = server.agent_ini(
        state.path(),
        &format!(
            "[listener]\nprotocol = batch\nurl = {url}\ntimeout_s = 30\n\
             [agent]\ncollection_interval_s = 1\n[logs]\nenabled = false\n"
        ),
    );
    let ini = ini.replace(
        "[telemetry]\nlisten =\n",
        &format!("[telemetry]\nlisten = 127.0.0.1:{port}\n"),
    );
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
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

    agent.signal("TERM");
    let (status, took) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM to exit took {took:?}"
    );
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
