#!/usr/bin/env bash
# The agent's two ways to read pg_stat_statements, measured as the agent reads them (binary
# results, binary array parameters; bench/statements_cost.sh uses psql's text format, which
# inflates the cost of sending many rows): on one throwaway cluster (bench/pg-cluster.sh) with the
# side-by-side workload (about 5,000 statements, 10 pgbench sessions, 20 new statements a second),
# every CYCLE seconds each variant reads once, on a session and role of its own:
#   full     every entry, every counter column (the agent's first read, and its read before issue 22
#            was finished)
#   changed  the entries whose calls or total time differ from the variant's own baseline, and the
#            keys of the baseline's entries gone (a full join with the baseline's arrays: the agent's
#            read with a baseline)
#   hashed   the same with enable_mergejoin = off (the planner's choice otherwise is a merge join,
#            which sorts both sides)
#   narrow   the same with the arrays behind sub-selects, so the planner does not see their length:
#            it then hashes the baseline's narrow side instead of sorting or hashing the wide entries
#   fingerprints  the entries whose fingerprint (a server-side hash of key, calls and total time) is
#            not among the baseline's, and the baseline's fingerprints no entry has: one int8 array, a
#            hash full join straight from the function (the agent's read since issue 22 was finished)
#   floor    count(*) of pg_stat_statements(false): what building every entry costs, whatever is sent
#   python   the Bitville Python agent's statements query (top 100 by total time, with texts)
# Prints per variant: server ms per read (the statement's total_exec_time / calls in
# pg_stat_statements), rows per read, and the client's CPU ms per read (psycopg, decoding).
#
#   bench/statements_binary.sh [CYCLES]   (default 20; CYCLE=5 seconds; N=5000 statements)
# Needs psycopg 3 (PEER_VENV, default .venv-peer, as bench/side_by_side.sh creates it).
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES=${1:-20}
CYCLE=${CYCLE:-5}
N=${N:-5000}
PEER_VENV=${PEER_VENV:-$PWD/.venv-peer}
. bench/pg-cluster.sh

WORK=$(mktemp -d /tmp/pga-stmtbin.XXXXXX)
chmod 755 "$WORK"
NEWS=
trap '[ -n "$NEWS" ] && kill "$NEWS" 2>/dev/null; pg_stop' EXIT
PGB_PSS_MAX=$((N + N / 10)) pg_start "$WORK"
pg_workload "$N" 10
pg_psql >/dev/null <<'SQL'
CREATE ROLE bench_full LOGIN; GRANT pg_read_all_stats TO bench_full;
CREATE ROLE bench_changed LOGIN; GRANT pg_read_all_stats TO bench_changed;
CREATE ROLE bench_hashed LOGIN; GRANT pg_read_all_stats TO bench_hashed;
CREATE ROLE bench_narrow LOGIN; GRANT pg_read_all_stats TO bench_narrow;
CREATE ROLE bench_fingerprints LOGIN; GRANT pg_read_all_stats TO bench_fingerprints;
CREATE ROLE bench_floor LOGIN; GRANT pg_read_all_stats TO bench_floor;
CREATE ROLE bench_python LOGIN; GRANT pg_read_all_stats TO bench_python;
SQL
# 20 new distinct statements a second, as in bench/side_by_side.sh.
"$PEER_VENV/bin/python" - "$PGB_CLIENT_BIN/psql" -X -q -h "$PGB_SOCK" -p "$PGB_PORT" -U postgres -d postgres -o /dev/null <<'PY' &
import subprocess, sys, time
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, text=True)
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
NEWS=$!

"$PEER_VENV/bin/python" - "$CYCLES" "$CYCLE" <<'PY'
import os, sys, time
import psycopg
cycles, cycle = int(sys.argv[1]), float(sys.argv[2])
dsn = f"host={os.environ['PGB_SOCK']} port={os.environ['PGB_PORT']} dbname=postgres"

def conn(role):
    return psycopg.connect(dsn + f" user={role}", autocommit=True)

admin = conn("postgres")
cols = [r[0] for r in admin.execute(
    "SELECT attname FROM pg_attribute WHERE attrelid = 'pg_stat_statements'::regclass AND attnum > 0 "
    "AND atttypid IN ('int8'::regtype, 'float8'::regtype, 'numeric'::regtype) AND attname NOT IN "
    "('queryid', 'min_exec_time', 'max_exec_time', 'mean_exec_time', 'stddev_exec_time', "
    "'min_plan_time', 'max_plan_time', 'mean_plan_time', 'stddev_plan_time') ORDER BY attnum")]
select = ", ".join(f"{c}::float8" if c == "wal_bytes" else c for c in cols)
entries = f"SELECT userid, dbid, toplevel, queryid, {select} FROM pg_stat_statements(false) LIMIT 100000"
FULL = f"SELECT /* bench full */ * FROM ({entries}) s"
CHANGED = (f"SELECT /* bench changed */ s.*, b.q, b.u, b.d, b.t FROM ({entries}) s FULL JOIN "
           "unnest(%s::int8[], %s::oid[], %s::oid[], %s::bool[], %s::int8[], %s::float8[]) AS b(q, u, d, t, c, e) "
           "ON s.queryid = b.q AND s.userid = b.u AND s.dbid = b.d AND coalesce(s.toplevel, true) = b.t "
           "WHERE s.queryid IS NULL OR b.q IS NULL OR s.calls <> b.c OR s.total_exec_time <> b.e")
