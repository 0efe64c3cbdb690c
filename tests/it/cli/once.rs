//! `postgres-agent once --dry-run` end to end: one JSON batch per line, valid against the schemas;
//! two runs report the statements between them, and `--dry-run` reads the saved baseline without
//! ever changing it; a missing extension warns once and only drops its
//! own batch; an unreachable server still yields host metrics and a failing exit status.

use crate::support;

use serde_json::Value;
use support::collect::validate;
use support::{agent, PgOptions, PgServer};

fn once(server: &PgServer, state: &std::path::Path, extra: &str) -> (i32, Vec<Value>, String) {
    run_once(server, state, extra, true)
}

/// `once` with or without `--dry-run` (no listener: both print the batches).
fn run_once(
    server: &PgServer,
    state: &std::path::Path,
    extra: &str,
    dry_run: bool,
) -> (i32, Vec<Value>, String) {
    std::fs::create_dir_all(state).unwrap();
    let ini = state.join("agent.ini");
    std::fs::write(&ini, server.agent_ini(state, extra)).unwrap();
    let ini = ini.to_str().unwrap();
    let args: &[&str] = if dry_run {
        &["once", "--dry-run", ini]
    } else {
        &["once", ini]
    };
    let out = agent(args, &[("BITVILLE_PG_LOGGING_FORMAT", "text")]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let batches = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        batches,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kinds(batches: &[Value]) -> Vec<&str> {
    batches
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect()
}

fn probe_calls(stmts: &Value) -> Vec<Value> {
    stmts["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["query"]
                .as_str()
                .unwrap_or("")
                .contains("FROM once_probe WHERE")
        })
        .map(|r| r["calls"].clone())
        .collect()
}

#[test]
fn two_runs_print_valid_batches_and_the_statements_between_them() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    let baseline = state.path().join("statements-baseline.json");
    let (code, first, stderr) = once(&server, state.path(), "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        kinds(&first),
        ["pg_activity", "pg_statements", "locks", "system_metrics"]
    );
    assert!(!baseline.exists(), "a dry run must not write a baseline");
    for b in &first {
        validate(b);
        assert_eq!(b["project_id"], "test");
        assert_eq!(b["schema_version"], 1);
        assert_eq!(b["server"]["port"], server.port);
        assert!(!b["server"]["system_identifier"]
            .as_str()
            .unwrap()
            .is_empty());
        // UUID v7: version nibble 7.
        assert_eq!(&b["batch_id"].as_str().unwrap()[14..15], "7");
    }
    // A real run saves the baseline; dry runs then report against it and never change it.
    let (code, _, stderr) = run_once(&server, state.path(), "", false);
    assert_eq!(code, 0, "{stderr}");
    let saved = std::fs::read(&baseline).expect("once saves the statement baseline");
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let files = listing(state.path());
    server.psql("postgres", "CREATE TABLE once_probe (id int)");
    for i in 0..4 {
        server.psql(
            "postgres",
            &format!("SELECT * FROM once_probe WHERE id = {i}"),
        );
    }
    for _ in 0..2 {
        let (code, second, stderr) = once(&server, state.path(), "");
        assert_eq!(code, 0, "{stderr}");
        let stmts = &second[1];
        assert_eq!(stmts["baseline"], "continued");
        // The same delta twice: the first dry run did not move the baseline.
        assert_eq!(probe_calls(stmts), [4], "{stmts}");
        assert_eq!(
            std::fs::read(&baseline).unwrap(),
            saved,
            "--dry-run changed the baseline"
        );
        assert_eq!(listing(state.path()), files, "--dry-run created a file");
    }
}

#[test]
fn a_missing_extension_warns_once_with_the_fix_and_only_drops_its_batch() {
    let server = PgServer::start_with(PgOptions {
        pg_stat_statements: false,
        ..PgOptions::default()
    });
    let state = tempfile::tempdir().unwrap();
    let (code, batches, stderr) = once(&server, state.path(), "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(kinds(&batches), ["pg_activity", "locks", "system_metrics"]);
    assert_eq!(
        stderr
            .matches("pg_stat_statements is not available")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("shared_preload_libraries"), "{stderr}");
    assert!(
        stderr.contains("CREATE EXTENSION pg_stat_statements"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_server_still_yields_host_metrics_and_exit_status_1() {
    let server = PgServer::start();
    let state = tempfile::tempdir().unwrap();
    server.stop();
    let (code, batches, stderr) =
        once(&server, state.path(), "[postgres]\nconnect_timeout_s = 2\n");
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(kinds(&batches), ["system_metrics"]);
    validate(&batches[0]);
    assert!(stderr.contains("collector failed"), "{stderr}");
}
