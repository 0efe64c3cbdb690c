#!/usr/bin/env bash
# Delivery after a listener outage: the daemon at 1 s cycles against a server with a small steady load,
# shipping to a local listener that goes away (connections refused) for OUTAGE seconds and comes back.
# Prints, per protocol: the backlog at its peak, the time to drain it after the listener's return, how
# far behind fresh data was delivered during the drain, duplicates and losses.
#
#   bench/outage.sh [OUTAGE_SECONDS]   (default 60; AGENT_BIN=path skips the build;
#                                       PROTOCOLS="batch bitville" chooses the protocols)
#
# Figures:
#   backlog         requests waiting in the outbox when the listener came back (status --json)
#   drain           seconds from the listener's return until the outbox holds no more than two
#                   cycles' worth of requests
#   fresh lag       for requests collected after the listener's return: arrival at the listener minus
#                   the collection time in the body, median and maximum
#   duplicates      requests received more than once (same Idempotency-Key)
#   lost            requests the agent made but the listener never got: evicted, dead-lettered or
#                   held-and-lost (cumulative outbox counters), plus any gap between the requests the
#                   agent counts as delivered and the distinct ones the listener received
#
# The bitville run sets `max_requests_per_minute = 1200` (the local listener has no limit); at 1 s
# cycles the default of 90 is refused at start because the agent's own production exceeds it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTAGE=${1:-60}
PROTOCOLS=${PROTOCOLS:-"batch bitville"}
WARMUP=15
. bench/pg-cluster.sh

if [ -n "${AGENT_BIN:-}" ]; then
  BIN=$AGENT_BIN
else
  cargo build --release --quiet
  BIN=$PWD/target/release/postgres-agent
fi
WORK=$(mktemp -d /tmp/pga-outage.XXXXXX)
chmod 755 "$WORK"
trap 'kill ${AGENT_PID:-} ${LISTENER_PID:-} 2>/dev/null || true; pg_stop; rm -rf "$WORK"' EXIT

pg_start "$WORK/pg"
pg_workload 500 10
echo "server: $("$PGB_BIN/postgres" --version), 10 busy sessions; outage ${OUTAGE}s at 1 s cycles"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The listener: acknowledges every POST, appends one line per request to $1:
# <arrival unix s> <Idempotency-Key> <collection unix s>
start_listener() {
  python3 - "$1" "$2" >>"$WORK/listener.err" 2>&1 <<'PY' &
import datetime, gzip, http.server, json, sys, threading, time
port, out = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
lock = threading.Lock()
def collected(body):
    try:
        doc = json.loads(body)
    except ValueError:
        return 0.0
    if "collected_at" in doc:
        return datetime.datetime.fromisoformat(doc["collected_at"].replace("Z", "+00:00")).timestamp()
    return float(doc.get("timestamp", 0))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with lock:
            out.write(f"{time.time():.3f} {self.headers.get('Idempotency-Key')} {collected(body):.3f}\n")
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
  LISTENER_PID=$!
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return
    sleep 0.1
  done
  echo "the listener did not start:"; cat "$WORK/listener.err"; exit 1
}

status_field() { # status_field INI PYTHON-EXPR-ON-o
  "$BIN" status --json "$1" 2>/dev/null | python3 -c "import json,sys; o=json.load(sys.stdin)['outbox']; print($2)"
}

run_protocol() {
  local protocol=$1 dir=$WORK/$1 lport mport ini log
  mkdir -p "$dir"
  lport=$(free_port); mport=$(free_port)
  ini=$dir/agent.ini; log=$dir/received
  : >"$log"
  local pace=""
  [ "$protocol" = bitville ] && pace="max_requests_per_minute = 1200"
  cat >"$ini" <<INI
[agent]
project_id = outage
collection_interval_s = 1
state_dir = $dir/state
[postgres]
host = $PGB_SOCK
port = $PGB_PORT
user = postgres
[listener]
protocol = $protocol
url = http://127.0.0.1:$lport/ingest/postgres
api_key = bench
$pace
[logs]
path = $PGB_DATA/log
[telemetry]
listen = 127.0.0.1:$mport
[logging]
level = warn
INI
  start_listener "$lport" "$log"
  "$BIN" run "$ini" >/dev/null 2>"$dir/agent.err" &
  AGENT_PID=$!
  sleep "$WARMUP"
  kill "$LISTENER_PID"; wait "$LISTENER_PID" 2>/dev/null || true
  local down_at up_at backlog peak=0 drained="" steady
  down_at=$(date +%s.%N)
  sleep "$OUTAGE"
  backlog=$(status_field "$ini" "o['depth']")
  # Requests a cycle makes in steady state, from the warm-up: two cycles' worth counts as drained.
  steady=$(awk -v w="$WARMUP" 'END {printf "%d", 2 * NR / w + 2}' "$log")
  start_listener "$lport" "$log"
  up_at=$(date +%s.%N)
  for _ in $(seq 600); do
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "agent died:"; cat "$dir/agent.err"; exit 1; }
    local depth
    depth=$(status_field "$ini" "o['depth']")
    [ "$depth" -gt "$peak" ] && peak=$depth
    if [ "$depth" -le "$steady" ]; then drained=$(date +%s.%N); break; fi
    sleep 0.5
  done
  sleep 5 # let the last cycles go through before counting
  kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
  kill "$LISTENER_PID"; wait "$LISTENER_PID" 2>/dev/null || true
  local counters
  counters=$(status_field "$ini" "o['delivered'], o['depth'], o['evicted'], o['dead_letters'] + o['dead_letters_dropped'], o.get('held_lost', 0)")
  python3 - "$protocol" "$log" "$down_at" "$up_at" "${drained:-0}" "$backlog" "$counters" <<'PY'
import sys
protocol, log, down, up, drained, backlog = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
delivered, depth, evicted, dead, held_lost = (int(x) for x in sys.argv[7].replace(",", " ").split())
rows = [l.split() for l in open(log) if l.strip()]
keys = [r[1] for r in rows]
distinct = len(set(keys))
lags = sorted(float(r[0]) - float(r[2]) for r in rows if float(r[2]) > up)
med = lags[len(lags) // 2] if lags else float("nan")
drain = f"{drained - up:.1f} s" if drained else "not within 300 s"
lost = evicted + dead + held_lost + max(0, delivered - distinct)
print(f"{protocol:8} backlog {backlog} requests after {up - down:.0f} s down; drained in {drain}; "
      f"fresh lag median {med:.1f} s, max {max(lags) if lags else float('nan'):.1f} s; "
      f"received {len(keys)} ({distinct} distinct), duplicates {len(keys) - distinct}, lost {lost} "
      f"(evicted {evicted}, dead letters {dead}, held lost {held_lost}, left in outbox {depth})")
PY
}

for p in $PROTOCOLS; do run_protocol "$p"; done
