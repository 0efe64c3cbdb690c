#!/usr/bin/env bash
# Side by side (issue 22, point 3): this agent and the Bitville Python agent it replaces, at the same
# time, on one throwaway PostgreSQL (bench/pg-cluster.sh), each with a Bitville listener process of
# its own (examples/bitville_listener.rs: the contract the integration tests enforce, plus the real
# listener's correlation API), both at 10 s cycles, each connecting as a role of its own
# (pa_ours, pa_python; pg_monitor). The workload:
#   - about 5,000 distinct statements (pg_stat_statements.max = 5500), 10 pgbench sessions busy;
#   - 20 new distinct statements a second (two-table joins, one psql session);
#   - 100 sleeping sessions (pg_sleep) carrying the PHP agent's correlation IDs (UUID v4): 50 as
#     application_name = bitville-<uuid>, 50 as a /* correlation:<uuid> */ comment;
#   - one session holding an ACCESS EXCLUSIVE lock and one waiting for it;
#   - log_min_duration_statement = 250 ms (both agents tail the same server log).
# After WARMUP seconds it measures for DURATION seconds and prints, for both agents:
#   - peak RSS: VmHWM of the agent process at the end;
#   - sessions held: the most sessions of the agent's role in pg_stat_activity, sampled each second
#     over the whole run;
#   - correlation IDs found: of the 100, how many its listener's GET /api/correlation?correlation_id=
#     answers 200 for (any record stored with that ID);
#   - CPU per cycle: utime + stime of the agent process (/proc/PID/stat, all threads) over the window,
#     divided by the cycles in the window (the calls of the agent's pg_stat_statements read);
#   - server time per cycle: the role's total_exec_time in pg_stat_statements over the window,
#     divided by the same cycles.
#
#   AGENT_BIN=path/to/postgres-agent bench/side_by_side.sh [DURATION]   (default 300 s)
# Optional: WARMUP (default 40 s), PEER_DIR (the Python agent's folder, default
# ../shared/peers/bitville-python-agent), PEER_VENV (its virtualenv, created with its requirements
# if missing; default .venv-peer), LISTENER_BIN (default: built with cargo, debug, as an example).
# The Python agent runs from a temporary copy with one fix applied (its circuit-breaker listener, see
# its PROVENANCE.md; without it no direct send works); the folder itself is never changed.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-300}
WARMUP=${WARMUP:-40}
: "${AGENT_BIN:?set AGENT_BIN to the postgres-agent binary to measure (a release build)}"
PEER_DIR=${PEER_DIR:-$PWD/../shared/peers/bitville-python-agent}
PEER_VENV=${PEER_VENV:-$PWD/.venv-peer}
. bench/pg-cluster.sh

if [ -z "${LISTENER_BIN:-}" ]; then
  cargo build --quiet --example bitville_listener
  LISTENER_BIN=$PWD/target/debug/examples/bitville_listener
fi
if [ ! -x "$PEER_VENV/bin/python" ]; then
  python3 -m venv "$PEER_VENV"
  "$PEER_VENV/bin/pip" install --quiet -r "$PEER_DIR/requirements.txt"
fi

