//! Shared harness of the integration tests: a real PostgreSQL per test, the agent's config for it, and
//! helpers to drive the real binary.
//!
//! Every test runs as a thread of one process (the `it` crate), in parallel with the others. So the
//! harness changes nothing process-wide: no `std::env::set_var` (the agent's environment is given
//! to each child, [`agent`], [`child::AgentChild::spawn`]), no change of current directory (a child
//! that needs one gets `Command::current_dir`), no signal handlers (signals go to children); each
//! test has its own temporary directories and its own server; ports come from [`free_port`], which
//! never hands the same port to two tests. What is shared is read-only once made: the PostgreSQL binaries found, the
//! server's OS user and the initdb template ([`pg`], each behind a `OnceLock`).

pub mod bitville;
pub mod bitville_probe;
pub mod check;
pub mod child;
pub mod collect;
pub mod delivery;
pub mod fault_listener;
pub mod freeze;
pub mod http;
pub mod listener;
pub mod logs;
pub mod otlp;
pub mod pg;
pub mod python;
pub mod serve;
pub mod standby;
pub mod tmpfs;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

pub use pg::{PgOptions, PgServer};
use postgres_agent::config::Config;

/// The agent configuration for a test server, with extra INI text appended.
pub fn agent_config(server: &PgServer, state_dir: &Path, extra: &str) -> Config {
    let ini = server.agent_ini(state_dir, extra);
    let path = state_dir.join("agent.ini");
    std::fs::create_dir_all(state_dir).expect("state dir");
    std::fs::write(&path, ini).expect("write ini");
    Config::load_with(Some(&path), Vec::<(String, String)>::new()).expect("valid test config")
}

/// Runs the real binary with `args` and a clean environment (no BITVILLE_PG_* or PG* leaking in).
pub fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgres-agent"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BITVILLE_PG_") || k.starts_with("PG") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run postgres-agent")
}

/// The value `status` prints for counter `name` (its "counted" lines: name, value, help text, in
/// columns), or `None` when the counter is not listed.
pub fn status_count(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(name))
            .then(|| words.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

/// `base` INI text with `extra` appended, less the lines of `base` that `extra` sets again: the agent
/// refuses a key given twice in a section (a section may be repeated, not its keys), so the harness's
/// "later keys win" is done here. Keys of `extra` before any `[section]` continue `base`'s last one.
pub fn merge_ini(base: &str, extra: &str) -> String {
    fn section_of(line: &str) -> Option<String> {
        let t = line.trim();
        (t.starts_with('[') && t.ends_with(']'))
            .then(|| t[1..t.len() - 1].trim().to_ascii_lowercase())
    }
    fn key_of(line: &str) -> Option<String> {
        let t = line.trim();
        if t.starts_with([';', '#', '[']) {
            return None;
        }
        t.split_once('=')
            .map(|(k, _)| k.trim().to_ascii_lowercase())
    }
    let mut section = base
        .lines()
        .filter_map(section_of)
        .next_back()
        .unwrap_or_default();
    let mut overridden = std::collections::HashSet::new();
    for line in extra.lines() {
        match (section_of(line), key_of(line)) {
            (Some(s), _) => section = s,
            (None, Some(k)) => {
                overridden.insert((section.clone(), k));
            }
            (None, None) => {}
        }
    }
    let mut merged = String::new();
    let mut section = String::new();
    for line in base.lines() {
        if let Some(s) = section_of(line) {
            section = s;
        } else if key_of(line).is_some_and(|k| overridden.contains(&(section.clone(), k))) {
            continue;
        }
        merged.push_str(line);
        merged.push('\n');
    }
    merged.push_str(extra);
    merged
}

/// [`agent`] with environment values that need not be UTF-8.
pub fn agent_os(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgres-agent"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("BITVILLE_PG_") || name.starts_with("PG") || name == "RUST_LOG" {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run postgres-agent")
}

/// A command that runs one `#[ignore]`d test of this test binary in a child process (a follower
/// to kill with SIGKILL, a process with an environment of its own). `module` is the caller's
/// `module_path!()`, `test` the test function's name.
///
/// libtest names a test by its path below the crate root (`logs::tail::tail_child_process`), and
/// `--exact` with a name that matches nothing runs nothing and succeeds: so the name is checked
/// against the binary's own list first, and a wrong one fails the calling test here.
pub fn test_child(module: &str, test: &str) -> Command {
    let name = match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_string(),
    };
    let exe = std::env::current_exe().expect("test binary");
    let list = Command::new(&exe)
        .args([name.as_str(), "--exact", "--ignored", "--list"])
        .output()
        .expect("list the tests of this binary");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.lines().any(|l| l == format!("{name}: test")),
        "no ignored test {name} in this binary:\n{listed}"
    );
    let mut cmd = Command::new(exe);
    cmd.args([
        name.as_str(),
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd
}

/// A TCP port free on 127.0.0.1 right now, and never handed out before in this process.
///
/// All the tests run as threads of one process: two of them asking at the same moment must not be
/// given the same port (the kernel may hand a just-released port out again), so every port given is
/// remembered. Another process may still take it before the caller binds it; callers that start a
/// server on it retry (see [`pg::PgServer`]).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("local address")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// A current-thread tokio runtime for async test bodies.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
