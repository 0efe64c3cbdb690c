#!/usr/bin/env bash
# Sampling benchmark: the daemon with active-session sampling at 1 s (and spike detection on, as
# shipped) against a server with 100, then 500 client sessions (pgbench, mostly idle between short
# statements), shipping to a local HTTP listener. For each session count it prints:
#   - server time per minute spent on the sampling query (pg_stat_statements total_exec_time of that
#     query, which the agent tags), as a share of one core; and on all the agent's queries;
#   - the agent's CPU per minute, with sampling on and with it off (activity.sample_interval_ms = 0);
#   - the agent's peak RSS with sampling on and off;
#   - how many spike snapshots were taken.
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

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

# run_agent INTERVAL_MS: runs the daemon for DURATION seconds; sets CPU_MS, PEAK_KB, SPIKES.
run_agent() {
  local interval=$1 mport
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf "$WORK/state"
  cat >"$WORK/agent.ini" <<INI
[agent]
project_id = bench
collection_interval_s = 60
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
INI
  "$BIN" run "$WORK/agent.ini" >/dev/null 2>"$WORK/agent.err" &
  AGENT_PID=$!
  # The first cycle (statement baseline, first host window) is not what is measured.
  sleep 3
  pg_psql -c "SELECT pg_stat_statements_reset()" >/dev/null
  local cpu0 cpu1
  cpu0=$(ticks "$AGENT_PID")
  sleep "$DURATION"
  kill -0 "$AGENT_PID" 2>/dev/null || { echo "agent died:"; cat "$WORK/agent.err"; exit 1; }
  cpu1=$(ticks "$AGENT_PID")
  CPU_MS=$(awk -v t="$((cpu1 - cpu0))" -v hz="$hz" -v d="$DURATION" 'BEGIN {printf "%.0f", 1000 * t / hz * 60 / d}')
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

  run_agent 1000
  read -r calls sample_ms agent_ms <<<"$(pg_psql -At -F ' ' -c "
    SELECT coalesce(sum(calls) FILTER (WHERE query LIKE '%AS total_lock%'), 0),
           coalesce(sum(total_exec_time) FILTER (WHERE query LIKE '%AS total_lock%'), 0),
           coalesce(sum(total_exec_time) FILTER (WHERE query LIKE '%postgres-agent%'), 0)
    FROM pg_stat_statements")"
  awk -v c="$calls" -v s="$sample_ms" -v a="$agent_ms" -v d="$DURATION" 'BEGIN {
    printf "sampling query: %d calls, %.1f ms server time per minute (%.3f%% of one core; %.2f ms per call)\n",
      c, s * 60 / d, s * 60 / d / 600, (c > 0 ? s / c : 0);
    printf "all agent queries (cycle, sampling, spikes): %.1f ms server time per minute\n", a * 60 / d }'
  on_cpu=$CPU_MS; on_peak=$PEAK_KB; spikes=$SPIKES
  echo "sample ticks: $SAMPLED"
  run_agent 0
  awk -v a="$on_cpu" -v b="$CPU_MS" 'BEGIN {printf "agent CPU per minute: %d ms with sampling, %d ms without (sampling: +%d ms, %.3f%% of one core)\n", a, b, a - b, (a - b) / 600}'
  awk -v a="$on_peak" -v b="$PEAK_KB" 'BEGIN {printf "agent peak RSS: %.1f MiB with sampling, %.1f MiB without\n", a / 1024, b / 1024}'
  echo "spike snapshots taken with sampling on: $spikes (min_gap_s 60; default triggers: twice the cores)"
  pg_stop
  PGB_LOAD_PID=
done
