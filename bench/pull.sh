#!/usr/bin/env bash
# Pull benchmark, run in a fresh systemd sandbox, from a local registry (Debian's
# docker-registry on the sandbox's loopback), of a multi-layer image of >= 50 MB (compressed),
# big:v1, and of its second revision big:v2 = v1 plus one small layer (a few KB file).
# Three tools, N runs each, interleaved, each run from an empty store:
#   shim image pull | skopeo copy + umoci unpack | podman pull (its own --root on tmpfs).
# Each run: pull v1 (timed: the first pull), then pull v2 over it (timed: the second-revision
# pull), with the disk growth of that tool's store between the two (du -sxb).
# Prints the medians, the ratios shim vs each, and the goals of the issue with PASS/FAIL
# (informational: exit 0 whatever they say; exit 1 if a tool or a check fails).
# Also checks that shim's unpacked tree has the same paths as umoci's, for v1 and v2.
# Usage: bench/pull.sh [N]   (default 5)
# Env: BENCH_SANDBOX (sandbox name, default benchpull); CARGO_TARGET_DIR is honoured;
# BENCH_TRACE=1 traces the part run in the sandbox (bash -x).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-5}"
SBN="${BENCH_SANDBOX:-benchpull}"
bash tests/install-deps.sh
cargo build --release --bins --quiet
# The sandbox sees the host's filesystem: the host path of the binary is valid inside.
SHIM_BIN="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/shim"
[ -x "$SHIM_BIN" ] || { echo "no binary at $SHIM_BIN"; exit 1; }
SB="bash tests/sandbox/sandbox.sh"
trap '$SB down --name "$SBN" >/dev/null 2>&1 || true' EXIT
$SB down --name "$SBN" >/dev/null 2>&1 || true
$SB up --name "$SBN" >/dev/null
$SB exec --name "$SBN" -- env N="$N" SHIM="$SHIM_BIN" bash -euo pipefail ${BENCH_TRACE:+-x} -c '
W=/var/lib/shim/bench-pull   # the sandbox keeps /var/lib/shim on tmpfs: all tools write there
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
# The second revision: one more layer with one small file (repack, not insert: Debian umoci
# 0.4.7 insert writes layers without the tar trailer).
umoci unpack --image $L:big $W/b >/dev/null
mkdir -p $W/b/rootfs/app
{ echo "revision 2"; head -c 3000 /dev/urandom | base64; } > $W/b/rootfs/app/REVISION
umoci repack --image $L:big-v2 $W/b >/dev/null
rm -rf $W/b
manifest() { jq -r --arg t "$1" ".manifests[] | select(.annotations[\"org.opencontainers.image.ref.name\"] == \$t) | .digest" $L/index.json | sed s/^sha256://; }
m1=$(manifest big); m2=$(manifest big-v2)
size=$(jq "[.layers[].size] | add" $L/blobs/sha256/$m1)
layers=$(jq ".layers | length" $L/blobs/sha256/$m1)
size2=$(jq "[.layers[].size] | add" $L/blobs/sha256/$m2)
layers2=$(jq ".layers | length" $L/blobs/sha256/$m2)
printf "image v1: %d layers, %.1f MB compressed; v2: %d layers, +%d bytes compressed\n" \
  $layers $(echo "$size/1000000" | bc -l) $layers2 $((size2 - size))
[ "$size" -ge 50000000 ] || { echo "image smaller than 50 MB: this host lacks the directories used"; exit 1; }
[ "$layers2" -eq $((layers + 1)) ] || { echo "v2 is not v1 plus one layer"; exit 1; }

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
R=127.0.0.1:5000/bench/big
skopeo copy --quiet --dest-tls-verify=false oci:$L:big docker://$R:v1
skopeo copy --quiet --dest-tls-verify=false oci:$L:big-v2 docker://$R:v2
mkdir -p $W/cfg
printf "[shim]\ninsecure_registries = [\"127.0.0.1:5000\"]\n" > $W/cfg/services.toml

# --- the tools: pull_<tool> TAG, reset_<tool>, store_<tool> (the dirs its store is in)
S=$W/shim-state
reset_shim() { rm -rf $S; }
pull_shim() { SHIM_STATE_DIR=$S $SHIM --config $W/cfg image pull $R:$1 >/dev/null; }
store_shim() { echo $S/images; }
reset_umoci() { rm -rf $W/alt-layout $W/alt-bundle-v1 $W/alt-bundle-v2; }
pull_umoci() {
  skopeo copy --quiet --src-tls-verify=false docker://$R:$1 oci:$W/alt-layout:$1
  umoci unpack --image $W/alt-layout:$1 $W/alt-bundle-$1 >/dev/null
}
store_umoci() { ls -d $W/alt-layout $W/alt-bundle-v1 $W/alt-bundle-v2 2>/dev/null; }
P="podman --root $W/podman-root --runroot $W/podman-run --storage-driver overlay"
reset_podman() {
  if [ -d $W/podman-root ]; then $P rmi -a -f >/dev/null; $P system reset -f >/dev/null; fi
  rm -rf $W/podman-root $W/podman-run
}
pull_podman() { $P pull -q --tls-verify=false $R:$1 >/dev/null; }
store_podman() { echo $W/podman-root; }
TOOLS="shim umoci podman"

now() { date +%s%N; }
median() { sort -n > /tmp/m; sed -n "$(( ($(wc -l < /tmp/m) + 1) / 2 ))p" /tmp/m; }
du_store() { du -sxbc $(store_$1) | tail -1 | cut -f1; }
for t in $TOOLS; do : > /tmp/$t.v1; : > /tmp/$t.v2; : > /tmp/$t.grow; done
for i in $(seq $N); do
  for t in $TOOLS; do
    reset_$t; sync
    t0=$(now); pull_$t v1; t1=$(now); echo $((t1-t0)) >> /tmp/$t.v1
    sync; d1=$(du_store $t)
    t0=$(now); pull_$t v2; t1=$(now); echo $((t1-t0)) >> /tmp/$t.v2
    sync; d2=$(du_store $t); echo $((d2-d1)) >> /tmp/$t.grow
  done
done

# --- the path check: the tree of shim against the one of umoci, for each tag (no single
# quote in this script: it is one single-quoted argument)
cmp_paths() { # TAG DIR
  diff <(cd $2 && find . | sort) <(cd $W/alt-bundle-$1/rootfs && find . | sort) >/dev/null \
    || { echo "$1: shim and umoci trees differ in their paths"; diff <(cd $2 && find . | sort) <(cd $W/alt-bundle-$1/rootfs && find . | sort) | head -20; exit 1; }
  echo "$1: path check ok ($(find $2 | wc -l) paths, same as umoci)"
}
# The chain ids of an image of the layout (OCI image spec: ChainID(L0) = DiffID(L0),
# ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))), bottom layer first.
chain_ids() {
  local cfg c=; cfg=$(jq -r .config.digest $L/blobs/sha256/$1 | sed s/^sha256://)
  for d in $(jq -r ".rootfs.diff_ids[]" $L/blobs/sha256/$cfg); do
    if [ -z "$c" ]; then c=$d; else c=sha256:$(printf "%s %s" $c $d | sha256sum | cut -d" " -f1); fi
    echo ${c#sha256:}
  done
}
check_layered() { # TAG MANIFEST-HEX
  local lower= h
  for h in $(chain_ids $2); do
    [ -d $S/images/layers/$h ] || { echo "$1: path check skipped (layered store: no layers/$h/ for the chain id computed from the image config)"; return 0; }
    lower=$S/images/layers/$h${lower:+:$lower}
  done
  mkdir -p $W/merged-$1
  if ! mount -t overlay overlay -o ro,lowerdir=$lower $W/merged-$1 2>/tmp/mount.err; then
    echo "$1: path check skipped (layered store: overlay mount failed: $(cat /tmp/mount.err))"; return 0
  fi
  local rc=0; (cmp_paths $1 $W/merged-$1) || rc=$?
  umount $W/merged-$1
  [ $rc -eq 0 ] || exit 1
}
for tag in v1 v2; do
  m=$m1; [ $tag = v2 ] && m=$m2
  if [ -d $S/images/rootfs/$m ]; then
    cmp_paths $tag $S/images/rootfs/$m
  elif [ -d $S/images/layers ]; then
    check_layered $tag $m
  else
    echo "$tag: path check skipped (unknown store layout: neither images/rootfs/$m/ nor images/layers/)"
  fi
done

# --- the report
ms() { echo "$1/1000000" | bc -l; }
declare -A V1 V2 G
for t in $TOOLS; do V1[$t]=$(median < /tmp/$t.v1); V2[$t]=$(median < /tmp/$t.v2); G[$t]=$(median < /tmp/$t.grow); done
name() { case $1 in shim) echo "shim image pull";; umoci) echo "skopeo copy + umoci unpack";; podman) echo "podman pull";; esac; }
echo "first pull (v1, empty store; median of $N):"
for t in $TOOLS; do
  printf "  %-28s %7.0f ms" "$(name $t)" $(ms ${V1[$t]})
  [ $t = shim ] && echo || printf "   shim is %.2fx faster\n" $(echo "${V1[$t]}/${V1[shim]}" | bc -l)
