//! The Python agent's INI file and environment variables load unchanged: each old name warns once,
//! and an old and a new name that disagree are an error naming both.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres_agent::config::Config;
use support::python::PYTHON_EXAMPLE;

const PASSWORD: &str = "pw-9f3e-from-the-ini";
const API_KEY: &str = "key-71c2-from-the-ini";

/// The twelve environment variables of the Python agent, with the example's values.
const PYTHON_ENV: &[(&str, &str)] = &[
    ("BITVILLE_PG_DB_HOST", "5.9.121.222"),
    ("BITVILLE_PG_DB_PORT", "5432"),
    ("BITVILLE_PG_DB_NAME", "postgres"),
    ("BITVILLE_PG_DB_USER", "bitville_monitor"),
    ("BITVILLE_PG_DB_PASSWORD", PASSWORD),
    ("BITVILLE_PG_STATEMENT_TIMEOUT_MS", "5000"),
    ("BITVILLE_PG_COLLECTION_INTERVAL_S", "60"),
    (
        "BITVILLE_PG_LISTENER_URL",
        "https://88.198.22.206:8443/ingest/postgres",
    ),
    ("BITVILLE_PG_LISTENER_API_KEY", API_KEY),
    ("BITVILLE_PG_PROJECT_ID", "bitville"),
    (
        "BITVILLE_PG_BUFFER_PATH",
        "/var/lib/bitville-postgres-agent/buffer",
    ),
    (
        "BITVILLE_PG_LOG_PATH",
        "/var/log/postgresql/postgresql-main.log",
    ),
];

