#!/usr/bin/env bash
# Server time of the ways to read pg_stat_statements (issue 22, point 1), at 5,000 and 20,000
# distinct statements on one throwaway cluster per size (bench/pg-cluster.sh; PG_BINDIR picks the
# major, e.g. the bin directory scripts/pg-versions.sh --fetch-only 13 prints). Each alternative runs REPS times as a role of its own with pg_read_all_stats (like the
# agent's), while pgbench keeps 10 sessions running; it prints per call:
#   - server time: the alternative's total_exec_time / calls in pg_stat_statements (each alternative
#     is a statement of its own, so this is the role's total_exec_time delta split by statement);
#   - backend CPU: the CPU time of the role's backend (/proc/PID/schedstat) per call, which a loaded
#     host does not inflate the way it inflates wall-clock server time;
#   - client time: psql's \timing, median (text format over a Unix socket; the agent reads binary).
# The alternatives:
#   full        today's snapshot: identity + every counter column of every entry
#   full_nocast the same columns as they are (int8 counters not cast to float8; numeric wal_bytes is)
#   narrow      identity + calls + total times of every entry (a first pass)
#   changed     every counter column of CHANGED entries only, by queryid = ANY($1) (a second pass)
#   narrow+changed  the two-pass total
#   diff        one pass: every counter column of the entries whose calls differ from the
#               (key, calls) arrays the client sends (its baseline), joined on the server
#   texts       pg_stat_statements(true) for CHANGED never-seen queryids (what a new statement costs)
#   full+texts  today's cycle when new statements appear: the snapshot, then their texts
#   combined    one pg_stat_statements(true) pass: every counter, and the text of unknown queryids
#               only (the client sends the queryids whose text it has)
#   sampling    the sampler's pg_stat_activity query (x10 per 10 s cycle at 1 s sampling)
#   python      the Bitville Python agent's statements query (top 100 by total time, with texts)
# and the per-cycle totals at 10 s cycles: texts every cycle (before) and once per 60 s (now).
#
#   bench/statements_cost.sh [REPS]   (default 20; SIZES="5000 20000"; CHANGED=200 = 20 new/s x 10 s)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-20}
SIZES=${SIZES:-"5000 20000"}
CHANGED=${CHANGED:-200}
. bench/pg-cluster.sh

for N in $SIZES; do
  WORK=$(mktemp -d /tmp/pga-stmtcost.XXXXXX)
  chmod 755 "$WORK"
  trap 'pg_stop' EXIT
  PGB_PSS_MAX=$((N + N / 4 + 1000)) pg_start "$WORK"
  pg_workload "$N" 10
  pg_psql -c "CREATE ROLE bench_agent LOGIN; GRANT pg_read_all_stats TO bench_agent" >/dev/null
  VERSION=$(pg_psql -At -c "SHOW server_version_num")
  python3 - "$N" "$REPS" "$CHANGED" "$VERSION" <<'PY'
import os, re, subprocess, sys
n, reps, changed, version = (int(a) for a in sys.argv[1:])
psql = [os.environ["PGB_CLIENT_BIN"] + "/psql", "-X", "-q", "-h", os.environ["PGB_SOCK"],
        "-p", os.environ["PGB_PORT"], "-d", "postgres"]

def run(sql, user="postgres"):
    return subprocess.run(psql + ["-U", user, "-At"], input=sql, capture_output=True,
                          text=True, check=True).stdout

ext = run("SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'").strip()
cols = [c for c in run(
    "SELECT attname FROM pg_attribute WHERE attrelid = 'pg_stat_statements'::regclass "
    "AND attnum > 0 AND atttypid IN ('int8'::regtype, 'float8'::regtype) "
    "AND attname NOT IN ('queryid', 'min_exec_time', 'max_exec_time', 'mean_exec_time', "
    "'stddev_exec_time', 'min_plan_time', 'max_plan_time', 'mean_plan_time', 'stddev_plan_time') "
    "ORDER BY attnum").split()]
