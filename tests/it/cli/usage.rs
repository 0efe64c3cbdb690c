//! Usage errors of the command line (issue 25): a mistyped command or flag gets "did you mean", a
//! config file given twice differently is an error, and a required key left unset is said plainly.
//! None of these needs a server.

use crate::support;

use std::process::Output;

use support::agent;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_mistyped_command_gets_did_you_mean_not_a_config_error() {
    let out = agent(&["chek"], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("unknown command 'chek'; did you mean 'check'?"),
        "{t}"
    );
    assert!(!t.contains("configuration error"), "{t}");
    let out = agent(&["stauts"], &[]);
    assert!(
        text(&out).contains("did you mean 'status'?"),
        "{}",
        text(&out)
    );
    // A word like no command: listed, no guess.
    let out = agent(&["xyzzy"], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("unknown command 'xyzzy'") && !t.contains("did you mean"),
        "{t}"
    );
    assert!(
        t.contains("check, parse-log, status") || t.contains("parse-log"),
        "{t}"
    );
}

#[test]
fn a_path_is_still_the_config_of_run() {
    // The Python agent's form: a path (here one that does not exist) is the config of `run`.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("agent.ini");
    let out = agent(&[missing.to_str().unwrap()], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(78), "{t}");
    assert!(t.contains("cannot read config file"), "{t}");
}

#[test]
fn a_mistyped_flag_gets_the_flag_it_resembles() {
    let out = agent(&["once", "--dryrun"], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("--dry-run"), "{t}");
    assert!(!t.contains("'-- --dryrun'"), "{t}");
    let out = agent(&["check", "--config-onyl"], &[]);
    assert!(text(&out).contains("--config-only"), "{}", text(&out));
}

#[test]
fn config_given_twice_differently_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.ini");
    let b = dir.path().join("b.ini");
    std::fs::write(&a, "[logs]\nenabled = false\n").unwrap();
    std::fs::write(&b, "[logs]\nenabled = false\n").unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let out = agent(&["--config", a, "check", "--config-only", b], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("given twice") && t.contains(a) && t.contains(b),
        "{t}"
    );
    // The same file twice is no conflict.
    let out = agent(&["--config", a, "check", "--config-only", a], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = agent(&["check", "--config-only", "--config", b], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_required_key_left_unset_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("agent.ini");
    std::fs::write(
        &ini,
        "[listener]\nurl = http://127.0.0.1:9/ingest/postgres\n",
    )
    .unwrap();
    let out = agent(&["check", "--config-only", ini.to_str().unwrap()], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(78), "{t}");
    assert!(
        t.contains("[agent] project_id is not set, and it is required")
            && t.contains("BITVILLE_PG_AGENT_PROJECT_ID"),
        "{t}"
    );
    assert!(!t.contains("built-in default"), "{t}");
}
