//! The shipped systemd unit: valid for systemd, and hardened to an exposure of at most 1.5.

use std::process::Command;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/postgres-agent.service"
);
const MAX_EXPOSURE: f64 = 1.5;

/// The unit with the binary path pointed at the freshly built binary, so `verify` can check it.
fn unit_copy(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let text = text.replace(
        "/usr/local/bin/postgres-agent",
        env!("CARGO_BIN_EXE_postgres-agent"),
    );
    let path = dir.join("postgres-agent.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify also reports unrelated units on the host; only lines about ours matter.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("postgres-agent"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn unit_exposure_is_at_most_target() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure line in: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} above {MAX_EXPOSURE}: {stdout}"
    );
}

#[test]
fn unit_has_the_required_directives() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    for d in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=postgres-agent",
        "MemoryMax=256M",
        "CPUQuota=25%",
        "TasksMax=10",
        "TimeoutStopSec=30s",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestartPreventExitStatus=78",
        "ExecStartPre=-/usr/local/bin/postgres-agent check --config-only /etc/bitville/postgres-agent.ini",
        "ExecStart=/usr/local/bin/postgres-agent run /etc/bitville/postgres-agent.ini",
    ] {
        assert!(text.lines().any(|l| l.starts_with(d)), "unit lacks {d}");
    }
    // A full `check` at boot would stop the service during a database or listener outage.
    let pre: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ExecStartPre="))
        .collect();
    assert_eq!(pre.len(), 1, "{pre:?}");
    assert!(pre[0].contains("check --config-only"), "{pre:?}");
    // PrivateUsers= broke peer authentication and reading the group-readable server log.
    assert!(
        !text.lines().any(|l| l.starts_with("PrivateUsers=")),
        "the unit must not set PrivateUsers="
    );
}

/// The ExecStartPre command line works on the binary: 0 on a good file, 78 on a bad one.
#[test]
fn exec_start_pre_exits_78_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.ini");
    std::fs::write(&good, "[agent]\nproject_id = unit\n").unwrap();
    let bad = dir.path().join("bad.ini");
    std::fs::write(&bad, "[safety]\nmax_connections = 6\n").unwrap();
    let run = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_postgres-agent"))
            .args(["check", "--config-only"])
            .arg(path)
            .env_clear()
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(run(&good), Some(0));
    assert_eq!(run(&bad), Some(78));
}
