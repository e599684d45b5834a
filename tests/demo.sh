#!/usr/bin/env bash
# The demo: boots a real systemd in the sandbox, installs shim there, builds an example image
# (the test app, an OCI layout made with umoci), defines a service in /etc/shim/services.toml,
# runs `shim start`, then shows `shim status`, answers from every instance, and the journal.
# Usage: tests/demo.sh [--keep]   (--keep leaves the sandbox up: tests/sandbox/sandbox.sh exec --name demo -- bash)
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0; [ "${1:-}" = "--keep" ] && KEEP=1
bash tests/install-deps.sh
cargo build --bins --quiet
SB="bash tests/sandbox/sandbox.sh"
$SB down --name demo >/dev/null 2>&1 || true
[ $KEEP = 1 ] || trap '$SB down --name demo >/dev/null 2>&1 || true' EXIT
$SB up --name demo
$SB exec --name demo -- bash -euo pipefail -c '
install -m 0755 target/debug/shim /usr/local/bin/shim
bash tests/sandbox/build-test-image.sh /var/lib/images/hello 279d9035886d rev-279d9035886d target/debug/shim-testapp >/dev/null
mkdir -p /etc/shim
cat > /etc/shim/services.toml <<TOML
[shim]
port_range = [20000, 29999]

[services.hello]
image = "oci:/var/lib/images/hello:{revision}"
runtime = "runc"
env = { GREETING = "hi" }

[services.hello.processes.web]
count = 3
health = { path = "/health", interval = "5s", timeout = "2s" }
stop_timeout = "10s"

[services.hello.processes.worker]
command = ["/bin/sh", "-c", "while true; do echo worker tick; sleep 5; done"]
count = 1
TOML
echo; echo "\$ shim start --id hello --revision 279d9035886d"
shim start --id hello --revision 279d9035886d
echo; echo "\$ shim status"
shim status
echo
for port in $(shim status --id hello --json | jq -r ".[] | select(.port != null) | .port"); do
  for i in $(seq 50); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "\$ curl http://127.0.0.1:$port/"; curl -fsS "http://127.0.0.1:$port/"
done
echo; echo "\$ journalctl SHIM_SERVICE=hello -n 6"
journalctl --no-pager -o short SHIM_SERVICE=hello -n 6
echo; echo "\$ shim stop --id hello"
shim stop --id hello
'
[ $KEEP = 1 ] && echo "sandbox left running: bash tests/sandbox/sandbox.sh exec --name demo -- bash"
exit 0
