#!/usr/bin/env bash
# parse-log throughput and memory next to pgBadger, per log_line_prefix style, on real stderr logs.
#
# For each prefix style of the corpus (docs/logs.md), a throwaway cluster (bench/pg-cluster.sh) logs
# every statement (log_min_duration_statement = 0, log_connections/disconnections/checkpoints on)
# with that prefix while pgbench runs its TPC-B-like workload. Each log is parsed, side by side in
# the same run, by `postgres-agent parse-log` (release build, default privacy policy: every
# statement fingerprinted and its literals masked, credentials redacted) to /dev/null and by
# pgBadger (single job, same prefix) to a report; both are timed with /usr/bin/time -v (wall clock
# and CPU time: on a shared machine CPU time is the steadier basis for the ratio). parse-log then
# runs on a file COPIES times larger (the same real log concatenated) to show that its peak memory
# does not depend on the file size, and on the same log with every statement made a new shape (its
# table names numbered per line), where its cache of statement shapes never hits: the worst case.
#
# Usage: bench/parse_log.sh               TXNS=200000 COPIES=8 STYLES="debian rds" bench/parse_log.sh
#        KEEP_DIR=/tmp/logs bench/parse_log.sh   (keeps each style's log as KEEP_DIR/STYLE.log)
# Needs: pgbadger and time (apt-get install -y pgbadger time), PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pg-cluster.sh

TXNS=${TXNS:-80000}
COPIES=${COPIES:-6}
STYLES=${STYLES:-debian rhel rds azure pgbadger time_only}
WORK=$(mktemp -d /tmp/pga-parse-bench-XXXX)
chmod 755 "$WORK"   # the server runs as the postgres user
cleanup() { pg_stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

command -v pgbadger >/dev/null || { echo "pgbadger missing: apt-get install -y pgbadger" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time missing: apt-get install -y time" >&2; exit 1; }

# style -> log_line_prefix, and the pgBadger arguments that read it.
prefix_of() {
  case $1 in
    debian) echo '%m [%p] %q%u@%d ' ;;
    rhel) echo '%m [%p] ' ;;
    rds) echo '%t:%r:%u@%d:[%p]:' ;;
    azure) echo '%t-%c-' ;;
    pgbadger) echo '%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ' ;;
    time_only) echo '%t ' ;;
    *) echo "unknown style $1" >&2; exit 2 ;;
  esac
}
badger_args() {
  case $1 in
    rds) echo "-f rds" ;;
    *) echo "-f stderr" ;;
  esac
}

echo "building the release binary..." >&2
cargo build --release --quiet
BIN=$PWD/target/release/postgres-agent

# Runs a command under /usr/bin/time -v; prints "wall_seconds cpu_seconds peak_rss_kb exit_code".
measure() {
  local rc=0
  /usr/bin/time -v "$@" >/dev/null 2>"$WORK/time.txt" || rc=$?
  python3 - "$WORK/time.txt" "$rc" <<'PY'
import sys
f = {}
for line in open(sys.argv[1]):
    k, _, v = line.strip().rpartition(": ")
    f[k] = v
secs = 0.0
for p in f.get("Elapsed (wall clock) time (h:mm:ss or m:ss)", "0").split(":"):
    secs = secs * 60 + float(p)
cpu = float(f.get("User time (seconds)", 0)) + float(f.get("System time (seconds)", 0))
print(f"{secs:.3f} {cpu:.3f} {f.get('Maximum resident set size (kbytes)', 0)} {sys.argv[2]}")
PY
}

RESULTS=$WORK/results.txt
: >"$RESULTS"
for style in $STYLES; do
  PREFIX=$(prefix_of "$style")
  echo "[$style] generating a real log: prefix '$PREFIX', pgbench, $TXNS transactions, every statement logged..." >&2
  pg_start "$WORK/pg"
  cat >>"$PGB_DATA/postgresql.conf" <<CONF
