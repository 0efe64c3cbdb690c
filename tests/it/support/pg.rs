//! A throwaway PostgreSQL cluster per test: initdb (from a cached template), its own port on
//! 127.0.0.1 plus a Unix socket in its own directory, removed on drop.
//!
//! Binaries come from `PG_BINDIR`, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
//! initdb refuses to run as root, so when the tests run as root the server runs as an unprivileged OS
//! user (`postgres` if it exists, else `pgagent-test`, created on first use).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Superuser created by initdb.
pub const SUPERUSER: &str = "postgres";

/// Options of a test cluster.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
    /// Load pg_stat_statements (and create the extension in `postgres`).
    pub pg_stat_statements: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            conf: Vec::new(),
            pg_stat_statements: true,
        }
    }
}

/// A running test cluster.
pub struct PgServer {
    pub bindir: PathBuf,
    /// Root of everything this cluster owns (removed on drop).
    pub root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub version_num: u32,
    owner: Option<(u32, u32)>,
}

struct Bin {
    dir: PathBuf,
    version_num: u32,
}

fn bin() -> &'static Bin {
    static BIN: OnceLock<Bin> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = find_bindir();
        let out = Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}/postgres: {e}", dir.display()));
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().nth(2).unwrap_or("0").to_string();
        let mut parts = version.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        Bin {
            dir,
            version_num: major * 10000 + minor,
        }
    })
}

fn find_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        if !dir.is_empty() {
            return PathBuf::from(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((major, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .expect("no PostgreSQL binaries: set PG_BINDIR or apt-get install -y postgresql")
}

/// The OS user the server runs as when the tests run as root: (uid, gid).
fn owner() -> Option<(u32, u32)> {
    static OWNER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *OWNER.get_or_init(|| {
        if rustix::process::geteuid().as_raw() != 0 {
            return None;
        }
        for name in ["postgres", "pgagent-test"] {
            if let Some(ids) = lookup_user(name) {
                return Some(ids);
            }
        }
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "pgagent-test",
            ])
            .status()
            .expect("useradd");
        assert!(
            status.success() || lookup_user("pgagent-test").is_some(),
            "useradd pgagent-test failed"
        );
        lookup_user("pgagent-test")
    })
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {}", path.display());
    }
}

/// Runs a server binary as the cluster's owner.
fn run_as(owner: Option<(u32, u32)>, program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("PGDATA").env("LC_ALL", "C.UTF-8");
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
        cmd.current_dir("/");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    out
}

/// A cached initdb result, copied for each cluster (initdb costs seconds, a copy milliseconds).
fn template() -> &'static PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let b = bin();
        let base = std::env::var("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let key: u64 = b
            .dir
            .to_string_lossy()
            .bytes()
            .fold(1469598103934665603u64, |h, c| {
                (h ^ c as u64).wrapping_mul(1099511628211)
            });
        let dir = base.join(format!("pg-template-{}-{key:x}", b.version_num));
        if dir.join("PG_VERSION").exists() {
            return dir;
        }
        let tmp = base.join(format!("pg-template-tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).expect("template dir");
        chown_tree(&tmp, owner());
        initdb(&tmp);
        // Another test process may have won the race; either copy is good.
        if fs::rename(&tmp, &dir).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        dir
    })
}