NARROW = (f"SELECT /* bench narrow */ s.*, b.q, b.u, b.d, b.t FROM ({entries}) s FULL JOIN "
          "unnest((SELECT %s::int8[]), (SELECT %s::oid[]), (SELECT %s::oid[]), (SELECT %s::bool[]), "
          "(SELECT %s::int8[]), (SELECT %s::float8[])) AS b(q, u, d, t, c, e) "
          "ON s.queryid = b.q AND s.userid = b.u AND s.dbid = b.d AND coalesce(s.toplevel, true) = b.t "
          "WHERE s.queryid IS NULL OR b.q IS NULL OR s.calls <> b.c OR s.total_exec_time <> b.e")
FPX = ("hashfloat8extended(total_exec_time, hashint8extended(calls, hashint8extended(coalesce(queryid, 0), "
       "hashoidextended(dbid, hashoidextended(userid, CASE WHEN toplevel IS FALSE THEN 1 ELSE 0 END)))))")
FPSEL = f"SELECT userid, dbid, toplevel, queryid, {select}, {FPX} AS fp FROM pg_stat_statements(false) LIMIT 100000"
FPFULL = f"SELECT /* bench fingerprints */ * FROM ({FPSEL}) s"
FINGERPRINTS = (f"SELECT /* bench fingerprints */ userid, dbid, toplevel, queryid, {select}, {FPX} AS fp, "
                "b.fp AS gone_fp FROM pg_stat_statements(false) s "
                f"FULL JOIN unnest((SELECT %s::int8[])) AS b(fp) ON {FPX} = b.fp "
                "WHERE s.userid IS NULL OR b.fp IS NULL")
FLOOR = "SELECT /* bench floor */ count(*) FROM pg_stat_statements(false)"
PYTHON = ("SELECT /* bench python */ queryid, query, calls, total_exec_time, mean_exec_time, min_exec_time, "
          "max_exec_time, stddev_exec_time, rows, shared_blks_hit, shared_blks_read, shared_blks_written, "
          "local_blks_hit, local_blks_read, local_blks_written, temp_blks_read, temp_blks_written, "
          "blk_read_time, blk_write_time FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 100")
ci, ti = 4 + cols.index("calls"), 4 + cols.index("total_exec_time")

class Variant:
    def __init__(self, role, sql, setup=None):
        self.c = conn(role)
        if setup:
            self.c.execute(setup)
        self.sql, self.base, self.cpu, self.rows, self.n = sql, None, 0.0, 0, 0

    def read(self):
        t = time.process_time()
        cur = self.c.cursor(binary=True)
        if self.sql in (FLOOR, PYTHON):
            rows, base = cur.execute(self.sql).fetchall(), {}
        elif self.sql is FINGERPRINTS:
            if self.base is None:
                rows = [r + (None,) for r in cur.execute(FPFULL).fetchall()]
                base = {}
            else:
                rows = cur.execute(self.sql, [[r[-1] for r in self.base.values()]]).fetchall()
                base = self.base
            gone = {r[-1] for r in rows if r[0] is None}
            for r in rows:
                if r[0] is not None:
                    base[(r[3], r[0], r[1], r[2])] = r[:-1]
            for k in [k for k, r in base.items() if r[-1] in gone]:
                del base[k]
        elif self.sql is FULL or self.base is None:
            rows = cur.execute(FULL).fetchall()
            base = {(r[3], r[0], r[1], r[2]): r for r in rows}
        else:
            b = list(self.base.items())
            rows = cur.execute(self.sql, [[k[0] for k, _ in b], [k[1] for k, _ in b], [k[2] for k, _ in b],
                                          [True if k[3] is None else k[3] for k, _ in b],
                                          [int(r[ci]) for _, r in b], [float(r[ti]) for _, r in b]]).fetchall()
            base = self.base
            for r in rows:
                if r[0] is None:
                    base.pop((r[-4], r[-3], r[-2], r[-1]), None)
                else:
                    base[(r[3], r[0], r[1], r[2])] = r
        if self.base is not None:
            self.cpu += time.process_time() - t
            self.rows += len(rows)
            self.n += 1
        self.base = base

variants = {"full": Variant("bench_full", FULL), "changed": Variant("bench_changed", CHANGED),
            "hashed": Variant("bench_hashed", CHANGED, "SET enable_mergejoin = off"),
            "narrow": Variant("bench_narrow", NARROW),
            "fingerprints": Variant("bench_fingerprints", FINGERPRINTS),
            "floor": Variant("bench_floor", FLOOR), "python": Variant("bench_python", PYTHON)}
for v in variants.values():
    v.read()
admin.execute("SELECT pg_stat_statements_reset(r.oid) FROM pg_roles r WHERE rolname LIKE 'bench\\_%'")
start = time.monotonic()
for i in range(cycles):
    for v in variants.values():
        v.read()
    time.sleep(max(0.0, start + (i + 1) * cycle - time.monotonic()))
server = dict(admin.execute(
    "SELECT r.rolname, sum(s.total_exec_time) / nullif(sum(s.calls), 0) FROM pg_stat_statements s "
    "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname LIKE 'bench\\_%' AND s.query LIKE '%/* bench%' "
    "GROUP BY 1").fetchall())
total = admin.execute("SELECT count(*) FROM pg_stat_statements").fetchone()[0]
version = admin.execute("SHOW server_version").fetchone()[0]
print(f"PostgreSQL {version}, {total} statements, {cycles} reads each, one every {cycle:g} s, "
      f"load {os.getloadavg()[0]:.1f}\n")
print("| read | server ms per read | rows per read | client CPU ms per read |")
print("|---|---|---|---|")
for name, v in variants.items():
    print(f"| {name} | {server.get('bench_' + name, 0):.1f} | {v.rows / max(v.n, 1):.0f} | {1000 * v.cpu / max(v.n, 1):.1f} |")
PY
