#!/usr/bin/env bash
# Soak benchmark: the daemon at 1 s cycles for several minutes against a server with 5,000 statements
# and 100 busy sessions, shipping to a local HTTP listener. Prints peak RSS (and where the resident
# memory is), CPU per cycle, and whether RSS grows (mean RSS of the second quarter of the run vs the
# last quarter); then restarts the daemon on the same state and prints its peak RSS again.
#
#   bench/soak.sh [SECONDS]   (default 300; AGENT_BIN=path to skip the build; PROTOCOL=bitville to
#                              ship in the Bitville protocol instead of the batch envelope)
#
# With `prometheus-postgres-exporter` installed (apt-get install prometheus-postgres-exporter), the
# same load is also scraped every second by postgres_exporter (its default collectors plus a query over
# every pg_stat_statements entry) and its peak RSS printed alongside.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-300}
PROTOCOL=${PROTOCOL:-batch}
. bench/pg-cluster.sh

# AGENT_BIN: an already built release binary (default: build one here).
if [ -n "${AGENT_BIN:-}" ]; then
  BIN=$AGENT_BIN
else
  cargo build --release --quiet
  BIN=$PWD/target/release/postgres-agent
fi
WORK=$(mktemp -d /tmp/pga-soak.XXXXXX)
chmod 755 "$WORK"
trap 'kill ${AGENT_PID:-} ${LISTENER_PID:-} ${EXPORTER_PID:-} 2>/dev/null || true; pg_stop; rm -rf "$WORK"' EXIT

pg_start "$WORK/pg"
pg_workload 5000 100
echo "server: $("$PGB_BIN/postgres" --version), $(pg_psql -At -c 'SELECT count(*) FROM pg_stat_statements') statements, $(pg_psql -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'") client sessions"

# A listener that acknowledges every batch.
LPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$LPORT" >"$WORK/listener.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
LISTENER_PID=$!

MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/agent.ini" <<INI
[agent]
project_id = soak
collection_interval_s = 1
state_dir = $WORK/state
[postgres]
host = $PGB_SOCK
port = $PGB_PORT
user = postgres
[listener]
protocol = $PROTOCOL
# 1 s cycles send 5 aggregates a second in the bitville protocol; the soak listener has no limit.
max_requests_per_minute = 100000
url = http://127.0.0.1:$LPORT/ingest
[logs]
path = $PGB_DATA/log
[telemetry]
listen = 127.0.0.1:$MPORT
[logging]
level = warn
INI

"$BIN" run "$WORK/agent.ini" >/dev/null 2>"$WORK/agent.err" &
AGENT_PID=$!

if command -v prometheus-postgres-exporter >/dev/null 2>&1; then
  EPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # Its default collectors plus every pg_stat_statements entry (as its example queries.yaml does, with
  # PostgreSQL 13+ column names), so both tools read the same statements.
  cat >"$WORK/queries.yaml" <<'YAML'
pg_stat_statements:
  query: "SELECT r.rolname, d.datname, s.queryid::text AS queryid, s.calls, s.total_exec_time / 1000 AS total_time_seconds, s.rows, s.shared_blks_hit, s.shared_blks_read, s.shared_blks_dirtied, s.shared_blks_written, s.temp_blks_read, s.temp_blks_written, s.blk_read_time / 1000 AS blk_read_time_seconds, s.blk_write_time / 1000 AS blk_write_time_seconds FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid JOIN pg_database d ON d.oid = s.dbid"
  metrics:
    - rolname: {usage: LABEL, description: role}
    - datname: {usage: LABEL, description: database}
    - queryid: {usage: LABEL, description: query id}
    - calls: {usage: COUNTER, description: calls}
    - total_time_seconds: {usage: COUNTER, description: execution time}
    - rows: {usage: COUNTER, description: rows}
    - shared_blks_hit: {usage: COUNTER, description: shared hits}
    - shared_blks_read: {usage: COUNTER, description: shared reads}
    - shared_blks_dirtied: {usage: COUNTER, description: shared dirtied}
    - shared_blks_written: {usage: COUNTER, description: shared written}
    - temp_blks_read: {usage: COUNTER, description: temp read}
    - temp_blks_written: {usage: COUNTER, description: temp written}
    - blk_read_time_seconds: {usage: COUNTER, description: read time}
    - blk_write_time_seconds: {usage: COUNTER, description: write time}