/// initdb into `dir` (empty, owned by the server's user).
fn initdb(dir: &Path) {
    let out = run_as(
        owner(),
        &bin().dir.join("initdb"),
        &[
            "-D",
            dir.to_str().expect("utf8 path"),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
    );
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    /// Starts a cluster with pg_stat_statements loaded and created.
    pub fn start() -> PgServer {
        PgServer::start_with(PgOptions::default())
    }

    pub fn start_with(options: PgOptions) -> PgServer {
        PgServer::start_from(options, template())
    }

    /// [`PgServer::start_with`] from a cluster of its own initdb: clusters copied from the cached
    /// template all share its `system_identifier`; this one has its own (seconds slower).
    pub fn start_fresh(options: PgOptions) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("pga-initdb-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let data = dir.path().join("data");
        fs::create_dir(&data).expect("initdb dir");
        chown_tree(dir.path(), owner());
        initdb(&data);
        PgServer::start_from(options, &data)
    }

    fn start_from(options: PgOptions, template: &Path) -> PgServer {
        let b = bin();
        let owner = owner();
        // Short path: Unix socket paths are limited to 107 bytes.
        let root = tempfile::Builder::new()
            .prefix("pga-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let data_dir = root.path().join("data");
        let socket_dir = root.path().join("sock");
        fs::create_dir(&socket_dir).expect("socket dir");
        let status = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&data_dir)
            .status()
            .expect("cp");
        assert!(status.success(), "copying the template cluster failed");
        let major = b.version_num / 10000;
        let destinations = if major >= 15 {
            "stderr,csvlog,jsonlog"
        } else {
            "stderr,csvlog"
        };
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", socket_dir.display()),
            "max_connections = 200".to_string(),
            "fsync = off".to_string(),
            "synchronous_commit = off".to_string(),
            "full_page_writes = off".to_string(),
            "shared_buffers = 32MB".to_string(),
            "logging_collector = on".to_string(),
            format!("log_destination = '{destinations}'"),
            "log_directory = 'log'".to_string(),
            "log_filename = 'postgresql-%Y-%m-%d_%H%M%S.log'".to_string(),
            "log_line_prefix = '%m [%p] %q%u@%d '".to_string(),
            "track_io_timing = on".to_string(),
        ];
        // compute_query_id exists from PostgreSQL 14 (13 computes it inside pg_stat_statements).
        if major >= 14 {
            conf.push("compute_query_id = on".to_string());
        }
        if options.pg_stat_statements {
            conf.push("shared_preload_libraries = 'pg_stat_statements'".to_string());
            conf.push("pg_stat_statements.track = 'all'".to_string());
        }
        conf.extend(options.conf.iter().cloned());
        let mut text = fs::read_to_string(data_dir.join("postgresql.conf")).expect("read conf");
        text.push_str("\n# test harness\n");
        for line in &conf {
            text.push_str(line);
            text.push('\n');
        }
        fs::write(data_dir.join("postgresql.conf"), text).expect("write conf");
        chown_tree(root.path(), owner);
        let mut server = PgServer {
            bindir: b.dir.clone(),
            root,
            data_dir,
            socket_dir,
            port: 0,
            version_num: b.version_num,
            owner,
        };
        // A port picked as free may be taken by a parallel test before the server binds it: retry.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = super::free_port();
            match server.try_start() {
                Ok(()) => {
                    if options.pg_stat_statements {
                        server.psql(
                            "postgres",
                            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
                        );
                    }
                    return server;
                }
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["-D", self.data_dir.to_str().expect("utf8 path")];
        all.extend_from_slice(args);
        run_as(self.owner, &self.bindir.join("pg_ctl"), &all)
    }

    fn try_start(&self) -> Result<(), String> {
        let port = format!("-p {}", self.port);
        let logfile = self.root.path().join("startup.log");
        let out = self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "-o",
            &port,
            "-l",
            logfile.to_str().expect("utf8 path"),
            "start",
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&logfile).unwrap_or_default()
            ))
        }
    }

    /// Starts the server again on the same port (after [`PgServer::stop`]).
    pub fn restart_after_stop(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Stops the server (fast mode: sessions are terminated).
    pub fn stop(&self) {
        let out = self.pg_ctl(&["-w", "-m", "fast", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The postmaster's PID.
    pub fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Directory of the server log files.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }

    /// A libpq-style connection string over the Unix socket, as the superuser.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname={db}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Runs SQL through `psql` if present, else through a one-off tokio-postgres connection;
    /// returns the output rows as text (tab-separated columns).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let psql = self.bindir.join("psql");
        let psql = if psql.exists() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(&psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
            ])
            .arg(self.conn_str(db))
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// A TOML-free INI config pointing the agent at this server, for CLI tests.
    pub fn agent_ini(&self, state_dir: &Path, extra: &str) -> String {
        let base = format!(
            "[agent]\nproject_id = test\nstate_dir = {}\n\n[postgres]\nhost = {}\nport = {}\nuser = {SUPERUSER}\ndatabase = postgres\n\n[telemetry]\nlisten =\n\n[safety]\n# Texts of new statements every cycle: tests run cycles seconds apart.\nstatement_texts_interval_s = 0\n\n",
            state_dir.display(),
            self.socket_dir.display(),
            self.port
        );
        super::merge_ini(&base, &format!("{extra}\n"))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() {
            let out = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
            if !out.status.success() {
                if let Some(pid) = self.pid() {
                    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
            }
        }
    }
}