counters = ", ".join(f"{c}::float8" for c in cols)
s_counters = ", ".join(f"s.{c}::float8" for c in cols)
raw = ", ".join(c if c != "wal_bytes" else "wal_bytes::float8" for c in cols)
toplevel = "toplevel" if "toplevel" in run("SELECT attname FROM pg_attribute WHERE attrelid = 'pg_stat_statements'::regclass") else "NULL::bool"
ident = f"userid, dbid, {toplevel} AS toplevel, queryid"
total = "total_exec_time, total_plan_time" if "total_exec_time" in cols else "total_time"
keys = run(f"SELECT queryid FROM pg_stat_statements(false) WHERE queryid IS NOT NULL ORDER BY random() LIMIT {changed}").split()
ids = "{" + ",".join(keys) + "}"
known = "{" + ",".join(k for k in run("SELECT DISTINCT queryid FROM pg_stat_statements(false) WHERE queryid IS NOT NULL").split() if k not in set(keys)) + "}"
base = run(f"SELECT userid, dbid, {toplevel}, queryid, calls FROM pg_stat_statements(false) WHERE queryid IS NOT NULL").split()
rows = [r.split("|") for r in base]
# The baseline as of the last cycle: CHANGED entries have other calls than now.
chosen = set(keys)
arr = lambda i, f=lambda r, v: v: "{" + ",".join(f(r, r[i]) or "NULL" for r in rows) + "}"
calls = arr(4, lambda r, v: str(int(v) - 1) if r[3] in chosen else v)
tl = arr(2, lambda r, v: {"t": "true", "f": "false"}.get(v, "NULL"))
sampling = ("SELECT pid, state, wait_event_type, wait_event, backend_type, datname::text AS datname, "
            "usename::text AS usename, application_name, NULL::bigint AS query_id, left(query, 1024) AS query, "
            "query_start, count(*) OVER () AS total, "
            "count(*) FILTER (WHERE state = 'active') OVER () AS total_active "
            "FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid() "
            "AND application_name IS DISTINCT FROM 'bitville-postgres-agent' LIMIT 1000")
alts = {
    "full": (f"SELECT /* bench full */ {ident}, {counters} FROM pg_stat_statements(false)", ""),
    "full_nocast": (f"SELECT /* bench full_nocast */ {ident}, {raw} FROM pg_stat_statements(false)", ""),
    "narrow": (f"SELECT /* bench narrow */ {ident}, calls, {total} FROM pg_stat_statements(false)", ""),
    "changed": ("PREPARE changed(int8[]) AS SELECT /* bench changed */ "
                f"{ident}, {counters} FROM pg_stat_statements(false) WHERE queryid = ANY($1)",
                f"EXECUTE changed('{ids}')"),
    # NOT IN over a subquery is a hashed SubPlan: one hash of the client's keys, one probe per entry
    # (a join on unnest() is planned as a nested loop: unnest is estimated at 100 rows).
    "diff": ("PREPARE diff(oid[], oid[], bool[], int8[], int8[]) AS SELECT /* bench diff */ "
             f"{ident}, {counters} FROM pg_stat_statements(false) "
             f"WHERE (userid, dbid, coalesce({toplevel}, true), queryid, calls) NOT IN "
             "(SELECT u, d, coalesce(t, true), q, c FROM unnest($1, $2, $3, $4, $5) AS k(u, d, t, q, c))",
             f"EXECUTE diff('{arr(0)}', '{arr(1)}', '{tl}', '{arr(3)}', '{calls}')"),
    # One pass with texts: every entry's counters, and the text only of entries whose queryid the
    # client does not know (it sends the ones it does; NOT IN is a hashed SubPlan).
    "combined": ("PREPARE combined(int8[]) AS SELECT /* bench combined */ "
                 f"{ident}, {counters}, CASE WHEN queryid NOT IN (SELECT unnest($1)) THEN left(query, 4097) END AS query "
                 "FROM pg_stat_statements(true)",
                 f"EXECUTE combined('{known}')"),
    "texts": ("PREPARE texts(int8[]) AS SELECT /* bench texts */ DISTINCT ON (queryid) queryid, "
              "left(query, 4097) AS query FROM pg_stat_statements(true) WHERE queryid = ANY($1) ORDER BY queryid",
              f"EXECUTE texts('{ids}')"),
    "sampling": (f"SELECT /* bench sampling */ {sampling[7:]}", ""),
    # The Bitville Python agent's statements query (top 100 by total time, texts included).
    "python": ("SELECT /* bench python */ queryid, query, calls, total_exec_time, mean_exec_time, min_exec_time, "
               "max_exec_time, stddev_exec_time, rows, shared_blks_hit, shared_blks_read, shared_blks_written, "
               "local_blks_hit, local_blks_read, local_blks_written, temp_blks_read, temp_blks_written, "
               "blk_read_time, blk_write_time FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 100"
               if version < 170000 else
               "SELECT /* bench python */ queryid, query, calls, total_exec_time, mean_exec_time, min_exec_time, "
               "max_exec_time, stddev_exec_time, rows, shared_blks_hit, shared_blks_read, shared_blks_written, "
               "local_blks_hit, local_blks_read, local_blks_written, temp_blks_read, temp_blks_written, "
               "shared_blk_read_time, shared_blk_write_time FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 100", ""),
}
def cpu_ns(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])

