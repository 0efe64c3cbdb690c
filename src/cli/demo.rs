//! `postgres-agent demo`: the agent at work in one command, on a throwaway PostgreSQL of its own.
//!
//! It finds the server binaries (`--pg-bin`, else `PATH`, else the newest `/usr/lib/postgresql/*/bin`),
//! runs initdb into a new directory under the system's temporary directory, starts the server there on
//! its own Unix socket and a free 127.0.0.1 port (in its own process group, so a Ctrl-C reaches only
//! the demo), with pg_stat_statements and auto_explain loaded and the log settings that make the log
//! worth reading. Then it starts the [`workload`] and runs the real daemon ([`crate::daemon::run`])
//! against the server with a 10 s cycle, no listener, and the table view on a terminal (JSON lines on
//! a pipe, like `run`). SIGINT or SIGTERM stops the daemon; the demo then stops the workload, stops
//! the server (by its PID if `pg_ctl stop` does not), and removes the directory.
//!
//! PostgreSQL refuses to run as root: as root, the server runs as `postgres` if that user exists,
//! else `nobody`, and the demo says so. Nothing is installed or changed outside the directory.

mod workload;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::telemetry::logging::LogControl;

/// Where the server binaries are, and which major version they are.
struct PgBin {
    dir: PathBuf,
    version: String,
}

/// The throwaway server.
struct Server {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    /// (uid, gid, name) when run as root.
    owner: Option<(u32, u32, String)>,
}

/// Set by the signal handler installed while the demo sets up (before the daemon's own).
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Runs the demo; `log_format` as given on the command line.
pub fn run(pg_bin: Option<PathBuf>, pretty: bool, log_format: Option<String>) -> ExitCode {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let bin = match find_bin(pg_bin) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("postgres-agent demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::create(&bin) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postgres-agent demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = server.run_agent(&bin, pretty, log_format);
    server.remove();
    code
}

/// `--pg-bin`, else a `PATH` directory with initdb, pg_ctl and postgres, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn find_bin(given: Option<PathBuf>) -> Result<PgBin, String> {
    let complete = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    let dir = match given {
        Some(d) if complete(&d) => d,
        Some(d) => {
            return Err(format!(
                "--pg-bin {}: no initdb, pg_ctl and postgres there",
                d.display()
            ))
        }
        None => {
            let from_path = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).find(|d| complete(d)))
                .unwrap_or(None);
            let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter_map(|e| {
                            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                            let bin = e.path().join("bin");
                            complete(&bin).then_some((major, bin))
                        })
                        .collect()
                })
                .unwrap_or_default();
            debian.sort();
            from_path.or_else(|| debian.pop().map(|(_, d)| d)).ok_or(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in PATH or \
                 /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: apt-get install postgresql; \
                 RHEL/Fedora: dnf install postgresql-server postgresql-contrib), or give --pg-bin DIR",
            )?
        }
    };
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}/postgres: {e}", dir.display()))?;
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap_or("?")
        .to_string();
    Ok(PgBin { dir, version })
}

/// The user to run the server as when this process is root: `postgres`, else `nobody`.
fn server_owner() -> Option<(u32, u32, String)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    ["postgres", "nobody"].iter().find_map(|name| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == *name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, name.to_string())))?
        })
    })
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

impl Server {
    /// initdb, configure and start; on failure everything made is removed.
    fn create(bin: &PgBin) -> Result<Server, String> {
        let root = std::env::temp_dir().join(format!("postgres-agent-demo-{}", std::process::id()));
        std::fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let mut server = Server {
            bin: bin.dir.clone(),
            data: root.join("data"),
            socket_dir: root.join("sock"),
            root,
            port: 0,
            owner: server_owner(),
        };
        match server.start(bin) {
            Ok(()) => Ok(server),
            Err(e) => {
                server.remove();
                Err(e)
            }
        }
    }