done
echo "second-revision pull (v2 over v1; median of $N): time, time / v1 time, disk growth of the store"
for t in $TOOLS; do
  printf "  %-28s %7.0f ms  %5.2f  %9.3f MB\n" "$(name $t)" $(ms ${V2[$t]}) \
    $(echo "${V2[$t]}/${V1[$t]}" | bc -l) $(echo "${G[$t]}/1000000" | bc -l)
done
for t in $TOOLS; do
  echo "all runs (ms) $(name $t): v1 $(awk "{printf \"%.0f \", \$1/1e6}" /tmp/$t.v1); v2 $(awk "{printf \"%.0f \", \$1/1e6}" /tmp/$t.v2)"
done
goal() { # TEXT CONDITION(bc)
  if [ "$(echo "$2" | bc -l)" = 1 ]; then r=PASS; else r=FAIL; fi
  printf "  %-4s %s\n" $r "$1"
}
echo "goals (informational):"
goal "$(printf "shim second-revision pull+unpack under 1/4 of its first pull (%.2f)" $(echo "${V2[shim]}/${V1[shim]}" | bc -l))" "${V2[shim]} * 4 < ${V1[shim]}"
goal "$(printf "shim second-revision pull under 2 MB of new disk (%.3f MB)" $(echo "${G[shim]}/1000000" | bc -l))" "${G[shim]} < 2000000"
goal "$(printf "shim first pull at least 2x faster than podman pull (%.2fx)" $(echo "${V1[podman]}/${V1[shim]}" | bc -l))" "${V1[podman]} >= 2 * ${V1[shim]}"
'
