#!/usr/bin/env bash
# Server time of the health collectors (issue 24, docs/health.md "Cost"): DBS databases of TABLES
# tables each (every table with a primary key, so as many indexes), a role with pg_monitor, and
# RUNS runs of `postgres-agent once` with [health] enabled (each a new process, so each does a
# table pass). Prints, from the role's pg_stat_statements entries (total_exec_time / runs):
#   cycle      the every-interval health queries (pg_stat_database, server sections, pg_settings)
#   table_pass the databases list and the per-database table and index queries
#   other      the agent's other collectors, for scale
# and the most sessions the role held at once (pg_stat_activity sampled every 50 ms).
#
#   scripts/health_cost.sh   (DBS=5 TABLES=1000 RUNS=3 STEADY_S=60 HEALTH=true (false: for comparison); PG_BINDIR picks the major; needs a built
#                            target/debug/postgres-agent)
set -euo pipefail
cd "$(dirname "$0")/.."
DBS=${DBS:-5}
TABLES=${TABLES:-1000}
RUNS=${RUNS:-3}
AGENT=${AGENT:-target/debug/postgres-agent}
. bench/pg-cluster.sh

WORK=$(mktemp -d /tmp/pga-healthcost.XXXXXX)
chmod 755 "$WORK"
trap 'pg_stop' EXIT
pg_start "$WORK"
for d in $(seq 1 "$DBS"); do
  [ "$d" = 1 ] && db=postgres || { db=db$d; pg_psql -c "CREATE DATABASE $db" >/dev/null; }
  "$PGB_CLIENT_BIN/psql" -X -q -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres -d "$db" -c \
    "DO \$\$ BEGIN FOR i IN 1..$TABLES LOOP EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v int); INSERT INTO t%s VALUES (1, 1)', i, i); END LOOP; END \$\$" >/dev/null
done
pg_psql -c "CREATE ROLE bench_agent LOGIN; GRANT pg_monitor TO bench_agent" >/dev/null
pg_psql -c "SELECT pg_stat_statements_reset()" >/dev/null
mkdir -p "$WORK/state"
cat >"$WORK/agent.ini" <<INI
[agent]
project_id = bench
state_dir = $WORK/state
[postgres]
host = $PGB_SOCK
port = $PGB_PORT
user = bench_agent
database = postgres
[telemetry]
listen =
[logs]
enabled = false
[health]
enabled = ${HEALTH:-true}
INI
# The most sessions of the role at once, sampled while the runs go.
( most=0; while [ ! -f "$WORK/done" ]; do
    n=$(pg_psql -At -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bench_agent'" 2>/dev/null || echo 0)
    [ "$n" -gt "$most" ] && most=$n && echo "$most" >"$WORK/most"
    sleep 0.05
  done ) &
SAMPLER=$!
for _ in $(seq 1 "$RUNS"); do "$AGENT" once "$WORK/agent.ini" >/dev/null 2>"$WORK/agent.err" || { cat "$WORK/agent.err"; exit 1; }; done
touch "$WORK/done"; wait "$SAMPLER" || true
echo "PostgreSQL $(pg_psql -At -c 'SHOW server_version'), $DBS databases x $TABLES tables (+ as many indexes), $RUNS runs"
pg_psql -At -F ' ' -c "
  SELECT CASE WHEN query LIKE '%pg_stat_user_%' OR query LIKE '%has_database_privilege%' THEN 'table_pass'
              WHEN query LIKE '%row_to_json%' THEN 'cycle'
              ELSE 'other' END AS part,
         round((sum(total_exec_time) / $RUNS)::numeric, 2) AS ms_per_run,
         round(sum(calls)::numeric / $RUNS, 1) AS calls_per_run
  FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
  WHERE r.rolname = 'bench_agent' GROUP BY 1 ORDER BY 1" | while read -r part ms calls; do
  printf '%-11s %8s ms server time per run (%s statements)\n' "$part" "$ms" "$calls"
done
echo "costliest health statements per run:"
pg_psql -At -F ' ' -c "
  SELECT round((sum(total_exec_time) / $RUNS)::numeric, 2), sum(calls) / $RUNS,
         left(regexp_replace(query, '.*?(FROM [a-z_]+).*', '\\1'), 60)
  FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
  WHERE r.rolname = 'bench_agent' AND query LIKE '%row_to_json%'
  GROUP BY 3 ORDER BY 1 DESC LIMIT 8" | sed 's/^/  /'
echo "most sessions held at once (once runs): $(cat "$WORK/most" 2>/dev/null || echo 0)"

# Steady state: the daemon for STEADY_S seconds at 5 s cycles (the table pass of its start included,
# then none: table_interval_s = 600), per cycle = per read of pg_stat_database.
STEADY_S=${STEADY_S:-60}
pg_psql -c "SELECT pg_stat_statements_reset()" >/dev/null
sed -i 's/^project_id = bench$/project_id = bench\ncollection_interval_s = 5/' "$WORK/agent.ini"
printf '[activity]\nsample_interval_ms = 0\n' >>"$WORK/agent.ini"
"$AGENT" run "$WORK/agent.ini" >/dev/null 2>"$WORK/daemon.err" &
DAEMON=$!
sleep "$STEADY_S"
echo "daemon peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$DAEMON/status) (this build)"
kill "$DAEMON"; wait "$DAEMON" || true
pg_psql -At -F ' ' -c "
  WITH c AS (SELECT sum(calls) AS cycles FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
             WHERE r.rolname = 'bench_agent' AND query LIKE '%FROM pg_stat_database s LEFT JOIN%')
  SELECT CASE WHEN query LIKE '%pg_stat_user_%' OR query LIKE '%has_database_privilege%' THEN 'table_pass'
              WHEN query LIKE '%row_to_json%' THEN 'cycle'
              ELSE 'other' END, round((sum(total_exec_time) / max(c.cycles))::numeric, 2), max(c.cycles)
  FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid, c
  WHERE r.rolname = 'bench_agent' GROUP BY 1 ORDER BY 1" | while read -r part ms cycles; do
  printf 'daemon: %-11s %8s ms server time per cycle (%s cycles)\n' "$part" "$ms" "$cycles"
done
