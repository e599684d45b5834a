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
# The fleet test (tests/fleet-test.sh): Ansible as the controller, ansible-lint on the
# collection, sshd in each sandbox host (its systemd starts ssh.service; on a host without
# systemd as PID 1 nothing starts it), ssh-keygen/ssh-keyscan.
PKGS+=(ansible-core ansible-lint openssh-server openssh-client)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No service starts on the host from these packages (sshd, nginx, docker-registry would,
  # through invoke-rc.d, where systemd is not PID 1): only the sandboxes' systemd runs them.
  # A policy-rc.d of our own for the time of the install, unless the machine has one.
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi
# nginx-light's postinst starts nginx where it can; the host needs none running.
command -v cargo >/dev/null || { echo "cargo is required (the rust toolchain)"; exit 1; }
