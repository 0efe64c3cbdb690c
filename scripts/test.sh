#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing, then every test stage.
# Every stage runs even when an earlier one failed; the failures are listed at the end and the exit
# status is non-zero if any stage failed.
set -euo pipefail
cd "$(dirname "$0")/.."

updated=no
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "$updated" = no ]; then apt-get update -qq; updated=yes; fi
  echo "== installing $*"
  apt-get install -y -qq "$@" >/dev/null
}

have_initdb() {
  [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ] && return 0
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# PostgreSQL server with contrib (pg_stat_statements, auto_explain) for the test servers.
if ! have_initdb || ! compgen -G '/usr/share/postgresql/*/extension/pg_stat_statements.control' >/dev/null; then
  apt_install postgresql postgresql-contrib
fi
# TLS tests generate certificates with openssl; the unit tests run systemd-analyze.
command -v openssl >/dev/null 2>&1 || apt_install openssl
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd

# The import-structure check is a Python script.
command -v python3 >/dev/null 2>&1 || apt_install python3
# The OTLP tests decode every request with the official definitions (PyPI opentelemetry-proto) in
# a venv of their own (.venv-otlp, gitignored; tests/it/support/otlp.rs makes it too when missing).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_install python3-venv
if ! .venv-otlp/bin/python -c 'import opentelemetry.proto' >/dev/null 2>&1; then
  echo "== installing opentelemetry-proto 1.45.0 into .venv-otlp"
  python3 -m venv .venv-otlp && .venv-otlp/bin/pip install -q opentelemetry-proto==1.45.0
fi
# The version matrix fetches PostgreSQL 13, 14, 16, 17 and 18 from the npm registry.
command -v npm >/dev/null 2>&1 || apt_install nodejs npm

failed=()
# Runs one stage; a failure is recorded, not fatal.
stage() {
  local name="$1"
  shift
  echo "== $name"
  if "$@"; then
    echo "== $name: passed"
  else
    local rc=$?
    echo "== $name: FAILED (exit $rc)"
    failed+=("$name (exit $rc)")
  fi
}

# Dependencies run one way: no cycle between the crate's top-level modules, none between files
# (scripts/layers.py reads the imports from the source text).
stage "import structure (no module or file cycles)" python3 scripts/layers.py .
stage "cargo test (PostgreSQL $(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1) and everything else)" \
  cargo test --workspace --locked --no-fail-fast
stage "collector tests against every other supported major" \
  bash scripts/pg-versions.sh 13 14 16 17 18

if [ ${#failed[@]} -gt 0 ]; then
  echo "== ${#failed[@]} stage(s) failed:"
  printf '   %s\n' "${failed[@]}"
  exit 1
fi
echo "== all stages passed"
