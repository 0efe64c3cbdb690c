//! A physical standby of a test cluster, made with `pg_basebackup` on this machine: streaming from
//! the primary through a replication slot, on a port and socket directory of its own, stopped and
//! removed on drop. Runs as the OS user that owns the primary's data directory.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::pg::{PgServer, SUPERUSER};

pub struct Standby {
    pub socket_dir: PathBuf,
    pub port: u16,
    data_dir: PathBuf,
    bindir: PathBuf,
    owner: (u32, u32),
    _root: tempfile::TempDir,
}

/// `pg_basebackup` for this server: its own bin directory's, else the Debian client of the same
/// major. None: not on this machine (the embedded builds carry only the server).
pub fn basebackup(primary: &PgServer) -> Option<PathBuf> {
    let own = primary.bindir.join("pg_basebackup");
    let debian = PathBuf::from(format!(
        "/usr/lib/postgresql/{}/bin/pg_basebackup",
        primary.major()
    ));
    [own, debian].into_iter().find(|p| p.exists())
}

fn run(owner: (u32, u32), program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("PGDATA").current_dir("/");
    if rustix::process::geteuid().is_root() {
        cmd.uid(owner.0).gid(owner.1);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn ok(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Standby {
    /// Creates slot `slot` on `primary`, takes a base backup with `-R` and starts it.
    pub fn start(primary: &PgServer, basebackup: &Path, slot: &str) -> Standby {
        primary.psql(
            "postgres",
            &format!("SELECT pg_create_physical_replication_slot('{slot}')"),
        );
        let meta = fs::metadata(&primary.data_dir).expect("primary data dir");
        let owner = (meta.uid(), meta.gid());
        let root = tempfile::Builder::new()
            .prefix("pga-sb-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let data_dir = root.path().join("data");
        let socket_dir = root.path().join("sock");
        fs::create_dir(&socket_dir).expect("socket dir");
        if rustix::process::geteuid().is_root() {
            let status = Command::new("chown")
                .arg(format!("{}:{}", owner.0, owner.1))
                .arg(root.path())
                .arg(&socket_dir)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let port = primary.port.to_string();
        let host = primary.socket_dir.to_str().expect("utf8 path");
        ok(
            run(
                owner,
                basebackup,
                &[
                    "-D",
                    data_dir.to_str().expect("utf8 path"),
                    "-h",
                    host,
                    "-p",
                    &port,
                    "-U",
                    SUPERUSER,
                    "-R",
                    "-S",
                    slot,
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ],
            ),
            "pg_basebackup",
        );
        let port = super::free_port();
        let mut conf = fs::read_to_string(data_dir.join("postgresql.conf")).expect("conf");
        conf.push_str(&format!(
            "\n# standby\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            socket_dir.display()
        ));
        fs::write(data_dir.join("postgresql.conf"), conf).expect("write conf");
        let standby = Standby {
            socket_dir,
            port,
            data_dir,
            bindir: primary.bindir.clone(),
            owner,
            _root: root,
        };
        let log = standby.data_dir.with_file_name("standby.log");
        ok(
            run(
                owner,
                &standby.bindir.join("pg_ctl"),
                &[
                    "-D",
                    standby.data_dir.to_str().expect("utf8 path"),
                    "-l",
                    log.to_str().expect("utf8 path"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ),
            "pg_ctl start (standby)",
        );
        standby
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = run(
            self.owner,
            &self.bindir.join("pg_ctl"),
            &[
                "-D",
                self.data_dir.to_str().unwrap_or("/nonexistent"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
