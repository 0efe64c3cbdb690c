//! Running `postgres-agent check` as the tests of its causes and hints do: an INI anyone may read,
//! the exit status with stdout and stderr as one text, and one check's line with its fix line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use super::{agent, PgServer};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Writes the INI into a directory anyone may read (and only its owner may write), so that runs as
/// an unprivileged user can read it too. Returns its path.
pub fn write_ini(dir: &Path, server: &PgServer, extra: &str) -> String {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("agent.ini");
    std::fs::write(&path, server.agent_ini(&dir.join("state"), extra)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path.to_str().unwrap().to_string()
}

/// The exit status (-1 when killed) and stdout followed by stderr.
pub fn text(out: Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `check` run as the current user on a config for `server` plus `extra`.
pub fn check(server: &PgServer, extra: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let ini = write_ini(dir.path(), server, extra);
    text(agent(&["check", &ini], &[]))
}

/// The line of check `name` and its fix line.
pub fn line(out: &str, name: &str) -> String {
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        if l.split_whitespace().nth(1) == Some(name) {
            let fix = lines
                .next()
                .filter(|f| f.trim_start().starts_with("fix:"))
                .unwrap_or("");
            return format!("{l}\n{fix}");
        }
    }
    panic!("no {name} line in:\n{out}")
}
