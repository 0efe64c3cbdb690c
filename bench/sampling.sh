#!/usr/bin/env bash
# Sampling benchmark: the daemon with active-session sampling at 1 s against a server with 100, then
# 500 client sessions (pgbench, mostly idle between short statements), shipping to a local HTTP
# listener. Collection cycles are 300 s apart, so the measured minute holds sampling only. Three runs
# per session count: sampling with spike detection off (the server-time figures), sampling with spike
# detection on as shipped (default triggers, twice the cores), and sampling off. It prints:
#   - server time per minute spent on sampling: the sampling query's total_exec_time in
#     pg_stat_statements (wall time, which includes waiting for a CPU on a busy host), and the CPU time
#     of the agent's backend (/proc/<pid>/schedstat), each as a share of one core;
#   - the agent's CPU per minute in each run;
#   - the agent's peak RSS in each run, and how many spike snapshots were taken.
#
#   bench/sampling.sh [SECONDS]   (default 60 per run; AGENT_BIN=path to skip the build;
#                                  SESSIONS="100 500" to choose the session counts)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
SESSIONS=${SESSIONS:-"100 500"}
. bench/pg-cluster.sh

if [ -n "${AGENT_BIN:-}" ]; then
  BIN=$AGENT_BIN
else
  cargo build --release --quiet
  BIN=$PWD/target/release/postgres-agent
fi
WORK=$(mktemp -d /tmp/pga-sampling.XXXXXX)
chmod 755 "$WORK"
trap 'kill ${AGENT_PID:-} ${LISTENER_PID:-} 2>/dev/null || true; pg_stop; rm -rf "$WORK"' EXIT

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

# On-CPU nanoseconds of a process (schedstat: finer than the 10 ms clock ticks of /proc/PID/stat).
ns() { awk '{print $1}' "/proc/$1/schedstat"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# run_agent INTERVAL_MS SPIKES(true|false): runs the daemon for DURATION seconds; sets CPU_MS,
# PEAK_KB, SPIKES, BACKEND_CPU_MS (on-CPU time of the agent's backend per minute).
run_agent() {
  local interval=$1 spikes=$2 mport
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf "$WORK/state"
  cat >"$WORK/agent.ini" <<INI
[agent]
project_id = bench
collection_interval_s = 300
state_dir = $WORK/state
[postgres]
host = $PGB_SOCK
port = $PGB_PORT
user = postgres
[listener]
protocol = batch
max_requests_per_minute = 100000
url = http://127.0.0.1:$LPORT/ingest
[logs]
enabled = false
[telemetry]
listen = 127.0.0.1:$mport
[logging]
level = warn
[activity]
sample_interval_ms = $interval
[spikes]
enabled = $spikes
INI
  "$BIN" run "$WORK/agent.ini" >/dev/null 2>"$WORK/agent.err" &
  AGENT_PID=$!
  # The first cycle (statement baseline, first host window) is not what is measured.
  sleep 3
  pg_psql -c "SELECT pg_stat_statements_reset()" >/dev/null
  local cpu0 cpu1 backend ns0 ns1
  backend=$(pg_psql -At -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'bitville-postgres-agent' LIMIT 1")
  ns0=$(ns "$backend" 2>/dev/null || echo 0)
  cpu0=$(ns "$AGENT_PID")
  sleep "$DURATION"
  kill -0 "$AGENT_PID" 2>/dev/null || { echo "agent died:"; cat "$WORK/agent.err"; exit 1; }
  cpu1=$(ns "$AGENT_PID")
  ns1=$(ns "$backend" 2>/dev/null || echo 0)
  BACKEND_CPU_MS=$(awk -v a="$ns0" -v b="$ns1" -v d="$DURATION" 'BEGIN {printf "%.1f", (b - a) / 1e6 * 60 / d}')
  CPU_MS=$(awk -v a="$cpu0" -v b="$cpu1" -v d="$DURATION" 'BEGIN {printf "%.1f", (b - a) / 1e6 * 60 / d}')
  PEAK_KB=$(hwm_kb "$AGENT_PID")
  SPIKES=$(curl -s "127.0.0.1:$mport/metrics" | awk '/collector="spikes",outcome="ok"/ {s += $2} END {print s + 0}')
  SAMPLED=$(curl -s "127.0.0.1:$mport/metrics" | awk '/collector="sampling"/ {print}' | tr '\n' ' ')
  kill -TERM "$AGENT_PID"
  wait "$AGENT_PID" 2>/dev/null || true
  AGENT_PID=
}

for S in $SESSIONS; do
  pg_start "$WORK/pg"
  echo "max_connections = $((S + 50))" >>"$PGB_DATA/postgresql.conf"
  pg_as "$PGB_BIN/pg_ctl" -D "$PGB_DATA" -l "$PGB_DIR/server.log" -w restart >/dev/null
  pg_workload 1000 "$S"
  echo "== $S sessions: $("$PGB_BIN/postgres" --version), $(pg_psql -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'") client backends, ${DURATION}s per run"

  run_agent 1000 false
  read -r calls sample_ms <<<"$(pg_psql -At -F ' ' -c "
    SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0)
    FROM pg_stat_statements WHERE query LIKE '%AS total_lock%'")"
  awk -v c="$calls" -v s="$sample_ms" -v b="$BACKEND_CPU_MS" -v d="$DURATION" 'BEGIN {
    printf "sampling query: %d calls, %.1f ms server time per minute (%.3f%% of one core; %.2f ms per call)\n",
      c, s * 60 / d, s * 60 / d / 600, (c > 0 ? s / c : 0);
    printf "agent backend on CPU: %.1f ms per minute (%.3f%% of one core)\n", b, b / 600 }'
  echo "sample ticks: $SAMPLED"
  plain_cpu=$CPU_MS; plain_peak=$PEAK_KB
  run_agent 1000 true
  spikes_cpu=$CPU_MS; spikes_peak=$PEAK_KB; spikes=$SPIKES
  run_agent 0 true
  awk -v a="$plain_cpu" -v s="$spikes_cpu" -v b="$CPU_MS" 'BEGIN {printf "agent CPU per minute: %.1f ms sampling, %.1f ms sampling and spike detection, %.1f ms without sampling (sampling: +%.1f ms, %.3f%% of one core)\n", a, s, b, a - b, (a - b) / 600}'
  awk -v a="$plain_peak" -v s="$spikes_peak" -v b="$PEAK_KB" 'BEGIN {printf "agent peak RSS: %.1f MiB sampling, %.1f MiB sampling and spike detection, %.1f MiB without sampling\n", a / 1024, s / 1024, b / 1024}'
  echo "spike snapshots taken with spike detection on: $spikes (min_gap_s 60; default triggers: twice the cores; load $(cut -d' ' -f1 /proc/loadavg) now)"
  pg_stop
  PGB_LOAD_PID=
done
