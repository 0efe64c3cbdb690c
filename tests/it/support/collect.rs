//! Harness for the collector tests: run one cycle in-process, pick a batch, validate it against its
//! JSON Schema under docs/schema/, and hold live client sessions that the collectors can observe.

use std::path::Path;

use postgres_agent::batch::{Batch, BatchKind};
use postgres_agent::collect::{CollectSettings, Collectors, CycleReport};
use postgres_agent::config::Config;
use postgres_agent::db::Db;
use postgres_agent::telemetry::registry::Counters;
use serde_json::Value;

use super::pg::{PgServer, SUPERUSER};

/// Runs one collection cycle with fresh collectors (the statement baseline comes from `config`'s
/// state_dir, as in `once`).
pub async fn cycle(config: &Config) -> CycleReport {
    cycle_counted(config, &Counters::default()).await
}

/// [`cycle`], counting into `counters`.
pub async fn cycle_counted(config: &Config, counters: &Counters) -> CycleReport {
    let db = Db::new(&config.postgres, &config.safety).expect("db");
    let settings = CollectSettings::from_config(config);
    let mut collectors = Collectors::with_counters(&settings, counters.clone());
    let report = collectors.run_cycle(&db, &settings).await;
    db.close();
    report
}

/// The batch of `kind` in a cycle's report.
pub fn batch(report: &CycleReport, kind: BatchKind) -> &Batch {
    report
        .batches
        .iter()
        .find(|b| b.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} batch in {:?}", report.runs))
}

/// Validates a batch (as JSON) against docs/schema/<type>.json; panics with every error found.
pub fn validate(batch: &Value) {
    if let Err(e) = check(batch) {
        panic!(
            "{e}\nbatch: {}",
            serde_json::to_string_pretty(batch).unwrap()
        );
    }
}

/// Checks a batch against docs/schema/<type>.json, formats (date-time, uuid) included.
pub fn check(batch: &Value) -> Result<(), String> {
    let kind = batch["type"].as_str().ok_or("batch without a type")?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schema")
        .join(format!("{kind}.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file"))
        .expect("schema is JSON");
    let url = format!("file://{}", path.display());
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.enable_format_assertions();
    compiler.add_resource(&url, schema).expect("add schema");
    let id = compiler
        .compile(&url, &mut schemas)
        .unwrap_or_else(|e| panic!("{} does not compile: {e:#}", path.display()));
    schemas
        .validate(batch, id)
        .map_err(|e| format!("{kind} batch does not match {}: {e:#}", path.display()))
}

/// A client session of the test (not the agent), connected over the Unix socket.
pub async fn client(server: &PgServer, db: &str, application_name: &str) -> tokio_postgres::Client {
    connect(&server.socket_dir, server.port, db, application_name).await
}

/// [`client`] from the socket directory and port, for a task that does not hold the server.
pub async fn connect(
    socket_dir: &std::path::Path,
    port: u16,
    db: &str,
    application_name: &str,
) -> tokio_postgres::Client {
    let conn = format!(
        "host={} port={port} user={SUPERUSER} dbname={db} application_name={application_name}",
        socket_dir.display()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("test client connects");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The backend pid of a client session.
pub async fn pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// Waits until `sql` (a boolean query) is true, up to 10 s.
pub async fn wait_until(client: &tokio_postgres::Client, sql: &str) {
    for _ in 0..200 {
        let row = client.query_one(sql, &[]).await.expect("wait query");
        if row.get::<_, bool>(0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {sql}");
}
