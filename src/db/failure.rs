//! Why a connection to the watched server failed, and what fixes it.
//!
//! The cause is read from what the driver gives as data: the server's SQLSTATE for errors the server
//! sent (authentication, missing database, too many connections), the `io::ErrorKind` of the socket
//! error in the error's source chain (no socket, refused, permission, timeout), a rustls error in
//! that chain (certificate), and the pool's own timeout. Two causes tokio-postgres keeps in a
//! private kind with no code (the server refused TLS; it asked for a password and none was
//! configured) are recognised by the fixed text of that kind, the only place messages are read.
//!
//! It does not decide how loud a failure is; callers use [`ConnectFailure::needs_operator`].

use std::io;
use std::path::{Path, PathBuf};

use tokio_postgres::error::SqlState;

/// The class of a failed connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No socket file at the path: the server is not running, or uses another port or directory.
    NoSocket,
    /// Nothing listens at the address (or a stale socket file is left behind).
    Refused,
    /// The operating system denied access to the socket or its directory.
    Permission,
    /// No answer within `postgres.connect_timeout_s`.
    Timeout,
    /// TLS was required and the server does not offer it, or the handshake failed.
    Tls,
    /// The server rejected the password (SQLSTATE 28P01).
    Password,
    /// The server asked for a password and none is configured.
    PasswordMissing,
    /// pg_hba.conf rejected the connection, peer authentication failed, or the role does not
    /// exist (SQLSTATE 28000).
    Rejected,
    /// The database does not exist (SQLSTATE 3D000).
    NoDatabase,
    /// The server is at `max_connections` (SQLSTATE 53300).
    TooManyConnections,
    /// The server is starting, stopping or in recovery without hot standby (SQLSTATE 57P03).
    NotAccepting,
    /// Every pooled session is busy (the pool's wait timeout).
    PoolBusy,
    /// Anything else; the message says what.
    Other,
}

/// What a hint needs to know about the connection target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Unix socket directory, or a host name / address.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub sslmode: String,
    pub password_set: bool,
}

impl Target {
    /// The socket directory, when the target is a Unix socket.
    pub fn socket_dir(&self) -> Option<&Path> {
        self.host.starts_with('/').then(|| Path::new(&self.host))
    }

