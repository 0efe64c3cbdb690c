//! `postgres-agent check` against real servers: every line OK, and each failure with its fix.

use crate::support;

use crate::support::bitville_probe::BitvilleListener;
use support::{agent, PgOptions, PgServer};

fn check(server: &PgServer, extra: &str) -> (i32, String) {
    let state = tempfile::tempdir().unwrap();
    let ini = server.agent_ini(state.path(), extra);
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let out = agent(&["check", path.to_str().unwrap()], &[]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

#[test]
fn all_checks_pass_on_a_well_set_up_server() {
    let server = PgServer::start();
    let (code, out) = check(&server, "");
    assert_eq!(code, 0, "{out}");
    for name in [
        "config",
        "state_dir",
        "connection",
        "privileges",
        "filesystems",
        "pg_stat_statements",
        "logs",
    ] {
        assert!(line(&out, name).starts_with("OK"), "{out}");
    }
    assert!(
        line(&out, "logs").contains(&server.log_dir().display().to_string()),
        "{out}"
    );
}

#[test]
fn each_failure_names_its_fix() {
    let server = PgServer::start_with(PgOptions {
        pg_stat_statements: false,
        ..Default::default()
    });
    server.psql("postgres", "CREATE ROLE watcher LOGIN");
    let (code, out) = check(
        &server,
        "[postgres]\nuser = watcher\n[logs]\npath = /nonexistent/pg/log\n",
    );
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "privileges").starts_with("FAIL"), "{out}");
    assert!(out.contains("GRANT pg_monitor TO \"watcher\""), "{out}");
    assert!(
        line(&out, "pg_stat_statements").starts_with("FAIL"),
        "{out}"
    );
    assert!(out.contains("CREATE EXTENSION pg_stat_statements"), "{out}");
    assert!(
        line(&out, "logs").starts_with("FAIL") && out.contains("/nonexistent/pg/log"),
        "{out}"
    );

    // With pg_monitor granted, the privilege check passes.
    server.psql("postgres", "GRANT pg_monitor TO watcher");
    let (_, out) = check(
        &server,
        "[postgres]\nuser = watcher\n[logs]\nenabled = false\n",
    );
    assert!(line(&out, "privileges").starts_with("OK"), "{out}");
    // pg_monitor can read shared_preload_libraries, so the fix names the real cause.
    assert!(
        line(&out, "pg_stat_statements").starts_with("FAIL"),
        "{out}"
    );
    assert!(
        out.contains("add pg_stat_statements to shared_preload_libraries"),
        "{out}"
    );
}

#[test]
fn unreachable_server_and_unwritable_state_dir_fail() {
    let server = PgServer::start();
    let (code, out) = check(&server, "[postgres]\nport = 1\n[logs]\nenabled = false\n");
    assert_eq!(code, 1);
    assert!(
        line(&out, "connection").starts_with("FAIL")
            && out.contains(&format!("set [postgres] port = {}", server.port)),
        "{out}"
    );
    let state = tempfile::tempdir().unwrap();
    let blocker = state.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let ini = format!(
        "{}\n",
        server.agent_ini(&blocker.join("state"), "[logs]\nenabled = false\n")
    );
    let path = state.path().join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    let out = agent(&["check", path.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "state_dir").starts_with("FAIL"), "{text}");
}

#[test]
fn batch_listener_reachability_url_and_key() {
    use support::listener::Listener;
    let server = PgServer::start();
    let listener = Listener::start();
    let base = format!(
        "[listener]\nprotocol = batch\nurl = {}\napi_key = k-123\n[logs]\nenabled = false\n",
        listener.url()
    );
    let (code, out) = check(&server, &base);
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "listener");
    assert!(l.starts_with("OK") && l.contains("protocol batch"), "{out}");
    assert_eq!(listener.received().len(), 0, "check must not send a batch");
    listener.set_status(401);
    let (code, out) = check(&server, &base);
    assert_eq!(code, 1);
    assert!(
        line(&out, "listener").starts_with("FAIL") && out.contains("refused listener.api_key"),
        "{out}"
    );
    assert!(
        !out.contains("k-123"),
        "the key must never be printed: {out}"
    );
    // A URL with no such route is a wrong URL, not a working listener.
    for status in [404, 405] {
        listener.set_status(status);
        let (code, out) = check(&server, &base);
        assert_eq!(code, 1, "{out}");
        let l = line(&out, "listener");
        assert!(
            l.starts_with("FAIL") && l.contains("not an ingest endpoint"),
            "{out}"
        );
    }
    // Other answers (a 400 to a bodiless GET, say) still prove a listener is there.
    listener.set_status(400);
    let (code, out) = check(&server, &base);
    assert_eq!(code, 0, "{out}");
    let (_, out) = check(
        &server,
        "[listener]\nurl = http://127.0.0.1:1/ingest/postgres\n[logs]\nenabled = false\n",
    );
    assert!(
        line(&out, "listener").starts_with("FAIL") && out.contains("not reachable"),
        "{out}"
    );
}

