#!/usr/bin/env bash
# parse-log throughput and memory next to pgBadger, on a real stderr log from a real server.
#
# A throwaway cluster (bench/pg-cluster.sh) logs every statement (log_min_duration_statement = 0,
# log_connections/disconnections on, prefix '%m [%p] %q%u@%d ') while pgbench runs its TPC-B-like
# workload. The log it wrote is parsed by `postgres-agent parse-log` (release build) to /dev/null and
# by pgBadger (single job, same prefix) in the same run; both are timed with /usr/bin/time -v.
# parse-log then runs again on a file COPIES times larger (the same real log concatenated) to show
# that its peak memory does not depend on the file size.
#
# Usage: bench/parse_log.sh            TXNS=200000 COPIES=8 KEEP_LOG=/tmp/real.log bench/parse_log.sh
# Needs: pgbadger and time (apt-get install -y pgbadger time), PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pg-cluster.sh

TXNS=${TXNS:-120000}
COPIES=${COPIES:-6}
PREFIX='%m [%p] %q%u@%d '
WORK=$(mktemp -d /tmp/pga-parse-bench-XXXX)
chmod 755 "$WORK"   # the server runs as the postgres user
cleanup() { pg_stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

command -v pgbadger >/dev/null || { echo "pgbadger missing: apt-get install -y pgbadger" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time missing: apt-get install -y time" >&2; exit 1; }

echo "building the release binary..." >&2
cargo build --release --quiet
BIN=$PWD/target/release/postgres-agent

echo "generating a real log: pgbench, $TXNS transactions, every statement logged..." >&2
pg_start "$WORK/pg"
cat >>"$PGB_DATA/postgresql.conf" <<CONF
log_connections = on
log_disconnections = on
log_checkpoints = on
log_rotation_size = 0
CONF
pg_psql -c "select pg_reload_conf()" >/dev/null
"$PGB_BIN/pgbench" -i -q -s 2 -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres postgres >/dev/null 2>&1
"$PGB_BIN/pgbench" -n -c 4 -j 2 -t $((TXNS / 4)) -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres postgres >/dev/null 2>&1
sleep 1
SMALL=$WORK/small.log
cat "$PGB_DATA"/log/*.log >"$SMALL"
pg_stop
[ -n "${KEEP_LOG:-}" ] && cp "$SMALL" "$KEEP_LOG"
LARGE=$WORK/large.log
for _ in $(seq "$COPIES"); do cat "$SMALL"; done >"$LARGE"

# Runs a command under /usr/bin/time -v; prints "seconds peak_rss_kb".
measure() {
  /usr/bin/time -v "$@" >/dev/null 2>"$WORK/time.txt"
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
  python3 - "$wall" "$rss" <<'PY'
import sys
parts = [float(p) for p in sys.argv[1].split(":")]
secs = 0.0
for p in parts:
    secs = secs * 60 + p
print(f"{secs:.3f} {sys.argv[2]}")
PY
}

entries=$("$BIN" parse-log --prefix "$PREFIX" "$SMALL" 2>/dev/null | wc -l)
bytes_small=$(stat -c %s "$SMALL")
bytes_large=$(stat -c %s "$LARGE")

read -r t_small rss_small < <(measure "$BIN" parse-log --prefix "$PREFIX" "$SMALL")
read -r t_large rss_large < <(measure "$BIN" parse-log --prefix "$PREFIX" "$LARGE")
read -r t_badger rss_badger < <(measure pgbadger -j 1 --quiet --prefix "$PREFIX" -f stderr -o "$WORK/report.html" "$SMALL")

python3 - "$bytes_small" "$bytes_large" "$entries" "$COPIES" "$t_small" "$rss_small" "$t_large" "$rss_large" "$t_badger" "$rss_badger" <<'PY'
import sys
bs, bl, n, copies = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ts, rs, tl, rl, tb, rb = (float(x) for x in sys.argv[5:])
mb = 1024 * 1024
def row(name, size, entries, t, rss):
    print(f"{name:<34} {size/mb:9.1f} MB {entries:>10} entries {t:8.2f} s {size/mb/t:9.1f} MB/s {entries/t:12.0f} entries/s {rss/1024:8.1f} MB peak RSS")
print("parse-log benchmark: real stderr log from pgbench, log_min_duration_statement = 0")
row("postgres-agent parse-log", bs, n, ts, rs)
row(f"postgres-agent parse-log (x{copies})", bl, n * copies, tl, rl)
row("pgbadger -j 1", bs, n, tb, rb)
print(f"speed-up over pgBadger: {tb/ts:.1f}x; parse-log peak RSS {rs/1024:.1f} MB at {bs/mb:.0f} MB vs {rl/1024:.1f} MB at {bl/mb:.0f} MB")
PY
