//! Database access: a small pool of safe, read-only sessions to the watched server.
//!
//! Owns every connection the agent makes. Each session is set up in its startup packet (no extra round
//! trip, nothing a later statement can undo by accident) with `statement_timeout`, `lock_timeout`,
//! `idle_in_transaction_session_timeout`, `default_transaction_read_only = on`, `jit = off` and the
//! agent's `application_name`. Every query also runs under a client-side deadline: a server-side
//! timeout never reaches a client whose packets are dropped, so when the deadline fires the connection
//! is discarded rather than returned to the pool. Sessions older than `safety.session_max_age_s` are
//! replaced. Connection failures are errors for the caller's cycle; the pool reconnects on next use.
//!
//! It does not decide what to query: collectors do.

pub mod failure;
pub mod tls;

use std::borrow::Cow;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::TryStreamExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use crate::config::{PostgresConfig, SafetyConfig};
use crate::identity::{APPLICATION_NAME, QUERY_TAG};
pub use failure::ConnectFailure;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Connect {
        target: String,
        /// The cause, from the driver's codes and kinds.
        failure: ConnectFailure,
        /// What fixes it, for this target.
        fix: String,
        message: String,
    },
    #[error("query {name} failed: {}", server_message(source))]
    Query {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "query {name} exceeded the client deadline of {timeout:?}; its connection was discarded"
    )]
    Deadline {
        name: &'static str,
        timeout: Duration,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("pool setup: {0}")]
    Pool(String),
}

impl DbError {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::Query { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// The cause of a failed connection, if this is one.
    pub fn connect_failure(&self) -> Option<ConnectFailure> {
        match self {
            DbError::Connect { failure, .. } => Some(*failure),
            _ => None,
        }
    }

    /// The fix of a failed connection, if this is one.
    pub fn connect_fix(&self) -> Option<&str> {
        match self {
            DbError::Connect { fix, .. } => Some(fix),
            _ => None,
        }
    }
}

/// The server's own words for an error (severity, SQLSTATE, message, detail, hint), or the client's.
fn server_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!(" (hint: {h})"));
            }
            m
        }
        None => {
            let mut m = e.to_string();
            if let Some(s) = std::error::Error::source(e) {
                m.push_str(&format!(": {s}"));
            }
            m
        }
    }
}

/// A pool of at most `safety.max_connections` safe sessions, of which at most one is kept open while
/// idle: a second connection exists only while two tasks query at the same time.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    target: failure::Target,
    client_timeout: Duration,
    max_age: Duration,
}

impl Db {
    /// Builds the pool. No connection is made until the first [`Db::session`].
    pub fn new(pg: &PostgresConfig, safety: &SafetyConfig) -> Result<Db, DbError> {
        let unix = pg.host.starts_with('/');
        let mut config = tokio_postgres::Config::new();
        config
            .host(&pg.host)
            .port(pg.port)
            .user(&pg.user)
            .dbname(&pg.database)
            .application_name(APPLICATION_NAME)
            .connect_timeout(pg.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(session_options(safety));
        if !pg.password.is_empty() {
            config.password(pg.password.expose());
        }
        config.ssl_mode(match (unix, pg.sslmode.as_str()) {
            (true, _) | (_, "disable") => tokio_postgres::config::SslMode::Disable,
            (_, "allow" | "prefer") => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls::client_config(
            &pg.sslmode,
            pg.sslrootcert.as_deref(),
        )?);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(safety.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(safety.client_timeout))
            .create_timeout(Some(pg.connect_timeout))
            .recycle_timeout(Some(safety.client_timeout))
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))?;
        let target = failure::Target {
            host: pg.host.clone(),
            port: pg.port,
            user: pg.user.clone(),
            database: pg.database.clone(),
            sslmode: pg.sslmode.clone(),
            password_set: !pg.password.is_empty(),
        };
        Ok(Db {
            pool,
            target,
            client_timeout: safety.client_timeout,
            max_age: safety.session_max_age,
        })
    }

    /// Where the pool connects, for messages (`host:port` or the socket path).
    pub fn target(&self) -> String {
        self.target.describe()
    }

    /// What the pool connects to, for fix hints.
    pub fn target_info(&self) -> &failure::Target {
        &self.target
    }

    /// Takes a session from the pool, opening one if needed. Sessions past their maximum age are closed
    /// and replaced.
    pub async fn session(&self) -> Result<Session, DbError> {
        loop {
            let obj = self.pool.get().await.map_err(|e| {
                let failure = ConnectFailure::of_pool(&e);
                DbError::Connect {
                    target: self.target.describe(),
                    failure,
                    fix: failure.fix(&self.target),
                    message: pool_error_message(e),
                }
            })?;
            if Object::metrics(&obj).age() > self.max_age {
                drop(Object::take(obj));
                continue;
            }
            return Ok(Session {
                client: Some(obj),
                timeout: self.client_timeout,
                pool: self.pool.clone(),
            });
        }
    }

