#!/usr/bin/env bash
# Builds the integration test binary, boots a fresh systemd sandbox, runs the tests inside it
# (real systemd as PID 1, D-Bus, journald, runc, crun), and always tears the sandbox down.
# Extra arguments go to the test binary (e.g. a test name filter). Then, unless a filter
# excludes it (run with no filter, or one starting with "supervise" or "reboot"), the reboot
# scenario, which reboots a sandbox of its own and so runs from here (tests/reboot-test.sh);
# the Debian package (no filter or "deb": tests/deb-test.sh) and the fleet (no filter or
# "fleet": tests/fleet-test.sh, four sandboxes on a bridge, Ansible over SSH).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="${SHIM_SANDBOX_NAME:-it-$$}"
cargo build --locked --bins
BIN=$(cargo test --locked --test integration --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.reason=="compiler-artifact" and .target.name=="integration" and .executable!=null) | .executable' | tail -1)
[ -x "$BIN" ] || { echo "integration test binary not built"; exit 1; }
trap 'bash tests/sandbox/sandbox.sh down --name "$NAME" >/dev/null 2>&1 || true' EXIT
bash tests/sandbox/sandbox.sh up --name "$NAME"
bash tests/sandbox/sandbox.sh exec --name "$NAME" -- "$BIN" --test-threads=1 "$@"
bash tests/sandbox/sandbox.sh down --name "$NAME" >/dev/null 2>&1 || true
reboot=$(( $# == 0 ))
for a in "$@"; do
  case "$a" in supervise* | reboot*) reboot=1 ;; esac
done
if (( reboot )); then
  bash tests/reboot-test.sh
fi
# The Debian package (tests/deb-test.sh: builds it with packaging/build-deb.sh, installs it in
# a fresh sandbox of its own, deploys the packaged example): with no filter, or "deb".
deb=$(( $# == 0 ))
for a in "$@"; do
  case "$a" in deb*) deb=1 ;; esac
done
if (( deb )); then
  SHIM_DEB_SANDBOX_NAME="deb-$$" bash tests/deb-test.sh
fi
# The fleet (tests/fleet-test.sh: three sandbox hosts and a front balancer on a bridge, rolling
# deploys through the Ansible collection over SSH): with no filter, or "fleet".
fleet=$(( $# == 0 ))
for a in "$@"; do
  case "$a" in fleet*) fleet=1 ;; esac
done
if (( fleet )); then
  SHIM_FLEET_ID="$$" bash tests/fleet-test.sh
fi
