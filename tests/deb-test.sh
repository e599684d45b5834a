#!/usr/bin/env bash
# The Debian package in a fresh systemd sandbox: dpkg -i the .deb, check what it installed
# (shim-reconcile.service enabled, man pages, completions, /var/lib/shim), deploy the example
# service of the packaged /etc/shim/services.toml as shipped (only its image is built here,
# at the path the example names), check the instances answer, reboot the sandbox and check
# shim-reconcile.service brought them back, then remove and purge the package.
# Prints PASS and exits 0, or exits non-zero with what failed. Always tears the sandbox down.
#
# Usage: tests/deb-test.sh [PATH.deb]    (default: build it with packaging/build-deb.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="${SHIM_DEB_SANDBOX_NAME:-deb}"
SB="bash tests/sandbox/sandbox.sh"
TARGET="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"

DEB="${1:-}"
if [[ -z "$DEB" ]]; then
  DEB="$(bash packaging/build-deb.sh | tail -n1)"
fi
DEB="$(readlink -f "$DEB")"
[[ -f "$DEB" ]] || { echo "deb-test.sh: no package at $DEB" >&2; exit 1; }
# The example image is the test app (busybox + shim-testapp) as an OCI layout.
cargo build --locked --bin shim-testapp
TESTAPP="$TARGET/debug/shim-testapp"
# Both must be visible inside the sandbox, where only the repository is bind-mounted.
for f in "$DEB" "$TESTAPP"; do
  [[ "$f" == "$PWD"/* ]] || { echo "deb-test.sh: $f is outside the repository" >&2; exit 1; }
done

$SB down --name "$NAME" >/dev/null 2>&1 || true
trap '$SB down --name "$NAME" >/dev/null 2>&1 || true' EXIT
$SB up --name "$NAME"
in_sb() { $SB exec --name "$NAME" --env "DEB=$DEB" --env "TESTAPP=$TESTAPP" -- bash -euo pipefail -c "$1"; }

# Answers from every instance of hello: prints the ports; fails if one does not answer.
CHECK_ANSWERS='
ports=$(shim status --id hello --json | jq -r ".[] | select(.port != null) | .port")
[ "$(echo "$ports" | wc -w)" = 2 ] || { echo "expected 2 instances with ports, got: $ports"; shim status; exit 1; }
for port in $ports; do
  ok=""
  for i in $(seq 100); do
    if body=$(curl -fsS "http://127.0.0.1:$port/" 2>/dev/null); then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "instance on :$port does not answer"; exit 1; }
  echo "$body" | grep -q "revision=v1" || { echo "unexpected answer on :$port: $body"; exit 1; }
  echo "  :$port answers: $body"
done
'

echo "== install $(basename "$DEB")"
in_sb '
! command -v shim >/dev/null || { echo "shim is already installed in the fresh sandbox: $(command -v shim)"; exit 1; }
dpkg -i "$DEB"
test "$(command -v shim)" = /usr/bin/shim
test "$(systemctl is-enabled shim-reconcile.service)" = enabled
man -w shim
man -w shim-upgrade
zcat "$(man -w shim-upgrade)" | grep -q "revision"
test -s /usr/share/bash-completion/completions/shim
test -s /usr/share/zsh/vendor-completions/_shim
test -s /usr/share/fish/vendor_completions.d/shim.fish
test -d /var/lib/shim
test -f /usr/share/doc/shim/examples/shim-site.conf
grep -qx /etc/shim/services.toml /var/lib/dpkg/info/shim.conffiles
echo "installed: unit enabled, man pages, completions, /var/lib/shim, conffile"
'

echo "== deploy the packaged example (image built at the path it names)"
in_sb '
bash tests/sandbox/build-test-image.sh /var/lib/images/hello v1 v1 "$TESTAPP" >/dev/null
cmp /etc/shim/services.toml /usr/share/doc/shim/examples/services.toml
shim upgrade --id hello --revision v1
shim status
'"$CHECK_ANSWERS"'
shim logs --id hello -n 4
'

echo "== reboot: shim-reconcile.service brings hello back"
$SB reboot --name "$NAME"
in_sb '
# Done when it is active (RemainAfterExit=yes) or has run and exited (without it).
ran() { [ "$(systemctl show -p ExecMainExitTimestampMonotonic --value shim-reconcile.service)" != 0 ]; }
for i in $(seq 300); do
  st=$(systemctl show -p ActiveState --value shim-reconcile.service)
  { [ "$st" = active ] || [ "$st" = failed ] || { [ "$st" = inactive ] && ran; }; } && break
  sleep 0.1
done
res=$(systemctl show -p Result --value shim-reconcile.service)
echo "shim-reconcile.service: $st, result $res"
if [ "$res" != success ] || ! ran; then
  journalctl -u shim-reconcile.service --no-pager | tail -30
  exit 1
fi
'"$CHECK_ANSWERS"'
'

echo "== remove and purge"
in_sb '
shim stop --id hello
dpkg -r shim
! test -e /usr/bin/shim
test -e /etc/shim/services.toml   # a conffile stays until purge
dpkg --purge shim
! test -e /etc/shim/services.toml
! test -e /etc/systemd/system/multi-user.target.wants/shim-reconcile.service
'
echo PASS