    /// Connections currently open (idle plus in use).
    pub fn open_connections(&self) -> usize {
        self.pool.status().size
    }

    /// Connections open and idle in the pool: a [`Db::session`] now takes one of them instead of
    /// opening a connection (active-session sampling runs only then).
    pub fn idle_connections(&self) -> usize {
        self.pool.status().available
    }

    /// Closes every connection; later calls to [`Db::session`] fail.
    pub fn close(&self) {
        self.pool.close();
    }
}

fn pool_error_message(e: deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        }
        PoolError::Timeout(kind) => format!("timed out ({kind:?})"),
        other => other.to_string(),
    }
}

/// The query with [`QUERY_TAG`] in front and again after its first keyword: PostgreSQL 18 drops
/// leading comments from pg_stat_statements texts, so the second tag is what identifies the agent's
/// statements there.
pub fn tagged(sql: &str) -> Cow<'_, str> {
    let trimmed = sql.trim_start();
    let body = trimmed
        .strip_prefix(QUERY_TAG)
        .unwrap_or(trimmed)
        .trim_start();
    let (keyword, rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    let rest = rest.trim_start();
    match (trimmed.starts_with(QUERY_TAG), rest.starts_with(QUERY_TAG)) {
        (true, true) => Cow::Borrowed(sql),
        (false, true) => Cow::Owned(format!("{QUERY_TAG} {body}")),
        _ => Cow::Owned(format!("{QUERY_TAG} {keyword} {QUERY_TAG} {rest}")),
    }
}

/// The `-c` options sent in the startup packet of every session.
pub fn session_options(safety: &SafetyConfig) -> String {
    format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={} \
         -c default_transaction_read_only=on -c jit=off",
        safety.statement_timeout.as_millis(),
        safety.lock_timeout.as_millis(),
        safety.idle_in_transaction_timeout.as_millis(),
    )
}

/// One pooled connection. Queries run under the client deadline; a connection that timed out or broke
/// is discarded when the session is dropped instead of going back to the pool.
pub struct Session {
    client: Option<Object>,
    timeout: Duration,
    pool: Pool,
}

/// Returns the connection to the pool, then closes idle connections beyond one: two tasks that
/// queried at the same time (a cycle and the log task's discovery at start) must not leave two
/// sessions open for the daemon's lifetime.
impl Drop for Session {
    fn drop(&mut self) {
        let Some(obj) = self.client.take() else {
            return;
        };
        drop(obj);
        if self.pool.status().available > IDLE_CONNECTIONS {
            let mut kept = 0;
            self.pool.retain(|_, _| {
                kept += 1;
                kept <= IDLE_CONNECTIONS
            });
        }
    }
}

/// Connections kept open while no query runs.
const IDLE_CONNECTIONS: usize = 1;

/// The identity of one pooled connection ([`Session::connection_id`]).
pub type ConnectionId = deadpool_postgres::ObjectId;

/// A query parameter with its declared type (queries use the unnamed statement: one round trip).
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

impl Session {
    /// Runs a query and returns all rows. `name` identifies the query in errors and metrics.
    pub async fn query(
        &mut self,
        name: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, DbError> {
        let sql = tagged(sql);
        let Some(client) = self.client.as_ref() else {
            return Err(DbError::Pool("session already discarded".into()));
        };
        match tokio::time::timeout(self.timeout, client.query_typed(sql.as_ref(), params)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(source)) => Err(self.failed(name, source)),
            Err(_) => Err(self.timed_out(name)),
        }
    }