/// (old name, new name) of the ten aliases, as the warnings name them.
const RENAMES: &[(&str, &str)] = &[
    ("[database] host", "[postgres] host"),
    ("[database] port", "[postgres] port"),
    ("[database] name", "[postgres] database"),
    ("[database] user", "[postgres] user"),
    ("[database] password", "[postgres] password"),
    (
        "[database] statement_timeout_ms",
        "[safety] statement_timeout_ms",
    ),
    ("[collection] interval_s", "[agent] collection_interval_s"),
    ("[collection] log_path", "[logs] path"),
    ("[listener] project_id", "[agent] project_id"),
    ("[buffer] path", "[buffer] python_buffer_path"),
];

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn python_ini(dir: &Path) -> PathBuf {
    let text = PYTHON_EXAMPLE
        .replace("<your-password-here>", PASSWORD)
        .replace("<your-api-key-here>", API_KEY);
    let path = dir.join("agent.ini");
    std::fs::write(&path, text).unwrap();
    path
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("agent.ini");
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_python_values(c: &Config) {
    assert_eq!(c.postgres.host, "5.9.121.222");
    assert_eq!(c.postgres.port, 5432);
    assert_eq!(c.postgres.database, "postgres");
    assert_eq!(c.postgres.user, "bitville_monitor");
    assert_eq!(c.postgres.password.expose(), PASSWORD);
    assert_eq!(c.safety.statement_timeout, Duration::from_millis(5000));
    assert_eq!(c.agent.collection_interval, Duration::from_secs(60));
    assert_eq!(
        c.logs.path.as_deref(),
        Some(Path::new("/var/log/postgresql/postgresql-main.log"))
    );
    assert_eq!(
        c.listener.url.as_deref(),
        Some("https://88.198.22.206:8443/ingest/postgres")
    );
    assert_eq!(c.listener.api_key.expose(), API_KEY);
    assert_eq!(c.agent.project_id, "bitville");
    assert_eq!(
        c.buffer.python_buffer_path.as_deref(),
        Some(Path::new("/var/lib/bitville-postgres-agent/buffer"))
    );
    assert_eq!(c.buffer.max_size_bytes, 100 * 1024 * 1024);
}

#[test]
fn the_python_example_file_loads_with_one_warning_per_alias() {
    let dir = tempfile::tempdir().unwrap();
    let path = python_ini(dir.path());
    let c = Config::load_with(Some(&path), env(&[])).unwrap();
    assert_python_values(&c);
    assert_eq!(c.notices.len(), RENAMES.len(), "{:#?}", c.notices);
    for (old, new) in RENAMES {
        let n: Vec<&String> = c
            .notices
            .iter()
            .filter(|n| n.starts_with(&format!("{old} in ")))
            .collect();
        assert_eq!(n.len(), 1, "{old}: {:#?}", c.notices);
        assert!(n[0].contains(new) && n[0].contains("agent.ini"), "{}", n[0]);
    }
    let shown = format!("{c:?} {:?}", c.notices);
    assert!(
        !shown.contains(PASSWORD) && !shown.contains(API_KEY),
        "{shown}"
    );
}

#[test]
fn the_twelve_python_variables_load_identically() {
    let dir = tempfile::tempdir().unwrap();
    let from_file = Config::load_with(Some(&python_ini(dir.path())), env(&[])).unwrap();
    let mut from_env = Config::load_with(None, env(PYTHON_ENV)).unwrap();
    assert_python_values(&from_env);
    assert_eq!(from_env.file, None);
    from_env.file = from_file.file.clone();
    assert_eq!(from_env, from_file);
    // LISTENER_URL and LISTENER_API_KEY are our own names: no warning for them.
    assert_eq!(
        from_env.notices.len(),
        RENAMES.len(),
        "{:#?}",
        from_env.notices
    );
    for (var, _) in PYTHON_ENV.iter().filter(|(v, _)| !v.contains("LISTENER")) {
        let n = from_env
            .notices
            .iter()
            .filter(|n| n.starts_with(&format!("environment variable {var} ")))
            .count();
        assert_eq!(n, 1, "{var}: {:#?}", from_env.notices);
    }
    assert!(from_env
        .notices
        .iter()
        .any(|n| n.contains("BITVILLE_PG_DB_NAME") && n.contains("BITVILLE_PG_POSTGRES_DATABASE")));
}

#[test]
fn an_alias_and_its_new_key_with_different_values_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    // Both in the file.
    let path = write(
        dir.path(),
        "[database]\nhost = db-a\n[postgres]\nhost = db-b\n",
    );
    let msg = Config::load_with(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    for w in [
        "[database] host in ",
        "[postgres] host in ",
        "agent.ini",
        "\"db-a\"",
        "\"db-b\"",
    ] {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
    // The old variable against the new key in the file.
    let path = write(dir.path(), "[postgres]\nport = 5432\n");
    let msg = Config::load_with(Some(&path), env(&[("BITVILLE_PG_DB_PORT", "6000")]))
        .unwrap_err()
        .to_string();
    for w in [
        "environment variable BITVILLE_PG_DB_PORT = \"6000\"",
        "[postgres] port in ",
        "\"5432\"",
    ] {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
    // The old key in the file against the new variable; secrets stay hidden.
    let path = write(dir.path(), "[database]\npassword = old-secret-1\n");
    let msg = Config::load_with(
        Some(&path),
        env(&[("BITVILLE_PG_POSTGRES_PASSWORD", "new-secret-2")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("[database] password in ")
            && msg.contains("BITVILLE_PG_POSTGRES_PASSWORD")
            && msg.contains("<redacted>"),
        "{msg}"
    );
    assert!(
        !msg.contains("old-secret-1") && !msg.contains("new-secret-2"),
        "{msg}"
    );
}

#[test]
fn same_values_precedence_and_libpq_with_aliases() {
    let dir = tempfile::tempdir().unwrap();
    // An alias and its key with the same value are fine; the alias still warns.
    let path = write(
        dir.path(),
        "[database]\nuser = u1\nhost = file-host\n[postgres]\nuser = u1\n",
    );
    let c = Config::load_with(
        Some(&path),
        env(&[
            ("BITVILLE_PG_DB_HOST", "env-host"),
            ("PGHOST", "libpq-host"),
            ("PGUSER", "libpq-user"),
            ("PGDATABASE", "libpq-db"),
        ]),
    )
    .unwrap();
    assert_eq!(c.postgres.user, "u1");
    assert_eq!(c.postgres.host, "env-host", "the variable beats the file");
    assert_eq!(c.postgres.database, "libpq-db", "libpq fills what is unset");
    // [database] user, [database] host, BITVILLE_PG_DB_HOST.
    assert_eq!(c.notices.len(), 3, "{:#?}", c.notices);
    // An old key beats the libpq variables like a new one.
    let path = write(dir.path(), "[database]\nhost = file-host\n");
    let c = Config::load_with(Some(&path), env(&[("PGHOST", "libpq-host")])).unwrap();
    assert_eq!(c.postgres.host, "file-host");
    // Empty [buffer] path: no Python buffer to import.
    let path = write(dir.path(), "[buffer]\npath =\n");
    let c = Config::load_with(Some(&path), env(&[])).unwrap();
    assert_eq!(c.buffer.python_buffer_path, None);
}

#[test]
fn renaming_an_old_key_is_an_unchanged_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let old = Config::load_with(
        Some(&write(dir.path(), "[collection]\ninterval_s = 30\n")),
        env(&[]),
    )
    .unwrap();
    let new = Config::load_with(
        Some(&write(dir.path(), "[agent]\ncollection_interval_s = 30\n")),
        env(&[]),
    )
    .unwrap();
    assert_eq!(old.notices.len(), 1);
    assert!(new.notices.is_empty());
    assert_eq!(
        old, new,
        "notices are not compared (a reload sees no change)"
    );
}

#[test]
fn unknown_and_bad_old_keys_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "[database]\nhots = x\n",
            &["[database] unknown key `hots`", "did you mean `host`"],
        ),
        (
            "[collection]\ninterval = 60\n",
            &[
                "[collection] unknown key `interval`",
                "did you mean `interval_s`",
            ],
        ),
        (
            "[databse]\nhost = x\n",
            &["unknown section [databse]", "did you mean `database`"],
        ),
        (
            "[listener]\nprojectid = x\n",
            &[
                "[listener] unknown key `projectid`",
                "did you mean `project_id`",
            ],
        ),
        (
            "[database]\nport = lots\n",
            &["agent.ini: [database] port = \"lots\"", "whole number"],
        ),
    ];
    for (ini, wanted) in cases {
        let path = write(dir.path(), ini);
        let msg = Config::load_with(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        for w in *wanted {
            assert!(msg.contains(w), "for {ini:?}: {msg:?} lacks {w:?}");
        }
    }
    let msg = Config::load_with(None, env(&[("BITVILLE_PG_DB_HOTS", "x")]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("did you mean `BITVILLE_PG_DB_HOST`"), "{msg}");
}
