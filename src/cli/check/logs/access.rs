//! Why the agent's user cannot read the log, and what to change: the modes and owners on the way
//! to the file, the user and groups the check runs as, and only the settings that apply
//! (`log_file_mode` only under the logging collector). Also what a missing path's directory holds.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::super::CheckResult;
use super::{ServerFile, NAME};

/// For a path that does not exist: what its nearest existing directory holds, so a typo shows.
pub(super) fn nearest(path: &Path) -> String {
    let Some(dir) = path.ancestors().skip(1).find(|p| p.is_dir()) else {
        return "no directory above it exists".to_string();
    };
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    format!("{name}/")
                } else {
                    name
                }
            })
            .collect(),
        Err(e) => return format!("{} cannot be listed: {e}", dir.display()),
    };
    if names.is_empty() {
        return format!("{} is empty", dir.display());
    }
    names.sort();
    const SHOWN: usize = 20;
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{} holds: {}{more}", dir.display(), names.join(", "))
}

/// A permission error: which directory or file blocks the agent's user, and what to change. Only
/// what applies is suggested: `log_file_mode` only when the logging collector writes the file and
/// the file is not group-readable yet; the group only when the user is not in it.
pub(super) fn denied(
    path: &Path,
    error: &std::io::Error,
    server: Option<&ServerFile>,
) -> CheckResult {
    let me = Identity::current();
    let mut modes = Vec::new();
    let mut blocked = None;
    // From the top down: the first directory the user cannot search is the one to open up.
    let mut chain: Vec<&Path> = path.ancestors().collect();
    chain.reverse();
    for p in chain {
        if let Ok(meta) = std::fs::metadata(p) {
            let searchable =
                !meta.is_dir() || rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok();
            if p.as_os_str().len() > 1 && (!searchable || p == path) {
                modes.push(format!(
                    "{} mode {:04o} {}:{}",
                    p.display(),
                    meta.mode() & 0o7777,
                    user_name(meta.uid()),
                    group_name(meta.gid())
                ));
            }
            if !searchable && blocked.is_none() {
                blocked = Some((p.to_path_buf(), meta.gid()));
            }
        }
    }
    let target = std::fs::metadata(path).ok();
    let gid = blocked
        .as_ref()
        .map(|(_, g)| *g)
        .or_else(|| target.as_ref().map(|m| m.gid()));
    let user = user_name(me.uid);
    let mut fixes = Vec::new();
    // The file itself: readable by its group? (Unknown when a directory above hides it.)
    let file_unreadable_by_group = target
        .as_ref()
        .is_some_and(|m| m.is_file() && m.mode() & 0o040 == 0);
    let set_mode = |now: Option<&str>| {
        format!(
            "set log_file_mode = 0640 in postgresql.conf{} and reload (chmod g+r the existing files)",
            now.map(|m| format!(" (now {m})")).unwrap_or_default()
        )
    };
    let file_fix = match server {
        // Without the collector, log_file_mode does not apply.
        Some(s) if !s.collector => (file_unreadable_by_group || target.is_none()).then(|| {
            format!(
                "make {} group-readable (chmod g+r; logging_collector is off, so log_file_mode \
                 does not apply: the file's mode is whatever the server's start script gives it)",
                path.display()
            )
        }),
        Some(s) => match s.file_mode.as_deref() {
            Some(m) if group_readable(m) => file_unreadable_by_group.then(|| {
                format!(
                    "chmod g+r {} (log_file_mode is already {m}: new files are group-readable)",
                    path.display()
                )
            }),
            now => Some(set_mode(now)),
        },
        None => (file_unreadable_by_group || target.is_none()).then(|| set_mode(None)),
    };
    fixes.extend(file_fix);
    if let Some((dir, _)) = &blocked {
        fixes.push(format!(
            "let the group search {} (chmod g+rx; with log_directory inside the data directory, \
             PostgreSQL allows 0750 on it when the cluster was initialised with --allow-group-access, \
             else move log_directory to /var/log/postgresql)",
            dir.display()
        ));
    }
    match gid {
        Some(g) if !me.groups.contains(&g) => {
            let group = group_name(g);
            fixes.push(format!(
                "add the agent's user to group {group} (usermod -aG {group} {user}: {user} is the \
                 user this check ran as; the systemd unit has SupplementaryGroups=postgres)"
            ));
        }
        Some(g) => fixes.push(format!(
            "user {user} is already in group {}: the group lacks read permission",
            group_name(g)
        )),
        None => {}
    }
    if fixes.is_empty() {
        fixes.push("give the agent's user read access to the log file".to_string());
    }
    CheckResult::fail(
        NAME,
        format!(
            "cannot read {}: {error}; {}; the check runs as {}",
            path.display(),
            modes.join(", "),
            me.describe()
        ),
        fixes.join("; "),
    )
}

/// Whether an octal mode text such as `0640` lets the group read.
fn group_readable(mode: &str) -> bool {
    u32::from_str_radix(mode.trim_start_matches('0'), 8).is_ok_and(|m| m & 0o040 != 0)
}

/// The name of the user this process runs as, for fixes that name the agent's user.
pub(in crate::cli::check) fn current_user() -> String {
    user_name(rustix::process::geteuid().as_raw())
}

/// The user and groups this process runs as, for messages.
struct Identity {
    uid: u32,
    groups: Vec<u32>,
}

impl Identity {
    fn current() -> Identity {
        let mut groups = vec![rustix::process::getegid().as_raw()];
        if let Ok(more) = rustix::process::getgroups() {
            for g in more {
                if !groups.contains(&g.as_raw()) {
                    groups.push(g.as_raw());
                }
            }
        }
        Identity {
            uid: rustix::process::geteuid().as_raw(),
            groups,
        }
    }

    fn describe(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(|g| group_name(*g)).collect();
        format!(
            "user {} (groups {})",
            user_name(self.uid),
            groups.join(", ")
        )
    }
}

/// The name of a user or group id from /etc/passwd or /etc/group, else the number.
fn name_in(file: &str, id: u32) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| id.to_string())
}

fn user_name(uid: u32) -> String {
    name_in("/etc/passwd", uid)
}

fn group_name(gid: u32) -> String {
    name_in("/etc/group", gid)
}
