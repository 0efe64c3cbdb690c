#!/usr/bin/env bash
# Builds the Debian package with `cargo deb`, installs it on this machine with dpkg, checks what it
# installed, and purges it. Run as root on Debian or Ubuntu; needs `cargo install cargo-deb`.
#
#   bash scripts/deb-test.sh [PACKAGE.deb]     (default: build one with `cargo deb`)
#
# The install happens in a private mount namespace with /etc/bitville on a tmpfs, so no other process
# on the machine sees the installed configuration while the test runs (dpkg's own database, /usr/bin
# and /lib/systemd are changed for real, and restored by the purge). The system user postgres-agent is
# removed at the end if the package created it.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then echo "run as root" >&2; exit 2; fi
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [ $# -ge 1 ]; then deb=$1; else
  cargo deb >/dev/null
  deb=$(ls -t target/debian/postgres-agent_*.deb | head -1)
fi
deb=$(realpath "$deb")
echo "package: $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Recommends\):/  \1:/p'
had_user=$(getent passwd postgres-agent >/dev/null && echo yes || echo no)
made_dir=no
[ -d /etc/bitville ] || { mkdir /etc/bitville; made_dir=yes; }
inner=$(mktemp)
cleanup() {
  rm -f "$inner"
  dpkg -s postgres-agent >/dev/null 2>&1 && dpkg --purge postgres-agent >/dev/null || true
  [ "$had_user" = no ] && { userdel postgres-agent 2>/dev/null || true; groupdel postgres-agent 2>/dev/null || true; }
  [ "$made_dir" = yes ] && rmdir /etc/bitville 2>/dev/null || true
}
trap cleanup EXIT

cat >"$inner" <<'NS'
set -euo pipefail
deb=$1
mount -t tmpfs -o mode=0755 tmpfs /etc/bitville
fail() { echo "FAIL: $*" >&2; exit 1; }
dpkg -i "$deb" >/dev/null
echo "installed"
# The user: a system account in group postgres, no login shell.
id postgres-agent
uid=$(id -u postgres-agent); [ "$uid" -lt 1000 ] || fail "uid $uid is not a system uid"
# The groups the README's Quick Start gives the user: postgres (socket directory) and adm (Debian's log).
for group in postgres adm; do
  if getent group "$group" >/dev/null; then
    id -nG postgres-agent | tr ' ' '\n' | grep -qx "$group" || fail "postgres-agent is not in group $group"
  fi
done
# Every relative link of the installed README resolves to an installed file.
doc=/usr/share/doc/postgres-agent
links=$(grep -o '](docs/[^)#]*' "$doc/README.md" | sed 's/^](//' | sort -u)
[ -n "$links" ] || fail "no docs/ links found in the installed README.md"
for l in $links; do
  [ -e "$doc/$l" ] || fail "README.md links $l, which the package does not ship"
done
echo "README links: $(echo "$links" | wc -l) docs, all shipped"
[ "$(getent passwd postgres-agent | cut -d: -f7)" = /usr/sbin/nologin ] || fail "login shell"
# The files, their owners and modes.
stat -c '%A %U:%G %n' /usr/bin/postgres-agent /etc/bitville /etc/bitville/postgres-agent.ini \
  /var/lib/bitville-postgres-agent /lib/systemd/system/postgres-agent.service \
  /lib/systemd/system/postgres-agent.service.d/debian.conf
[ "$(stat -c '%a %U:%G' /etc/bitville/postgres-agent.ini)" = "640 root:postgres-agent" ] || fail "config owner/mode"
[ "$(stat -c '%a %U' /var/lib/bitville-postgres-agent)" = "700 postgres-agent" ] || fail "state dir owner/mode"
/usr/bin/postgres-agent --version
# The user can read its config: the unit's ExecStartPre, run as that user.
runuser -u postgres-agent -- /usr/bin/postgres-agent check --config-only /etc/bitville/postgres-agent.ini
# The installed unit with its drop-in, as systemd would load it.
out=$(systemd-analyze verify /lib/systemd/system/postgres-agent.service 2>&1 || true)
echo "$out" | grep postgres-agent && fail "systemd-analyze verify reports problems" || true
systemd-analyze verify /lib/systemd/system/postgres-agent.service 2>/dev/null || true
grep -q '^ExecStart=/usr/bin/postgres-agent run' /lib/systemd/system/postgres-agent.service.d/debian.conf || fail "drop-in"
systemctl is-enabled postgres-agent 2>/dev/null | grep -qx enabled && fail "the unit must not be enabled before the config is edited" || true
echo "verified: user, files, config readable by the user, systemd-analyze verify clean"
dpkg --purge postgres-agent >/dev/null
[ ! -e /usr/bin/postgres-agent ] || fail "binary left after purge"
[ ! -e /var/lib/bitville-postgres-agent ] || fail "state dir left after purge"
[ ! -e /etc/bitville/postgres-agent.ini ] || fail "config left after purge"
[ ! -e /lib/systemd/system/postgres-agent.service ] || fail "unit left after purge"
echo "purged: nothing left but the system user (Debian keeps system users)"
NS
unshare --mount --propagation private bash "$inner" "$deb" </dev/null
echo "deb test: ok"
