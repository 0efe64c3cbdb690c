//! End-to-end: the real binary as a child process against a real server and an in-process listener.

use crate::support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use support::child::AgentChild;
use support::listener::Listener;
use support::{PgOptions, PgServer};

use support::free_port;

/// Writes the agent's config for `server` and returns its path.
fn write_config(
    server: &PgServer,
    state: &Path,
    listener: Option<&Listener>,
    telemetry_port: u16,
    extra: &str,
) -> String {
    let listener = listener
        .map(|l| {
            format!(
                "[listener]\nprotocol = batch\nurl = {}\ncompress = true\n",
                l.url()
            )
        })
        .unwrap_or_default();
    let ini = format!(
        "[agent]\nproject_id = e2e\ncollection_interval_s = {{interval}}\nstate_dir = {}\n\n\
         [postgres]\nhost = {}\nport = {}\nuser = postgres\n\n{listener}\n\
         [telemetry]\nlisten = 127.0.0.1:{telemetry_port}\n\n[logging]\nlevel = debug\n\n{extra}\n",
        state.display(),
        server.socket_dir.display(),
        server.port,
    );
    let path = state.join("agent.ini");
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(&path, ini.replace("{interval}", "60")).unwrap();
    path.to_str().unwrap().to_string()
}

/// `server`, a state directory, a telemetry port and the agent's config for them: no listener (stdout),
/// no log reader, 60 s cycles.
fn without_logs(server: PgServer) -> (PgServer, tempfile::TempDir, u16, String) {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        &server,
        state.path(),
        None,
        port,
        "[logs]\nenabled = false\n",
    );
    (server, state, port, config)
}

fn set_interval(path: &str, seconds: u64) {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("collection_interval_s") {
                format!("collection_interval_s = {seconds}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(path, text).unwrap();
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    support::http::get(port, path, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no answer to GET {path} within 5 s"))
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_promptly_with_exit_0_and_flushes_the_log() {
    let server = PgServer::start_with(PgOptions {
        conf: vec!["log_min_duration_statement = 0".into()],
        ..Default::default()
    });
    let listener = Listener::start();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(&server, state.path(), Some(&listener), port, "");
    let mut agent = AgentChild::spawn(&["run", &config], &[]);
    // The first cycle runs at once; the next would be 60 s later.
    wait_until(Duration::from_secs(20), "the first cycle's batches", || {
        listener.bodies_of_type("system_metrics").len() == 1
    });
    agent.wait_for_line(Duration::from_secs(10), "the log task", |l| {
        l.contains("following the server log")
    });
    std::thread::sleep(Duration::from_millis(500));
    server.psql(
        "postgres",
        "SELECT 'secret-literal-5521' AS flush_marker_7391",
    );
    std::thread::sleep(Duration::from_millis(300));

    agent.signal("TERM");
    let (status, took) = agent.wait_exit(Duration::from_secs(10));
    println!("SIGTERM to exit: {took:?}");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_text());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let logs = listener.bodies_of_type("pg_logs");
    let all = serde_json::to_string(&logs).unwrap();
    assert!(
        all.contains("flush_marker_7391"),
        "the log line written before SIGTERM was not shipped: {all}"
    );
    // Literals are masked in shipped log statements (privacy.obfuscate_queries defaults to true),
    // and the agent's own statements are left out.
    assert!(
        !all.contains("secret-literal-5521"),
        "a literal left the host: {all}"
    );
    assert!(
        !all.contains("/* postgres-agent */"),
        "the agent's own log entries were shipped: {all}"
    );
    // Nothing left behind in the outbox.
    let out = support::agent(&["status", &config], &[]);
    let status_text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status_text}");
    assert!(
        status_text.contains("last cycle:") && status_text.contains("collectors ok"),
        "{status_text}"
    );
    assert!(
        !status_text.contains("last success:  never"),
        "{status_text}"
    );
}

#[test]
fn sighup_applies_a_good_config_and_rejects_a_broken_one() {
    let server = PgServer::start();
    let listener = Listener::start();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(&server, state.path(), Some(&listener), port, "");
    let agent = AgentChild::spawn(&["run", &config], &[]);
    wait_until(Duration::from_secs(20), "the first cycle", || {
        listener.bodies_of_type("pg_activity").len() == 1
    });

    // A broken config: rejected, the agent keeps running on the old one.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace(
            "[telemetry]",
            "[safety]\nmax_connections = lots\n[telemetry]",
        ),
    )
    .unwrap();
    agent.signal("HUP");
    let line = agent.wait_for_line(Duration::from_secs(10), "the rejection", |l| {
        l.contains("reload rejected")
    });
    assert!(
        line.contains("max_connections") && line.contains("lots"),
        "{line}"
    );
    assert_eq!(http_get(port, "/health").0, 200);

    // A good config with a 1 s interval: cycles speed up without a restart.
    std::fs::write(&config, &good).unwrap();
    set_interval(&config, 1);
    agent.signal("HUP");
    agent.wait_for_line(Duration::from_secs(10), "the reload", |l| {
        l.contains("configuration reloaded")
    });
    let before = listener.bodies_of_type("pg_activity").len();
    wait_until(Duration::from_secs(70), "faster cycles", || {
        listener.bodies_of_type("pg_activity").len() >= before + 3
    });
}

