//! Configuration loading: precedence, overrides, and every error path (exit 78, the key named).

use crate::support;

use std::path::Path;
use std::time::Duration;

use postgres_agent::config::{keys, resolve_path, Config, ConfigError};
use support::agent;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn defaults_match_the_key_table() {
    let c = Config::load_with(None, env(&[])).unwrap();
    assert_eq!(c.agent.collection_interval, Duration::from_secs(60));
    assert_eq!(
        c.agent.state_dir,
        Path::new("/var/lib/bitville-postgres-agent")
    );
    assert!(
        !c.agent.hostname.is_empty(),
        "hostname defaults to the system's"
    );
    assert_eq!(c.safety.max_connections, 5);
    assert_eq!(c.safety.statement_timeout, Duration::from_millis(5000));
    assert_eq!(c.safety.lock_timeout, Duration::from_millis(1000));
    assert_eq!(c.buffer.max_size_bytes, 100 * 1024 * 1024);
    assert_eq!(c.circuit_breaker.failure_threshold, 5);
    assert_eq!(c.circuit_breaker.recovery_timeout, Duration::from_secs(60));
    assert_eq!(c.logs.poll_interval, Duration::from_millis(100));
    assert_eq!(c.logs.max_buffered_entries, 500);
    assert!(c.privacy.obfuscate_queries);
    assert_eq!(c.listener.url, None);
    assert_eq!(c.telemetry.listen, Some("127.0.0.1:9188".parse().unwrap()));
    assert_eq!(c.logging.format, "auto");
}

#[test]
fn precedence_env_over_file_over_libpq_over_default() {
    let dir = tempfile::tempdir().unwrap();
    let ini = write(
        dir.path(),
        "a.ini",
        "[postgres]\nport = 6000\nuser = from_file\n[safety]\nmax_connections = 3\n",
    );
    let c = Config::load_with(
        Some(&ini),
        env(&[
            ("BITVILLE_PG_POSTGRES_PORT", "7000"),
            ("PGPORT", "8000"),
            ("PGUSER", "from_libpq"),
            ("PGDATABASE", "libpq_db"),
            ("BITVILLE_PG_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "9"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.postgres.port, 7000,
        "BITVILLE_PG_* beats the file and PGPORT"
    );
    assert_eq!(c.postgres.user, "from_file", "the file beats PGUSER");
    assert_eq!(
        c.postgres.database, "libpq_db",
        "PGDATABASE beats the default"
    );
    assert_eq!(c.safety.max_connections, 3);
    assert_eq!(
        c.circuit_breaker.failure_threshold, 9,
        "sections with underscores"
    );
    assert_eq!(c.file.as_deref(), Some(ini.as_path()));
}

#[test]
fn config_path_resolution_order() {
    let explicit = Path::new("/x/explicit.ini");
    assert_eq!(
        resolve_path(Some(explicit), Some("/x/env.ini")).as_deref(),
        Some(explicit)
    );
    assert_eq!(
        resolve_path(None, Some("/x/env.ini")).as_deref(),
        Some(Path::new("/x/env.ini"))
    );
    // With neither, the default path is used only if it exists.
    let expected = Path::new(postgres_agent::config::DEFAULT_CONFIG_PATH)
        .exists()
        .then(|| Path::new(postgres_agent::config::DEFAULT_CONFIG_PATH).to_path_buf());
    assert_eq!(resolve_path(None, None), expected);
}

#[test]
fn secrets_from_files_and_never_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "s3cret-pw\nignored second line\n");
    let key = write(dir.path(), "key", "api-key-xyz\n");
    let ini = write(
        dir.path(),
        "a.ini",
        &format!(
            "[agent]\nproject_id = shop\n[postgres]\npassword_file = {}\n[listener]\nurl = https://example.test/in\napi_key_file = {}\n",
            pw.display(),
            key.display()
        ),
    );
    let c = Config::load_with(Some(&ini), env(&[])).unwrap();
    assert_eq!(c.postgres.password.expose(), "s3cret-pw");
    assert_eq!(c.listener.api_key.expose(), "api-key-xyz");
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("s3cret-pw") && !debug.contains("api-key-xyz"),
        "{debug}"
    );
}

/// (INI text, environment, fragments the error message must contain)
type ErrorCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

fn load_err(ini: &str, vars: &[(&str, &str)]) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.ini", ini);
    Config::load_with(Some(&path), env(vars)).unwrap_err()
}