fn bitville_ini(url: &str, key: &str) -> String {
    format!(
        "[listener]\nprotocol = bitville\nurl = {url}\napi_key = {key}\n[logs]\nenabled = false\n"
    )
}

#[test]
fn bitville_listener_takes_the_key_and_the_payloads_without_storing_the_probe() {
    let server = PgServer::start();
    let bitville = BitvilleListener::start("k-good");
    let (code, out) = check(&server, &bitville_ini(&bitville.url(), "k-good"));
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "listener");
    assert!(
        l.starts_with("OK")
            && l.contains("protocol bitville")
            && l.contains("accepted listener.api_key"),
        "{out}"
    );
    assert!(bitville.stored().is_empty(), "the probe must store nothing");
    assert_eq!(
        bitville.seen(),
        ["GET /health", "POST /ingest/postgres"],
        "one health check, one probe"
    );

    // Wrong key: the listener authenticates before it validates.
    let (code, out) = check(&server, &bitville_ini(&bitville.url(), "k-wrong"));
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "listener");
    assert!(
        l.starts_with("FAIL") && l.contains("refused listener.api_key"),
        "{out}"
    );
    assert!(
        !out.contains("k-wrong"),
        "the key must never be printed: {out}"
    );

    // A URL the listener does not route: 404, and the right URL in the message.
    let wrong = format!("{}/ingest/mysql", bitville.base());
    let (code, out) = check(&server, &bitville_ini(&wrong, "k-good"));
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "listener");
    assert!(
        l.starts_with("FAIL")
            && l.contains("not the Bitville ingest endpoint")
            && l.contains(&bitville.url()),
        "{out}"
    );

    // Anything else fails with the status and the start of the body: here an endpoint that stores
    // a payload the Bitville listener would refuse, and a server error with a long body.
    bitville.set_answer(Some((200, r#"{"success":true,"row_id":1}"#)));
    let (code, out) = check(&server, &bitville_ini(&bitville.url(), "k-good"));
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "listener");
    assert!(
        l.starts_with("FAIL") && l.contains("answered 200") && l.contains(r#""row_id":1"#),
        "{out}"
    );
    let long = format!("boom {}", "x".repeat(400));
    bitville.set_answer(Some((500, &long)));
    let (code, out) = check(&server, &bitville_ini(&bitville.url(), "k-good"));
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "listener");
    assert!(
        l.starts_with("FAIL") && l.contains("answered 500") && l.contains(": boom"),
        "{out}"
    );
    assert!(
        l.contains(&long[..200]) && !l.contains(&long[..201]),
        "the first 200 bytes of the body: {out}"
    );
    assert!(out.contains("the listener's log"), "{out}");
    bitville.set_answer(None);

    // Rate limited: nothing is known to be wrong, so a warning and exit 0.
    bitville.set_rate_limited(true);
    let (code, out) = check(&server, &bitville_ini(&bitville.url(), "k-good"));
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "listener");
    assert!(l.starts_with("WARN") && l.contains("429"), "{out}");
    assert!(bitville.stored().is_empty());
}

#[test]
fn a_batch_listener_is_not_a_bitville_listener() {
    use support::listener::Listener;
    let server = PgServer::start();
    let batch = Listener::start();
    let (code, out) = check(&server, &bitville_ini(&batch.url(), "k-123"));
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "listener");
    assert!(
        l.starts_with("FAIL")
            && l.contains("protocol bitville")
            && l.contains("this is not a Bitville listener: GET")
            && l.contains("/health answered 404"),
        "{out}"
    );
    assert!(
        out.contains("protocol = batch"),
        "the fix names the other protocol: {out}"
    );
    assert_eq!(batch.received().len(), 0);
}

/// `[plans] explain = true` adds a `plans` line: the privilege EXPLAIN needs and whether the role
/// has it (issue 23), or why it does nothing before PostgreSQL 16.
#[test]
fn the_plans_line_says_what_explain_needs() {
    let server = PgServer::start();
    let (_, off) = check(&server, "");
    assert!(
        !off.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("plans")),
        "{off}"
    );
    server.psql("postgres", "CREATE ROLE plain_agent LOGIN");
    server.psql("postgres", "GRANT pg_monitor TO plain_agent");
    let (_, out) = check(
        &server,
        "[plans]\nexplain = true\n[postgres]\nuser = plain_agent\n",
    );
    let l = line(&out, "plans");
    if server.major() < 16 {
        assert!(
            l.starts_with("WARN") && l.contains("needs PostgreSQL 16"),
            "{out}"
        );
    } else {
        assert!(
            l.starts_with("WARN") && l.contains("lacks pg_read_all_data"),
            "{out}"
        );
        server.psql("postgres", "GRANT pg_read_all_data TO plain_agent");
        let (_, out) = check(
            &server,
            "[plans]\nexplain = true\n[postgres]\nuser = plain_agent\n",
        );
        assert!(line(&out, "plans").starts_with("OK"), "{out}");
    }
}