    fn start(&mut self, bin: &PgBin) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("chmod", e))?;
        std::fs::create_dir(&self.socket_dir).map_err(|e| io("socket directory", e))?;
        std::fs::create_dir(&self.data).map_err(|e| io("data directory", e))?;
        if let Some((uid, gid, name)) = &self.owner {
            for d in [&self.socket_dir, &self.data] {
                rustix::fs::chown(
                    d.as_path(),
                    Some(rustix::fs::Uid::from_raw(*uid)),
                    Some(rustix::fs::Gid::from_raw(*gid)),
                )
                .map_err(|e| format!("chown {}: {e}", d.display()))?;
            }
            eprintln!(
                "postgres-agent demo: running as root; PostgreSQL refuses root, so the demo server \
                 runs as user {name}"
            );
        }
        let data = self.data.to_string_lossy().into_owned();
        self.as_owner(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let major: u32 = bin
            .version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let mut conf = format!(
            "\n# postgres-agent demo\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 30\nshared_buffers = 32MB\nfsync = off\n\
             shared_preload_libraries = 'pg_stat_statements, auto_explain'\n\
             pg_stat_statements.track = all\npg_stat_statements.track_utility = off\nauto_explain.log_min_duration = 500\n\
             logging_collector = on\nlog_destination = 'stderr'\nlog_directory = 'log'\n\
             log_line_prefix = '%m [%p] %q%u@%d '\nlog_min_duration_statement = 300\n\
             log_lock_waits = on\ndeadlock_timeout = 1s\nlc_messages = 'C'\n",
            self.socket_dir.display()
        );
        if major >= 14 {
            conf.push_str("compute_query_id = on\n");
        }
        let conf_path = self.data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf_path).map_err(|e| io("read postgresql.conf", e))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(|e| io("write postgresql.conf", e))?;
        let log = self.root.join("startup.log").to_string_lossy().into_owned();
        if let Some((uid, gid, _)) = &self.owner {
            std::fs::write(&log, "").map_err(|e| io("startup log", e))?;
            let _ = rustix::fs::chown(
                Path::new(&log),
                Some(rustix::fs::Uid::from_raw(*uid)),
                Some(rustix::fs::Gid::from_raw(*gid)),
            );
        }
        let mut last = String::new();
        for _ in 0..3 {
            self.port = free_port()?;
            let port = format!("-p {}", self.port);
            match self.as_owner(
                "pg_ctl",
                &[
                    "-D", &data, "-w", "-t", "60", "-o", &port, "-l", &log, "start",
                ],
            ) {
                Ok(()) => {
                    eprintln!(
                        "postgres-agent demo: PostgreSQL {} (pid {}) on 127.0.0.1:{} and {}, data in {}",
                        bin.version,
                        self.pid().map_or("?".to_string(), |p| p.to_string()),
                        self.port,
                        self.socket_dir.display(),
                        self.root.display()
                    );
                    return Ok(());
                }
                Err(e) => {
                    last = format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
                }
            }
        }
        Err(format!("PostgreSQL did not start: {last}"))
    }

    /// Runs a server program as the server's user, in its own process group (a Ctrl-C on the
    /// terminal reaches the demo, which stops the server in order).
    fn as_owner(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(args)
            .env_remove("PGDATA")
            .env("LC_ALL", "C")
            .current_dir("/")
            .process_group(0);
        if let Some((uid, gid, _)) = &self.owner {
            cmd.uid(*uid).gid(*gid);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The postmaster's PID, from `postmaster.pid`.
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The agent's configuration for this server.
    fn agent_ini(&self) -> String {
        format!(
            "[agent]\nproject_id = demo\nstate_dir = {state}\ncollection_interval_s = 10\n\n\
             [postgres]\nhost = {sock}\nport = {port}\nuser = postgres\ndatabase = postgres\n\n\
             [logs]\nstart_at = beginning\n\n[telemetry]\nlisten =\n\n\
             [spikes]\nlock_wait_ms = 2000\nmin_gap_s = 3600\n",
            state = self.root.join("state").display(),
            sock = self.socket_dir.display(),
            port = self.port
        )
    }

    /// Prepares the database, starts the workload, and runs the daemon until a signal.
    fn run_agent(&self, bin: &PgBin, pretty: bool, log_format: Option<String>) -> ExitCode {
        let conninfo = workload::conninfo(&self.socket_dir, self.port);
        let prepared = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(workload::prepare(&conninfo))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = prepared {
            eprintln!("postgres-agent demo: cannot prepare the demo database: {e}");
            return ExitCode::FAILURE;
        }
        let ini = self.root.join("agent.ini");
        if let Err(e) = std::fs::write(&ini, self.agent_ini()) {
            eprintln!("postgres-agent demo: {}: {e}", ini.display());
            return ExitCode::FAILURE;
        }
        let mut config = match Config::load(Some(&ini)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("postgres-agent demo: configuration error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(f) = log_format {
            config.logging.format = f;
        }
        let log: LogControl =
            crate::telemetry::logging::init(&config.logging.level, &config.logging.format);
        let stop = Arc::new(AtomicBool::new(false));
        let load = workload::spawn(conninfo, stop.clone());
        eprintln!(
            "postgres-agent demo: a workload runs (correlated requests, a lock wait, a spike); the \
             agent collects every 10 s (PostgreSQL {}). Ctrl-C stops and removes everything.",
            bin.version
        );
        let code = if STOP_REQUESTED.load(Ordering::SeqCst) {
            ExitCode::SUCCESS
        } else {
            let filter = pretty
                .then(crate::cli::stdout_filter::StdoutFilter::start)
                .and_then(|f| {
                    f.map_err(|e| eprintln!("postgres-agent: no table view: {e}"))
                        .ok()
                });
            let code = crate::daemon::run(Some(ini), config, log);
            if let Some(f) = filter {
                f.finish();
            }
            code
        };
        stop.store(true, Ordering::SeqCst);
        let _ = load.join();
        code
    }

    /// Stops the server (fast, then by PID) and removes the directory.
    fn remove(&self) {
        if self.data.join("postmaster.pid").exists() {
            let pid = self.pid();
            let data = self.data.to_string_lossy().into_owned();
            if self
                .as_owner(
                    "pg_ctl",
                    &["-D", &data, "-w", "-t", "20", "-m", "fast", "stop"],
                )
                .is_err()
            {
                if let Some(pid) = pid {
                    // SAFETY: kill(2) with the PID of the server this demo started.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => eprintln!(
                "postgres-agent demo: server stopped, {} removed",
                self.root.display()
            ),
            Err(e) => eprintln!(
                "postgres-agent demo: cannot remove {}: {e}",
                self.root.display()
            ),
        }
    }
}