#[test]
fn error_paths_name_file_section_key_and_value() {
    let cases: &[ErrorCase] = &[
        (
            "[safety]\nmax_conections = 3\n",
            &[],
            &[
                "bad.ini",
                "[safety]",
                "max_conections",
                "did you mean `max_connections`",
            ],
        ),
        (
            "[saftey]\nmax_connections = 3\n",
            &[],
            &[
                "bad.ini",
                "unknown section [saftey]",
                "did you mean `safety`",
            ],
        ),
        (
            "[safety]\nmax_connections = many\n",
            &[],
            &[
                "bad.ini",
                "[safety] max_connections = \"many\"",
                "whole number",
            ],
        ),
        (
            "[safety]\nmax_connections = 6\n",
            &[],
            &["max_connections = \"6\"", "from 1 to 5"],
        ),
        (
            "[listener]\ncompress = perhaps\n",
            &[],
            &["[listener] compress = \"perhaps\"", "true or false"],
        ),
        (
            "[postgres]\nsslmode = verify_full\n",
            &[],
            &["sslmode = \"verify_full\"", "did you mean `verify-full`"],
        ),
        (
            "[listener]\nurl = ftp://x\n",
            &[],
            &["[listener] url = \"ftp://x\"", "https://"],
        ),
        (
            "[telemetry]\nlisten = localhost\n",
            &[],
            &["[telemetry] listen = \"localhost\"", "IP:PORT"],
        ),
        (
            "[privacy]\nredact_log_secrets = credential,bogus\n",
            &[],
            &["redact_log_secrets", "`bogus`"],
        ),
        (
            "[privacy]\nredact_log_secrets = none,credential\n",
            &[],
            &["redact_log_secrets", "`none` cannot be combined"],
        ),
        (
            "[postgres]\npassword_file = /nonexistent/pw\n",
            &[],
            &[
                "[postgres] password_file = \"/nonexistent/pw\"",
                "cannot read",
            ],
        ),
        (
            "port = 5432\n",
            &[],
            &["bad.ini", "`port` is outside any [section]"],
        ),
        ("[agent\n", &[], &["bad.ini", "syntax"]),
        (
            "",
            &[("BITVILLE_PG_SAFETY_MAX_CONECTIONS", "2")],
            &[
                "BITVILLE_PG_SAFETY_MAX_CONECTIONS",
                "did you mean `BITVILLE_PG_SAFETY_MAX_CONNECTIONS`",
            ],
        ),
        (
            "",
            &[("BITVILLE_PG_AGENT_COLLECTION_INTERVAL_S", "0")],
            &[
                "environment variable BITVILLE_PG_AGENT_COLLECTION_INTERVAL_S",
                "collection_interval_s = \"0\"",
            ],
        ),
        (
            "",
            &[("PGPORT", "99999")],
            &["environment variable PGPORT", "[postgres] port = \"99999\""],
        ),
    ];
    for (ini, vars, wanted) in cases {
        let msg = load_err(ini, vars).to_string();
        for w in *wanted {
            assert!(msg.contains(w), "for {ini:?} {vars:?}: {msg:?} lacks {w:?}");
        }
    }
}

#[test]
fn secret_values_are_never_printed_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "file-secret\n");
    let msg = load_err(
        &format!(
            "[postgres]\npassword = inline-secret\npassword_file = {}\n",
            pw.display()
        ),
        &[],
    )
    .to_string();
    assert!(msg.contains("not both"), "{msg}");
    assert!(
        !msg.contains("inline-secret") && !msg.contains("file-secret"),
        "{msg}"
    );
}

#[test]
fn binary_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.ini", "[logs]\npoll_interval_ms = soon\n");
    for args in [
        vec!["check", path.to_str().unwrap()],
        vec!["--config", path.to_str().unwrap(), "run"],
        vec!["once", "--dry-run", path.to_str().unwrap()],
        vec!["status", path.to_str().unwrap()],
    ] {
        let out = agent(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains("bad.ini")
                && stderr.contains("poll_interval_ms")
                && stderr.contains("soon"),
            "{stderr}"
        );
    }
    // Through BITVILLE_PG_CONFIG_PATH, and an unreadable file.
    let out = agent(
        &["check"],
        &[("BITVILLE_PG_CONFIG_PATH", path.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(78));
    let out = agent(&["check", "/nonexistent/agent.ini"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.ini"));
    // An environment override with a bad value.
    let out = agent(&["check"], &[("BITVILLE_PG_SAFETY_LOCK_TIMEOUT_MS", "-1")]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BITVILLE_PG_SAFETY_LOCK_TIMEOUT_MS"));
}

#[test]
fn readme_documents_every_key() {
    // The key reference moved from README.md to docs/configuration.md (issue 25).
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    for spec in keys::KEYS {
        let row = format!("| `{}` | `{}` |", spec.section, spec.key);
        assert!(
            readme.contains(&row),
            "docs/configuration.md lacks a row starting {row}"
        );
    }
}

#[test]
fn version_and_help() {
    let out = agent(&["--version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = agent(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "once", "check", "parse-log", "status"] {
        assert!(help.contains(cmd), "{help}");
    }
}

/// README: values may be double-quoted to keep surrounding spaces (a log_line_prefix ends in one).
#[test]
fn quoted_values_keep_their_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let ini = write(
        dir.path(),
        "q.ini",
        "[logs]\nline_prefix = \"%m [%p] \"\n[agent]\nhostname =   db1  \n",
    );
    let c = Config::load_with(Some(&ini), env(&[])).unwrap();
    assert_eq!(c.logs.line_prefix.as_deref(), Some("%m [%p] "));
    assert_eq!(c.agent.hostname, "db1");
}
