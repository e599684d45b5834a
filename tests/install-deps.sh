#!/usr/bin/env bash
# Installs what shim's tests, demo and benchmarks need on a bare Debian 12 machine:
# systemd/dbus (booted as PID 1 in the sandbox), the OCI runtimes (runc, crun; podman with
# conmon), umoci/skopeo to build test images, nginx, and small tools the tests use.
# Idempotent; quick when all is present.
set -euo pipefail
PKGS=(systemd dbus runc crun umoci skopeo nginx-light nftables busybox-static iproute2 curl jq procps util-linux
  docker-registry apache2-utils podman conmon tmux golang-github-containers-common)
# wrk: keep-alive HTTP load (the demo, bench/keepalive.sh).
PKGS+=(wrk tini)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# nginx-light's postinst starts nginx where it can; the host needs none running.
command -v cargo >/dev/null || { echo "cargo is required (the rust toolchain)"; exit 1; }
