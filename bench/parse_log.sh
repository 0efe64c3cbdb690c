#!/usr/bin/env bash
# parse-log throughput and memory next to pgBadger, on a real stderr log from a real server.
#
# A throwaway cluster (bench/pg-cluster.sh) logs every statement (log_min_duration_statement = 0,
# log_connections/disconnections on, prefix '%m [%p] %q%u@%d ') while pgbench runs its TPC-B-like
# workload. The log it wrote is parsed by `postgres-agent parse-log` (release build) to /dev/null and
# by pgBadger (single job, same prefix) in the same run; both are timed with /usr/bin/time -v (wall
# clock and CPU time: on a shared machine CPU time is the steadier basis for the ratio).
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

# Runs a command under /usr/bin/time -v; prints "wall_seconds cpu_seconds peak_rss_kb".
measure() {
  /usr/bin/time -v "$@" >/dev/null 2>"$WORK/time.txt"
  python3 - "$WORK/time.txt" <<'PY'
import sys
f = {}
for line in open(sys.argv[1]):
    k, _, v = line.strip().rpartition(": ")
    f[k] = v
secs = 0.0
for p in f["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"):
    secs = secs * 60 + float(p)
cpu = float(f["User time (seconds)"]) + float(f["System time (seconds)"])
print(f"{secs:.3f} {cpu:.3f} {f['Maximum resident set size (kbytes)']}")
PY
}

entries=$("$BIN" parse-log --prefix "$PREFIX" "$SMALL" 2>/dev/null | wc -l)
bytes_small=$(stat -c %s "$SMALL")
bytes_large=$(stat -c %s "$LARGE")

read -r t_small c_small rss_small < <(measure "$BIN" parse-log --prefix "$PREFIX" "$SMALL")
read -r t_large c_large rss_large < <(measure "$BIN" parse-log --prefix "$PREFIX" "$LARGE")
read -r t_badger c_badger rss_badger < <(measure pgbadger -j 1 --quiet --prefix "$PREFIX" -f stderr -o "$WORK/report.html" "$SMALL")

python3 - "$bytes_small" "$bytes_large" "$entries" "$COPIES" "$t_small" "$c_small" "$rss_small" \
  "$t_large" "$c_large" "$rss_large" "$t_badger" "$c_badger" "$rss_badger" <<'PY'
import sys
bs, bl, n, copies = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ts, cs, rs, tl, cl, rl, tb, cb, rb = (float(x) for x in sys.argv[5:])
mb = 1024 * 1024
def row(name, size, entries, t, c, rss):
    print(f"{name:<34} {size/mb:7.1f} MB {entries:>9} entries  wall {t:7.2f} s  cpu {c:7.2f} s"
          f"  {size/mb/t:7.1f} MB/s  {entries/t:10.0f} entries/s  {rss/1024:6.1f} MB peak RSS")
print("parse-log benchmark: real stderr log from pgbench, log_min_duration_statement = 0")
row("postgres-agent parse-log", bs, n, ts, cs, rs)
row(f"postgres-agent parse-log (x{copies})", bl, n * copies, tl, cl, rl)
row("pgbadger -j 1", bs, n, tb, cb, rb)
print(f"speed-up over pgBadger: {tb/ts:.1f}x wall clock, {cb/cs:.1f}x CPU time")
print(f"parse-log peak RSS: {rs/1024:.1f} MB for {bs/mb:.0f} MB, {rl/1024:.1f} MB for {bl/mb:.0f} MB")
PY
