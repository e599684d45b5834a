#!/usr/bin/env bash
# Upgrade benchmark, in a fresh systemd sandbox with real nginx:
#   overhead = total time of `shim upgrade` (4 web instances, drain 0) minus the new
#   instances' own boot-to-healthy time (the last "healthy after N ms" of the health step),
#   median of N upgrades alternating rev1/rev2; against the same deploy done by hand with
#   podman (4 × podman run -d, curl until healthy, rewrite the upstream, nginx -t, reload,
#   podman rm the old ones), measured the same way, in the same run.
# Usage: bench/upgrade.sh [N]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10}"
bash tests/install-deps.sh
command -v podman >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman conmon >/dev/null; }
cargo build --release --bins --quiet
T="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
SB="bash tests/sandbox/sandbox.sh"
trap '$SB down --name benchup >/dev/null 2>&1 || true' EXIT
$SB down --name benchup >/dev/null 2>&1 || true
$SB up --name benchup >/dev/null
$SB exec --name benchup -- env N="$N" T="$T" bash -euo pipefail -c '
SHIM=$T/shim
for t in rev1 rev2; do bash tests/sandbox/build-test-image.sh /var/lib/bench/img $t $t $T/shim-testapp >/dev/null; done
systemctl start nginx
mkdir -p /tmp/ucfg
cat > /tmp/ucfg/services.toml <<TOML
[services.ub]
image = "oci:/var/lib/bench/img:{revision}"
[services.ub.processes.web]
count = 4
health = { path = "/health", interval = "1s", timeout = "1s", start_period = "10s" }
proxy = { upstream = "ub_web", file = "/etc/nginx/shim/ub.conf" }
drain = "0s"
TOML
$SHIM --config /tmp/ucfg upgrade --id ub --revision rev1 >/dev/null
median() { sort -n > /tmp/m; sed -n "$(( ($(wc -l < /tmp/m) + 1) / 2 ))p" /tmp/m; }
now() { date +%s%N; }
: > /tmp/shim.over; : > /tmp/shim.total; : > /tmp/shim.steps
rev=rev1
for i in $(seq $N); do
  [ $rev = rev1 ] && rev=rev2 || rev=rev1
  t0=$(now); $SHIM --config /tmp/ucfg upgrade --id ub --revision $rev --json > /tmp/up.json; t1=$(now)
  total=$(( (t1-t0)/1000000 ))
  boot=$(grep "\"step\":\"health\"" /tmp/up.json | grep -o "healthy after [0-9]* ms" | grep -o "[0-9]*" | sort -n | tail -1)
  echo $total >> /tmp/shim.total; echo $((total-boot)) >> /tmp/shim.over
  jq -r "select(.step) | \"\(.step) \(.ms)\"" /tmp/up.json >> /tmp/shim.steps
done
$SHIM --config /tmp/ucfg stop --id ub >/dev/null
rm -f /etc/nginx/shim/ub.conf

# The same by hand with podman.
printf "[containers]\npids_limit = 0\n[engine]\nruntime = \"runc\"\n" > /etc/containers/containers.conf
P="podman --root /tmp/podman-root --storage-driver overlay"
$P pull -q oci:/var/lib/bench/img:rev1 >/dev/null; $P tag $($P images -q | head -1) localhost/ub:rev1
$P pull -q oci:/var/lib/bench/img:rev2 >/dev/null; $P tag $($P images -q | head -1) localhost/ub:rev2
deploy() { # $1 rev, $2 port base
  local rev=$1 base=$2 t0 tb t1
  t0=$(now)
  for k in 1 2 3 4; do $P run -d --network host -e PORT=$((base+k)) --name ub-$rev-$k localhost/ub:$rev >/dev/null; done
  tb=$(now)
  for k in 1 2 3 4; do until curl -fs -o /dev/null http://127.0.0.1:$((base+k))/health; do sleep 0.01; done; done
  t1=$(now); BOOT=$(( (t1-tb)/1000000 ))
  { echo "upstream ub_web {"; for k in 1 2 3 4; do echo "  server 127.0.0.1:$((base+k));"; done; echo "}"; } > /etc/nginx/shim/ub.conf.tmp
  mv /etc/nginx/shim/ub.conf.tmp /etc/nginx/shim/ub.conf
  nginx -t 2>/dev/null; systemctl reload nginx
}
: > /tmp/pod.over
deploy rev1 24000; prev=rev1
for i in $(seq $N); do
  [ $prev = rev1 ] && rev=rev2 || rev=rev1
  [ $rev = rev1 ] && base=24000 || base=24100
  t0=$(now); deploy $rev $base; $P rm -f -t 0 ub-$prev-1 ub-$prev-2 ub-$prev-3 ub-$prev-4 >/dev/null; t1=$(now)
  echo $(( (t1-t0)/1000000 - BOOT )) >> /tmp/pod.over
  prev=$rev
done
echo "shim upgrade steps, median ms over $N upgrades (health includes the new instances booting):"
for step in $(awk "{print \$1}" /tmp/shim.steps | awk "!seen[\$0]++"); do
  printf "  %-9s %s\n" "$step" "$(awk -v s=$step "\$1 == s {print \$2}" /tmp/shim.steps | median)"
done
echo "load average: $(cat /proc/loadavg)"
s=$(median < /tmp/shim.over); st=$(median < /tmp/shim.total); p=$(median < /tmp/pod.over)
echo "upgrade of 4 web instances (median of $N): shim total $st ms, overhead $s ms (total minus boot-to-healthy); by hand with podman overhead $p ms; ratio shim/podman $(echo "scale=2; $s/$p" | bc)"
'
