#!/usr/bin/env bash
# One-off command latency, in a fresh systemd sandbox: `shim run -- true` (a transient unit,
# overlay, runc in the foreground, exit status back) against `podman run --rm --entrypoint true IMAGE`
# (what a user would run instead; `--entrypoint`, since shim's CMD replaces the image's
# entrypoint and cmd), same image, same run, interleaved; median of N each.
# Also `shim run -i` piping 10 MB through `wc -c` vs `podman run -i`.
# Usage: bench/run.sh [N]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20}"
bash tests/install-deps.sh
cargo build --release --bins --quiet
T="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
SB="bash tests/sandbox/sandbox.sh"
NAME="${SHIM_SANDBOX_NAME:-benchrun}"
trap '$SB down --name $NAME >/dev/null 2>&1 || true' EXIT
$SB down --name "$NAME" >/dev/null 2>&1 || true
$SB up --name "$NAME" >/dev/null
$SB exec --name "$NAME" -- env N="$N" T="$T" bash -euo pipefail -c '
SHIM=$T/shim
bash tests/sandbox/build-test-image.sh /var/lib/bench/img rev1 rev1 $T/shim-testapp >/dev/null
mkdir -p /tmp/rcfg
cat > /tmp/rcfg/services.toml <<TOML
[services.rb]
image = "oci:/var/lib/bench/img:{revision}"
runtime = "runc"
[services.rb.processes.web]
count = 1
TOML
printf "[containers]\npids_limit = 0\n[engine]\nruntime = \"runc\"\n" > /etc/containers/containers.conf
P="podman --root /tmp/podman-root --storage-driver overlay"
$P pull -q oci:/var/lib/bench/img:rev1 >/dev/null
IMG=$($P images -q | head -1)
now() { date +%s%N; }
median() { sort -n > /tmp/m; sed -n "$(( ($(wc -l < /tmp/m) + 1) / 2 ))p" /tmp/m; }
# Warm both (image unpacked, caches).
$SHIM --config /tmp/rcfg run --id rb --revision rev1 -- true
$P run --rm --network host --entrypoint true $IMG
head -c 10000000 /dev/zero > /tmp/10mb
: > /tmp/s; : > /tmp/p; : > /tmp/si; : > /tmp/pi
for i in $(seq $N); do
  t0=$(now); $SHIM --config /tmp/rcfg run --id rb --revision rev1 -- true; t1=$(now)
  echo $(( (t1-t0)/100000 )) >> /tmp/s
  t0=$(now); $P run --rm --network host --entrypoint true $IMG; t1=$(now)
  echo $(( (t1-t0)/100000 )) >> /tmp/p
done
for i in $(seq 5); do
  t0=$(now); out=$($SHIM --config /tmp/rcfg run --id rb --revision rev1 -i -- wc -c < /tmp/10mb); t1=$(now)
  [ "$(echo $out)" = 10000000 ] || { echo "shim run -i: wrong count: $out"; exit 1; }
  echo $(( (t1-t0)/100000 )) >> /tmp/si
  t0=$(now); out=$($P run --rm -i --network host --entrypoint wc $IMG -c < /tmp/10mb); t1=$(now)
  [ "$(echo $out)" = 10000000 ] || { echo "podman run -i: wrong count: $out"; exit 1; }
  echo $(( (t1-t0)/100000 )) >> /tmp/pi
done
[ -z "$(systemctl list-units --all --no-legend "shimrun-*")" ] || { echo "run units left"; exit 1; }
ms() { awk "{ printf \"%.1f\", \$1 / 10 }"; }
ms_all() { awk "{ printf \"%.1f \", \$1 / 10 }"; }
s=$(median < /tmp/s); p=$(median < /tmp/p); si=$(median < /tmp/si); pi=$(median < /tmp/pi)
echo "one-off \`true\` (median of $N): shim run $(echo $s | ms) ms, podman run --rm $(echo $p | ms) ms, ratio shim/podman $(echo "scale=2; $s/$p" | bc)"
echo "10 MB through stdin (median of 5): shim run -i $(echo $si | ms) ms, podman run -i $(echo $pi | ms) ms, ratio $(echo "scale=2; $si/$pi" | bc)"
echo "all runs, ms: shim $(ms_all < /tmp/s); podman $(ms_all < /tmp/p)"
echo "stdin runs, ms: shim $(ms_all < /tmp/si); podman $(ms_all < /tmp/pi)"
echo "load average: $(cat /proc/loadavg)"
'