YAML
  DATA_SOURCE_NAME="host=$PGB_SOCK port=$PGB_PORT user=postgres dbname=postgres sslmode=disable" \
    prometheus-postgres-exporter --web.listen-address="127.0.0.1:$EPORT" \
    --extend.query-path="$WORK/queries.yaml" >/dev/null 2>"$WORK/exporter.err" &
  EXPORTER_PID=$!
fi

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cycles() { curl -s "127.0.0.1:$MPORT/metrics" | awk '/^postgres_agent_cycles_total/ {s += $2} END {print s + 0}'; }

sleep 3
cpu0=$(ticks "$AGENT_PID"); c0=$(cycles)
: >"$WORK/rss"
for ((i = 0; i < DURATION; i++)); do
  kill -0 "$AGENT_PID" 2>/dev/null || { echo "agent died:"; cat "$WORK/agent.err"; exit 1; }
  rss_kb "$AGENT_PID" >>"$WORK/rss"
  [ -n "${EXPORTER_PID:-}" ] && curl -s "127.0.0.1:$EPORT/metrics" >/dev/null
  sleep 1
done
cpu1=$(ticks "$AGENT_PID"); c1=$(cycles)
hz=$(getconf CLK_TCK)
peak=$(hwm_kb "$AGENT_PID")
n=$(wc -l <"$WORK/rss")
q2=$(awk -v n="$n" 'NR > n/4 && NR <= n/2 {s += $1; c++} END {printf "%.0f", s / c}' "$WORK/rss")
q4=$(awk -v n="$n" 'NR > 3*n/4 {s += $1; c++} END {printf "%.0f", s / c}' "$WORK/rss")
cyc=$((c1 - c0))
echo "soak: ${DURATION}s at 1 s cycles, $cyc cycles"
awk -v p="$peak" 'BEGIN {printf "peak RSS: %.1f MiB\n", p / 1024}'
# Where the resident memory is at the end: heap and stacks (anon) vs pages of the binary and libraries.
awk '/^Rss(Anon|File|Shmem):/ {printf "  %s %.1f MiB", $1, $2 / 1024} END {print ""}' "/proc/$AGENT_PID/status"
awk '/^[0-9a-f]+-[0-9a-f]+ / {name = ($6 == "" ? "[anon]" : $6)} /^Rss:/ {r[name] += $2}
     END {for (n in r) if (r[n] >= 256) printf "  %6.1f MiB %s\n", r[n] / 1024, n}' "/proc/$AGENT_PID/smaps" | sort -rn
awk -v t="$((cpu1 - cpu0))" -v hz="$hz" -v c="$cyc" 'BEGIN {printf "CPU per cycle: %.2f ms (%.2f%% of one core at 1 s cycles)\n", 1000 * t / hz / c, 100 * t / hz / c}'
awk -v a="$q2" -v b="$q4" 'BEGIN {printf "mean RSS second quarter %.1f MiB, last quarter %.1f MiB: %s\n", a/1024, b/1024, (b > a * 1.05 ? "GROWS" : "flat")}'
echo "outbox after run: $("$BIN" status "$WORK/agent.ini" 2>/dev/null | head -3 | tr '\n' ' ')"
if [ -n "${EXPORTER_PID:-}" ]; then
  series=$(curl -s "127.0.0.1:$EPORT/metrics" | grep -c '^pg_stat_statements_calls' || true)
  awk -v p="$(hwm_kb "$EXPORTER_PID")" -v n="$series" 'BEGIN {printf "postgres_exporter peak RSS on the same load (scraped every second, %d statements exported): %.1f MiB\n", n, p / 1024}'
fi

# A restart on the same state: the statement baseline, log position and outbox are read from disk.
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true
"$BIN" run "$WORK/agent.ini" >/dev/null 2>>"$WORK/agent.err" &
AGENT_PID=$!
sleep 15
kill -0 "$AGENT_PID" 2>/dev/null || { echo "agent died after restart:"; cat "$WORK/agent.err"; exit 1; }
awk -v p="$(hwm_kb "$AGENT_PID")" 'BEGIN {printf "after a restart on the same state (baseline and log position read from disk): peak RSS %.1f MiB over 15 s\n", p / 1024}'
