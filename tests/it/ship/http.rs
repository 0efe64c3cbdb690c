//! HTTP faults of the listener connection against the real daemon, the real `check` and the real
//! sender (issue 20, points 1, 11 and 12): redirects are never followed and keep every batch, TLS
//! setup mistakes are said in words, and `/health` tells an open breaker and a failing delivery.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use postgres_agent::config::Protocol;
use postgres_agent::ship::http::{Outcome, Sender};
use support::child::AgentChild;
use support::http::get;
use support::{agent, free_port, PgServer};

const DEADLINE: Duration = Duration::from_secs(90);

/// How `/old` answers (`/new` always takes requests, `/health` is always 200).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Redirect to `/new` with this status.
    Redirect(u16),
    Status(u16),
    Accept,
}

#[derive(Default)]
struct Seen {
    /// (path, method, answered status, Idempotency-Key) of every request, in arrival order.
    requests: Vec<(String, Method, u16, String)>,
}

#[derive(Clone)]
struct Shared {
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Seen>>,
}

/// An in-process listener on its own thread: `/old` answers as [`Mode`] says, `/new` takes
/// everything with 200.
struct RedirectListener {
    addr: SocketAddr,
    shared: Shared,
}

async fn old(State(s): State<Shared>, method: Method, headers: HeaderMap, _: Bytes) -> Response {
    let mode = *s.mode.lock().unwrap();
    let (status, resp) = match mode {
        Mode::Redirect(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            (
                code,
                (status, [("location", "/new")], "moved").into_response(),
            )
        }
        Mode::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            (code, (status, "test listener refuses").into_response())
        }
        Mode::Accept => (200, StatusCode::OK.into_response()),
    };
    record(&s, "/old", method, status, &headers);
    resp
}

async fn new(State(s): State<Shared>, method: Method, headers: HeaderMap, _: Bytes) -> StatusCode {
    record(&s, "/new", method, 200, &headers);
    StatusCode::OK
}

fn record(s: &Shared, path: &str, method: Method, status: u16, headers: &HeaderMap) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    s.seen
        .lock()
        .unwrap()
        .requests
        .push((path.to_string(), method, status, key));
}