    /// The socket file, when the target is a Unix socket.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.socket_dir()
            .map(|d| d.join(format!(".s.PGSQL.{}", self.port)))
    }

    /// `host:port` or the socket path, for messages.
    pub fn describe(&self) -> String {
        match self.socket_path() {
            Some(p) => p.display().to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

impl ConnectFailure {
    /// Classifies a pool error (which wraps the driver's).
    pub fn of_pool(e: &deadpool_postgres::PoolError) -> ConnectFailure {
        use deadpool_postgres::{PoolError, TimeoutType};
        match e {
            PoolError::Backend(e) => ConnectFailure::of(e),
            PoolError::Timeout(TimeoutType::Wait) => ConnectFailure::PoolBusy,
            PoolError::Timeout(_) => ConnectFailure::Timeout,
            _ => ConnectFailure::Other,
        }
    }

    /// Classifies a driver error from a connection attempt.
    pub fn of(e: &tokio_postgres::Error) -> ConnectFailure {
        if let Some(code) = e.code() {
            return ConnectFailure::of_sqlstate(code);
        }
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if s.is::<rustls::Error>() {
                return ConnectFailure::Tls;
            }
            if let Some(io) = s.downcast_ref::<io::Error>() {
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>())
                {
                    return ConnectFailure::Tls;
                }
                match io.kind() {
                    io::ErrorKind::NotFound => return ConnectFailure::NoSocket,
                    io::ErrorKind::ConnectionRefused => return ConnectFailure::Refused,
                    io::ErrorKind::PermissionDenied => return ConnectFailure::Permission,
                    io::ErrorKind::TimedOut => return ConnectFailure::Timeout,
                    _ => {}
                }
            }
            source = s.source();
        }
        // tokio-postgres's `Kind` is private and these two carry no code: its Display is the
        // kind's fixed name, and the source its cause.
        let cause = std::error::Error::source(e).map(|c| c.to_string());
        match (e.to_string().as_str(), cause.as_deref()) {
            ("error performing TLS handshake", _) => ConnectFailure::Tls,
            ("invalid configuration", Some("password missing")) => ConnectFailure::PasswordMissing,
            _ => ConnectFailure::Other,
        }
    }

    fn of_sqlstate(code: &SqlState) -> ConnectFailure {
        if *code == SqlState::INVALID_PASSWORD {
            ConnectFailure::Password
        } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            ConnectFailure::Rejected
        } else if *code == SqlState::UNDEFINED_DATABASE {
            ConnectFailure::NoDatabase
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            ConnectFailure::TooManyConnections
        } else if *code == SqlState::CANNOT_CONNECT_NOW {
            ConnectFailure::NotAccepting
        } else {
            ConnectFailure::Other
        }
    }

    /// A stable name for logs and tests.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::NoSocket => "no_socket",
            ConnectFailure::Refused => "refused",
            ConnectFailure::Permission => "permission",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Tls => "tls",
            ConnectFailure::Password => "password",
            ConnectFailure::PasswordMissing => "password_missing",
            ConnectFailure::Rejected => "rejected",
            ConnectFailure::NoDatabase => "no_database",
            ConnectFailure::TooManyConnections => "too_many_connections",
            ConnectFailure::NotAccepting => "not_accepting",
            ConnectFailure::PoolBusy => "pool_busy",
            ConnectFailure::Other => "other",
        }
    }

    /// True when retrying cannot help until someone changes the configuration, a grant,
    /// pg_hba.conf or a file mode: these are errors, not an outage.
    pub fn needs_operator(self) -> bool {
        matches!(
            self,
            ConnectFailure::Permission
                | ConnectFailure::Tls
                | ConnectFailure::Password
                | ConnectFailure::PasswordMissing
                | ConnectFailure::Rejected
                | ConnectFailure::NoDatabase
        )
    }

    /// The specific fix for this cause at `target`. Reads the socket directory for [`NoSocket`].
    ///
    /// [`NoSocket`]: ConnectFailure::NoSocket
    pub fn fix(self, target: &Target) -> String {
        let user = &target.user;
        match self {
            ConnectFailure::NoSocket => no_socket_fix(target),
            ConnectFailure::Refused => format!(
                "nothing accepts connections at {}: start PostgreSQL (systemctl start postgresql), or \
                 set [postgres] host and port to where it listens (its listen_addresses and port)",
                target.describe()
            ),
            ConnectFailure::Permission => format!(
                "the agent's user may not open {}: it needs search (x) permission on every directory \
                 above the socket and write permission on the socket (Debian: /var/run/postgresql is \
                 mode 2775, group postgres: add the agent's user to group postgres), or connect over \
                 TCP ([postgres] host = 127.0.0.1)",
                target.describe()
            ),
            ConnectFailure::Timeout => format!(
                "{} did not answer within [postgres] connect_timeout_s: check the address, that no \
                 firewall drops the packets, and that the server is not hung or overloaded",
                target.describe()
            ),
            ConnectFailure::Tls => format!(
                "sslmode = {} needs TLS and the handshake failed: turn on ssl in postgresql.conf, or \
                 set [postgres] sslmode = prefer (or disable on a trusted network); for verify-ca and \
                 verify-full, [postgres] sslrootcert must hold the CA that signed the server's certificate",
                target.sslmode
            ),
            ConnectFailure::Password => format!(
                "the server rejected the password of role \"{user}\": set [postgres] password_file \
                 (or password) to the role's password, or as a superuser: ALTER ROLE \"{user}\" PASSWORD '...';"
            ),
            ConnectFailure::PasswordMissing => format!(
                "pg_hba.conf asks role \"{user}\" for a password and none is configured: set [postgres] \
                 password_file (a file only the agent's user can read holding the password), or \
                 connect over the Unix socket with peer authentication"
            ),
            ConnectFailure::Rejected => format!(
                "the server refused role \"{user}\" (the message says why): the role must exist \
                 (CREATE ROLE \"{user}\" LOGIN; GRANT pg_monitor TO \"{user}\";) and pg_hba.conf must \
                 allow it for database \"{}\" over {} (for peer authentication the OS user must be \
                 named \"{user}\" or be mapped in pg_ident.conf); reload PostgreSQL after editing",
                target.database,
                if target.socket_dir().is_some() {
                    "the Unix socket (a `local` line)"
                } else {
                    "TCP (a `host` line)"
                }
            ),
            ConnectFailure::NoDatabase => format!(
                "database \"{}\" does not exist: set [postgres] database to one that does (psql -l \
                 lists them; the one with pg_stat_statements created)",
                target.database
            ),
            ConnectFailure::TooManyConnections => format!(
                "the server is at max_connections: give role \"{user}\" its own slots (ALTER ROLE \
                 \"{user}\" CONNECTION LIMIT 2; and raise max_connections) or end idle sessions; the \
                 agent retries every cycle"
            ),
            ConnectFailure::NotAccepting => {
                "the server is starting, stopping or recovering: wait for it; the agent retries every cycle"
                    .to_string()
            }
            ConnectFailure::PoolBusy => {
                "every agent session is busy: a query is stuck; it is discarded at the client deadline"
                    .to_string()
            }
            ConnectFailure::Other => format!(
                "check [postgres] host, port, user and sslmode ({}), that the server runs, and its log",
                target.describe()
            ),
        }
    }
}

/// Ports of the PostgreSQL sockets in `dir` (`.s.PGSQL.<port>`, without the `.lock` files), sorted.
pub fn sockets_in(dir: &Path) -> io::Result<Vec<u16>> {
    let mut ports: Vec<u16> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(".s.PGSQL.")?
                .parse()
                .ok()
        })
        .collect();
    ports.sort_unstable();
    Ok(ports)
}

fn no_socket_fix(target: &Target) -> String {
    let Some(dir) = target.socket_dir() else {
        return format!(
            "{} cannot be resolved or reached: check [postgres] host",
            target.describe()
        );
    };
    let start = "start PostgreSQL (systemctl start postgresql) or";
    match sockets_in(dir) {
        Ok(ports) if ports.is_empty() => format!(
            "{} holds no PostgreSQL socket: {start} set [postgres] host to the server's \
             unix_socket_directories (Debian: /var/run/postgresql)",
            dir.display()
        ),
        Ok(ports) => {
            let list: Vec<String> = ports.iter().map(|p| format!(".s.PGSQL.{p}")).collect();
            format!(
                "{} holds {} but not .s.PGSQL.{}: set [postgres] port = {}{}",
                dir.display(),
                list.join(", "),
                target.port,
                ports[0],
                if ports.len() > 1 {
                    " (or another of these ports)"
                } else {
                    ""
                }
            )
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => format!(
            "the directory {} does not exist: {start} set [postgres] host to the server's \
             unix_socket_directories (Debian: /var/run/postgresql)",
            dir.display()
        ),
        Err(e) => format!(
            "cannot list {} ({e}): set [postgres] host to the server's unix_socket_directories",
            dir.display()
        ),
    }
}
