#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."

have_initdb() {
  [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ] && return 0
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if ! have_initdb || ! compgen -G '/usr/share/postgresql/*/extension/pg_stat_statements.control' >/dev/null; then
  echo "== installing PostgreSQL (initdb or contrib missing)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi

if ! command -v openssl >/dev/null 2>&1; then
  echo "== installing openssl (TLS tests generate certificates with it)"
  apt-get install -y -qq openssl >/dev/null
fi

echo "== cargo test"
cargo test --locked --no-fail-fast
