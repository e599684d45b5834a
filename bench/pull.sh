#!/usr/bin/env bash
# Pull benchmark, run in a fresh systemd sandbox: pull + unpack of a multi-layer image of
# >= 50 MB (compressed) from a local registry (Debian's docker-registry on the sandbox's
# loopback), by `shim image pull` against `skopeo copy` + `umoci unpack` of the same image,
# N runs each, interleaved, each from an empty store; medians and the ratio.
# Usage: bench/pull.sh [N]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-5}"
bash tests/install-deps.sh
cargo build --release --bins --quiet
SB="bash tests/sandbox/sandbox.sh"
trap '$SB down --name benchpull >/dev/null 2>&1 || true' EXIT
$SB down --name benchpull >/dev/null 2>&1 || true
$SB up --name benchpull >/dev/null
$SB exec --name benchpull -- env N="$N" bash -euo pipefail -c '
SHIM=$PWD/target/release/shim
W=/var/lib/shim/bench-pull   # the sandbox keeps /var/lib/shim on tmpfs: both tools write there
rm -rf $W && mkdir -p $W

# --- the image: host directories as layers (what a Debian 12 host with a Rust toolchain
# has), then a layer with whiteouts and hardlinks.
L=$W/layout
umoci init --layout $L
umoci new --image $L:big
# One unpack/repack per layer: repack diffs against the tree as it was unpacked.
for dirs in "usr/lib/python3.11" "usr/lib/gcc" "usr/share/perl usr/lib/x86_64-linux-gnu/perl" last; do
  umoci unpack --image $L:big $W/b >/dev/null
  if [ "$dirs" = last ]; then
    rm -rf $W/b/rootfs/usr/lib/python3.11/test
    ln $W/b/rootfs/usr/lib/python3.11/os.py $W/b/rootfs/os.py.link 2>/dev/null || true
  fi
  for d in $dirs; do
    [ -d /$d ] || continue
    mkdir -p $W/b/rootfs/$(dirname $d)
    cp -a /$d $W/b/rootfs/$d
  done
  umoci repack --image $L:big $W/b >/dev/null
  rm -rf $W/b
done
m=$(jq -r ".manifests[0].digest" $L/index.json); m=${m#sha256:}
size=$(jq "[.layers[].size] | add" $L/blobs/sha256/$m)
layers=$(jq ".layers | length" $L/blobs/sha256/$m)
printf "image: %d layers, %.1f MB compressed\n" $layers $(echo "$size/1000000" | bc -l)
[ "$size" -ge 50000000 ] || { echo "image smaller than 50 MB: this host lacks the directories used"; exit 1; }

# --- the registry
systemctl stop docker-registry.service 2>/dev/null || true
cat > $W/registry.yml <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:5000
YML
systemd-run --quiet --unit bench-registry --collect /usr/bin/docker-registry serve $W/registry.yml
for i in $(seq 100); do curl -fs http://127.0.0.1:5000/v2/ >/dev/null && break; sleep 0.1; done
skopeo copy --quiet --dest-tls-verify=false oci:$L:big docker://127.0.0.1:5000/bench/big:v1
mkdir -p $W/cfg
printf "[shim]\ninsecure_registries = [\"127.0.0.1:5000\"]\n" > $W/cfg/services.toml

now() { date +%s%N; }
median() { sort -n > /tmp/m; sed -n "$(( ($(wc -l < /tmp/m) + 1) / 2 ))p" /tmp/m; }
: > /tmp/shim.ns; : > /tmp/alt.ns
for i in $(seq $N); do
  rm -rf $W/shim-state; sync
  t0=$(now)
  SHIM_STATE_DIR=$W/shim-state $SHIM --config $W/cfg image pull 127.0.0.1:5000/bench/big:v1 >/dev/null
  t1=$(now); echo $((t1-t0)) >> /tmp/shim.ns
  rm -rf $W/alt-layout $W/alt-bundle; sync
  t0=$(now)
  skopeo copy --quiet --src-tls-verify=false docker://127.0.0.1:5000/bench/big:v1 oci:$W/alt-layout:v1
  umoci unpack --image $W/alt-layout:v1 $W/alt-bundle >/dev/null
  t1=$(now); echo $((t1-t0)) >> /tmp/alt.ns
done
rootfs=$(ls -d $W/shim-state/images/rootfs/*/)
files=$(find $rootfs | wc -l)
diff <(cd $rootfs && find . | sort) <(cd $W/alt-bundle/rootfs && find . | sort) >/dev/null \
  || { echo "the two rootfs differ in their paths"; exit 1; }
s=$(median < /tmp/shim.ns); a=$(median < /tmp/alt.ns)
printf "pull + unpack (median of %d, %d paths): shim image pull %.0f ms, skopeo copy + umoci unpack %.0f ms, ratio %.2fx\n" \
  $N $files $(echo "$s/1000000" | bc -l) $(echo "$a/1000000" | bc -l) $(echo "$a/$s" | bc -l)
echo "all runs (ms): shim $(awk "{printf \"%.0f \", \$1/1e6}" /tmp/shim.ns); skopeo+umoci $(awk "{printf \"%.0f \", \$1/1e6}" /tmp/alt.ns)"
'