#[test]
fn health_turns_503_when_the_server_stops_and_200_when_it_returns() {
    let (server, _state, port, config) = without_logs(PgServer::start());
    set_interval(&config, 1);
    let _agent = AgentChild::spawn(&["run", &config], &[]);
    wait_until(Duration::from_secs(20), "healthy", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http_get(port, "/health").0 == 200
    });
    server.stop();
    wait_until(
        Duration::from_secs(30),
        "503 while the server is down",
        || http_get(port, "/health").0 == 503,
    );
    let (_, body) = http_get(port, "/health");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert!(!body["reasons"].as_array().unwrap().is_empty(), "{body}");
    server.restart_after_stop();
    wait_until(
        Duration::from_secs(30),
        "200 once the server is back",
        || http_get(port, "/health").0 == 200,
    );
    let (_, metrics) = http_get(port, "/metrics");
    assert!(
        metrics.contains("postgres_agent_cycles_total{outcome=\"failed\"}"),
        "{metrics}"
    );
}

#[test]
fn notifies_systemd_ready_watchdog_and_stopping() {
    let (_server, state, _port, config) = without_logs(PgServer::start());
    let socket_path = state.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut agent = AgentChild::spawn(
        &["run", &config],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline
        && messages
            .iter()
            .filter(|m: &&String| m.contains("WATCHDOG=1"))
            .count()
            < 5
    {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("READY=1")),
        "{messages:?}"
    );
    assert!(
        messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 5,
        "{messages:?}"
    );
    agent.signal("TERM");
    let (status, _) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    // STATUS= carries the last cycle's summary.
    assert!(
        messages.iter().any(|m| m.contains("STATUS=cycle")),
        "{messages:?}"
    );
}

/// `/health` is 503 "starting" until a cycle has succeeded: with the server down from the start it
/// never says ok, and it names the last error.
#[test]
fn health_is_503_starting_until_the_first_cycle_succeeds() {
    let (server, _state, port, config) = without_logs(PgServer::start());
    server.stop();
    let _agent = AgentChild::spawn(&["run", &config], &[]);
    wait_until(Duration::from_secs(20), "/health to answer", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (status, body) = http_get(port, "/health");
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "starting", "{body}");
    assert!(body["conditions"]["starting"].is_string(), "{body}");
    // The first cycle fails (60 s interval: still starting) and its error is named.
    wait_until(Duration::from_secs(30), "the first cycle's error", || {
        let (status, body) = http_get(port, "/health");
        status == 503 && body.contains("last error")
    });
}

/// Batches that cannot be stored make `/health` 503 with the reason: here stdout mode with a
/// closed pipe, so every batch fails to print.
#[test]
fn health_is_503_while_batches_cannot_be_stored() {
    let (_server, _state, port, config) = without_logs(PgServer::start());
    set_interval(&config, 1);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_postgres-agent"))
        .args(["run", &config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Nobody reads stdout: every line fails with a broken pipe.
    drop(child.stdout.take());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let reported = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, body) = http_get(port, "/health");
            if status == 503 && body.contains("enqueue_failed") {
                break body;
            }
            seen = body;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("enqueue failures never reported; last /health: {seen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let body: serde_json::Value = serde_json::from_str(&reported).unwrap();
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert!(
        body["conditions"]["enqueue_failed"]
            .as_str()
            .unwrap()
            .contains("could not be stored or printed"),
        "{body}"
    );
    // `status`, another process, shows the same counters as /metrics.
    wait_until(
        Duration::from_secs(30),
        "status to show the lost batches",
        || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_postgres-agent"))
                .args(["status", &config])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let (_, metrics) = http_get(port, "/metrics");
            let exported = metrics
                .lines()
                .find_map(|l| l.strip_prefix("postgres_agent_enqueue_failures_total "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
            exported > 0 && text.contains("enqueue_failures ")
        },
    );
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A working agent without pg_stat_statements is `degraded`, not unhealthy: 200, with the fix.
#[test]
fn health_is_200_degraded_without_pg_stat_statements() {
    let (_server, _state, port, config) = without_logs(PgServer::start_with(PgOptions {
        pg_stat_statements: false,
        ..PgOptions::default()
    }));
    let _agent = AgentChild::spawn(&["run", &config], &[]);
    wait_until(Duration::from_secs(30), "a degraded 200", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http_get(port, "/health").0 == 200
    });
    let (_, body) = http_get(port, "/health");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        body["warnings"]["pg_stat_statements"]
            .as_str()
            .unwrap()
            .contains("CREATE EXTENSION"),
        "{body}"
    );
}