    /// As [`Session::query`] (same deadline, same discarding), for a query without parameters that
    /// runs every second: prepared once per connection and kept in the pool's statement cache, so
    /// the server neither parses nor plans it again on each call.
    pub async fn query_cached(
        &mut self,
        name: &'static str,
        sql: &str,
    ) -> Result<Vec<Row>, DbError> {
        let sql = tagged(sql);
        let Some(client) = self.client.as_ref() else {
            return Err(DbError::Pool("session already discarded".into()));
        };
        let work = async {
            let statement = client.prepare_cached(sql.as_ref()).await?;
            client.query(&statement, &[]).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(source)) => Err(self.failed(name, source)),
            Err(_) => Err(self.timed_out(name)),
        }
    }

    /// Runs a query and hands each row to `each` as it arrives, so a large result (every
    /// pg_stat_statements entry) is never held whole: the connection reads ahead at most one
    /// network buffer. The client deadline covers the whole result. If `each` fails, the rest of the
    /// result is abandoned and the connection discarded. Returns the number of rows seen.
    pub async fn for_each_row<E: From<DbError>>(
        &mut self,
        name: &'static str,
        sql: &str,
        params: &[Param<'_>],
        mut each: impl FnMut(&Row) -> Result<(), E>,
    ) -> Result<u64, E> {
        enum Failure<E> {
            Db(tokio_postgres::Error),
            Row(E),
        }
        let sql = tagged(sql);
        let Some(client) = self.client.as_ref() else {
            return Err(DbError::Pool("session already discarded".into()).into());
        };
        let work = async {
            let rows = client
                .query_typed_raw(sql.as_ref(), params.iter().map(|(v, t)| (*v, t.clone())))
                .await
                .map_err(Failure::Db)?;
            let mut rows = std::pin::pin!(rows);
            let mut seen = 0;
            while let Some(row) = rows.try_next().await.map_err(Failure::Db)? {
                each(&row).map_err(Failure::Row)?;
                seen += 1;
            }
            Ok(seen)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(seen)) => Ok(seen),
            Ok(Err(Failure::Db(source))) => Err(self.failed(name, source).into()),
            Ok(Err(Failure::Row(e))) => {
                self.discard();
                Err(e)
            }
            Err(_) => Err(self.timed_out(name).into()),
        }
    }

    /// A query error; a broken connection (no SQLSTATE) is not returned to the pool.
    fn failed(&mut self, name: &'static str, source: tokio_postgres::Error) -> DbError {
        if source.is_closed() || source.code().is_none() {
            self.discard();
        }
        DbError::Query { name, source }
    }

    /// The client deadline fired: the connection may be mid-result, so it is discarded.
    fn timed_out(&mut self, name: &'static str) -> DbError {
        self.discard();
        DbError::Deadline {
            name,
            timeout: self.timeout,
        }
    }

    /// Runs a query that returns at most one row.
    pub async fn query_opt(
        &mut self,
        name: &'static str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, DbError> {
        Ok(self.query(name, sql, params).await?.into_iter().next())
    }

    /// Runs `sql` with the simple query protocol (several statements, or `$n` left unbound as
    /// `EXPLAIN (GENERIC_PLAN)` needs), under the same deadline and discarding as
    /// [`Session::query`]; returns the first column of each row as text.
    pub async fn simple_rows(
        &mut self,
        name: &'static str,
        sql: &str,
    ) -> Result<Vec<String>, DbError> {
        let Some(client) = self.client.as_ref() else {
            return Err(DbError::Pool("session already discarded".into()));
        };
        match tokio::time::timeout(self.timeout, client.simple_query(sql)).await {
            Ok(Ok(messages)) => Ok(messages
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect()),
            Ok(Err(source)) => Err(self.failed(name, source)),
            Err(_) => Err(self.timed_out(name)),
        }
    }

    /// [`Session::simple_rows`] of statements that return nothing of interest.
    pub async fn simple(&mut self, name: &'static str, sql: &str) -> Result<(), DbError> {
        self.simple_rows(name, sql).await.map(|_| ())
    }

    /// The identity of this session's connection: a new connection (after a restart, a failover,
    /// the age limit) has a new one. None once discarded.
    pub fn connection_id(&self) -> Option<ConnectionId> {
        self.client.as_ref().map(Object::id)
    }

    /// Drops the connection instead of returning it to the pool.
    pub fn discard(&mut self) {
        if let Some(obj) = self.client.take() {
            drop(Object::take(obj));
        }
    }
}

/// Identity of the watched server, carried in every batch envelope: a plain value of the `batch`
/// leaf, filled here from the server.
pub use crate::batch::ServerInfo;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_in_front_and_after_the_first_keyword_once() {
        let t = tagged("SELECT 1");
        assert_eq!(t, "/* postgres-agent */ SELECT /* postgres-agent */ 1");
        assert_eq!(tagged(&t), t, "already tagged texts are kept");
        assert!(matches!(tagged(&t), Cow::Borrowed(_)));
        assert_eq!(
            tagged("/* postgres-agent */ SHOW jit"),
            "/* postgres-agent */ SHOW /* postgres-agent */ jit"
        );
        assert_eq!(
            tagged("SELECT /* postgres-agent */ 1"),
            "/* postgres-agent */ SELECT /* postgres-agent */ 1"
        );
        assert!(crate::identity::is_agent_text(
            &tagged("SELECT x FROM y")["/* postgres-agent */ ".len()..]
        ));
    }
}
