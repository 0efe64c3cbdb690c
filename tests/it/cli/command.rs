//! The command line as the Python agent's operators and systemd use it, through the real binary:
//! `postgres-agent CONFIG` is `run CONFIG`, `check --config-only` touches nothing but the
//! configuration, and `safety.max_connections` above 5 is refused with exit 78.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::agent;
use support::child::AgentChild;
use support::python::PYTHON_EXAMPLE;

use support::free_port;

/// A valid config whose database is a closed local port, with no listener: batches go to stdout.
/// Its state directory is `<dir>/state`, which does not exist yet.
fn offline_config(dir: &Path, extra: &str) -> PathBuf {
    let ini = format!(
        "[agent]\nproject_id = compat\nstate_dir = {}\n\
         [postgres]\nhost = 127.0.0.1\nport = {}\nconnect_timeout_s = 1\n\
         [logs]\nenabled = false\n[telemetry]\nlisten = 127.0.0.1:{}\n{extra}\n",
        dir.join("state").display(),
        free_port(),
        free_port(),
    );
    let path = dir.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    path
}

fn code_and_stderr(out: &std::process::Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn max_connections_above_5_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = offline_config(dir.path(), "[safety]\nmax_connections = 6\n");
    let path = path.to_str().unwrap();
    for args in [
        vec!["check", "--config-only", path],
        vec!["run", path],
        vec![path],
    ] {
        let (code, stderr) = code_and_stderr(&agent(&args, &[]));
        assert_eq!(code, Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains("[safety] max_connections = \"6\"") && stderr.contains("from 1 to 5"),
            "{args:?}: {stderr}"
        );
    }
    let (code, stderr) = code_and_stderr(&agent(
        &["check", "--config-only"],
        &[("BITVILLE_PG_SAFETY_MAX_CONNECTIONS", "5")],
    ));
    assert_eq!(code, Some(0), "5 is allowed: {stderr}");
}

#[test]
fn a_bare_path_is_run_with_that_config() {
    let dir = tempfile::tempdir().unwrap();
    // An invalid config: the same exit status and message as `run`.
    let bad = dir.path().join("bad.ini");
    std::fs::write(&bad, "[database]\nport = lots\n").unwrap();
    let bad = bad.to_str().unwrap();
    let bare = agent(&[bad], &[]);
    let run = agent(&["run", bad], &[]);
    assert_eq!(bare.status.code(), Some(78));
    assert_eq!(code_and_stderr(&bare), code_and_stderr(&run));
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("[database] port = \"lots\""),
        "{}",
        String::from_utf8_lossy(&bare.stderr)
    );
    // A missing file, as `run` reports it.
    let missing = dir.path().join("missing.ini");
    let (code, stderr) = code_and_stderr(&agent(&[missing.to_str().unwrap()], &[]));
    assert_eq!(code, Some(78));
    assert!(stderr.contains("missing.ini"), "{stderr}");

    // A valid config with no listener: the daemon starts and prints its first batches.
    let path = offline_config(dir.path(), "");
    let mut child = AgentChild::spawn(&[path.to_str().unwrap()], &[]);
    child.wait_for_line(Duration::from_secs(30), "a system_metrics batch", |l| {
        l.starts_with('{') && l.contains("\"type\":\"system_metrics\"")
    });
    child.signal("TERM");
    let (status, _) = child.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", child.stderr_text());
    assert!(
        dir.path().join("state").is_dir(),
        "the daemon ran with the file's state_dir"
    );
}

#[test]
fn check_config_only_validates_without_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A listener that does not exist and a closed database port: not contacted.
    let path = offline_config(
        dir.path(),
        "[listener]\nurl = https://192.0.2.1:8443/ingest/postgres\napi_key = k\n",
    );
    let out = agent(&["check", "--config-only", path.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{:?}", out.stderr);
    assert!(stdout.starts_with("OK   config"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!state.exists(), "check --config-only created the state dir");

    // The Python agent's file: valid, one warning per old name, no state dir.
    let python = dir.path().join("python.ini");
    std::fs::write(
        &python,
        PYTHON_EXAMPLE
            .replace("<your-password-here>", "pw-from-ini")
            .replace("<your-api-key-here>", "key-from-ini"),
    )
    .unwrap();
    let env = [("BITVILLE_PG_AGENT_STATE_DIR", state.to_str().unwrap())];
    let out = agent(&["check", "--config-only", python.to_str().unwrap()], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("the Python agent's name"))
        .collect();
    assert_eq!(warnings.len(), 10, "{stderr}");
    assert!(!stderr.contains("pw-from-ini") && !stderr.contains("key-from-ini"));
    assert!(!state.exists());

    // Errors: a bad value, an unreadable secret file, an old and a new key that disagree.
    for (extra, wanted) in [
        ("[safety]\nlock_timeout_ms = soon\n", "lock_timeout_ms"),
        (
            "[listener]\napi_key_file = /nonexistent/api-key\n",
            "/nonexistent/api-key",
        ),
        (
            "[database]\nuser = a\n[postgres]\nuser = b\n",
            "[database] user",
        ),
    ] {
        let path = offline_config(dir.path(), extra);
        let (code, stderr) = code_and_stderr(&agent(
            &["check", "--config-only", path.to_str().unwrap()],
            &[],
        ));
        assert_eq!(code, Some(78), "{extra}: {stderr}");
        assert!(stderr.contains(wanted), "{extra}: {stderr}");
        assert!(!state.exists());
    }
}

#[test]
fn help_mentions_the_bare_path_and_config_only() {
    let help = String::from_utf8_lossy(&agent(&["--help"], &[]).stdout).into_owned();
    assert!(
        help.contains("postgres-agent CONFIG") && help.contains("run CONFIG"),
        "{help}"
    );
    let help = String::from_utf8_lossy(&agent(&["check", "--help"], &[]).stdout).into_owned();
    assert!(help.contains("--config-only"), "{help}");
    // Subcommands and flags are still themselves.
    assert!(agent(&["--version"], &[]).status.success());
    let (code, _) = code_and_stderr(&agent(&["help"], &[]));
    assert_eq!(code, Some(0));
}
