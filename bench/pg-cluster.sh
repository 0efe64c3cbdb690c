# Sourced by the benchmark scripts: a throwaway PostgreSQL cluster with a realistic monitoring load.
#
#   pg_start DIR       initdb into DIR, start on a free 127.0.0.1 port with its socket in DIR/sock;
#                      exports PGB_PORT, PGB_SOCK, PGB_BIN, PGB_DATA (PGB_PSS_MAX: pg_stat_statements.max,
#                      default 10000)
#   pg_workload N S    create N distinct statements in pg_stat_statements and keep S sessions busy
#                      (pgbench in the background, PID in PGB_LOAD_PID)
#   pg_stop            stop the load and the server (by PID), remove DIR
#
# As root the server runs as the `postgres` OS user (initdb refuses root).

pg_bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then echo "$PG_BINDIR"; return; fi
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
  ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1
}

pg_as() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
  PGB_DIR=$1
  PGB_BIN=$(pg_bindir)
  # psql and pgbench: from the server's bin directory, else the newest installed (the embedded builds
  # scripts/pg-versions.sh fetches carry only the server).
  PGB_CLIENT_BIN=$PGB_BIN
  [ -x "$PGB_CLIENT_BIN/psql" ] || PGB_CLIENT_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  PGB_DATA=$PGB_DIR/data
  PGB_SOCK=$PGB_DIR/sock
  mkdir -p "$PGB_SOCK"
  [ "$(id -u)" = 0 ] && chown -R postgres "$PGB_DIR"
  PGB_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  pg_as "$PGB_BIN/initdb" -D "$PGB_DATA" -U postgres --auth=trust --no-sync >/dev/null
  cat >>"$PGB_DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGB_PORT
unix_socket_directories = '$PGB_SOCK'
max_connections = 250
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.max = ${PGB_PSS_MAX:-10000}
pg_stat_statements.track = all
fsync = off
logging_collector = on
log_directory = 'log'
log_min_duration_statement = 0
log_line_prefix = '%m [%p] %q%u@%d '
CONF
  pg_as "$PGB_BIN/pg_ctl" -D "$PGB_DATA" -l "$PGB_DIR/server.log" -w start >/dev/null
  export PGB_PORT PGB_SOCK PGB_BIN PGB_CLIENT_BIN PGB_DATA PGB_DIR
  pg_psql -c "CREATE EXTENSION pg_stat_statements" >/dev/null
}

pg_psql() {
  "$PGB_CLIENT_BIN/psql" -X -q -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres -d postgres "$@"
}

pg_workload() {
  local statements=$1 sessions=$2
  # \gexec only works in a script, not with -c.
  pg_psql >/dev/null <<'SQL'
SELECT format('CREATE TABLE t%s (id int PRIMARY KEY, v int)', i) FROM generate_series(0, 49) i \gexec
SELECT format('INSERT INTO t%s SELECT g, g FROM generate_series(1, 1000) g', i) FROM generate_series(0, 49) i \gexec
SQL
  # Distinct statements: 50 tables x a growing number of predicates (constants are normalised away).
  python3 - "$statements" >"$PGB_DIR/statements.sql" <<'PY'
import sys
n = int(sys.argv[1])
for i in range(n):
    preds = " AND v <> 0" * (i // 50)
    print(f"SELECT v FROM t{i % 50} WHERE id = {i}{preds};")
PY
  pg_psql -f "$PGB_DIR/statements.sql" >/dev/null
  cat >"$PGB_DIR/load.sql" <<'SQL'
\set t random(0, 49)
\set id random(1, 1000)
SELECT v FROM t:t WHERE id = :id;
UPDATE t:t SET v = v + 1 WHERE id = :id;
\sleep 200 ms
SQL
  "$PGB_CLIENT_BIN/pgbench" -n -M simple -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres -c "$sessions" -j 2 -T 100000 \
    -f "$PGB_DIR/load.sql" postgres >"$PGB_DIR/pgbench.log" 2>&1 &
  PGB_LOAD_PID=$!
  export PGB_LOAD_PID
  sleep 2
}

# Safe under `set -e` (it runs from EXIT traps): no step's failure may skip stopping the server.
pg_stop() {
  if [ -n "${PGB_LOAD_PID:-}" ]; then
    kill "$PGB_LOAD_PID" 2>/dev/null || true
    wait "$PGB_LOAD_PID" 2>/dev/null || true
  fi
  if [ -f "$PGB_DATA/postmaster.pid" ]; then
    local pid
    pid=$(head -1 "$PGB_DATA/postmaster.pid")
    pg_as "$PGB_BIN/pg_ctl" -D "$PGB_DATA" -m immediate -w stop >/dev/null 2>&1 || kill -9 "$pid" 2>/dev/null
  fi
  rm -rf "$PGB_DIR"
}
