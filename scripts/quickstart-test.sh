#!/usr/bin/env bash
# Runs README.md's Quick Start verbatim, as root, on this host, against a fresh Debian-style
# PostgreSQL cluster that lives in a private mount namespace: /var/lib/postgresql, /run/postgresql,
# /var/log/postgresql, /etc/bitville, /usr/local/bin and /var/lib/bitville-postgres-agent are tmpfs
# mounts only this script sees, the server listens on no TCP port (its socket is the namespace's
# /var/run/postgresql/.s.PGSQL.5432), and `systemctl restart postgresql` is emulated with pg_ctl.
# The system user postgres-agent it creates is removed at the end if it did not exist before.
#
#   bash scripts/quickstart-test.sh [RUN_SECONDS]     (default 70: the first minute of `run`)
#
# Prints the output of `check` and of the first minute of `run` (on a pseudo-terminal, so the table
# view), and fails if any command of the Quick Start fails or `check` reports a FAIL.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then echo "run as root" >&2; exit 2; fi
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-70}
had_user=$(getent passwd postgres-agent >/dev/null && echo yes || echo no)
block=$(mktemp)
inner=$(mktemp)
trap 'rm -f "$block" "$inner"; [ "$had_user" = no ] && userdel postgres-agent 2>/dev/null; rmdir /etc/bitville /var/lib/bitville-postgres-agent 2>/dev/null || true' EXIT

# The first ```sh block after "## Quick Start".
awk '/^## Quick Start/{q=1} q&&/^```sh$/{b=1;next} b&&/^```$/{exit} b{print}' "$repo/README.md" >"$block"
grep -q 'postgres-agent check' "$block" || { echo "no Quick Start block in README.md" >&2; exit 1; }

# Mount points for the private copies (empty directories; removed at the end if this made them).
mkdir -p /etc/bitville /var/lib/bitville-postgres-agent

cat >"$inner" <<'NS'
set -euo pipefail
repo=$1 block=$2 seconds=$3
for d in /var/lib/postgresql /run/postgresql /var/log/postgresql /etc/bitville /usr/local/bin /var/lib/bitville-postgres-agent; do
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
major=$(basename "$(dirname "$bin")")
[ "$major" = 15 ] || { echo "the Quick Start names PostgreSQL 15; found $major" >&2; exit 1; }
# What Debian's postgresql package sets up.
chown postgres:postgres /var/lib/postgresql /run/postgresql && chmod 2775 /run/postgresql
chown root:postgres /var/log/postgresql && chmod 1775 /var/log/postgresql
log=/var/log/postgresql/postgresql-15-main.log
install -m 0640 -o postgres -g adm /dev/null "$log"
data=/var/lib/postgresql/15/main
runuser -u postgres -- mkdir -p "$data"
runuser -u postgres -- "$bin/initdb" -D "$data" --auth-local=peer --auth-host=scram-sha-256 --no-sync >/dev/null
cat >>"$data/postgresql.conf" <<CONF
port = 5432
listen_addresses = ''
unix_socket_directories = '/var/run/postgresql'
cluster_name = '15/main'
log_line_prefix = '%m [%p] %q%u@%d '
CONF
pgctl() { runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$log" -w "$@" >/dev/null; }
pgctl start
trap 'pgctl -m fast stop || true' EXIT
systemctl() {
  [ "$*" = "restart postgresql" ] || { echo "systemctl $* is not emulated" >&2; return 1; }
  pgctl -m fast restart
}
cd "$repo"
echo "== Quick Start, verbatim from README.md"
while IFS= read -r line <&3; do
  case "$line" in
    ''|'#'*) continue ;;
    *'postgres-agent run'*)
      echo "\$ $line    (for $seconds s, on a pseudo-terminal)"
      set +e
      timeout -s INT "$seconds" script -qefc "$line" /dev/null
      rc=$?
      set -e
      # 124: stopped by the timeout (SIGINT), the expected end.
      [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" = 130 ] || { echo "run exited $rc" >&2; exit 1; } ;;
    *'postgres-agent check'*)
      echo "\$ $line"
      eval "$line" | tee /tmp/quickstart-check.$$
      ! grep -q '^FAIL' /tmp/quickstart-check.$$ || { rm -f /tmp/quickstart-check.$$; echo "check failed" >&2; exit 1; }
      rm -f /tmp/quickstart-check.$$ ;;
    *)
      echo "\$ $line"
      eval "$line" ;;
  esac
done 3<"$block"
echo "== Quick Start: every step worked"
NS
unshare --mount --propagation private bash "$inner" "$repo" "$block" "$seconds" </dev/null
