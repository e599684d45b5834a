#!/usr/bin/env bash
# Failed requests while the traffic moves, in a fresh systemd sandbox with real nginx, all in
# one run: N upgrades (4 web instances, alternating rev1/rev2) under wrk load through nginx,
# with keep-alive clients (wrk's default) and with `Connection: close` clients, at 4 and 16
# connections, for each switch (`[shim] switch = "reload"`: nginx reloaded on a new upstream
# file; `"nftables"`: one nftables transaction, no reload); and, as the reference, N plain
# `systemctl reload nginx` under the same load. A failure is any socket error (connect, read,
# write, timeout) or non-2xx answer as wrk counts them.
# Usage: bench/keepalive.sh [N]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10}"
bash tests/install-deps.sh
cargo build --release --bins --quiet
T="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
SB="bash tests/sandbox/sandbox.sh"
trap '$SB down --name benchka >/dev/null 2>&1 || true' EXIT
$SB down --name benchka >/dev/null 2>&1 || true
$SB up --name benchka >/dev/null
$SB exec --name benchka -- env N="$N" T="$T" bash -euo pipefail -c '
SHIM=$T/shim
# nginx opens a connection per proxied request: without reuse of TIME_WAIT ports the later
# measurements of a run starve for ephemeral ports (seen: a second phase served a tenth of
# the first). The sandbox has its own network namespace.
sysctl -qw net.ipv4.tcp_tw_reuse=1
for t in rev1 rev2; do bash tests/sandbox/build-test-image.sh /var/lib/bench/img $t $t $T/shim-testapp >/dev/null; done
systemctl start nginx
mkdir -p /tmp/kcfg
# One service per switch ($1), each with its own upstream: ka_reload, ka_nftables.
config() { # $1 switch
  cat > /tmp/kcfg/services.toml <<TOML
[shim]
switch = "$1"
[services.ka_$1]
image = "oci:/var/lib/bench/img:{revision}"
[services.ka_$1.processes.web]
count = 4
health = { path = "/health", interval = "1s", timeout = "1s", start_period = "10s" }
proxy = { upstream = "ka_$1", file = "/etc/nginx/shim/ka_$1.conf" }
drain = "1s"
TOML
}
site() { # $1 switch
  rm -f /etc/nginx/sites-enabled/ka
  cat > /etc/nginx/sites-enabled/ka <<SITE
include /etc/nginx/shim/ka_$1.conf;
server {
  listen 127.0.0.1:9400;
  access_log off;
  location / { proxy_pass http://ka_$1; proxy_next_upstream error timeout http_502 http_503; }
}
SITE
  nginx -t 2>/dev/null && systemctl reload nginx
  # Until the site answers (the reload is asynchronous).
  for i in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:9400/ && break; sleep 0.1; done
  sleep 1
}
# The sum of the numbers in what matches $1 in wrk'"'"'s output.
sum() { local s=0 n; for n in $(grep -o "$1" /tmp/wrk.out | grep -o "[0-9][0-9]*" || true); do s=$((s + n)); done; echo $s; }
# wrk in the background for the whole of $2 (a command), then its counts: requests failures.
measure() { # $1 connections, $2 keepalive|close, $3... the command
  local c=$1 mode=$2; shift 2
  local hdr=(); [ "$mode" = close ] && hdr=(-H "Connection: close")
  wrk -t2 -c"$c" -d600s "${hdr[@]}" http://127.0.0.1:9400/ > /tmp/wrk.out 2>&1 &
  local w=$!
  sleep 1
  "$@"
  sleep 1
  kill -INT $w 2>/dev/null || { echo "wrk ended early:" >&2; cat /tmp/wrk.out >&2; }
  wait $w || true
  echo "$(sum "[0-9]* requests in") $(( $(sum "Socket errors: .*") + $(sum "Non-2xx or 3xx responses: [0-9]*") ))"
}
upgrades() {
  local rev=rev1
  for i in $(seq $N); do
    [ $rev = rev1 ] && rev=rev2 || rev=rev1
    $SHIM --config /tmp/kcfg upgrade --id ka_$sw --revision $rev >/dev/null
  done
}
reloads() { for i in $(seq $N); do systemctl reload nginx; sleep 1.5; done; }
printf "%-34s %6s %10s %8s\n" "what (N=$N)" conns requests failed
for sw in nftables reload; do
  config $sw
  if ! $SHIM --config /tmp/kcfg upgrade --id ka_$sw --revision rev1 > /tmp/first.out 2>&1; then
    echo "switch = \"$sw\": first deploy failed: $(tail -2 /tmp/first.out)"; continue
  fi
  site $sw
  for c in 4 16; do
    for mode in keepalive close; do
      read -r req fail < <(measure $c $mode upgrades)
      printf "%-34s %6s %10s %8s\n" "upgrades, switch=$sw, $mode" "$c" "$req" "$fail"
    done
  done
  if [ $sw = reload ]; then
    for c in 4 16; do
      read -r req fail < <(measure $c keepalive reloads)
      printf "%-34s %6s %10s %8s\n" "plain nginx reloads, keepalive" "$c" "$req" "$fail"
    done
  fi
  $SHIM --config /tmp/kcfg stop --id ka_$sw >/dev/null
  sleep 60 # the TIME_WAIT sockets of this phase
done
'
