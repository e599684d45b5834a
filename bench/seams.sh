#!/usr/bin/env bash
# Before/after benchmark of a refactor, same run, same sandbox: two shim binaries (OLD, a
# build of an earlier commit, and NEW, this tree's release build) run the operations a change
# of architecture touches, interleaved, on the same service:
#   - `shim start` of 2 instances until both containers run, and `shim stop` (the start path,
#     unit observation, the proxy switch's close);
#   - `shim status --id` with the instances running (one listing and the instances' reads);
#   - one full `shim probe` run (SHIM_PROBE_FAST=0: D-Bus listing, 2 HTTP checks, the
#     upstream pointer comparison) and one fast-path run;
#   - `shim upgrade` to the other revision (fetch, start beside, health gate, nftables
#     switch, drain, stop of the old), alternating rev1/rev2.
# Each line prints both medians and the ratio NEW/OLD (under 1: the new build is faster).
# The alternative a user would pick does not enter here: the other benches compare shim with
# runc and podman; this one holds shim to its own earlier cost.
# Usage: OLD=/path/to/old/shim bench/seams.sh [N]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-15}"
OLD="${OLD:?set OLD to the earlier shim binary (a path visible inside the sandbox, not /tmp)}"
bash tests/install-deps.sh >/dev/null
cargo build --release --bins --quiet
T="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
SB="bash tests/sandbox/sandbox.sh"
NAME="${SHIM_SANDBOX_NAME:-bench-seams}"
trap '$SB down --name $NAME >/dev/null 2>&1 || true' EXIT
$SB down --name $NAME >/dev/null 2>&1 || true
$SB up --name $NAME >/dev/null
$SB exec --name $NAME -- env N="$N" T="$T" OLD="$OLD" bash -euo pipefail -c '
NEW=$T/shim
bash tests/sandbox/build-test-image.sh /var/lib/bench/img rev1 rev1 $T/shim-testapp >/dev/null
bash tests/sandbox/build-test-image.sh /var/lib/bench/img rev2 rev2 $T/shim-testapp >/dev/null
mkdir -p /tmp/bcfg /etc/nginx/shim
cat > /tmp/bcfg/services.toml <<TOML
[shim]
switch = "nftables"
[services.bench]
image = "oci:/var/lib/bench/img:{revision}"
[services.bench.processes.web]
count = 2
health = { path = "/health", interval = "1s", timeout = "1s" }
proxy = { upstream = "bench_web", file = "/etc/nginx/shim/bench.conf" }
stop_timeout = "2s"
drain = "1s"
TOML
systemctl is-active -q nginx || systemctl start nginx
now() { date +%s%N; }
median() { sort -n > /tmp/m; sed -n "$(( ($(wc -l < /tmp/m) + 1) / 2 ))p" /tmp/m; }
ms() { echo "scale=1; $1/1000000" | bc -l; }
running() { [ "$(systemctl list-units --plain --no-legend --state=running "shim-bench-web-*" | wc -l)" -ge 2 ]; }
# Warm up both: unpack the images, one start and stop each.
for b in $OLD $NEW; do $b --config /tmp/bcfg start --id bench --revision rev1 >/dev/null; $b --config /tmp/bcfg stop --id bench >/dev/null; done
for k in old new; do : > /tmp/start.$k; : > /tmp/stop.$k; : > /tmp/status.$k; : > /tmp/probe.$k; : > /tmp/fast.$k; : > /tmp/upgrade.$k; done
rev=rev1
for i in $(seq $N); do
  for k in old new; do
    b=$OLD; [ $k = new ] && b=$NEW
    t0=$(now); $b --config /tmp/bcfg start --id bench --revision $rev >/dev/null; t1=$(now)
    running || { echo "$k: instances not running after start"; exit 1; }
    echo $((t1-t0)) >> /tmp/start.$k
    t0=$(now); $b --config /tmp/bcfg status --id bench >/dev/null; t1=$(now); echo $((t1-t0)) >> /tmp/status.$k
    t0=$(now); SHIM_PROBE_FAST=0 $b --config /tmp/bcfg probe --id bench >/dev/null; t1=$(now); echo $((t1-t0)) >> /tmp/probe.$k
    $b --config /tmp/bcfg probe --id bench >/dev/null
    t0=$(now); $b --config /tmp/bcfg probe --id bench >/dev/null; t1=$(now); echo $((t1-t0)) >> /tmp/fast.$k
    next=rev2; [ $rev = rev2 ] && next=rev1
    t0=$(now); $b --config /tmp/bcfg upgrade --id bench --revision $next >/dev/null; t1=$(now); echo $((t1-t0)) >> /tmp/upgrade.$k
    rev=$next
    t0=$(now); $b --config /tmp/bcfg stop --id bench >/dev/null; t1=$(now); echo $((t1-t0)) >> /tmp/stop.$k
    [ "$(systemctl list-units --plain --no-legend "shim-bench-web-*" | wc -l)" -eq 0 ] || { echo "$k: units left after stop"; exit 1; }
  done
done
for what in start status probe fast upgrade stop; do
  o=$(median < /tmp/$what.old); n=$(median < /tmp/$what.new)
  printf "%-8s old %8s ms   new %8s ms   new/old %.2f   (median of %d)\n" "$what" "$(ms $o)" "$(ms $n)" "$(echo "$n/$o" | bc -l)" "$N"
done
'
