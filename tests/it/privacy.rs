//! The privacy module on real PostgreSQL output: query texts read from pg_stat_activity of busy
//! sessions (complete, and cut by a small track_activity_query_size), and real server log lines
//! (stderr, csvlog and jsonlog, read by the agent's own parsers) holding passwords, syntax errors, bind parameters and row data.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postgres_agent::db::Db;
use postgres_agent::log_format::LogFormat;
use postgres_agent::logs::parse::{Parser, MAX_ENTRY_BYTES};
use postgres_agent::logs::reader::EntryReader;
use postgres_agent::logs::LogEntry;
use postgres_agent::privacy::{fingerprint, obfuscate, LogFields, Privacy, RedactClasses};
use support::{agent_config, rt, PgOptions, PgServer};

const TRACE: &str = "/*controller='orders',action='show',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/";

/// Runs `sql` in its own psql session named `app`, without waiting for it.
fn start_busy(server: &PgServer, app: &str, sql: &str) -> Child {
    Command::new("psql")
        .args(["-X", "-q", "-d"])
        .arg(server.conn_str("postgres"))
        .arg("-c")
        .arg(sql)
        .env("PGAPPNAME", app)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn psql")
}

/// The raw `pg_stat_activity.query` of the active session named `app`, read through the agent's own
/// read-only pool, then the session is cancelled.
fn activity_text(server: &PgServer, db: &Db, app: &str, mut child: Child) -> String {
    let sql = format!(
        "SELECT pid, query FROM pg_stat_activity WHERE application_name = '{app}' AND state = 'active' AND wait_event = 'PgSleep'"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (pid, text) = rt().block_on(async {
        let mut s = db.session().await.unwrap();
        loop {
            let rows = s.query("activity", &sql, &[]).await.unwrap();
            if let Some(row) = rows.first() {
                return (row.get::<_, i32>(0), row.get::<_, String>(1));
            }
            assert!(
                Instant::now() < deadline,
                "session {app} never became active"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    server.psql("postgres", &format!("SELECT pg_cancel_backend({pid})"));
    let _ = child.wait();
    text
}

fn agent_db(server: &PgServer, state: &std::path::Path) -> Db {
    let config = agent_config(server, state, "");
    Db::new(&config.postgres, &config.safety).unwrap()
}

#[test]
fn live_activity_texts_have_every_literal_style_masked_and_comments_intact() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let db = agent_db(&server, state.path());
    let query = |v: &str| {
        format!(
            "{TRACE} SELECT pg_sleep(60), 'it''s Pl41n{v}' AS a, E'Esc\\'{v}\\\\' AS b, U&'Un1c\\0064e{v}' AS c,\n  \
             $$D0llar {v}$$ AS d, $tg$T4gged{v}$tg$ AS e, B'101101' AS f, X'CAFEBABE' AS g, 98765{v} AS h,\n  \
             12.5e3 AS \"Quoted Alias\" -- marginalia app:shop\n  WHERE 'x' <> $q$/* not a comment {v} */$q$"
        )
    };
    let first = activity_text(
        &server,
        &db,
        "busy-a",
        start_busy(&server, "busy-a", &query("111")),
    );
    let second = activity_text(
        &server,
        &db,
        "busy-b",
        start_busy(&server, "busy-b", &query("222")),
    );
    assert_eq!(
        first,
        query("111"),
        "pg_stat_activity returns the text as sent"
    );

    let masked = obfuscate(&first);
    assert_eq!(
        masked,
        format!(
            "{TRACE} SELECT pg_sleep(?), ? AS a, ? AS b, ? AS c,\n  \
             ? AS d, ? AS e, ? AS f, ? AS g, ? AS h,\n  \
             ? AS \"Quoted Alias\" -- marginalia app:shop\n  WHERE ? <> ?"
        )
    );
    for secret in [
        "Pl41n", "Esc", "Un1c", "D0llar", "T4gged", "101101", "CAFEBABE", "98765", "111",
    ] {
        assert!(!masked.contains(secret), "{secret} leaked: {masked}");
    }
    assert_eq!(
        fingerprint(&first),
        fingerprint(&second),
        "only literals differ"
    );
    assert_ne!(
        fingerprint(&first),
        fingerprint(&first.replace("AS h", "AS hh")),
        "a different alias is a different query"
    );
    db.close();
}

#[test]
fn texts_cut_by_track_activity_query_size_never_leak_the_cut_literal() {
    let server = PgServer::start_with(PgOptions {
        conf: vec!["track_activity_query_size = 100".into()],
        ..PgOptions::default()
    });
    let state = tempfile::tempdir().unwrap();
    let db = agent_db(&server, state.path());
    let long = "zq".repeat(60);
    // (literal opening, body, closing): each literal starts before byte 99 and ends after it.
    let cases = [
        ("'", long.clone(), "'"),
        ("E'\\'", long.clone(), "'"),
        ("U&'", long.clone(), "'"),
        ("$$", long.clone(), "$$"),
        ("$tag$", long.clone(), "$tag$"),
        ("N'", long.clone(), "'"),
        ("B'", "10".repeat(60), "'"),
        ("X'", "FACE".repeat(30), "'"),
        ("", "7".repeat(120), ""),
    ];
    for (i, (open, body, close)) in cases.iter().enumerate() {
        let app = format!("cut-{i}");
        let prefix = "/*app='t'*/ SELECT pg_sleep(60), ";
        let sql = format!("{prefix}{open}{body}{close} AS v");
        let raw = activity_text(&server, &db, &app, start_busy(&server, &app, &sql));
        assert!(raw.len() <= 99 && sql.starts_with(&raw), "not cut: {raw:?}");
        let masked = obfuscate(&raw);
        assert_eq!(
            masked, "/*app='t'*/ SELECT pg_sleep(?), ?",
            "case {i}: raw {raw:?}"
        );
        for piece in ["zq", "qz", "10", "01", "FA", "AC", "CE", "EF", "77"] {
            assert!(
                !masked.contains(piece),
                "case {i}: {piece} leaked in {masked:?}"
            );
        }
    }
    db.close();
}

/// Every entry of the server's log files in `format`, parsed by the agent's own log parsers.
fn parse_logs(server: &PgServer, format: LogFormat) -> Vec<LogEntry<'static>> {
    let ext = match format {
        LogFormat::Stderr | LogFormat::Syslog => "log",
        LogFormat::Csvlog => "csv",
        LogFormat::Jsonlog => "json",
    };
    let mut entries = Vec::new();
    for file in std::fs::read_dir(server.log_dir()).unwrap() {
        let path = file.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let parser = Parser::new(format, HARNESS_PREFIX, MAX_ENTRY_BYTES);
        let mut reader = EntryReader::new(std::fs::File::open(&path).unwrap(), parser, 0);
        while let Some((entry, _)) = reader.next_entry().unwrap() {
            entries.push(entry.into_owned());
        }
    }
    assert!(!entries.is_empty(), "no {ext} log entries");
    entries
}

/// The harness's `log_line_prefix` (tests/it/support/pg.rs).
const HARNESS_PREFIX: &str = "%m [%p] %q%u@%d ";

fn apply(entry: &mut LogEntry<'_>, privacy: &Privacy) {
    privacy.apply_to_log(LogFields {
        sqlstate: entry.state_code.as_deref(),
        message: &mut entry.message,
        detail: &mut entry.detail,
        hint: &mut entry.hint,
        context: &mut entry.context,
        statement: &mut entry.statement,
        query: &mut entry.internal_query,
    });
}

fn all_text(e: &LogEntry<'_>) -> String {
    [
        &e.detail,
        &e.hint,
        &e.context,
        &e.statement,
        &e.internal_query,
    ]
    .iter()
    .filter_map(|f| f.as_deref())
    .fold(e.message.to_string(), |acc, t| acc + "\n" + t)
}

fn read_logs(server: &PgServer, ext: &str) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(server.log_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

fn psql_may_fail(server: &PgServer, sql: &str) {
    let _ = Command::new("psql")
        .args(["-X", "-q", "-d"])
        .arg(server.conn_str("postgres"))
        .arg("-c")
        .arg(sql)
        .output()
        .expect("psql");
}

const PASSWORDS: [&str; 3] = ["S3cretPw", "An0therPw", "Err0rPw"];
const SYNTAX: [&str; 2] = ["Synt4xToken", "Synt4xSecret"];
const PARAM: &str = "P4ramSecret";
const PARAM_ERR: &str = "P4ramErr";
const ROW: &str = "ann@example.org";
const CONTEXT_SQL: &str = "Ctx5ecret";

fn texts(entries: &[LogEntry<'_>]) -> String {
    entries.iter().map(all_text).collect::<Vec<_>>().join("\n")
}

fn redacted(entries: &[LogEntry<'static>], privacy: &Privacy) -> String {
    let mut entries = entries.to_vec();
    entries.iter_mut().for_each(|e| apply(e, privacy));
    texts(&entries)
}

#[test]
fn real_log_lines_lose_passwords_syntax_errors_parameters_and_rows_per_class() {
    let server = PgServer::start_with(PgOptions {
        conf: vec![
            "log_statement = 'all'".into(),
            "log_parameter_max_length_on_error = -1".into(),
        ],
        ..PgOptions::default()
    });
    server.psql("postgres", "CREATE ROLE bob LOGIN PASSWORD 'S3cretPw!x'");
    server.psql(
        "postgres",
        "ALTER ROLE bob WITH ENCRYPTED PASSWORD 'An0therPw!y' VALID UNTIL 'infinity'",
    );
    psql_may_fail(&server, "ALTER ROLE nosuch PASSWORD 'Err0rPw!z'");
    psql_may_fail(&server, "SELEC Synt4xToken FROM t WHERE x = 'Synt4xSecret'");
    server.psql("postgres", "CREATE TABLE u (email text UNIQUE)");
    server.psql("postgres", "INSERT INTO u VALUES ('ann@example.org')");
    psql_may_fail(&server, "INSERT INTO u VALUES ('ann@example.org')");
    psql_may_fail(
        &server,
        "DO $$ BEGIN PERFORM 1/0 FROM (SELECT 'Ctx5ecret' AS s) x; END $$",
    );
    rt().block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&server.conn_str("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        let task = tokio::spawn(conn);
        client
            .query("SELECT $1::text AS v", &[&PARAM])
            .await
            .unwrap();
        let err = client
            .query("SELECT $1::text::int AS n", &[&PARAM_ERR])
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("22P02"), "{err}");
        drop(client);
        let _ = task.await;
    });
    server.psql("postgres", "SELECT 'end-of-test-marker'");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !["log", "csv", "json"]
        .iter()
        .all(|ext| read_logs(&server, ext).contains("end-of-test-marker"))
    {
        assert!(Instant::now() < deadline, "log lines never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }

    for format in [LogFormat::Stderr, LogFormat::Csvlog, LogFormat::Jsonlog] {
        let entries = parse_logs(&server, format);
        let format = format.as_str();
        let raw = texts(&entries);
        let every = [PARAM, PARAM_ERR, ROW, CONTEXT_SQL];
        for secret in PASSWORDS.iter().chain(&SYNTAX).chain(&every) {
            assert!(
                raw.contains(secret),
                "{format}: the raw log should hold {secret}"
            );
        }
        assert!(
            raw.contains("Key (email)=(ann@example.org) already exists."),
            "{format}"
        );
        assert!(raw.contains("SQL statement \"SELECT 1/0 FROM (SELECT 'Ctx5ecret' AS s) x\""));
        assert!(
            raw.contains("unnamed portal with parameters: $1 = 'P4ramErr'"),
            "{format}"
        );

        // Defaults: obfuscation on, credential + parsing_error.
        let out = redacted(&entries, &Privacy::default());
        for secret in PASSWORDS.iter().chain(&SYNTAX).chain(&[PARAM, CONTEXT_SQL]) {
            assert!(
                !out.contains(secret),
                "{format}, defaults: {secret} shipped:\n{out}"
            );
        }
        assert!(
            out.contains("SQL statement \"SELECT ?/? FROM (SELECT ? AS s) x\""),
            "{format}:\n{out}"
        );
        assert!(
            out.contains("unnamed portal with parameters: $1 = ?"),
            "{format}:\n{out}"
        );
        // Not a default class: the input quoted by the error message stays (as with pganalyze).
        assert!(
            out.contains("invalid input syntax for type integer: \"P4ramErr\""),
            "{format}"
        );
        assert!(
            out.contains("statement: CREATE ROLE bob LOGIN PASSWORD [redacted]"),
            "{format}:\n{out}"
        );
        assert!(out.contains("INSERT INTO u VALUES (?)"), "{format}:\n{out}");
        assert!(out.contains("parameters: $1 = ?"), "{format}:\n{out}");

        // obfuscate_queries = false: texts unchanged, but credentials and parse failures still redacted.
        let plain = Privacy {
            obfuscate_queries: false,
            ..Privacy::default()
        };
        let out = redacted(&entries, &plain);
        for secret in PASSWORDS.iter().chain(&SYNTAX) {
            assert!(
                !out.contains(secret),
                "{format}, no obfuscation: {secret} shipped:\n{out}"
            );
        }
        assert!(out.contains(PARAM) && out.contains("INSERT INTO u VALUES ('ann@example.org')"));

        // all: nothing of statements, parameters or rows is left.
        let all = Privacy {
            obfuscate_queries: false,
            redact: RedactClasses::ALL,
            ..Privacy::default()
        };
        let out = redacted(&entries, &all);
        for secret in PASSWORDS
            .iter()
            .chain(&SYNTAX)
            .chain(&every)
            .chain(&["end-of-test-marker"])
        {
            assert!(
                !out.contains(secret),
                "{format}, all: {secret} shipped:\n{out}"
            );
        }
        assert!(
            out.contains("unnamed portal with parameters: $1 = [redacted]"),
            "{format}:\n{out}"
        );
        assert!(
            out.contains("Key (email)=[redacted] already exists."),
            "{format}:\n{out}"
        );
    }
}

#[test]
fn auto_explain_plans_keep_statistics_and_lose_query_literals() {
    let server = PgServer::start_with(PgOptions {
        conf: vec![
            "shared_preload_libraries = 'pg_stat_statements,auto_explain'".into(),
            "auto_explain.log_min_duration = 0".into(),
            "auto_explain.log_analyze = on".into(),
            "auto_explain.log_buffers = on".into(),
        ],
        ..PgOptions::default()
    });
    server.psql(
        "postgres",
        "CREATE TABLE acct (email text, n int); INSERT INTO acct VALUES ('a@b', 1)",
    );
    server.psql(
        "postgres",
        "SELECT * FROM acct\n WHERE email = 'Expl41n@example.org' AND n > 987654",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut plan = loop {
        let found = parse_logs(&server, LogFormat::Stderr)
            .into_iter()
            .find(|e| e.message.contains("plan:") && e.message.contains("Expl41n"));
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no auto_explain plan logged");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(plan.message.contains("987654") && plan.message.contains("Filter: "));
    apply(&mut plan, &Privacy::default());
    let m = &plan.message;
    assert!(!m.contains("Expl41n") && !m.contains("987654"), "{m}");
    assert!(m.contains("WHERE email = ? AND n > ?"), "{m}");
    assert!(
        m.contains("(email = ?::text)") && m.contains("(n > ?)"),
        "{m}"
    );
    assert!(
        m.contains("(cost=") && m.contains("rows=") && m.contains("actual time="),
        "{m}"
    );
}
