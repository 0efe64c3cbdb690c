//! Regression tests for the "Reliability" issue's configuration and environment items, through the
//! real binary's `check --config-only`: each bad input is exit 78 naming the key, at load.
//!
//! - a variable the agent does not read may hold any bytes; one it reads must be UTF-8;
//! - a key given twice in the file (directly, through the Python agent's name in the same section,
//!   or in a section given twice) is refused instead of the last one winning;
//! - control characters (NUL and tab included) inside any value are refused;
//! - `[listener] url` must parse as an http(s) URL with a host and no credentials;
//! - `[listener] api_key` must be a valid HTTP header value after `Bearer `;
//! - `[agent] state_dir` must be a directory if something exists there.

use crate::support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use support::{agent, agent_os};

/// A valid offline config (no listener, a closed database port, a state dir that does not exist)
/// with `extra` appended.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let ini = format!(
        "[agent]\nproject_id = reliability\nstate_dir = {}\n\
         [postgres]\nhost = 127.0.0.1\nport = 1\n\
         [logs]\nenabled = false\n[telemetry]\nlisten =\n{extra}\n",
        dir.join("state").display(),
    );
    let path = dir.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    path
}

/// `check --config-only` on `extra`: the exit status and stderr.
fn check(extra: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), extra);
    let out = agent(&["check", "--config-only", path.to_str().unwrap()], &[]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_78(extra: &str, wanted: &[&str], secret: Option<&str>) {
    let (code, stderr) = check(extra);
    assert_eq!(code, Some(78), "{extra:?}: {stderr}");
    assert!(
        stderr.contains("configuration error"),
        "{extra:?}: {stderr}"
    );
    for w in wanted {
        assert!(stderr.contains(w), "{extra:?}: no {w:?} in {stderr}");
    }
    if let Some(secret) = secret {
        assert!(
            !stderr.contains(secret),
            "{extra:?}: secret shown: {stderr}"
        );
    }
}

#[test]
fn unread_variables_may_hold_any_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let path = path.to_str().unwrap();
    let bad = OsStr::from_bytes(b"caf\xe9\xff");
    for name in ["LANG_X", "PGAPPNAME", "HOME_NOT_OURS"] {
        let out = agent_os(&["check", "--config-only", path], &[(name, bad)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
    }
}

#[test]
fn a_read_variable_that_is_not_utf8_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let path = path.to_str().unwrap();
    let bad = OsStr::from_bytes(b"db\xff");
    for name in [
        "BITVILLE_PG_POSTGRES_HOST",
        "BITVILLE_PG_DB_PASSWORD",
        "BITVILLE_PG_CONFIG_PATH",
        "PGHOST",
        "PGPASSWORD",
        "RUST_LOG",
        "HTTPS_PROXY",
    ] {
        let out = agent_os(&["check", "--config-only", path], &[(name, bad)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("environment variable {name} is not valid UTF-8")),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn control_characters_in_variables_are_refused_but_surrounding_whitespace_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let path = path.to_str().unwrap();
    let out = agent(
        &["check", "--config-only", path],
        &[("BITVILLE_PG_POSTGRES_USER", "mon\u{1}itor")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("environment variable BITVILLE_PG_POSTGRES_USER")
            && stderr.contains("U+0001"),
        "{stderr}"
    );
    let out = agent(
        &["check", "--config-only", path],
        &[("PGPASSWORD", "s3cr\u{1b}et")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("PGPASSWORD") && stderr.contains("<redacted>") && !stderr.contains("s3cr"),
        "{stderr}"
    );
    // A secret with a trailing newline (a Kubernetes secret from a file) is trimmed as before.
    let out = agent(
        &["check", "--config-only", path],
        &[("BITVILLE_PG_LISTENER_API_KEY", "key-from-secret\n")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_key_given_twice_is_refused() {
    // Twice in one section.
    assert_78(
        "[safety]\nmax_connections = 2\nmax_connections = 3\n",
        &[
            "[safety] max_connections is given more than once",
            "max_connections = \"2\", then max_connections = \"3\"",
        ],
        None,
    );
    // In a section given twice ([postgres] is in the base config with port = 1).
    assert_78(
        "[postgres]\nport = 6000\n",
        &["[postgres] port is given more than once"],
        None,
    );
    // Through the Python agent's name in the same section.
    assert_78(
        "[buffer]\npath = /a\npython_buffer_path = /b\n",
        &[
            "[buffer] python_buffer_path is given more than once",
            "path = \"/a\"",
        ],
        None,
    );
    assert_78(
        "[database]\nhost = a\nhost = a\n",
        &["[database] host is given more than once"],
        None,
    );
    // A secret given twice is not shown.
    assert_78(
        "[postgres]\npassword = first-secret\npassword = second-secret\n",
        &[
            "[postgres] password is given more than once",
            "password = <redacted>, then password = <redacted>",
        ],
        Some("secret"),
    );
    // A section given twice with different keys, and an old and a new name in different sections
    // with the same value, are still fine.
    let (code, stderr) = check("[postgres]\nuser = monitor\n[database]\nhost = 127.0.0.1\n");
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn control_characters_in_file_values_are_refused() {
    assert_78(
        "[agent]\nhostname = db\u{1}1\n",
        &["[agent] hostname", "U+0001"],
        None,
    );
    assert_78(
        "[postgres]\nuser = mon\0itor\n",
        &["[postgres] user", "U+0000"],
        None,
    );
    assert_78(
        "[logs]\nline_prefix = %m\t[%p] \n",
        &["[logs] line_prefix", "U+0009", "tab included"],
        None,
    );
    assert_78(
        "[postgres]\npassword = s3cr\0et\n",
        &["[postgres] password = <redacted>", "U+0000"],
        Some("s3cr"),
    );
    // The Python agent's key is named as written.
    assert_78(
        "[database]\nname = a\u{7f}b\n",
        &["[database] name", "U+007F"],
        None,
    );
}

#[test]
fn a_malformed_or_unusable_listener_url_is_refused_at_load() {
    assert_78(
        "[listener]\nurl = http://[::1:bad/\n",
        &["[listener] url = \"http://[::1:bad/\"", "not a valid URL"],
        None,
    );
    assert_78(
        "[listener]\nurl = https://\n",
        &["[listener] url", "not a valid URL"],
        None,
    );
    assert_78(
        "[listener]\nurl = ftp://example.com/\n",
        &["[listener] url", "https:// or http://"],
        None,
    );
    assert_78(
        "[listener]\nurl = https://agent:hunter2@listener.example/ingest\n",
        &[
            "[listener] url = \"https://<redacted>@listener.example/ingest\"",
            "user name or password",
        ],
        Some("hunter2"),
    );
    let (code, stderr) = check("[listener]\nurl = https://[::1]:8443/ingest/postgres\n");
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn an_api_key_that_is_no_header_value_is_refused_at_load() {
    let url = "[listener]\nurl = https://192.0.2.1:8443/ingest/postgres\n";
    assert_78(
        &format!("{url}api_key = abc\u{7}def\n"),
        &["[listener] api_key = <redacted>", "U+0007"],
        Some("abc"),
    );
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "abc\u{1b}def\nsecond line\n").unwrap();
    assert_78(
        &format!("{url}api_key_file = {}\n", key_file.display()),
        &["[listener] api_key_file", "first line", "U+001B"],
        Some("abc"),
    );
}

#[test]
fn a_state_dir_that_is_a_file_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let path = dir.path().join("agent.ini");
    std::fs::write(
        &path,
        format!(
            "[agent]\nproject_id = p\nstate_dir = {}\n[logs]\nenabled = false\n",
            file.display()
        ),
    )
    .unwrap();
    let out = agent(&["check", "--config-only", path.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("[agent] state_dir") && stderr.contains("not a directory"),
        "{stderr}"
    );
    // Also when the daemon would start with it.
    let out = agent(&["run", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(78));
}
