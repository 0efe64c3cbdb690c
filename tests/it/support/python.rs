//! The Python agent's example configuration, as its operators have it.

/// The Python agent's config/agent.ini.example with comment lines; tests replace the `<...>`
/// placeholders.
pub const PYTHON_EXAMPLE: &str = "\
# Bitville PostgreSQL agent
[database]
# The server to monitor
host = 5.9.121.222
port = 5432
name = postgres
user = bitville_monitor
password = <your-password-here>
statement_timeout_ms = 5000

[collection]
# Seconds between collections
interval_s = 60
log_path = /var/log/postgresql/postgresql-main.log

[listener]
url = https://88.198.22.206:8443/ingest/postgres
api_key = <your-api-key-here>
project_id = bitville

[buffer]
# persist-queue directory
path = /var/lib/bitville-postgres-agent/buffer
max_size_mb = 100
";