WORK=$(mktemp -d /tmp/pga-sbs.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  pg_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

# The Python agent, copied, with its circuit-breaker listener fixed (a CircuitBreakerListener
# subclass instead of a plain function, which pybreaker cannot call).
cp -r "$PEER_DIR" "$WORK/peer"
python3 - "$WORK/peer/src/transmission/circuit_breaker.py" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
fix = '''
class _StateLogger(CircuitBreakerListener):
    def state_change(self, cb, old_state, new_state):
        _on_state_change(cb, getattr(old_state, "name", old_state), getattr(new_state, "name", new_state))

'''
s = s.replace("from pybreaker import CircuitBreaker, CircuitBreakerError",
              "from pybreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerListener")
s = s.replace("\ndef get_circuit_breaker(", fix + "\ndef get_circuit_breaker(")
s = s.replace("_breaker.add_listener(_on_state_change)", "_breaker.add_listener(_StateLogger())")
assert s.count("_StateLogger") == 2, "the circuit-breaker fix no longer applies"
open(p, "w").write(s)
PY

PGB_PSS_MAX=5500 pg_start "$WORK/pg"
pg_psql -c "ALTER SYSTEM SET log_min_duration_statement = '250ms'" -c "SELECT pg_reload_conf()" >/dev/null
pg_workload 5000 10
pg_psql >/dev/null <<'SQL'
CREATE ROLE pa_ours LOGIN; GRANT pg_monitor TO pa_ours;
CREATE ROLE pa_python LOGIN; GRANT pg_monitor TO pa_python;
CREATE TABLE lockt (id int);
SQL
PSQL=("$PGB_CLIENT_BIN/psql" -X -q -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres -d postgres)

# 100 sleeping sessions with the PHP agent's correlation IDs, both styles.
python3 -c 'import uuid; [print(uuid.uuid4()) for _ in range(100)]' >"$WORK/ids"
i=0
while read -r id; do
  if [ $((i % 2)) = 0 ]; then
    PGAPPNAME=bitville-$id "${PSQL[@]}" -c "SELECT pg_sleep(86400)" >/dev/null 2>&1 &
  else
    PGAPPNAME=php-fpm "${PSQL[@]}" -c "/* correlation:$id */ SELECT pg_sleep(86400)" >/dev/null 2>&1 &
  fi
  PIDS+=($!)
  i=$((i + 1))
done <"$WORK/ids"
# A lock waiter.
PGAPPNAME=bench-lock-holder "${PSQL[@]}" -c "BEGIN; LOCK TABLE lockt; SELECT pg_sleep(86400)" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1
PGAPPNAME=bench-lock-waiter "${PSQL[@]}" -c "SELECT count(*) FROM lockt" >/dev/null 2>&1 &
PIDS+=($!)
# 20 new distinct statements a second (50 x 50 table pairs x 6 operators x 2 = 30,000 shapes).
python3 - "${PSQL[@]}" -o /dev/null <<'PY' &
import os, subprocess, sys, time
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, text=True, env={**os.environ, "PGAPPNAME": "bench-new-statements"})
ops = ["=", "<>", "<", ">", "<=", ">="]
k, start = 0, time.monotonic()
while k < 30000:
    for _ in range(20):
        a, b, op, lim = k % 50, (k // 50) % 50, ops[(k // 2500) % 6], (k // 15000) % 2
        p.stdin.write(f"SELECT x.v FROM t{a} x, t{b} y WHERE x.id = y.id AND x.v {op} 1{' LIMIT 1' if lim else ''};\n")
        k += 1
    p.stdin.flush()
    time.sleep(max(0.0, start + k / 20 - time.monotonic()))
PY
PIDS+=($!)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_listener NAME: a Bitville listener process; sets URL_<NAME>.
start_listener() {
  "$LISTENER_BIN" --key bench-key --project bench >"$WORK/$1.listener" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    grep -q '^listening on ' "$WORK/$1.listener" && break
    sleep 0.1
  done
  printf -v "URL_$1" '%s' "$(sed -n 's/^listening on //p' "$WORK/$1.listener")"
}
start_listener ours
start_listener python

MPORT=$(free_port)
cat >"$WORK/ours.ini" <<INI
[agent]
project_id = bench
collection_interval_s = 10
state_dir = $WORK/ours-state
[postgres]
host = $PGB_SOCK
port = $PGB_PORT
user = pa_ours
[listener]
url = $URL_ours/ingest/postgres
api_key = bench-key
[telemetry]
listen = 127.0.0.1:$MPORT
INI
"$AGENT_BIN" run "$WORK/ours.ini" >"$WORK/ours.out" 2>"$WORK/ours.err" &
OURS=$!
PIDS+=($OURS)

cat >"$WORK/python.ini" <<INI
[database]
host = $PGB_SOCK
port = $PGB_PORT
name = postgres
user = pa_python
password =
statement_timeout_ms = 5000
[collection]
interval_s = 10
log_path = $PGB_DATA/$(pg_psql -At -c "SELECT pg_current_logfile()")
[listener]
url = $URL_python/ingest/postgres
api_key = bench-key
project_id = bench
[buffer]
path = $WORK/python-buffer
max_size_mb = 100
INI
(cd "$WORK/peer" && exec "$PEER_VENV/bin/python" -m src "$WORK/python.ini") >"$WORK/python.out" 2>&1 &
PYTHON=$!
PIDS+=($PYTHON)

# Sessions of each role, sampled each second for the whole run.
(while true; do
  pg_psql -At -F ' ' -c "SELECT usename, count(*) FROM pg_stat_activity WHERE usename IN ('pa_ours', 'pa_python') GROUP BY 1"
  sleep 1
done) >"$WORK/sessions" 2>/dev/null &
PIDS+=($!)

# cpu_ticks PID: utime + stime of every thread (clock ticks).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Per role: total_exec_time (ms) and the calls of its pg_stat_statements read (= cycles: the most
# called statement of the role that reads pg_stat_statements; each agent reads it once a cycle).
role_totals() {
  pg_psql -At -F ' ' -c "SELECT r.rolname, sum(s.total_exec_time),
      coalesce(max(s.calls) FILTER (WHERE s.query ILIKE '%pg_stat_statements%'
        AND s.query NOT ILIKE '%pg_stat_statements_info%'), 0)
    FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
    WHERE r.rolname IN ('pa_ours', 'pa_python') GROUP BY 1 ORDER BY 1"
}
# Per statement of each role, for the breakdown: role, queryid, total_exec_time, calls, text.
stmt_totals() {
  pg_psql -At -F '|' -c "SELECT r.rolname, s.queryid, s.total_exec_time, s.calls,
      left(regexp_replace(s.query, '\\s+', ' ', 'g'), 90)
    FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
    WHERE r.rolname IN ('pa_ours', 'pa_python')"
}
alive() { kill -0 "$OURS" 2>/dev/null || { echo "our agent exited:"; tail -20 "$WORK/ours.err"; exit 1; }
          kill -0 "$PYTHON" 2>/dev/null || { echo "the Python agent exited:"; tail -20 "$WORK/python.out"; exit 1; }; }

echo "warming up ${WARMUP}s, then measuring ${DURATION}s (load before: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
sleep "$WARMUP"
alive
role_totals >"$WORK/before"
stmt_totals >"$WORK/stmts-before"
T0_OURS=$(cpu_ticks "$OURS")
T0_PYTHON=$(cpu_ticks "$PYTHON")
LOAD=()
for _ in $(seq $((DURATION / 10))); do
  sleep 10
  LOAD+=("$(cut -d' ' -f1 /proc/loadavg)")
done
alive
role_totals >"$WORK/after"
stmt_totals >"$WORK/stmts-after"
T1_OURS=$(cpu_ticks "$OURS")
T1_PYTHON=$(cpu_ticks "$PYTHON")
# Our agent's outbox at the end: batches waiting for delivery, and the oldest one's age.
BACKLOG=$(python3 -c 'import sys, urllib.request
m = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
v = [l.split() for l in m.splitlines() if l and not l.startswith("#")]
n = sum(float(x[1]) for x in v if x[0].startswith("postgres_agent_outbox_batches"))
age = [x[1] for x in v if x[0] == "postgres_agent_outbox_oldest_age_seconds"]
a = age[0] if age else "?"
print(f"{n:.0f} batches waiting, the oldest {a} s old")' \
  "http://127.0.0.1:$MPORT/metrics" 2>/dev/null || echo unknown)
HWM_OURS=$(awk '/^VmHWM/ {print $2}' "/proc/$OURS/status")
HWM_PYTHON=$(awk '/^VmHWM/ {print $2}' "/proc/$PYTHON/status")

python3 - "$WORK" "$URL_ours" "$URL_python" "$(getconf CLK_TCK)" "$DURATION" \
  "$((T1_OURS - T0_OURS))" "$((T1_PYTHON - T0_PYTHON))" "$HWM_OURS" "$HWM_PYTHON" "${LOAD[*]}" \
  "$(pg_psql -At -c 'SELECT count(*) FROM pg_stat_statements')" "$(pg_psql -At -c 'SHOW server_version')" <<'PY'
import sys, urllib.error, urllib.request
work, url_ours, url_py, tck, duration, cpu_o, cpu_p, hwm_o, hwm_p, loads, stmts, version = sys.argv[1:]
tck = int(tck)

def totals(name):
    out = {}
    for line in open(f"{work}/{name}"):
        role, ms, calls = line.split()
        out[role] = (float(ms), int(calls))
    return out

before, after = totals("before"), totals("after")
seen = {"pa_ours": [], "pa_python": []}
for line in open(f"{work}/sessions"):
    parts = line.split()
    if len(parts) == 2:
        seen[parts[0]].append(int(parts[1]))

def held(role):
    # The most seen, and how many of the samples saw it (a connection open for a moment shows).
    n = seen[role]
    if not n:
        return "0"
    top = max(n)
    return f"{top} ({sum(1 for x in n if x == top)} of {len(n)} samples)"
ids = [l.strip() for l in open(f"{work}/ids") if l.strip()]

def found(url):
    n = 0
    for i in ids:
        try:
            with urllib.request.urlopen(f"{url}/api/correlation?correlation_id={i}", timeout=30) as r:
                n += r.status == 200
        except urllib.error.HTTPError:
            pass
    return n

rows = {}
for role, url, cpu, hwm in (("pa_ours", url_ours, int(cpu_o), int(hwm_o)), ("pa_python", url_py, int(cpu_p), int(hwm_p))):
    ms = after[role][0] - before.get(role, (0.0, 0))[0]
    cycles = after[role][1] - before.get(role, (0.0, 0))[1]
    rows[role] = {
        "peak RSS": f"{hwm / 1024:.1f} MiB",
        "sessions held": held(role),
        "correlation IDs the listener's API finds": f"{found(url)} / {len(ids)}",
        "CPU per cycle": f"{cpu * 1000 / tck / max(cycles, 1):.0f} ms",
        "server time per cycle (pg_stat_statements by role)": f"{ms / max(cycles, 1):.1f} ms",
        "cycles measured": str(cycles),
    }
load = [float(x) for x in loads.split()]
print(f"\nPostgreSQL {version}, {stmts} statements at the end, {duration} s measured; "
      f"1-min load average during it: min {min(load):.1f}, median {sorted(load)[len(load) // 2]:.1f}, max {max(load):.1f}\n")
print("| | ours | Python agent |")
print("|---|---|---|")
for k in rows["pa_ours"]:
    print(f"| {k} | {rows['pa_ours'][k]} | {rows['pa_python'][k]} |")

# Where each role's server time goes: its statements by server time per cycle.
def stmts(name):
    out = {}
    for line in open(f"{work}/{name}"):
        role, qid, ms, calls, text = line.rstrip("\n").split("|", 4)
        out[(role, qid)] = (float(ms), int(calls), text)
    return out

sb, sa = stmts("stmts-before"), stmts("stmts-after")
for role, label in (("pa_ours", "ours"), ("pa_python", "Python agent")):
    cycles = max(after[role][1] - before.get(role, (0.0, 0))[1], 1)
    deltas = sorted(((ms - sb.get(k, (0.0, 0, ""))[0], calls - sb.get(k, (0.0, 0, ""))[1], text)
                     for k, (ms, calls, text) in sa.items() if k[0] == role), reverse=True)
    print(f"\n{label}: server ms per cycle, calls per cycle, statement (top 5)")
    for ms, calls, text in deltas[:5]:
        print(f"  {ms / cycles:8.1f} {calls / cycles:6.1f}  {text.replace('/* postgres-agent */ ', '')}")
PY
echo "
our agent's outbox at the end: $BACKLOG"
