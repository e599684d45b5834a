#!/usr/bin/env bash
# Spine benchmark, run in a fresh systemd sandbox (real systemd, runc, podman):
#  1. start latency: `shim start` of one instance until its container process runs, against a
#     bare `runc run -d` of the same bundle (same config.json, same overlay), N runs each,
#     interleaved; medians and the ratio.
#  2. resident memory per running instance besides the container itself: every process in
#     each shim unit's cgroup outside the container's sub-cgroup, against podman's conmon per
#     container (podman run -d of the same image).
# Usage: bench/spine.sh [N]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20}"
bash tests/install-deps.sh
command -v podman >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman conmon >/dev/null; }
cargo build --release --bins --quiet
T="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
SB="bash tests/sandbox/sandbox.sh"
trap '$SB down --name bench >/dev/null 2>&1 || true' EXIT
$SB down --name bench >/dev/null 2>&1 || true
$SB up --name bench >/dev/null
$SB exec --name bench -- env N="$N" T="$T" bash -euo pipefail -c '
SHIM=$T/shim
bash tests/sandbox/build-test-image.sh /var/lib/bench/img rev1 rev1 $T/shim-testapp >/dev/null
mkdir -p /tmp/bcfg
cat > /tmp/bcfg/services.toml <<TOML
[services.bench]
image = "oci:/var/lib/bench/img:{revision}"
[services.bench.processes.web]
count = 1
port = true
TOML
now() { date +%s%N; }
median() { sort -n > /tmp/m; sed -n "$(( ($(wc -l < /tmp/m) + 1) / 2 ))p" /tmp/m; }
# Warm up: unpack the image into the cache, start once.
$SHIM --config /tmp/bcfg start --id bench --revision rev1 >/dev/null
DIR=$(ls -d /run/shim/instances/bench/*)
ROOTFS=$(systemctl show -p ExecStartPre --value shim-bench-web-rev1-1.service | grep -o "\-\-lower [^ ;]*" | cut -d" " -f2)
mkdir -p /tmp/rbundle
jq ".linux.cgroupsPath = \"/bench.slice/runc-bench\" | .root.path = \"/tmp/rbundle/rootfs\"" $DIR/config.json > /tmp/rbundle/config.json
$SHIM --config /tmp/bcfg stop --id bench >/dev/null
: > /tmp/shim.ns; : > /tmp/runc.ns
for i in $(seq $N); do
  t0=$(now); $SHIM --config /tmp/bcfg start --id bench --revision rev1 >/dev/null; t1=$(now)
  pid=$(systemctl show -p MainPID --value shim-bench-web-rev1-1.service)
  [ "$pid" -gt 0 ] && [ -d /proc/$pid ] || { echo "container not running after shim start"; exit 1; }
  echo $((t1-t0)) >> /tmp/shim.ns
  $SHIM --config /tmp/bcfg stop --id bench >/dev/null
  $SHIM instance prepare --lower "$ROOTFS" /tmp/rbundle
  t0=$(now); runc run -d --pid-file /tmp/rbundle/pid --bundle /tmp/rbundle runc-bench >/dev/null 2>&1; t1=$(now)
  [ -d /proc/$(cat /tmp/rbundle/pid) ] || { echo "runc container not running"; exit 1; }
  echo $((t1-t0)) >> /tmp/runc.ns
  runc delete -f runc-bench; $SHIM instance cleanup --runtime $(command -v runc) /tmp/rbundle
done

s=$(median < /tmp/shim.ns); r=$(median < /tmp/runc.ns)
printf "start latency (median of %d): shim start %.1f ms, bare runc run -d %.1f ms, ratio shim/runc %.2f\n" \
  $N $(echo "$s/1000000" | bc -l) $(echo "$r/1000000" | bc -l) $(echo "$s/$r" | bc -l)

# Memory: 4 instances under shim; every process of each unit outside its container cgroup.
sed -i "s/count = 1/count = 4/" /tmp/bcfg/services.toml
$SHIM --config /tmp/bcfg start --id bench --revision rev1 >/dev/null
extra_kb=0; extra_n=0
for u in $(systemctl list-units --plain --no-legend "shim-bench-*" | cut -d" " -f1); do
  cg=/sys/fs/cgroup/shim.slice/$u
  for p in $(cat $cg/cgroup.procs); do
    extra_n=$((extra_n+1)); extra_kb=$((extra_kb + $(ps -o rss= -p $p || echo 0)))
  done
done
cont_kb=0
for u in $(systemctl list-units --plain --no-legend "shim-bench-*" | cut -d" " -f1); do
  for p in $(cat /sys/fs/cgroup/shim.slice/$u/container/cgroup.procs); do cont_kb=$((cont_kb + $(ps -o rss= -p $p))); done
done
$SHIM --config /tmp/bcfg stop --id bench >/dev/null

# podman: same image, 4 containers, host network; conmon is its per-container monitor.
mkdir -p /etc/containers
printf "[containers]\npids_limit = 0\n[engine]\nruntime = \"runc\"\n" > /etc/containers/containers.conf
# Storage on the sandbox tmpfs: overlayfs cannot stack on the sandbox root (itself overlayfs).
P="podman --root /tmp/podman-root --storage-driver overlay"
$P pull -q oci:/var/lib/bench/img:rev1 >/dev/null
IMG=$($P images -q | head -1)
for i in 1 2 3 4; do $P run -d --network host -e PORT=$((22000+i)) --name pb$i $IMG >/dev/null; done
sleep 1
conmon_kb=0; conmon_n=0
for p in $(pgrep -x conmon); do conmon_n=$((conmon_n+1)); conmon_kb=$((conmon_kb + $(ps -o rss= -p $p))); done
$P rm -f -t 0 pb1 pb2 pb3 pb4 >/dev/null
printf "resident memory per instance besides the container (4 instances): shim %d processes, %d KiB; podman conmon %d processes, %d KiB (%.0f KiB each); container itself %d KiB each\n" \
  $extra_n $extra_kb $conmon_n $conmon_kb $(echo "$conmon_kb/4" | bc -l) $((cont_kb/4))
'