impl RedirectListener {
    fn start(mode: Mode) -> RedirectListener {
        let shared = Shared {
            mode: Arc::new(Mutex::new(mode)),
            seen: Arc::default(),
        };
        let app = Router::new()
            .route("/old", any(old))
            .route("/new", any(new))
            .route("/health", any(|| async { "OK" }))
            .with_state(shared.clone());
        let (addr, _thread) = support::serve::serve_in_thread(app);
        RedirectListener { addr, shared }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// POSTs to `path` answered `status` (any status: 0).
    fn posts(&self, path: &str, status: u16) -> Vec<String> {
        let seen = self.shared.seen.lock().unwrap();
        seen.requests
            .iter()
            .filter(|(p, m, s, _)| p == path && m == Method::POST && (status == 0 || *s == status))
            .map(|(_, _, _, k)| k.clone())
            .collect()
    }

    fn requests_to(&self, path: &str) -> usize {
        let seen = self.shared.seen.lock().unwrap();
        seen.requests.iter().filter(|(p, ..)| p == path).count()
    }
}

fn health(port: u16) -> Option<(u16, serde_json::Value)> {
    let (status, body) = get(port, "/health", Duration::from_secs(5))?;
    Some((status, serde_json::from_str(&body).ok()?))
}

fn counter(port: u16, name: &str) -> u64 {
    let Some((_, body)) = get(port, "/metrics", Duration::from_secs(5)) else {
        return 0;
    };
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn wait_until(agent: &AgentChild, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon's configuration: the batch protocol to `url`, 1 s cycles, unpaced, no log reader,
/// `/health` and `/metrics` on `port`, plus `extra`; written to `state/agent.ini`.
fn daemon_ini(server: &PgServer, state: &Path, url: &str, port: u16, extra: &str) -> PathBuf {
    let ini = server.agent_ini(
        state,
        &format!(
            "[listener]\nprotocol = batch\nurl = {url}\nmax_requests_per_minute = 100000\n\
             timeout_s = 5\n[agent]\ncollection_interval_s = 1\n[logs]\nenabled = false\n\
             [telemetry]\nlisten = 127.0.0.1:{port}\n{extra}"
        ),
    );
    let path = state.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    path
}

/// The `listener` line of `check` and its fix line.
fn listener_line(stdout: &str) -> (String, String) {
    let lines: Vec<&str> = stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.split_whitespace().nth(1) == Some("listener"))
        .unwrap_or_else(|| panic!("no listener line in:\n{stdout}"));
    let fix = lines
        .get(i + 1)
        .filter(|l| l.trim_start().starts_with("fix:"))
        .map_or(String::new(), |l| l.trim().to_string());
    (lines[i].to_string(), fix)
}

/// A 301, 302, 307 or 308 to the listener's URL is never followed: every batch stays in the
/// outbox (nothing counted delivered, nothing reaches the target, the log names the status and
/// the target), `check` fails naming the URL to set, and once the URL is fixed by a reload every
/// batch tried meanwhile is delivered, once.
#[test]
fn redirects_keep_every_batch_until_the_url_is_fixed() {
    let server = PgServer::start();
    let listener = RedirectListener::start(Mode::Redirect(301));
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = "[circuit_breaker]\nfailure_threshold = 1000\n";
    let path = daemon_ini(&server, state.path(), &listener.url("/old"), port, extra);
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);
    let target = listener.url("/new");

    for status in [301, 302, 307, 308] {
        listener.set(Mode::Redirect(status));
        wait_until(&agent, &format!("two POSTs answered {status}"), || {
            listener.posts("/old", status).len() >= 2
        });
        let names = format!("redirects {} to {target}", listener.url("/old"));
        wait_until(
            &agent,
            &format!("a log line naming HTTP {status} and {target}"),
            || {
                agent.stderr_text().lines().any(|l| {
                    l.contains("send_failed")
                        && l.contains(&format!("HTTP {status}"))
                        && l.contains(&names)
                })
            },
        );
    }
    assert_eq!(listener.requests_to("/new"), 0, "a redirect was followed");
    assert_eq!(
        counter(port, "postgres_agent_requests_delivered_total"),
        0,
        "something was counted delivered while the listener redirected"
    );
    wait_until(&agent, "8 failures counted", || {
        counter(port, "postgres_agent_send_failures_total") >= 8
    });

    // `check` (read-only beside the running daemon) fails the URL and names the one to set.
    let out = agent_check(&path);
    let (line, fix) = listener_line(&out);
    assert!(line.starts_with("FAIL"), "{out}");
    assert!(line.contains("HTTP 308") && line.contains(&target), "{out}");
    assert_eq!(fix, format!("fix: set [listener] url = {target}"), "{out}");
    assert_eq!(listener.requests_to("/new"), 0, "check followed a redirect");

    // Fixed by a reload: everything tried meanwhile arrives, once.
    let tried: std::collections::BTreeSet<String> = listener.posts("/old", 0).into_iter().collect();
    assert!(!tried.is_empty());
    daemon_ini(&server, state.path(), &target, port, extra);
    agent.signal("HUP");
    wait_until(&agent, "every redirected batch at the new URL", || {
        let arrived: std::collections::BTreeSet<String> =
            listener.posts("/new", 0).into_iter().collect();
        tried.is_subset(&arrived)
    });
    agent.terminate_within(Duration::from_secs(5));
    let mut times: HashMap<String, usize> = HashMap::new();
    for key in listener.posts("/new", 0) {
        *times.entry(key).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
}

fn agent_check(ini: &Path) -> String {
    let out = agent(&["check", ini.to_str().unwrap()], &[]);
    assert_ne!(out.status.code(), Some(0), "check passed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A listener that refuses everything (503): `/health` says `degraded` (`breaker_open`) while the
/// breaker is open, 503 `unhealthy` (`delivery_failing`) after `telemetry.unhealthy_after_s`, and
/// `ok` again once the listener takes requests.
#[test]
fn health_is_degraded_while_the_breaker_is_open_then_unhealthy_then_ok() {
    let server = PgServer::start();
    let listener = RedirectListener::start(Mode::Status(503));
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = daemon_ini(
        &server,
        state.path(),
        &listener.url("/old"),
        port,
        "[circuit_breaker]\nfailure_threshold = 1\nrecovery_timeout_s = 1\n\
         [telemetry]\nunhealthy_after_s = 10\n",
    );
    let mut agent = AgentChild::spawn(&["run", path.to_str().unwrap()], &[]);

    let mut degraded = serde_json::Value::Null;
    wait_until(
        &agent,
        "/health 200 degraded with breaker_open",
        || match health(port) {
            Some((200, body)) if body["status"] == "degraded" => {
                degraded = body;
                degraded["warnings"]["breaker_open"].is_string()
            }
            _ => false,
        },
    );
    let warning = degraded["warnings"]["breaker_open"].as_str().unwrap();
    assert!(warning.contains("HTTP 503"), "{degraded}");
    assert!(degraded["conditions"].get("delivery_failing").is_none());

    let mut unhealthy = serde_json::Value::Null;
    wait_until(&agent, "/health 503 delivery_failing", || {
        match health(port) {
            Some((503, body)) => {
                unhealthy = body;
                unhealthy["conditions"]["delivery_failing"].is_string()
            }
            _ => false,
        }
    });
    assert_eq!(unhealthy["status"], "unhealthy", "{unhealthy}");
    let reason = unhealthy["conditions"]["delivery_failing"]
        .as_str()
        .unwrap();
    assert!(
        reason.contains("unhealthy_after_s = 10") && reason.contains("HTTP 503"),
        "{reason}"
    );

    listener.set(Mode::Accept);
    let mut last = None;
    wait_until(&agent, "/health 200 ok after the listener recovers", || {
        last = health(port);
        matches!(&last, Some((200, body)) if body["status"] == "ok")
    });
    assert!(!listener.posts("/old", 200).is_empty());
    agent.terminate_within(Duration::from_secs(5));
}

/// A configuration for `check` and the sender only: no server to reach (the connection line
/// fails at once), the listener at `url`, plus `extra`.
fn check_ini(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let ini = support::merge_ini(
        &format!(
            "[agent]\nproject_id = test\nstate_dir = {}\n[postgres]\nhost = 127.0.0.1\nport = {}\n\
             connect_timeout_s = 2\n[logs]\nenabled = false\n[listener]\nprotocol = batch\n\
             url = {url}\napi_key = k\ntimeout_s = 5\n",
            dir.join("state").display(),
            free_port()
        ),
        extra,
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    path
}

/// What the sender says when one request to `url` fails (the delivery's log and last error).
fn send_failure(dir: &Path, url: &str, extra: &str) -> String {
    let ini = check_ini(dir, url, extra);
    let config =
        postgres_agent::config::Config::load_with(Some(&ini), Vec::<(String, String)>::new())
            .unwrap();
    let sender = Sender::new(&config.listener, url).unwrap();
    let outcome = support::rt().block_on(sender.send(uuid::Uuid::now_v7(), b"{}", Protocol::Batch));
    match outcome {
        Outcome::Retry { reason, .. } => reason,
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

/// With the Bitville protocol `check` POSTs its empty probe: a redirect fails it, naming the
/// target, and the redirect is not followed.
#[test]
fn check_fails_a_redirecting_bitville_url_naming_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let listener = RedirectListener::start(Mode::Redirect(302));
    let target = listener.url("/new");
    let ini = check_ini(
        dir.path(),
        &listener.url("/old"),
        "[listener]\nprotocol = bitville\n",
    );
    let out = agent_check(&ini);
    let (line, fix) = listener_line(&out);
    assert!(line.starts_with("FAIL") && line.contains("POST"), "{out}");
    assert!(line.contains("HTTP 302") && line.contains(&target), "{out}");
    assert_eq!(fix, format!("fix: set [listener] url = {target}"), "{out}");
    assert_eq!(listener.requests_to("/new"), 0, "check followed a redirect");
}

/// An `https://` URL to a plain-HTTP port says so in words, in delivery and in `check`, without
/// advice on `ca_file`.
#[test]
fn an_https_url_to_a_plain_http_port_is_said_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let listener = RedirectListener::start(Mode::Accept);
    let url = format!("https://{}/old", listener.addr);
    let words = "the listener answered in plain HTTP; use http:// or point at the TLS port";

    let reason = send_failure(dir.path(), &url, "");
    assert!(reason.contains(words) && reason.contains(&url), "{reason}");

    let out = agent_check(&check_ini(dir.path(), &url, ""));
    let (line, fix) = listener_line(&out);
    assert!(line.starts_with("FAIL") && line.contains(words), "{out}");
    assert!(fix.contains("http://") && !fix.contains("ca_file"), "{out}");
}

/// A TLS listener on its own thread serving `cert_pem` (the chain) with `key_pem`; its URL.
fn tls_listener(cert_pem: String, key_pem: String) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        support::rt().block_on(async move {
            let l = support::fault_listener::Listener::start_tls(&cert_pem, &key_pem).await;
            tx.send(l.url()).unwrap();
            std::future::pending::<()>().await
        })
    });
    rx.recv().unwrap()
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A self-signed CA certificate served as the listener's own (trusted through `ca_file`) says it
/// is a CA certificate used as the server certificate and how to make a proper one; `check` tells
/// it apart from a certificate signed by an unknown CA, where the advice on `ca_file` depends on
/// whether it is set.
#[test]
fn tls_setup_mistakes_are_told_apart_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let own = ca("listener that is its own CA");
    let own_file = dir.path().join("own.pem");
    std::fs::write(&own_file, own.pem()).unwrap();
    let url = tls_listener(own.pem(), own.key().serialize_pem());
    let with_own = format!("[listener]\nca_file = {}\n", own_file.display());

    let reason = send_failure(&dir.path().join("a"), &url, &with_own);
    assert!(
        reason.contains("serves a CA certificate (CA:TRUE) as its own server certificate")
            && reason.contains(&url)
            && reason.contains("CaUsedAsEndEntity"),
        "{reason}"
    );
    let out = agent_check(&check_ini(&dir.path().join("b"), &url, &with_own));
    let (line, fix) = listener_line(&out);
    assert!(
        line.starts_with("FAIL") && line.contains("CA certificate"),
        "{out}"
    );
    assert!(
        fix.contains("openssl req -x509") && fix.contains("signed by a CA"),
        "{out}"
    );

    // A proper leaf, but from a CA the agent does not trust.
    let signer = ca("unknown CA");
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &*signer)
        .unwrap();
    let url = tls_listener(leaf.pem(), leaf_key.serialize_pem());
    let out = agent_check(&check_ini(&dir.path().join("c"), &url, ""));
    let (line, fix) = listener_line(&out);
    assert!(line.contains("not signed by a trusted CA"), "{out}");
    assert!(fix.contains("set [listener] ca_file to"), "{out}");
    // ca_file set, to another CA: no advice to set it, but that it is the wrong one.
    let out = agent_check(&check_ini(&dir.path().join("d"), &url, &with_own));
    let (line, fix) = listener_line(&out);
    assert!(line.contains("not signed by a trusted CA"), "{out}");
    assert!(
        fix.contains("own.pem") && fix.contains("is not the CA that signed"),
        "{out}"
    );
}