out = {}
for name, (prep, call) in alts.items():
    p = subprocess.Popen(psql + ["-U", "bench_agent", "-At"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    p.stdin.write("SELECT pg_backend_pid();\n")
    pid = int(p.stdout.readline())
    if call:
        p.stdin.write(prep + ";\n")
    before = cpu_ns(pid)
    body = (call if call else prep) + ";\n"
    p.stdin.write("\\o /dev/null\n\\timing on\n" + body * reps + "\\o\n\\timing off\nSELECT 'done';\n")
    p.stdin.flush()
    text = ""
    while True:
        line = p.stdout.readline()
        if not line or line.strip() == "done":
            break
        text += line
    cpu = (cpu_ns(pid) - before) / 1e6 / reps
    p.stdin.close()
    err = p.stderr.read()
    p.wait()
    if err:
        print(name, err[:300], file=sys.stderr)
    times = [float(t) for t in re.findall(r"Time: ([0-9.]+) ms", text)]
    client = sorted(times)[len(times) // 2] if times else float("nan")
    tag = f"bench {name}"
    row = run(f"SELECT sum(total_exec_time) / sum(calls), sum(calls), sum(rows) / sum(calls) FROM pg_stat_statements "
              f"WHERE query LIKE '%/* {tag} */%' AND userid = 'bench_agent'::regrole").strip().split("|")
    out[name] = (float(row[0]), cpu, client, float(row[2]))
out["narrow+changed"] = tuple(a + b for a, b in zip(out["narrow"], out["changed"]))
out["full+texts"] = tuple(a + b for a, b in zip(out["full"], out["texts"]))
per_cycle = {"sampling": 10}
print(f"\nPostgreSQL {version}, pg_stat_statements {ext}, {n} statements, {changed} changed per cycle, {reps} calls each")
print(f"{'alternative':<16} {'server ms/call':>15} {'backend CPU ms':>15} {'client ms':>10} {'rows':>6} {'server ms/cycle':>16}")
for name in ["full", "full_nocast", "narrow", "changed", "narrow+changed", "diff", "texts", "full+texts", "combined", "sampling", "python"]:
    s, cpu, c, r = out[name]
    k = per_cycle.get(name, 1)
    print(f"{name:<16} {s:>15.2f} {cpu:>15.2f} {c:>10.2f} {r:>6.0f} {s * k:>16.2f}")
# Per 10 s cycle with new statements every cycle (20 a second), sampling at 1 s.
cyc = lambda texts_share: tuple(out["full"][i] + texts_share * out["texts"][i] + 10 * out["sampling"][i] for i in (0, 1))
print("\nper 10 s cycle (server ms, backend CPU ms):")
print("  before (texts every cycle)           %7.2f %7.2f" % cyc(1.0))
print("  now (texts once per 60 s, default)   %7.2f %7.2f" % cyc(1 / 6))
print("  Python agent (its statements query)  %7.2f %7.2f" % (out["python"][0], out["python"][1]))
PY
  pg_stop
  trap - EXIT
done