log_line_prefix = '$PREFIX'
log_connections = on
log_disconnections = on
log_checkpoints = on
log_rotation_size = 0
lc_messages = 'C'
CONF
  pg_psql -c "select pg_reload_conf()" >/dev/null
  # The cluster started with pg-cluster.sh's prefix: start a new file, written with this style's
  # prefix only, and drop the first one.
  sleep 1.2   # log file names have whole seconds: the rotated file must get a new name
  first=$(ls "$PGB_DATA"/log/*.log)
  pg_psql -c "select pg_rotate_logfile()" >/dev/null
  sleep 1
  rm -f $first
  "$PGB_BIN/pgbench" -i -q -s 2 -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres postgres >/dev/null 2>&1
  "$PGB_BIN/pgbench" -n -c 4 -j 2 -t $((TXNS / 4)) -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres postgres >/dev/null 2>&1
  sleep 1
  SMALL=$WORK/$style.log
  cat "$PGB_DATA"/log/*.log >"$SMALL"
  pg_stop
  [ -n "${KEEP_DIR:-}" ] && mkdir -p "$KEEP_DIR" && cp "$SMALL" "$KEEP_DIR/$style.log"
  LARGE=$WORK/large.log
  for _ in $(seq "$COPIES"); do cat "$SMALL"; done >"$LARGE"

  # shellcheck disable=SC2046
  read -r t_badger c_badger rss_badger rc_badger < <(measure pgbadger -j 1 --quiet --prefix "$PREFIX" $(badger_args "$style") -o "$WORK/report.html" "$SMALL")
  read -r t_small c_small rss_small _ < <(measure "$BIN" parse-log --prefix "$PREFIX" "$SMALL")
  read -r t_large c_large rss_large _ < <(measure "$BIN" parse-log --prefix "$PREFIX" "$LARGE")
  # The same log with every statement a new shape (each table name numbered per line): parse-log's
  # cache of statement shapes never hits, the worst case for a log of all-different statements.
  python3 - "$SMALL" "$WORK/shapes.log" <<'PY'
import sys
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst:
    for n, line in enumerate(src):
        dst.write(line.replace(b"pgbench_", b"pgbench_%d_" % n))
PY
  read -r _ c_shapes _ _ < <(measure "$BIN" parse-log --prefix "$PREFIX" "$WORK/shapes.log")
  b_shapes=$(stat -c %s "$WORK/shapes.log")
  rm -f "$WORK/shapes.log"
  "$BIN" parse-log --prefix "$PREFIX" "$SMALL" 2>"$WORK/summary.txt" >/dev/null
  entries=$(sed -n 's/^parse-log: \([0-9]*\) entries, \([0-9]*\) unparsed.*/\1 \2/p' "$WORK/summary.txt")
  "$BIN" parse-log "$SMALL" 2>&1 >/dev/null | grep -o "inferred log_line_prefix '[^']*'" >"$WORK/inferred.txt" || true
  inferred_ok=no
  grep -qF "'$PREFIX'" "$WORK/inferred.txt" && inferred_ok=yes
  echo "$style $(stat -c %s "$SMALL") $(stat -c %s "$LARGE") $entries $t_small $c_small $rss_small $t_large $c_large $rss_large $t_badger $c_badger $rss_badger $rc_badger $inferred_ok $b_shapes $c_shapes" >>"$RESULTS"
  rm -f "$SMALL" "$LARGE" "$WORK/report.html"
done

python3 - "$RESULTS" "$COPIES" <<'PY'
import sys
copies = int(sys.argv[2])
mb = 1024 * 1024
print("parse-log vs pgBadger: real stderr logs from pgbench, log_min_duration_statement = 0, one core each")
print(f"{'style':<10} {'file':>8} {'entries':>9} {'unparsed':>8} | {'parse-log MB/s':>14} {'cpu s':>6} {'RSS MB':>6} {'RSS x' + str(copies):>7} | "
      f"{'pgBadger MB/s':>13} {'cpu s':>6} {'RSS MB':>6} | {'x wall':>6} {'x cpu':>6} | inferred | {'new shapes MB/s':>15}")
for line in open(sys.argv[1]):
    p = line.split()
    style = p[0]
    bs, bl, n, unp = int(p[1]), int(p[2]), int(p[3]), int(p[4])
    ts, cs, rs, tl, cl, rl, tb, cb, rb = (float(x) for x in p[5:14])
    rc_badger, inferred = p[14], p[15]
    b_shapes, c_shapes = int(p[16]), float(p[17])
    badger = rc_badger == "0"
    print(f"{style:<10} {bs/mb:6.1f}MB {n:>9} {unp:>8} | {bs/mb/cs:14.1f} {cs:6.2f} {rs/1024:6.1f} {rl/1024:7.1f} | "
          + (f"{bs/mb/cb:13.2f} {cb:6.2f} {rb/1024:6.1f} | {tb/ts:6.1f} {cb/cs:6.1f}" if badger else f"{'failed':>13} {'':>6} {'':>6} | {'':>6} {'':>6}")
          + f" | {inferred:>8} | {b_shapes/mb/c_shapes:15.1f}")
print("MB/s (MiB per CPU second) and the ratios use CPU time (user + system) of the same file; wall-clock ratio shown as 'x wall'.")
print("pgBadger needs %t and %p in the prefix: azure (%t-%c-) and time_only (%t ) give it no pid, so its figures there are not a like-for-like comparison.")
print(f"'RSS x{copies}': parse-log's peak RSS on the same log repeated {copies} times.")
print("'new shapes': parse-log on the same log with every statement a new shape (table names numbered per line), so its cache of statement shapes never hits.")
PY
