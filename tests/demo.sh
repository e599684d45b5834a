#!/usr/bin/env bash
# The demo: boots a real systemd in the sandbox, installs shim there, builds two revisions of
# an example image (the test app, an OCI layout made with umoci), defines a service behind
# nginx in /etc/shim/services.toml, deploys v1, then upgrades it to v2 under keep-alive load
# (wrk through nginx) and prints the requests served and failed; then `shim status`, the
# answers, the journal.
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
bash tests/sandbox/build-test-image.sh /var/lib/images/hello v1 v1 target/debug/shim-testapp >/dev/null
bash tests/sandbox/build-test-image.sh /var/lib/images/hello v2 v2 target/debug/shim-testapp >/dev/null
mkdir -p /etc/shim
cat > /etc/shim/services.toml <<TOML
[shim]
port_range = [20000, 29999]
# The switch of traffic: one nftables transaction, no nginx reload (keep-alive clients lose
# nothing); "reload" rewrites the upstream and reloads nginx.
switch = "nftables"

[services.hello]
image = "oci:/var/lib/images/hello:{revision}"
runtime = "runc"
env = { GREETING = "hi" }

[services.hello.processes.web]
count = 3
health = { path = "/health", interval = "1s", timeout = "1s", start_period = "10s" }
proxy = { upstream = "hello_web", file = "/etc/nginx/shim/hello.conf" }
drain = "2s"
stop_timeout = "10s"

[services.hello.processes.worker]
command = ["/bin/sh", "-c", "trap \"exit 0\" TERM; while true; do echo worker tick; sleep 5 & wait; done"]
count = 1
TOML
systemctl start nginx
echo; echo "\$ shim upgrade --id hello --revision v1      # the first deploy"
shim upgrade --id hello --revision v1
cat > /etc/nginx/sites-enabled/hello <<SITE
include /etc/nginx/shim/hello.conf;
server {
  listen 127.0.0.1:8080;
  location / { proxy_pass http://hello_web; proxy_next_upstream error timeout http_502 http_503; }
}
SITE
nginx -t 2>/dev/null && systemctl reload nginx
for i in $(seq 50); do curl -fsS http://127.0.0.1:8080/ >/dev/null 2>&1 && break; sleep 0.1; done
echo; echo "\$ wrk -t2 -c8 -d8s http://127.0.0.1:8080/ &   # keep-alive clients through nginx"
wrk -t2 -c8 -d8s http://127.0.0.1:8080/ > /tmp/wrk.out 2>&1 &
wrk=$!
sleep 1
echo "\$ shim upgrade --id hello --revision v2      # meanwhile"
shim upgrade --id hello --revision v2
wait $wrk
requests=$(grep -o "^ *[0-9]* requests in" /tmp/wrk.out | grep -o "[0-9]*" | head -1)
errors=$(grep -o "Socket errors: .*" /tmp/wrk.out || echo "Socket errors: none")
non2xx=$(grep -o "Non-2xx or 3xx responses: [0-9]*" /tmp/wrk.out | grep -o "[0-9]*$" || echo 0)
echo "load during the upgrade: $requests requests served; $errors; non-2xx: $non2xx"
echo; echo "\$ curl http://127.0.0.1:8080/"; curl -fsS http://127.0.0.1:8080/
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
